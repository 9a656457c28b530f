"""The demo recorder: one rosbag2 bag (MCAP) per teleoperated episode.

Subscribes (serialised, ``raw=True``: nothing is deserialised) to every camera's colour, depth
and camera_info, follower and leader joint states, /tf and /tf_static (and optionally the
policy's commands) as configured, and hands the bytes to clamp_core's EpisodeBagWriter, whose
thread writes them off the executor.

Services (std_srvs):
  ~/start    Trigger   start an episode; its task, instruction, operator and notes are the
                       parameters of the same names (``ros2 param set /recorder task ...``)
  ~/stop     SetBool   data = success; finalises the bag
  ~/discard  Trigger   stop and delete the running episode
Publishes /diagnostics: per-topic rates, drops, queue depth, bytes written, free disk.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from datetime import datetime

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor, ParameterType
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_srvs.srv import SetBool, Trigger

from clamp_core.data.recording import (
    CameraTopics,
    EpisodeBagWriter,
    RecorderConfig,
    RecordingError,
    StaticCache,
    StreamMonitor,
    default_typestore,
    recorder_topics,
    software_version,
)

from .params import declare, declare_dataclass, declare_perception_config
from .util import KeyedThrottle, message_class, run_node

EPISODE_PARAMS = {
    "task": "Task name of the next episode (required to start).",
    "instruction": "Language instruction of the next episode.",
    "operator": "Who teleoperates the next episode.",
    "notes": "Free-text notes stored with the next episode.",
    "episode_name": "Folder name of the next episode ('' = <task>_<date>_<time>).",
}


def qos_for(kind: str) -> QoSProfile:
    if kind == "sensor_data":  # matches best-effort and reliable publishers
        return QoSProfile(
            depth=5, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.BEST_EFFORT
        )
    if kind == "static":
        return QoSProfile(
            depth=100,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
    return QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)


def _installed(msgtype: str):
    cls = message_class(msgtype)
    if cls is None:
        raise ValueError(f"message type {msgtype} is not installed here")
    return cls


class RecorderNode(Node):
    def __init__(self, **kwargs):
        super().__init__("recorder", **kwargs)
        self.config = RecorderConfig(**declare_dataclass(self, "recorder", RecorderConfig()))
        perception = declare_perception_config(self)
        image_qos = declare(
            self, "image_qos", "sensor_data", "Image subscriptions: sensor_data | reliable."
        )
        period = declare(self, "diagnostics_period_s", 1.0, "Diagnostics publish period.")
        for name, text in EPISODE_PARAMS.items():
            self.declare_parameter(
                name, "", ParameterDescriptor(description=text, type=ParameterType.PARAMETER_STRING)
            )
        cameras = [
            CameraTopics(
                c.name,
                self.resolve_topic_name(c.color_topic),
                self.resolve_topic_name(c.depth_topic),
                self.resolve_topic_name(c.info_topic),
                None if c.registered else self.resolve_topic_name(c.depth_info_topic),
            )
            for c in perception.cameras
        ]
        self.camera_names = [c.name for c in cameras]
        cfg = self.config
        resolved = {
            "follower_topics": [self.resolve_topic_name(t) for t in cfg.follower_topics],
            "leader_topics": [self.resolve_topic_name(t) for t in cfg.leader_topics],
            "command_topics": [self.resolve_topic_name(t) for t in cfg.command_topics],
            "tf_topic": self.resolve_topic_name(cfg.tf_topic),
            "tf_static_topic": self.resolve_topic_name(cfg.tf_static_topic),
        }
        for key, value in resolved.items():
            setattr(cfg, key, value)
        self.specs = recorder_topics(cfg, cameras, image_qos)
        self.typestore = default_typestore()
        unknown = [s.topic for s in self.specs if s.msgtype not in self.typestore.types]
        if unknown:
            raise ValueError(f"no message definition for the types of {unknown}")
        self.monitor = StreamMonitor(
            {s.topic: s.min_rate_hz for s in self.specs}, cfg.rate_window_s, cfg.stale_after_s
        )
        self.static = StaticCache(cfg.max_static_messages)
        self.writer: EpisodeBagWriter | None = None
        self.episode_start = 0.0
        self.last_error: str | None = None
        self.last_bag: str | None = None
        self.warn = KeyedThrottle(self.get_logger().warning, period_s=5.0)
        self._prev_bytes = (time.monotonic(), 0)
        for spec in self.specs:
            self.create_subscription(
                _installed(spec.msgtype),
                spec.topic,
                lambda data, topic=spec.topic: self.on_message(topic, data),
                qos_for(spec.qos),
                raw=True,
            )
        group = MutuallyExclusiveCallbackGroup()
        self.create_service(Trigger, "~/start", self.on_start, callback_group=group)
        self.create_service(SetBool, "~/stop", self.on_stop, callback_group=group)
        self.create_service(Trigger, "~/discard", self.on_discard, callback_group=group)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(period, self.on_diagnostics, callback_group=group)
        self.get_logger().info(
            f"recorder ready: {len(self.specs)} topics, bags in {cfg.output_dir}; "
            f"start with `ros2 service call {self.get_fully_qualified_name()}/start "
            "std_srvs/srv/Trigger`"
        )

    # ------------------------------------------------------------------ messages
    def on_message(self, topic: str, data: bytes) -> None:
        self.monitor.tick(topic, time.monotonic())
        if topic == self.config.tf_static_topic:
            self.static.add(data)
        writer = self.writer
        if writer is not None:
            writer.push(topic, self.get_clock().now().nanoseconds, data)

    # ------------------------------------------------------------------ services
    def _param(self, name: str) -> str:
        return str(self.get_parameter(name).value or "").strip()

    def on_start(self, request, response):
        response.success, response.message = False, ""
        try:
            response.message = self.start_episode()
            response.success = True
        except RecordingError as e:
            response.message = f"start refused: {e}"
            self.get_logger().error(response.message)
        return response

    def start_episode(self) -> str:
        if self.writer is not None:
            raise RecordingError(f"already recording {self.writer.name}: stop or discard it first")
        task = self._param("task")
        if not task:
            raise RecordingError(
                f"parameter 'task' is empty: ros2 param set {self.get_fully_qualified_name()} "
                "task <name>"
            )
        now = time.monotonic()
        silent = self.monitor.silent([s.topic for s in self.specs if s.required], now)
        if silent:
            raise RecordingError(
                f"required topics silent for more than {self.config.stale_after_s:g} s: "
                + ", ".join(silent)
            )
        name = self._param("episode_name") or self._auto_name(task)
        meta = {
            "task": task,
            "instruction": self._param("instruction"),
            "operator": self._param("operator"),
            "notes": self._param("notes"),
            "robot": self.config.robot,
            "joint_names": list(self.config.joint_names),
            "camera_names": list(self.camera_names),
            "software_version": software_version(),
            "topics": {s.topic: s.msgtype for s in self.specs},
            "success": None,
        }
        writer = EpisodeBagWriter(
            self.config,
            name,
            self.specs,
            meta,
            typestore=self.typestore,
            clock_ns=lambda: self.get_clock().now().nanoseconds,
        )
        statics = [(self.config.tf_static_topic, d) for d in self.static.messages()]
        try:
            writer.start(statics)
        except OSError as e:
            raise RecordingError(f"cannot create the bag in {self.config.output_dir}: {e}") from e
        self.writer = writer
        self.episode_start = now
        self.last_error = None
        if self.has_parameter("episode_name") and self._param("episode_name"):
            from rclpy.parameter import Parameter

            # a fixed name serves one episode: the next start needs a new one
            self.set_parameters([Parameter("episode_name", Parameter.Type.STRING, "")])
        msg = f"recording {writer.partial_dir} ({len(statics)} static tf messages)"
        self.get_logger().info(msg)
        return msg

    def _auto_name(self, task: str) -> str:
        base = re.sub(r"[^A-Za-z0-9_.\-]", "_", task)
        stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
        out = os.path.expanduser(self.config.output_dir)
        name, i = f"{base}_{stamp}", 1
        while os.path.exists(os.path.join(out, name)) or os.path.exists(
            os.path.join(out, f"{name}.partial")
        ):
            i += 1
            name = f"{base}_{stamp}_{i}"
        return name

    def _not_recording(self) -> str:
        extra = (
            f" (the last episode stopped on an error: {self.last_error})" if self.last_error else ""
        )
        return f"not recording{extra}"

    def on_stop(self, request, response):
        self._reap()
        if self.writer is None:
            response.success, response.message = False, self._not_recording()
            return response
        result = self.finish(bool(request.data), "service")
        response.success = result is not None and result.finalised and not result.error
        response.message = self._describe(result)
        return response

    def finish(self, success, stopped_by: str):
        writer, self.writer = self.writer, None
        result = writer.stop(success, extra={"stopped_by": stopped_by})
        if result is not None:
            self.last_bag = result.path
        if writer.error:
            self.last_error = writer.error
        self.get_logger().info(self._describe(result))
        return result

    @staticmethod
    def _describe(result) -> str:
        if result is None:
            return "the episode could not be finalised"
        n = sum(result.messages.values())
        drops = sum(result.drops.values())
        text = f"saved {result.path}: {n} messages, {result.bytes_written / 1e6:.1f} MB"
        text += f", {drops} dropped {result.drops}" if drops else ", no drops"
        return text + (f"; ERROR: {result.error}" if result.error else "")

    def on_discard(self, request, response):
        self._reap()
        if self.writer is None:
            response.success, response.message = False, self._not_recording()
            return response
        writer, self.writer = self.writer, None
        writer.discard()
        response.success, response.message = True, f"discarded {writer.name}"
        self.get_logger().info(response.message)
        return response

    def _reap(self) -> None:
        """An episode whose writer stopped on its own (disk full): leave the recording state."""
        w = self.writer
        if w is not None and w.state == "done":
            self.writer = None
            self.last_error = w.error
            if w.result is not None:
                self.last_bag = w.result.path
            self.get_logger().error(f"episode {w.name} stopped: {w.error}")

    # ------------------------------------------------------------------ diagnostics
    def on_diagnostics(self) -> None:
        self._reap()
        now = time.monotonic()
        w = self.writer
        status = w.status() if w is not None else {}
        try:
            free_gb = (
                shutil.disk_usage(
                    os.path.expanduser(self.config.output_dir)
                    if os.path.isdir(os.path.expanduser(self.config.output_dir))
                    else "/"
                ).free
                / 1e9
            )
        except OSError:
            free_gb = float("nan")
        problems = self.monitor.problems(now, self.episode_start) if w is not None else {}
        drops = status.get("drops", {})
        t_prev, b_prev = self._prev_bytes
        written = status.get("bytes_written", 0)
        mb_s = (written - b_prev) / 1e6 / max(now - t_prev, 1e-6) if written >= b_prev else 0.0
        self._prev_bytes = (now, written)
        statuses = []
        level, message = DiagnosticStatus.OK, "idle"
        if w is not None:
            message = f"recording {w.name}"
            if problems or any(drops.values()):
                level = DiagnosticStatus.WARN
                parts = [f"{t}: {p}" for t, p in sorted(problems.items())]
                parts += [f"{t}: {n} dropped" for t, n in sorted(drops.items()) if n]
                message += "; " + "; ".join(parts)
        elif self.last_error:
            level, message = DiagnosticStatus.ERROR, f"last episode: {self.last_error}"
        values = [
            KeyValue(key="state", value=status.get("state", "idle")),
            KeyValue(key="episode", value=w.name if w is not None else ""),
            KeyValue(key="last bag", value=self.last_bag or ""),
            KeyValue(key="bytes written", value=str(written)),
            KeyValue(key="write MB/s", value=f"{mb_s:.1f}"),
            KeyValue(key="queue depth", value=str(status.get("queue_depth", 0))),
            KeyValue(key="queue MB", value=f"{status.get('queue_mb', 0.0):.1f}"),
            KeyValue(key="dropped", value=str(sum(drops.values()))),
            KeyValue(key="free disk GB", value=f"{free_gb:.2f}"),
            KeyValue(key="static tf messages", value=str(len(self.static))),
        ]
        statuses.append(self._status("recorder", level, message, values))
        counts = status.get("written", {})
        for spec in self.specs:
            t = spec.topic
            age = self.monitor.age_s(t, now)
            problem = problems.get(t)
            lvl = DiagnosticStatus.WARN if (problem or drops.get(t)) else DiagnosticStatus.OK
            statuses.append(
                self._status(
                    f"topic {t}",
                    lvl,
                    problem or (f"{drops[t]} dropped" if drops.get(t) else "ok"),
                    [
                        KeyValue(key="rate_hz", value=f"{self.monitor.rate_hz(t, now):.1f}"),
                        KeyValue(key="expected_hz", value=f"{spec.min_rate_hz:g}"),
                        KeyValue(key="age_s", value="never" if age is None else f"{age:.2f}"),
                        KeyValue(key="written", value=str(counts.get(t, 0))),
                        KeyValue(key="dropped", value=str(drops.get(t, 0))),
                    ],
                )
            )
            if w is not None and problem:
                self.warn(("rate", t), f"{t}: {problem}")
            if w is not None and drops.get(t):
                self.warn(("drop", t), f"{t}: {drops[t]} messages dropped (writer behind)")
        msg = DiagnosticArray(status=statuses)
        msg.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(msg)

    def _status(self, kind: str, level, message: str, values: list) -> DiagnosticStatus:
        return DiagnosticStatus(
            level=level,
            name=f"{self.get_name()}: {kind}",
            message=message,
            hardware_id="clamp_ros",
            values=values,
        )

    def destroy_node(self) -> None:
        # SIGINT / SIGTERM end up here (run_node): finalise the running episode
        if self.writer is not None:
            self._reap()
        if self.writer is not None:
            self.finish(None, "shutdown")
        super().destroy_node()


def main(args=None) -> None:
    run_node(RecorderNode, args, "recorder")


if __name__ == "__main__":
    main()
