"""The simulation node over DDS: a simulated ALOHA as the rest of the stack sees a real one.

One sim node (its own process, started from its console script with config/sim_aloha.yaml and
small-image overrides) serves the whole module; this process plays the controller and checks
joint states, cameras, tf, trajectories, services and, with the perception node added, the views.
Every wait is on a condition with a generous timeout; nothing asserts on wall-clock time.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from builtin_interfaces.msg import Duration
from rcl_interfaces.msg import Log
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_srvs.srv import Trigger
from tf2_msgs.msg import TFMessage
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from clamp_core.perception.config import PerceptionConfig
from clamp_ros.conversions import stamp_to_ns
from clamp_ros.graph import GRAPHS, node_command, share_dir
from clamp_ros.perception_node import TF_QOS, TF_STATIC_QOS
from test.ros.conftest import (
    child_env,
    log_tail,
    rclpy_session,
    spin_until,
    start_process,
    stop_process,
)

pytestmark = pytest.mark.ros

W, H = 160, 120
# node_command scopes overrides to the node (-p sim:width:=160)
SIM_PARAMS = {"width": W, "height": H, "camera_rate_hz": 5.0}
PERCEPTION_PARAMS = {"perception.image_width": 96, "perception.image_height": 96}
CAMERAS = ("cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist")
ARM = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate")
NAMES = [*ARM, "gripper"]
TIMEOUT_S = 180.0


def _spec(executable: str):
    return next(s for s in GRAPHS["sim_aloha"] if s.executable == executable)


class Probe:
    """This process's side of the graph: every subscription the tests need, latest values."""

    def __init__(self, node):
        self.node = node
        self.joints: dict[str, list[JointState]] = {"left": [], "right": []}
        self.images: dict[str, Image] = {}
        self.infos: dict[str, CameraInfo] = {}
        self.tf: dict[str, list] = {}
        self.tf_static: dict[str, object] = {}
        self.logs: list[str] = []
        self.clock: list[int] = []
        node.create_subscription(Clock, "/clock", lambda m: self._on_clock(m), 10)
        for side in ("left", "right"):
            node.create_subscription(
                JointState,
                f"/follower_{side}/joint_states",
                lambda m, s=side: self._on_joints(s, m),
                50,
            )
        qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        for cam in CAMERAS:
            for kind in ("color", "depth"):
                key = f"{cam}/{kind}"
                node.create_subscription(
                    Image, f"/{key}/image_raw", lambda m, k=key: self.images.__setitem__(k, m), qos
                )
                node.create_subscription(
                    CameraInfo,
                    f"/{key}/camera_info",
                    lambda m, k=key: self.infos.__setitem__(k, m),
                    qos,
                )
        node.create_subscription(TFMessage, "/tf", self._on_tf, TF_QOS)
        node.create_subscription(
            TFMessage,
            "/tf_static",
            lambda m: self.tf_static.update({t.child_frame_id: t for t in m.transforms}),
            TF_STATIC_QOS,
        )
        rosout_qos = QoSProfile(
            depth=1000,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
        node.create_subscription(Log, "/rosout", self._on_log, rosout_qos)
        self.traj_pubs = {
            side: node.create_publisher(
                JointTrajectory, f"/{side}_arm_controller/joint_trajectory", 10
            )
            for side in ("left", "right")
        }

    def _on_clock(self, msg):
        self.clock.append(stamp_to_ns(msg.clock))
        del self.clock[:-100]

    def _on_joints(self, side, msg):
        buf = self.joints[side]
        buf.append(msg)
        del buf[:-2000]

    def _on_tf(self, msg):
        for t in msg.transforms:
            stamps = self.tf.setdefault(t.child_frame_id, [])
            stamps.append(stamp_to_ns(t.header.stamp))
            del stamps[:-500]

    def _on_log(self, msg):
        if msg.name == "sim":
            self.logs.append(msg.msg)

    def spin_until(self, predicate, what, timeout_s=TIMEOUT_S):
        return spin_until(self.node, predicate, timeout_s, what)

    def latest(self, side) -> JointState:
        self.spin_until(lambda: self.joints[side], f"{side} joint_states")
        return self.joints[side][-1]

    def sim_now(self) -> int:
        return max(stamp_to_ns(self.latest(s).header.stamp) for s in ("left", "right"))

    def wait_sim_time(self, seconds: float) -> None:
        """Spin until the sim's joint states advanced by ``seconds`` of their own time."""
        target = self.sim_now() + int(seconds * 1e9)
        self.spin_until(lambda: self.sim_now() >= target, f"{seconds}s of sim time")

    def send(self, side, names, points, stamp_ns=0) -> None:
        msg = JointTrajectory(joint_names=list(names))
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
        for pos, t in points:
            ns = int(round(t * 1e9))
            msg.points.append(
                JointTrajectoryPoint(
                    positions=[float(x) for x in pos],
                    time_from_start=Duration(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000),
                )
            )
        pub = self.traj_pubs[side]
        self.spin_until(lambda: pub.get_subscription_count() > 0, f"sim subscribed to {side} arm")
        pub.publish(msg)


@pytest.fixture(scope="module")
def sim(ros_domain_id, tmp_path_factory):
    """The sim node of GRAPHS['sim_aloha'] (console script + config/sim_aloha.yaml), small
    images; yields (probe, process, env, tmp)."""
    tmp = tmp_path_factory.mktemp("sim_node")
    env = child_env(ros_domain_id, tmp / "ros_log", FASTDDS_BUILTIN_TRANSPORTS="LARGE_DATA")
    proc = start_process(node_command(_spec("sim_node"), SIM_PARAMS), env, tmp / "sim.log")
    try:
        with rclpy_session(env, "sim_checker") as node:
            yield Probe(node), proc, env, tmp
    finally:
        code = stop_process(proc)
        assert code in (0, -2), f"sim node exited with {code}:\n{log_tail(proc)}"


def test_publishes_joint_states_cameras_and_tf(sim):
    probe, proc, _, _ = sim
    for side in ("left", "right"):
        msg = probe.latest(side)
        assert list(msg.name) == NAMES
        assert len(msg.position) == len(msg.velocity) == len(msg.effort) == 7
        assert 0.0 <= msg.position[6] <= 1.0  # normalised gripper, open at the start
        assert msg.position[6] > 0.9
    # joint states advance in sim time, on the 20 ms control grid
    probe.spin_until(lambda: len(probe.joints["right"]) >= 10, "10 joint states")
    stamps = np.array([stamp_to_ns(m.header.stamp) for m in probe.joints["right"][-10:]])
    assert np.all(np.diff(stamps) > 0) and np.all(stamps % 20_000_000 == 0)
    # ... which is on /clock (config/sim_aloha.yaml: publish_clock)
    probe.spin_until(lambda: stamps[-1] in probe.clock, "/clock at a joint_states stamp")

    def cameras_complete():
        keys = [f"{c}/{k}" for c in CAMERAS for k in ("color", "depth")]
        return all(k in probe.images and k in probe.infos for k in keys)

    probe.spin_until(cameras_complete, "color, depth and camera_info of all four cameras")
    for cam in CAMERAS:
        frame = f"{cam}_color_optical_frame"
        color, depth = probe.images[f"{cam}/color"], probe.images[f"{cam}/depth"]
        assert (color.width, color.height, color.encoding) == (W, H, "rgb8")
        assert (depth.width, depth.height, depth.encoding) == (W, H, "16UC1")
        assert color.header.frame_id == depth.header.frame_id == frame
        rgb = np.frombuffer(bytes(color.data), np.uint8)
        assert rgb.size == W * H * 3 and rgb.std() > 0, f"{cam} color image is blank"
        mm = np.frombuffer(bytes(depth.data), np.uint16)
        assert (mm > 0).mean() > 0.2, f"{cam}: depth sees (almost) nothing"
        for kind in ("color", "depth"):
            info = probe.infos[f"{cam}/{kind}"]
            assert (info.width, info.height) == (W, H)
            assert info.header.frame_id == frame
            assert info.k[0] > 0 and info.k[4] > 0
            assert abs(info.k[2] - (W - 1) / 2) < 1 or abs(info.k[2] - W / 2) < 1
    # tf: fixed cameras on /tf_static, wrist cameras and links on /tf at the images' stamps
    probe.spin_until(
        lambda: (
            {"cam_high_color_optical_frame", "cam_low_color_optical_frame"} <= set(probe.tf_static)
        ),
        "the fixed cameras on /tf_static",
    )
    for cam in ("cam_high", "cam_low"):
        t = probe.tf_static[f"{cam}_color_optical_frame"]
        assert t.header.frame_id == "world"
        assert t.transform.translation.z > 0.1  # above the table
    for cam in ("cam_left_wrist", "cam_right_wrist"):
        frame = f"{cam}_color_optical_frame"
        stamp = stamp_to_ns(probe.images[f"{cam}/color"].header.stamp)
        # tf goes out before the images, but topics need not arrive in order
        probe.spin_until(
            lambda f=frame, t=stamp: t in probe.tf.get(f, []), f"/tf of {frame} at {stamp}"
        )
    assert "vx300s_left_gripper_link" in probe.tf and "vx300s_right_gripper_link" in probe.tf
    assert proc.poll() is None


def test_trajectory_moves_the_right_arm_only(sim):
    probe, proc, _, _ = sim
    left0 = np.array(probe.latest("left").position)
    right0 = np.array(probe.latest("right").position)
    goal = right0[:6].copy()
    goal[0] = 0.3
    probe.joints["right"].clear()
    probe.send("right", ARM, [(goal, 1.0)])  # gripper left out: it keeps its command

    def reached():
        return probe.joints["right"] and abs(probe.joints["right"][-1].position[0] - 0.3) < 0.01

    probe.spin_until(reached, "the right waist at 0.3")
    probe.wait_sim_time(0.5)  # settled: it holds the last point
    right = np.array(probe.latest("right").position)
    left = np.array(probe.latest("left").position)
    assert abs(right[0] - 0.3) < 0.01
    np.testing.assert_allclose(right[1:], right0[1:], atol=0.03)
    np.testing.assert_allclose(left, left0, atol=1e-3)
    # the move is interpolated over the trajectory's 1 s of sim time, not a jump
    moving = [
        stamp_to_ns(m.header.stamp)
        for m in probe.joints["right"]
        if 0.02 < m.position[0] - right0[0] < 0.28
    ]
    assert moving and (moving[-1] - moving[0]) > 0.5e9
    assert proc.poll() is None


def test_empty_trajectory_stops_the_arm_where_it_is(sim):
    """As JointTrajectoryController: an empty trajectory drops the running one, and the arm
    holds the position it has (what the policy node sends to stop)."""
    probe, proc, _, _ = sim
    side = "right"
    q0 = np.array(probe.latest(side).position)
    goal = q0[:6].copy()
    goal[0] = q0[0] - 0.6
    probe.send(side, ARM[:6], [(goal, 3.0)])

    def moving():
        return q0[0] - probe.latest(side).position[0] > 0.1

    probe.spin_until(moving, "the right waist moving")
    n_logs = len(probe.logs)
    probe.send(side, ARM, [])
    probe.spin_until(
        lambda: any("empty trajectory, stopped" in line for line in probe.logs[n_logs:]),
        "the stop logged",
    )
    stopped = probe.latest(side).position[0]
    probe.wait_sim_time(1.0)
    held = probe.latest(side).position[0]
    assert abs(held - stopped) < 0.02, (held, stopped)
    assert q0[0] - held < 0.45  # far from the goal it was heading for
    assert proc.poll() is None


@pytest.mark.parametrize(
    "case, needles",
    [
        ("nan", ("non-finite position", "waist")),
        ("unknown_name", ("unknown joint name 'wiast'",)),
        ("missing_name", ("missing joint names: wrist_rotate",)),
        ("length_mismatch", ("point 0 has 5 positions for 6 joint names",)),
        ("times_not_increasing", ("time_from_start is not increasing",)),
        ("beyond_limits", ("waist = 4.0000 is outside the joint limits",)),
        ("gripper_beyond_limits", ("gripper = 1.5000 is outside the joint limits",)),
    ],
)
def test_invalid_trajectory_is_rejected_and_the_arm_holds(sim, case, needles):
    probe, proc, _, _ = sim
    side = "left"
    q0 = np.array(probe.latest(side).position)
    arm = q0[:6].copy()
    names, points = list(ARM), [(arm, 1.0)]
    if case == "nan":
        points = [(np.where(np.arange(6) == 0, math.nan, arm), 1.0)]
    elif case == "unknown_name":
        names[0] = "wiast"
    elif case == "missing_name":
        names, points = names[:5], [(arm[:5], 1.0)]
    elif case == "length_mismatch":
        points = [(arm[:5], 1.0)]
    elif case == "times_not_increasing":
        moved = arm + np.array([0.5, 0, 0, 0, 0, 0])
        points = [(moved, 1.0), (arm, 1.0)]
    elif case == "beyond_limits":
        points = [(np.concatenate([[4.0], arm[1:]]), 1.0)]
    elif case == "gripper_beyond_limits":
        names, points = [*ARM, "gripper"], [(np.append(arm, 1.5), 1.0)]
    n_logs = len(probe.logs)
    probe.send(side, names, points)

    def logged():
        return [
            line
            for line in probe.logs[n_logs:]
            if f"{side} arm: trajectory rejected" in line and all(n in line for n in needles)
        ]

    probe.spin_until(logged, f"a rejection naming {needles}; got {probe.logs[-3:]}")
    probe.wait_sim_time(1.5)  # longer than the trajectory would have taken
    np.testing.assert_allclose(np.array(probe.latest(side).position), q0, atol=2e-3)
    assert proc.poll() is None


def _call(node, name: str) -> Trigger.Response:
    client = node.create_client(Trigger, name)
    assert client.wait_for_service(timeout_sec=TIMEOUT_S), f"no service {name}"
    future = client.call_async(Trigger.Request())
    node.executor.spin_until_future_complete(future, timeout_sec=TIMEOUT_S)
    assert future.done(), f"{name} did not answer"
    return future.result()


def test_success_and_reset_services(sim):
    probe, proc, _, _ = sim
    result = _call(probe.node, "/sim/success")
    assert result.success is False
    assert "progress 0" in result.message
    result = _call(probe.node, "/sim/reset")
    assert result.success and "seed 1" in result.message, result.message
    result = _call(probe.node, "/sim/reset")
    assert result.success and "seed 2" in result.message, result.message
    probe.wait_sim_time(0.2)
    # reset restores the start pose (the right waist may have been moved by another test)
    assert abs(probe.latest("right").position[0]) < 0.01
    assert _call(probe.node, "/sim/success").success is False
    assert proc.poll() is None


def test_sim_feeds_the_perception_node(sim):
    """GRAPHS['sim_aloha'] complete: the perception node fuses the simulated cameras; the
    overhead view at the start pose sees mostly the table top (z = 0), all inside the box."""
    probe, sim_proc, env, tmp = sim
    assert _call(probe.node, "/sim/reset").success  # the start pose
    config = PerceptionConfig.from_yaml(share_dir() / "config/sim_aloha.yaml", "perception")
    lo = np.array(config.workspace_min) - 1e-3
    hi = np.array(config.workspace_max) + 1e-3
    spec = _spec("perception_node")
    proc = start_process(node_command(spec, PERCEPTION_PARAMS), env, tmp / "perception.log")
    views: list[Image] = []
    probe.node.create_subscription(Image, "/views/overhead", views.append, 5)
    try:
        probe.spin_until(lambda: len(views) >= 2 or proc.poll() is not None, "overhead views")
        assert proc.poll() is None, f"perception node died:\n{log_tail(proc)}"
        msg = views[-1]
        assert msg.encoding == "32FC4" and msg.header.frame_id == "world"
        img = np.frombuffer(bytes(msg.data), np.float32).reshape(msg.height, msg.width, 4)
        valid = img[..., 0] > 0
        assert valid.mean() > 0.3, f"only {valid.mean():.0%} of the overhead view is filled"
        xyz = img[valid][:, 1:]
        assert np.all(xyz >= lo) and np.all(xyz <= hi), "a point outside the workspace box"
        on_table = float((np.abs(xyz[:, 2]) < 0.005).mean())
        assert on_table > 0.5, f"only {on_table:.0%} of the overhead view is on the table"
    finally:
        code = stop_process(proc)
    assert code in (0, -2), f"perception node exited with {code}:\n{log_tail(proc)}"
    assert sim_proc.poll() is None
