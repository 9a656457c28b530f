"""Perception node: N RGB-D cameras + tf -> fused cloud -> five 4-channel virtual views.

Thin adapter around ``clamp_core.perception.PerceptionPipeline``: callbacks only decode and
validate (cheap), a single worker thread fuses and renders the newest synchronised set, so a slow
frame never blocks the executor. Every bad input is logged once per camera and problem (throttled)
and the frame is dropped; nothing is published from it.

Outputs (all stamped with the reference camera's stamp, frame_id = base frame):
  views/<name>   sensor_msgs/Image 32FC4: depth along the view axis (m), then X, Y, Z in the base
                 frame (m); empty pixels are 0 in all four channels.
  fused_points   sensor_msgs/PointCloud2 (x, y, z, rgb), only when ``publish_cloud`` is true.
  /diagnostics   diagnostic_msgs/DiagnosticArray: input rates and ages, latency, drops by reason.
"""

from __future__ import annotations

import collections
import sys
import threading
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header
from tf2_msgs.msg import TFMessage

from clamp_core.geometry.camera import CameraModelError
from clamp_core.geometry.image import ImageDecodeError, depth_span_m, has_depth_in_range
from clamp_core.geometry.sync import (
    ApproximateTimeSync,
    DuplicateStampError,
    SyncedSet,
    SyncError,
)
from clamp_core.geometry.tf_buffer import ExtrapolationError, TfBuffer, TfError
from clamp_core.perception import PerceptionError, PerceptionPipeline, RgbdFrame
from clamp_core.perception.config import ConfigError

from .conversions import (
    add_transforms,
    camera_from_info,
    cloud_msg,
    color_from_msg,
    depth_from_msg,
    image_msg,
    ns_to_stamp,
    stamp_to_ns,
)
from .params import declare, declare_perception_config
from .util import KeyedThrottle, LatencyStats, RateMeter, problem_key, run_node, shorten

TF_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
TF_STATIC_QOS = QoSProfile(
    depth=100, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)


def image_qos(name: str) -> QoSProfile:
    if name == "sensor_data":
        return qos_profile_sensor_data
    if name == "reliable":
        return QoSProfile(
            depth=5, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE
        )
    raise ConfigError(f"image_qos '{name}' must be sensor_data or reliable")


class PerceptionFrontend:
    """The camera side of a node, shared by the perception node and the policy node (one code
    path): camera + tf subscriptions, synchronisation, tf wait and a worker thread that calls
    ``self.handle_posed(synced, frames, cam_poses, view_poses, t0)`` for the newest complete set.
    Mix into an rclpy ``Node`` (or ``LifecycleNode``) and call :meth:`init_perception`."""

    publish_cloud = False

    def init_perception(self) -> None:
        self.config = cfg = declare_perception_config(self)
        qos_name = declare(
            self,
            "image_qos",
            "sensor_data",
            "QoS of image subscriptions: sensor_data (best effort) or reliable.",
        )
        self.time_reset_s = declare(
            self,
            "time_reset_threshold_s",
            1.0,
            "A stamp this far behind the previous one means time was "
            "reset (simulation restart): drop buffered state, carry on.",
        )
        self.error = KeyedThrottle(self.get_logger().error, 2.0)
        self.warn = KeyedThrottle(self.get_logger().warning, 2.0)

        self.tf_wait_s = declare(
            self,
            "tf_wait_s",
            0.2,
            "How long a synchronised set may wait for tf to catch up with "
            "its image stamps (tf often arrives after the images).",
        )
        self.tf = TfBuffer(cfg.tf_cache_s, cfg.tf_tolerance_s)
        self.tf_lock = threading.Condition()
        self.pipeline = PerceptionPipeline(cfg)
        t0 = time.perf_counter()
        self.pipeline.warmup()
        self.get_logger().info(
            f"perception backend '{self.pipeline.backend}' ready in "
            f"{time.perf_counter() - t0:.1f}s: {len(cfg.cameras)} cameras -> views "
            f"{[v.name for v in cfg.views]} at {cfg.image_width}x{cfg.image_height}"
        )
        streams = [f"{c.name}/depth" for c in cfg.cameras]
        streams += [f"{c.name}/color" for c in cfg.cameras if c.use_color]
        self.sync = ApproximateTimeSync(
            streams, cfg.sync_tolerance_s, cfg.sync_queue_size, reject_duplicates=True
        )
        self.sync_lock = threading.Lock()
        self.cameras = {c.name: c for c in cfg.cameras}
        self.infos: dict[str, object] = {c.name: None for c in cfg.cameras}
        self.depth_infos: dict[str, object] = {c.name: None for c in cfg.cameras}
        self.rates = {s: RateMeter() for s in streams}
        self.out_rate = RateMeter()
        self.latency = LatencyStats()  # set complete -> views published (processing)
        self.split = {k: LatencyStats() for k in ("tf_wait_ms", "fuse_render_ms", "publish_ms")}
        self.age = LatencyStats()  # reference stamp -> views published (end to end, ROS clock)
        self.drops: collections.Counter = collections.Counter()

        qos = image_qos(qos_name)
        # separate groups keep tf and diagnostics independent of a backlog of images if the node
        # is ever spun by a multi-threaded executor (e.g. composed with other nodes)
        cameras_group = MutuallyExclusiveCallbackGroup()
        tf_group = MutuallyExclusiveCallbackGroup()
        self._subs = []
        for c in cfg.cameras:
            self._subs.append(
                self.create_subscription(
                    Image,
                    c.depth_topic,
                    lambda m, n=c.name: self.on_depth(n, m),
                    qos,
                    callback_group=cameras_group,
                )
            )
            self._subs.append(
                self.create_subscription(
                    CameraInfo,
                    c.info_topic,
                    lambda m, n=c.name: self.on_info(n, m, False),
                    qos,
                    callback_group=cameras_group,
                )
            )
            if c.use_color:
                self._subs.append(
                    self.create_subscription(
                        Image,
                        c.color_topic,
                        lambda m, n=c.name: self.on_color(n, m),
                        qos,
                        callback_group=cameras_group,
                    )
                )
            if not c.registered:
                self._subs.append(
                    self.create_subscription(
                        CameraInfo,
                        c.depth_info_topic,
                        lambda m, n=c.name: self.on_info(n, m, True),
                        qos,
                        callback_group=cameras_group,
                    )
                )
        self._subs.append(
            self.create_subscription(TFMessage, "/tf", self.on_tf, TF_QOS, callback_group=tf_group)
        )
        self._subs.append(
            self.create_subscription(
                TFMessage, "/tf_static", self.on_tf_static, TF_STATIC_QOS, callback_group=tf_group
            )
        )

        self.start_worker_and_diagnostics("perception")

    def start_worker_and_diagnostics(self, worker_name: str) -> None:
        """/diagnostics on a timer (``on_diagnostics``) and the worker thread that takes the
        newest pending set (``_process``)."""
        period = declare(self, "diagnostics_period_s", 1.0, "Diagnostics publish period.")
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(
            period, self.on_diagnostics, callback_group=MutuallyExclusiveCallbackGroup()
        )
        self._pending: SyncedSet | None = None
        # ROS time the pending set became complete, and that of the set the worker is on
        self._pending_ready_ns = 0
        self.ready_ns = 0
        self._cv = threading.Condition()
        self._stop = False
        self._worker = threading.Thread(target=self._work, name=worker_name, daemon=True)
        self._worker.start()

    @staticmethod
    def latency_values(stats) -> list:
        """KeyValues ``<name> p50`` / ``<name> p95`` of (name, LatencyStats) pairs."""
        values = []
        for name, st in stats:
            for q in (50, 95):
                v = st.percentile(q)
                values.append(KeyValue(key=f"{name} p{q}", value="-" if v is None else f"{v:.1f}"))
        return values

    def publish_status(self, kind: str, level, message: str, values: list) -> None:
        """One DiagnosticStatus named '<node>: <kind>' on /diagnostics."""
        status = DiagnosticStatus(
            level=level,
            name=f"{self.get_name()}: {kind}",
            message=message,
            hardware_id="clamp_ros",
            values=values,
        )
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(msg)

    # ------------------------------------------------------------------ input callbacks
    def on_info(self, cam: str, msg: CameraInfo, depth: bool) -> None:
        table = self.depth_infos if depth else self.infos
        try:
            table[cam] = camera_from_info(msg)
        except CameraModelError as e:
            table[cam] = None
            self.drops["bad_camera_info"] += 1
            message = f"camera '{cam}': invalid camera_info: {e}"
            self.error((cam, "info", problem_key(message)), message)

    def _intrinsics(self, cam: str):
        c = self.cameras[cam]
        return self.infos[cam] if c.registered else self.depth_infos[cam]

    def _stamp_or_drop(self, cam: str, what: str, msg: Image) -> int | None:
        try:
            return stamp_to_ns(msg.header.stamp)
        except ValueError as e:
            self._drop(cam, "bad_stamp", f"camera '{cam}': {what} image has a {e}; dropped")
            return None

    def on_depth(self, cam: str, msg: Image) -> None:
        stamp = self._stamp_or_drop(cam, "depth", msg)
        if stamp is None:
            return
        intr = self._intrinsics(cam)
        if intr is None:
            topic = (
                self.cameras[cam].info_topic
                if self.cameras[cam].registered
                else self.cameras[cam].depth_info_topic
            )
            return self._drop(
                cam,
                "no_info",
                f"camera '{cam}': no valid camera_info on '{topic}' yet; dropping depth frame",
            )
        try:
            depth, scale = depth_from_msg(msg)
        except ImageDecodeError as e:
            return self._drop(cam, "bad_depth", f"camera '{cam}': bad depth image: {e}")
        if (msg.width, msg.height) != (intr.width, intr.height):
            return self._drop(
                cam,
                "size_mismatch",
                f"camera '{cam}': depth image is {msg.width}x{msg.height} but "
                f"camera_info says {intr.width}x{intr.height}",
            )
        if not _has_valid_depth(depth):
            return self._drop(
                cam,
                "no_valid_depth",
                f"camera '{cam}': depth image has no valid pixel (all zero, NaN or inf)",
            )
        cfg = self.config
        if not has_depth_in_range(depth, scale, cfg.depth_min_m, cfg.depth_max_m):
            return self._drop(
                cam,
                "depth_out_of_range",
                f"camera '{cam}': no depth pixel within ({cfg.depth_min_m:.2f}, "
                f"{cfg.depth_max_m:.2f}) m (perception.depth_min_m / depth_max_m)"
                f"{_span_hint(depth, scale)}; dropping depth frame",
            )
        frame_id = self.cameras[cam].frame_id or msg.header.frame_id
        frame = RgbdFrame(cam, stamp, frame_id, intr, depth, scale)
        try:
            frame.validate()
        except PerceptionError as e:
            return self._drop(cam, "bad_depth", str(e))
        self._offer(cam, f"{cam}/depth", stamp, frame)

    def on_color(self, cam: str, msg: Image) -> None:
        stamp = self._stamp_or_drop(cam, "color", msg)
        if stamp is None:
            return
        try:
            color = color_from_msg(msg)
        except ImageDecodeError as e:
            return self._drop(cam, "bad_color", f"camera '{cam}': bad color image: {e}")
        info = self.infos[cam]
        if info is not None and (msg.width, msg.height) != (info.width, info.height):
            return self._drop(
                cam,
                "size_mismatch",
                f"camera '{cam}': color image is {msg.width}x{msg.height} but "
                f"camera_info says {info.width}x{info.height}",
            )
        self._offer(cam, f"{cam}/color", stamp, color)

    def _offer(self, cam: str, stream: str, stamp: int, item) -> None:
        self.rates[stream].tick()
        with self.sync_lock:
            last = self.sync.latest_stamp(stream)
            if last is not None and last - stamp > self.time_reset_s * 1e9:
                self.warn(
                    (cam, "reset"),
                    f"camera '{cam}': time jumped back {(last - stamp) * 1e-9:.2f}s; "
                    f"assuming a clock reset and clearing buffered frames and tf",
                )
                self.sync.reset()
                with self.tf_lock:
                    self.tf.clear()
            try:
                sets = self.sync.add(stream, stamp, item)
            except DuplicateStampError as e:
                return self._drop(cam, "duplicate_stamp", f"camera '{cam}': {e}; frame dropped")
            except SyncError as e:
                return self._drop(cam, "time_backwards", f"camera '{cam}': {e}; frame dropped")
        if sets:
            with self._cv:
                if self._pending is not None:
                    self.drops["busy"] += 1  # the worker is behind: newest set wins
                self._pending = sets[-1]
                self._pending_ready_ns = self.get_clock().now().nanoseconds
                self.drops["busy"] += len(sets) - 1
                self._cv.notify()

    def _drop_tf(self, frames: list[RgbdFrame], stamp_ns: int) -> None:
        """Name the first camera (or view) whose pose is missing, and why."""
        for f in frames:
            try:
                self.pipeline.camera_pose(f, self.tf)
            except TfError as e:
                why = str(e)
                if len(f.frame_id) > FRAME_ID_CHARS:  # the lookup error repeats the frame id
                    why = why.replace(f.frame_id, shorten(f.frame_id, FRAME_ID_CHARS))
                return self._drop(
                    f.camera,
                    "tf",
                    f"camera '{f.camera}': no pose for frame "
                    f"'{shorten(f.frame_id, FRAME_ID_CHARS)}' at {f.stamp_ns * 1e-9:.3f}s: {why}",
                )
        try:
            self.pipeline.view_poses(self.tf, stamp_ns)
        except TfError as e:
            return self._drop(
                "views", "tf", f"attached view pose unavailable at {stamp_ns * 1e-9:.3f}s: {e}"
            )

    def _drop(self, cam: str, reason: str, message: str) -> None:
        self.drops[reason] += 1
        # throttle per camera and problem; numbers (stamps, sizes) and quoted names (frame ids
        # from the wire) do not make a new problem, and the key stays short whatever the message
        self.error((cam, reason, problem_key(message)), message)

    def on_tf(self, msg: TFMessage) -> None:
        self._add_tf(msg, False)

    def on_tf_static(self, msg: TFMessage) -> None:
        self._add_tf(msg, True)

    def _add_tf(self, msg: TFMessage, static: bool) -> None:
        with self.tf_lock:
            # tf stamped implausibly far from this node's clock never enters the buffer
            errors = add_transforms(
                self.tf, msg.transforms, static, now_ns=self.get_clock().now().nanoseconds
            )
            self.tf_lock.notify_all()
        for e in errors:
            self.drops["bad_tf"] += 1
            self.error(("tf", problem_key(e)), e)

    # ------------------------------------------------------------------ worker
    def _work(self) -> None:
        while True:
            with self._cv:
                while self._pending is None and not self._stop:
                    self._cv.wait()
                if self._stop:
                    return
                synced, self._pending = self._pending, None
                self.ready_ns = self._pending_ready_ns
            try:
                self._process(synced)
            except Exception as e:  # never let one frame kill the node
                self.drops["internal_error"] += 1
                self.error(("internal", type(e).__name__), f"perception failed on a frame: {e!r}")

    def _process(self, synced: SyncedSet) -> None:
        t0 = time.perf_counter()
        frames = []
        for c in self.config.cameras:
            _, frame = synced.items[f"{c.name}/depth"]
            if c.use_color:
                frame.color = synced.items[f"{c.name}/color"][1]
            frames.append(frame)
        deadline = time.monotonic() + self.tf_wait_s
        with self.tf_lock:
            while True:
                try:
                    cam_poses = [self.pipeline.camera_pose(f, self.tf) for f in frames]
                    view_poses = self.pipeline.view_poses(self.tf, synced.stamp_ns)
                    break
                except TfError as e:
                    remaining = deadline - time.monotonic()
                    if isinstance(e, ExtrapolationError) and e.into_future and remaining > 0:
                        self.tf_lock.wait(timeout=remaining)  # like tf2's message filter
                        continue
                    return self._drop_tf(frames, synced.stamp_ns)
        self.split["tf_wait_ms"].add((time.perf_counter() - t0) * 1e3)
        self.handle_posed(synced, frames, cam_poses, view_poses, t0)

    def handle_posed(self, synced, frames, cam_poses, view_poses, t0: float) -> None:
        """Called in the worker with a posed, synchronised set (override)."""
        raise NotImplementedError

    def perception_diagnostics(self, now: float) -> tuple[list, list[str]]:
        """(KeyValues of the input streams, names of stale streams); logs stale cameras."""
        stale = []
        values = []
        for stream, meter in self.rates.items():
            age = meter.age_s(now)
            values.append(KeyValue(key=f"{stream} rate_hz", value=f"{meter.rate_hz(now):.1f}"))
            values.append(
                KeyValue(key=f"{stream} age_s", value="never" if age is None else f"{age:.2f}")
            )
            if age is None or age > self.config.stale_after_s:
                stale.append(stream)
        for stream in stale:
            cam = stream.split("/")[0]
            age = self.rates[stream].age_s(now)
            what = "has not published yet" if age is None else f"silent for {age:.1f}s"
            self.error(
                (cam, "stale", stream),
                f"camera '{cam}': {stream.split('/')[1]} stream {what} (stale); "
                f"{self.stale_consequence}",
            )
        return values, stale

    stale_consequence = "nothing is computed until it returns"

    def stop_perception(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._worker.join(timeout=2.0)


class PerceptionNode(PerceptionFrontend, Node):
    stale_consequence = "no views are published until it returns"

    def __init__(self, node_name: str = "perception", **kwargs):
        super().__init__(node_name, **kwargs)
        self.publish_cloud = declare(
            self,
            "publish_cloud",
            False,
            "Publish the fused cloud on fused_points (debug; costs a copy).",
        )
        self.cloud_max_points = declare(
            self,
            "cloud_max_points",
            200000,
            "Subsample the debug cloud to at most this many points.",
        )
        self.init_perception()
        cfg = self.config
        self.view_pubs = {
            v.name: self.create_publisher(Image, f"views/{v.name}", 5) for v in cfg.views
        }
        self.cloud_pub = (
            self.create_publisher(PointCloud2, "fused_points", 2) if self.publish_cloud else None
        )

    def handle_posed(self, synced, frames, cam_poses, view_poses, t0: float) -> None:
        t1 = time.perf_counter()
        try:
            result = self.pipeline.process_posed(
                frames,
                cam_poses,
                view_poses,
                synced.stamp_ns,
                want_cloud=self.publish_cloud,
                want_colors=self.publish_cloud,
            )
        except PerceptionError as e:
            return self._drop("frame", "bad_frame", str(e))
        t2 = time.perf_counter()
        header = Header(stamp=ns_to_stamp(synced.stamp_ns), frame_id=self.config.base_frame)
        for name, img in zip(result.views.names, result.views.images):
            self.view_pubs[name].publish(image_msg(img, "32FC4", header))
        if self.cloud_pub is not None and result.cloud is not None:
            xyz, rgb = result.cloud.xyz, result.cloud.rgb
            if len(xyz) > self.cloud_max_points:
                step = int(np.ceil(len(xyz) / self.cloud_max_points))
                xyz, rgb = xyz[::step], (rgb[::step] if rgb is not None else None)
            self.cloud_pub.publish(cloud_msg(xyz, rgb, header))
        self.out_rate.tick()
        t3 = time.perf_counter()
        self.latency.add((t3 - t0) * 1e3)
        self.split["fuse_render_ms"].add((t2 - t1) * 1e3)
        self.split["publish_ms"].add((t3 - t2) * 1e3)
        now_ns = self.get_clock().now().nanoseconds
        self.age.add((now_ns - synced.stamp_ns) * 1e-6)

    # ------------------------------------------------------------------ diagnostics
    def on_diagnostics(self) -> None:
        now = time.monotonic()
        values, stale = self.perception_diagnostics(now)
        values.append(KeyValue(key="views rate_hz", value=f"{self.out_rate.rate_hz(now):.1f}"))
        latencies = [("processing_ms", self.latency), ("stamp_to_publish_ms", self.age)]
        values += self.latency_values([*latencies, *self.split.items()])
        values += [
            KeyValue(key=f"dropped {k}", value=str(v)) for k, v in sorted(self.drops.items())
        ]
        values.append(KeyValue(key="backend", value=self.pipeline.backend))
        level, message = DiagnosticStatus.OK, "ok"
        if stale:
            level, message = DiagnosticStatus.ERROR, f"stale inputs: {', '.join(stale)}"
        elif self.out_rate.age_s(now) is None or self.out_rate.age_s(now) > 1.0:
            level, message = DiagnosticStatus.WARN, "no views published recently"
        self.publish_status("perception", level, message, values)

    def destroy_node(self) -> None:
        self.stop_perception()
        super().destroy_node()


FRAME_ID_CHARS = 64
"""Frame ids from the wire are cut to this many characters in log messages."""


def _span_hint(depth: np.ndarray, scale: float) -> str:
    """'; readings span a..b m' (+ a hint for 16-bit 'no data' markers) for an unusable frame."""
    span = depth_span_m(depth, scale)
    if span is None:
        return ""
    hint = f"; readings span {span[0]:.3g}..{span[1]:.3g} m"
    if depth.dtype == np.uint16 and int(depth[::4, ::4].max()) == 65535:
        hint += " (65535 mm is a no-data marker of some drivers)"
    return hint


def _has_valid_depth(depth: np.ndarray) -> bool:
    if depth.dtype == np.uint16:
        return bool(np.count_nonzero(depth))
    d = depth[::4, ::4]  # a strided look is enough to tell "all invalid" from "mostly valid"
    if np.any(np.isfinite(d) & (d > 0)):
        return True
    return bool(np.any(np.isfinite(depth) & (depth > 0)))


def main(args=None) -> None:
    # the worker re-takes the GIL between kernels; with image callbacks holding it, the default
    # 5 ms switch interval made every hand-over cost up to 5 ms
    sys.setswitchinterval(0.0005)
    run_node(PerceptionNode, args, "perception")


if __name__ == "__main__":
    main()
