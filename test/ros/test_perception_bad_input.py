"""Bad input against the running perception node (its own process, over Fast DDS).

For each problem: the node logs one error naming the camera and the problem, publishes nothing
built from the bad frame, keeps running, and produces views again as soon as good input returns.
This test process plays the cameras and tf itself so it can send exactly the bad message wanted.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import yaml
from rcl_interfaces.msg import Log
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header
from tf2_msgs.msg import TFMessage

from clamp_core.geometry.camera import PinholeCamera
from clamp_core.geometry.transforms import Transform, look_at
from clamp_ros.conversions import image_msg, info_from_camera, ns_to_stamp, transform_msg
from clamp_ros.graph import executable_path
from clamp_ros.perception_node import TF_QOS, TF_STATIC_QOS
from test.ros.conftest import child_env, rclpy_session, start_process, stop_process

pytestmark = pytest.mark.ros

W, H = 64, 48
CAM = PinholeCamera.from_fov(W, H, 60.0)
CAMERAS = ("cam_a", "cam_b")
# cam_a is fixed; cam_b rides on a moving mount (dynamic tf), to test tf that stops or lags
POSES = {"cam_a": look_at([0.0, -0.3, 0.6], [0.0, 0.0, 0.0]), "cam_b": Transform.identity()}
MOUNT = look_at([0.3, 0.0, 0.5], [0.0, 0.0, 0.0])


def _params(tmp_path):
    params = {
        "/**": {
            "ros__parameters": {
                "image_qos": "reliable",
                "diagnostics_period_s": 0.2,
                "tf_wait_s": 0.3,
                "perception": {
                    "base_frame": "world",
                    "camera_names": list(CAMERAS),
                    # cam_b: unregistered depth with its own CameraInfo (its color camera differs)
                    "cameras": {
                        "cam_a": {"use_color": True},
                        "cam_b": {"use_color": False, "registered": False},
                    },
                    "view_names": ["overhead", "back_right"],
                    "image_width": 32,
                    "image_height": 32,
                    "sync_tolerance_s": 0.001,
                    "stale_after_s": 1.0,
                    "tf_tolerance_s": 0.0,
                    "backend": "numpy",
                },
            }
        },
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


class Rig:
    """Plays two cameras and tf, and watches the node's views and logs."""

    def __init__(self, node):
        self.node = node
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.pubs = {}
        for c in CAMERAS:
            self.pubs[c] = {
                "depth": node.create_publisher(Image, f"{c}/depth/image_raw", qos),
                "color": node.create_publisher(Image, f"{c}/color/image_raw", qos),
                "info": node.create_publisher(CameraInfo, f"{c}/color/camera_info", qos),
                "depth_info": node.create_publisher(CameraInfo, f"{c}/depth/camera_info", qos),
            }
        self.tf = node.create_publisher(TFMessage, "/tf", TF_QOS)
        self.tf_static = node.create_publisher(TFMessage, "/tf_static", TF_STATIC_QOS)
        self.view_stamps: list[int] = []
        self.logs: list[str] = []
        node.create_subscription(Image, "views/overhead", self._on_view, 10)
        rosout_qos = QoSProfile(
            depth=1000,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
        node.create_subscription(Log, "/rosout", self._on_log, rosout_qos)
        self.stamp = 10_000_000_000

    def _on_view(self, msg):
        self.view_stamps.append(msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec)

    def _on_log(self, msg):
        if msg.name.endswith("perception"):
            self.logs.append(msg.msg)

    def spin_until(self, cond, timeout_s=60.0) -> bool:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            self.node.executor.spin_once(timeout_sec=0.05)
            if cond():
                return True
        return False

    def wait_connected(self):
        assert self.spin_until(
            lambda: (
                all(p["depth"].get_subscription_count() > 0 for p in self.pubs.values())
                and self.tf.get_subscription_count() > 0
            )
        ), "perception node did not subscribe"

    # ------------------------------------------------------------------ messages
    def next_stamp(self) -> int:
        self.stamp += 100_000_000
        return self.stamp

    def send_info(self, cam, camera=CAM):
        header = Header(frame_id=f"{cam}_optical")
        if cam == "cam_b":
            # unregistered: the node must use the depth CameraInfo; the color one (twice the
            # size) would make every depth frame a size mismatch
            self.pubs[cam]["depth_info"].publish(info_from_camera(camera, header))
            big = PinholeCamera.from_fov(2 * W, 2 * H, 60.0)
            self.pubs[cam]["info"].publish(info_from_camera(big, header))
        else:
            self.pubs[cam]["info"].publish(info_from_camera(camera, header))

    def send_static_tf(self):
        self.tf_static.publish(
            TFMessage(
                transforms=[
                    transform_msg("world", "cam_a_optical", 0, POSES["cam_a"]),
                    transform_msg("mount", "cam_b_optical", 0, POSES["cam_b"]),
                ]
            )
        )

    def send_mount(self, stamp):
        self.tf.publish(TFMessage(transforms=[transform_msg("world", "mount", stamp, MOUNT)]))

    def depth(self, value=0.5):
        return np.full((H, W), value, np.float32)

    def send(
        self, cam, stamp, depth=None, encoding="32FC1", frame=None, color_size=(W, H), msg=None
    ):
        header = Header(stamp=ns_to_stamp(stamp), frame_id=frame or f"{cam}_optical")
        self.pubs[cam]["depth"].publish(
            msg or image_msg(self.depth() if depth is None else depth, encoding, header)
        )
        if cam == "cam_a":
            w, h = color_size
            self.pubs[cam]["color"].publish(
                image_msg(np.zeros((h, w, 3), np.uint8), "rgb8", header)
            )

    def send_good_set(self, stamp=None) -> int:
        stamp = self.next_stamp() if stamp is None else stamp
        self.send_mount(stamp)
        for c in CAMERAS:
            self.send(c, stamp)
        return stamp

    def expect_views(self, stamp):
        assert self.spin_until(lambda: stamp in self.view_stamps), (
            f"no views for the good set at {stamp}; node said: {self.logs[-5:]}"
        )

    def expect_error(self, *needles):
        def found():
            return any(all(n in line for n in needles) for line in self.logs)

        assert self.spin_until(found), f"no log line with {needles}; got {self.logs[-8:]}"


@pytest.fixture(scope="module")
def rig(ros_domain_id, tmp_path_factory):
    """One perception node for the whole module (its own process) and this process's rig."""
    tmp = tmp_path_factory.mktemp("bad_input")
    env = child_env(ros_domain_id, tmp / "ros_log")
    cmd = [executable_path("perception_node"), "--ros-args", "--params-file", str(_params(tmp))]
    proc = start_process(cmd, env, tmp / "perception.log")
    try:
        with rclpy_session(env, "bad_input_rig") as node:
            rig = Rig(node)
            rig.wait_connected()
            yield rig, proc
    finally:
        stop_process(proc)


def _bad_then_good(rig, send_bad, needles, setup_after=False):
    """``send_bad`` sends a bad frame and returns its stamp; then the named error must appear,
    nothing may be built from that stamp, and a good set must produce views again."""
    r, proc = rig
    bad_stamp = send_bad(r)
    r.expect_error(*needles)
    if setup_after:  # give the node what good sets need from now on
        r.send_static_tf()
        for c in CAMERAS:
            r.send_info(c)
        r.spin_until(lambda: False, timeout_s=0.5)
    good = r.send_good_set()
    r.expect_views(good)
    assert bad_stamp not in r.view_stamps, "a view was built from the bad frame"
    assert proc.poll() is None, "the perception node died"


def test_missing_camera_info_then_recovery(rig):
    """Runs first: the node has no camera_info yet."""

    def bad(r):
        s = r.next_stamp()
        r.send("cam_a", s)
        return s

    _bad_then_good(rig, bad, ("cam_a", "no valid camera_info"), setup_after=True)


@pytest.mark.parametrize(
    "case, needles",
    [
        ("wrong_encoding", ("cam_a", "unsupported depth encoding 'rgb8'")),
        ("unknown_encoding", ("cam_b", "unsupported depth encoding 'yuv422_yuy2'")),
        ("size_mismatch", ("cam_a", "color image is 32x24", f"{W}x{H}")),
        ("bad_step", ("cam_b", "step")),
        ("empty_data", ("cam_a", "data has 0 bytes")),
        ("all_zero_depth", ("cam_b", "no valid pixel")),
        ("nan_depth", ("cam_a", "no valid pixel")),
        ("unknown_frame", ("cam_a", "no pose for frame 'ghost_frame'")),
        ("time_backwards", ("cam_b", "time went backwards")),
    ],
)
def test_bad_frame_is_dropped_and_named(rig, case, needles):
    def bad(r):
        good = r.send_good_set()  # establishes "previous" stamps for the backwards case
        r.expect_views(good)
        s = r.next_stamp()
        r.send_mount(s)
        header = Header(stamp=ns_to_stamp(s), frame_id="cam_a_optical")
        if case == "wrong_encoding":
            r.send("cam_a", s, msg=image_msg(np.zeros((H, W, 3), np.uint8), "rgb8", header))
            r.send("cam_b", s)
        elif case == "unknown_encoding":
            m = image_msg(np.zeros((H, W, 2), np.uint8), "rgb8", header)
            m.encoding = "yuv422_yuy2"
            r.send("cam_a", s)
            r.send("cam_b", s, msg=m)
        elif case == "size_mismatch":
            r.send("cam_a", s, color_size=(32, 24))
            r.send("cam_b", s)
        elif case == "bad_step":
            m = image_msg(r.depth(), "32FC1", header)
            m.step = W * 4 - 8
            r.send("cam_a", s)
            r.send("cam_b", s, msg=m)
        elif case == "empty_data":
            m = image_msg(r.depth(), "32FC1", header)
            m.data = b""
            r.send("cam_a", s, msg=m)
            r.send("cam_b", s)
        elif case == "all_zero_depth":
            r.send("cam_a", s)
            r.send("cam_b", s, depth=np.zeros((H, W), np.uint16), encoding="16UC1")
        elif case == "nan_depth":
            r.send("cam_a", s, depth=np.full((H, W), np.nan, np.float32))
            r.send("cam_b", s)
        elif case == "unknown_frame":
            r.send("cam_a", s, frame="ghost_frame")
            r.send("cam_b", s)
        elif case == "time_backwards":
            old = s - 250_000_000  # behind the last good set, but not a clock reset
            r.send("cam_a", s)
            r.send("cam_b", old)
            return old
        return s

    _bad_then_good(rig, bad, needles)


def test_zero_focal_length_camera_info(rig):
    def bad(r):
        msg = info_from_camera(CAM, Header(frame_id="cam_b_optical"))
        msg.k = [0.0, 0.0, CAM.cx, 0.0, 0.0, CAM.cy, 0.0, 0.0, 1.0]
        r.pubs["cam_b"]["depth_info"].publish(msg)
        r.expect_error("cam_b", "invalid camera_info", "focal length")
        s = r.next_stamp()
        r.send_mount(s)
        r.send("cam_a", s)
        r.send("cam_b", s)
        return s

    _bad_then_good(rig, bad, ("cam_b", "no valid camera_info"), setup_after=True)


def test_tf_too_old(rig):
    def bad(r):
        s = r.next_stamp()
        r.send_mount(s - 2_000_000_000)  # the moving mount's tf lags two seconds behind
        r.send("cam_a", s)
        r.send("cam_b", s)
        return s

    _bad_then_good(rig, bad, ("cam_b", "no pose", "extrapolate"))


def test_camera_that_stops_publishing_is_reported_stale(rig):
    r, proc = rig
    good = r.send_good_set()
    r.expect_views(good)
    n_views = len(r.view_stamps)
    end = time.monotonic() + 2.5
    while time.monotonic() < end:  # cam_b goes silent, cam_a keeps going
        s = r.next_stamp()
        r.send_mount(s)
        r.send("cam_a", s)
        r.spin_until(lambda: False, timeout_s=0.1)
    r.expect_error("cam_b", "stale")
    assert len(r.view_stamps) == n_views, "views were published while cam_b was silent"
    good = r.send_good_set()
    r.expect_views(good)
    assert proc.poll() is None


def test_invalid_parameter_stops_the_node_with_a_clear_error(ros_env, tmp_path):
    cmd = [executable_path("perception_node"), "--ros-args", "-p", "perception.backend:=cuda"]
    proc = start_process(cmd, ros_env, tmp_path / "perception.log")
    try:
        code = proc.wait(timeout=120)
    finally:
        stop_process(proc)
    log = (tmp_path / "perception.log").read_text()
    assert code == 2, log
    assert "configuration error" in log and "backend 'cuda'" in log
    assert "Traceback" not in log
