"""The policy node over DDS: lifecycle, commands on the controller topics, the enable switch,
the watchdog, bad joint states, bad models, a clock reset, and a closed loop with the sim node.

Cameras come from the synthetic scene node (its own process); this process plays the arms
(joint states) and the controllers (trajectory subscriptions). The model is an untrained,
seeded export (real ONNX graphs, real ONNX Runtime): plumbing does not need a trained policy,
and its actions are wild enough that the safety filter has work to do.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import JointState
from std_srvs.srv import SetBool
from trajectory_msgs.msg import JointTrajectory

from clamp_core.models.config import ModelConfig, preset
from clamp_core.policy.safety import aloha_defaults
from clamp_core.training.export import export_untrained
from clamp_ros.conversions import ns_to_stamp, stamp_to_ns
from clamp_ros.graph import GRAPHS, NodeSpec, node_command
from test.ros.conftest import (
    child_env,
    log_tail,
    rclpy_session,
    read_log,
    spin_until,
    start_process,
    stop_process,
    wait_for_log,
)

pytestmark = pytest.mark.ros

TIMEOUT_S = 180.0
ARM = ["waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "gripper"]
VIEW = 32
Q0 = np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.8] * 2)  # a plausible resting pose
SAFETY = aloha_defaults()
LO, HI = np.array(SAFETY.position_min), np.array(SAFETY.position_max)
VMAX = np.array(SAFETY.max_velocity)


def tiny_config(view: int = VIEW) -> ModelConfig:
    d = preset("cpu-small").to_dict()
    d["view_size"] = view
    d["image"].update(patch_size=8, dim=48, layers=1, heads=2)
    d["denoiser"].update(dim=32, layers=1, cond_layers=1, heads=2)
    d["action"].update(dim=32, heads=2, history=4)
    return ModelConfig.from_dict(d)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    export_untrained(tiny_config(), root / "tiny", verify=False)
    export_untrained(tiny_config(48), root / "views48", verify=False)
    shutil.copytree(root / "tiny", root / "corrupt")
    data = (root / "corrupt" / "encoders.onnx").read_bytes()
    (root / "corrupt" / "encoders.onnx").write_bytes(data[: len(data) // 3])
    return root


def policy_cmd(model, **params):
    spec = NodeSpec("policy_node", "policy", ("config/synthetic_demo.yaml",))
    base = {
        "model": str(model),
        "perception.image_width": VIEW,
        "perception.image_height": VIEW,
        "autostart": True,
        "enable": True,
    }
    base.update(params)
    return node_command(spec, base)


def scene_cmd(**params):
    spec = next(s for s in GRAPHS["synthetic_demo"] if s.executable == "synthetic_scene_node")
    return node_command(spec, {"width": 160, "height": 120, **params})


class Robot:
    """This process's side: joint states of both arms, the controllers' topics, services."""

    def __init__(self, node, ns: str = "/policy"):
        self.node = node
        self.q = Q0.copy()
        self.names = {"left": list(ARM), "right": list(ARM)}
        self.publish_joints = True
        # side -> fn(stamp) -> JointState: what a hostile or broken driver sends instead
        self.override: dict = {}
        # follow: the arms track the trajectories received, as under a JTC (else they stay put,
        # like arms that cannot move: the node then stops once its plan is far ahead of them)
        self.follow = False
        self.plans: dict[str, tuple[np.ndarray, np.ndarray] | None] = {"left": None, "right": None}
        self.traj: dict[str, list[tuple[float, JointTrajectory]]] = {"left": [], "right": []}
        self.diag: list = []
        self.js_pubs = {
            s: node.create_publisher(JointState, f"/follower_{s}/joint_states", 10)
            for s in ("left", "right")
        }
        for s in ("left", "right"):
            node.create_subscription(
                JointTrajectory,
                f"/{s}_arm_controller/joint_trajectory",
                lambda m, s=s: self._on_traj(s, m),
                50,
            )
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        node.create_timer(0.02, self._tick)
        self.change = node.create_client(ChangeState, f"{ns}/change_state")
        self.get = node.create_client(GetState, f"{ns}/get_state")
        self.enable = node.create_client(SetBool, f"{ns}/enable")
        self.clock_ns: int | None = None
        self.clock_pub = node.create_publisher(Clock, "/clock", 10)

    def _on_traj(self, side: str, msg: JointTrajectory) -> None:
        self.traj[side].append((time.monotonic(), msg))
        if not msg.points:
            self.plans[side] = None  # stop: hold where the arm is
            return
        t0 = stamp_to_ns(msg.header.stamp)
        times = np.array(
            [t0 + p.time_from_start.sec * 10**9 + p.time_from_start.nanosec for p in msg.points]
        )
        self.plans[side] = (times, np.array([list(p.positions) for p in msg.points]))

    def _follow(self, now_ns: int) -> None:
        for k, side in enumerate(("left", "right")):
            plan = self.plans[side]
            if plan is not None:
                times, pos = plan
                self.q[7 * k : 7 * k + 7] = [np.interp(now_ns, times, pos[:, j]) for j in range(7)]

    def _on_diag(self, msg):
        for st in msg.status:
            if st.name.endswith(": policy"):
                self.diag.append(st)

    def _tick(self):
        if self.clock_ns is not None:
            self.clock_ns += 20_000_000
            self.clock_pub.publish(Clock(clock=ns_to_stamp(self.clock_ns)))
        if not self.publish_joints:
            return
        now = self.node.get_clock().now().to_msg()
        if self.follow:
            self._follow(stamp_to_ns(now))
        for k, s in enumerate(("left", "right")):
            if s in self.override:
                self.js_pubs[s].publish(self.override[s](now))
                continue
            msg = JointState(
                name=self.names[s], position=[float(x) for x in self.q[7 * k : 7 * k + 7]]
            )
            msg.position = msg.position[: len(self.names[s])]
            msg.header.stamp = now
            self.js_pubs[s].publish(msg)

    def spin_until(self, predicate, what, timeout_s=TIMEOUT_S):
        return spin_until(self.node, predicate, timeout_s, what)

    def wait_log(self, proc, pattern: str):
        """Wait for a log line while spinning (the joint states keep flowing)."""
        rx = re.compile(pattern)
        self.spin_until(
            lambda: rx.search(read_log(proc)) or proc.poll() is not None,
            f"/{pattern}/ in {proc.log_path}",
        )
        assert rx.search(read_log(proc)), f"exited without /{pattern}/:\n{log_tail(proc)}"

    def spin_for(self, seconds: float):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.node.executor.spin_once(timeout_sec=0.02)

    def call(self, client, request, what):
        self.spin_until(lambda: client.service_is_ready(), f"service {what}")
        fut = client.call_async(request)
        self.spin_until(lambda: fut.done(), f"reply of {what}")
        return fut.result()

    def state(self) -> str:
        return self.call(self.get, GetState.Request(), "get_state").current_state.label

    def transition(self, tid: int) -> bool:
        req = ChangeState.Request()
        req.transition = Transition(id=tid)
        return self.call(self.change, req, f"transition {tid}").success

    def count(self) -> int:
        return len(self.traj["left"])

    def wait_commands(self, n: int = 3, what="commands"):
        start = self.count()
        self.spin_until(lambda: self.count() >= start + n, what)
        return [m for _, m in self.traj["left"][start:]], [m for _, m in self.traj["right"][start:]]

    def last_status(self):
        return self.diag[-1] if self.diag else None


@pytest.fixture(scope="module")
def graph(ros_domain_id, tmp_path_factory):
    """The synthetic cameras (one process for the module) + this process's robot side."""
    tmp = tmp_path_factory.mktemp("policy_node")
    env = child_env(ros_domain_id, tmp / "ros_log", FASTDDS_BUILTIN_TRANSPORTS="LARGE_DATA")
    procs = [start_process(scene_cmd(), env, tmp / "scene.log")]
    try:
        with rclpy_session(env, "policy_checker") as node:
            yield Robot(node), env, tmp, procs
    finally:
        for p in procs:
            stop_process(p)


def start_policy(graph, name, model, **params):
    robot, env, tmp, _ = graph
    proc = start_process(policy_cmd(model, **params), env, tmp / f"{name}.log")
    return proc


def check_trajectory(msg: JointTrajectory, q_measured: np.ndarray, side: int):
    assert list(msg.joint_names) == ARM
    times = np.array([p.time_from_start.sec * 1e9 + p.time_from_start.nanosec for p in msg.points])
    pos = np.array([list(p.positions) for p in msg.points])
    assert len(times) >= 1 and pos.shape == (len(times), 7)
    if len(times) > 1:
        np.testing.assert_allclose(np.diff(times), 20e6, atol=1e3)  # the 50 Hz control grid
    lo, hi, vmax = (
        LO[7 * side : 7 * side + 7],
        HI[7 * side : 7 * side + 7],
        VMAX[7 * side : 7 * side + 7],
    )
    assert np.all(pos >= lo - 1e-9) and np.all(pos <= hi + 1e-9)
    steps = np.abs(np.diff(pos, axis=0))
    assert np.all(steps <= vmax * 0.02 + 1e-9)
    return times, pos


# ------------------------------------------------------------------------------------ tests
def test_lifecycle_transitions_and_commands(graph, models):
    robot, env, tmp, _ = graph
    proc = start_policy(graph, "lifecycle", models / "tiny", autostart=False)
    robot.follow = True
    try:
        assert robot.state() == "unconfigured"
        assert robot.transition(Transition.TRANSITION_CONFIGURE)
        assert robot.state() == "inactive"
        robot.spin_for(1.5)
        assert robot.count() == 0, "an inactive node must not command"
        assert robot.transition(Transition.TRANSITION_ACTIVATE)
        assert robot.state() == "active"
        left, right = robot.wait_commands(3, "trajectories after activate")
        now = robot.node.get_clock().now().nanoseconds
        for msgs, side in ((left, 0), (right, 1)):
            for m in msgs:
                times, pos = check_trajectory(m, Q0, side)
                stamp = stamp_to_ns(m.header.stamp)
                assert abs(stamp - now) < 5e9  # stamped on the ROS clock, near now
                assert times[0] == 0  # the first point is for header.stamp
        # the first command after activation starts with a velocity-limited step away from the
        # measured state (fresh joint states, a point a few control periods ahead at most)
        first = np.array(left[0].points[0].positions)
        assert np.all(np.abs(first - Q0[:7]) <= VMAX[:7] * 0.25)
        n = robot.count()
        assert robot.transition(Transition.TRANSITION_DEACTIVATE)
        assert robot.state() == "inactive"
        robot.spin_for(1.5)
        after = [m for _, m in robot.traj["left"][n:]]
        # one stop (an empty trajectory: the controller holds where the arm is), then nothing;
        # a trajectory from an inference that was still running is never published after it
        # (trajectories sent before the transition may arrive before the stop)
        stops = [m for m in after if not m.points]
        assert len(stops) == 1 and after[-1] is stops[0] and list(stops[0].joint_names) == ARM
        stop_ns = stamp_to_ns(stops[0].header.stamp)
        assert all(stamp_to_ns(m.header.stamp) <= stop_ns for m in after)
        assert robot.transition(Transition.TRANSITION_CLEANUP)
        assert robot.state() == "unconfigured"
    finally:
        robot.follow = False
        robot.plans = {"left": None, "right": None}
        robot.q[:] = Q0
        code = stop_process(proc)
    assert code in (0, -2), log_tail(proc)


def test_disabled_until_enabled_then_disable_holds(graph, models):
    robot, *_ = graph
    proc = start_policy(graph, "enable", models / "tiny", enable=False)
    try:
        robot.spin_until(
            lambda: robot.last_status() is not None and "disabled" in robot.last_status().message,
            "disabled diagnostics",
        )
        n = robot.count()
        robot.spin_for(1.5)
        assert robot.count() == n, "commands while disabled"
        assert robot.call(robot.enable, SetBool.Request(data=True), "enable").success
        robot.wait_commands(2, "commands after enable")
        assert robot.call(robot.enable, SetBool.Request(data=False), "disable").success
        robot.spin_for(1.0)
        n = robot.count()
        robot.spin_for(1.5)
        assert robot.count() == n, "commands after disable"
    finally:
        stop_process(proc)


def _motion_end_ns(msg: JointTrajectory) -> int:
    """When the motion a message asks for ends: its stamp for a stop (no points)."""
    if not msg.points:
        return stamp_to_ns(msg.header.stamp)
    last = msg.points[-1].time_from_start
    return stamp_to_ns(msg.header.stamp) + last.sec * 10**9 + last.nanosec


@pytest.mark.parametrize("mode", ["receding_horizon", "async"])
def test_watchdog_stops_commands_when_the_cameras_stop_and_recovers(graph, models, mode):
    robot, env, tmp, procs = graph
    proc = start_policy(graph, f"watchdog_{mode}", models / "tiny", **{"execution.mode": mode})
    try:
        robot.wait_commands(2, "commands")
        stop_process(procs[0])
        t_stop = robot.node.get_clock().now().nanoseconds
        robot.spin_until(
            lambda: robot.last_status() is not None and "stale" in robot.last_status().message,
            "stale diagnostics",
        )
        # whatever the controller received last ends (or was cut by a one-point hold) within
        # the watchdog period of the cameras stopping, plus one inference already in flight
        last = robot.traj["left"][-1][1]
        max_age = SAFETY.max_input_age_s
        assert _motion_end_ns(last) <= t_stop + (max_age + 1.0) * 1e9, (
            f"motion commanded until {(_motion_end_ns(last) - t_stop) * 1e-9:.2f}s after the "
            f"cameras stopped"
        )
        # once that motion is over, nothing more is sent while the cameras are away
        end = _motion_end_ns(last)
        robot.spin_until(lambda: robot.node.get_clock().now().nanoseconds > end, "motion end")
        n = robot.count()
        robot.spin_for(1.5)
        assert robot.count() == n, "commands with stale cameras"
        assert _motion_end_ns(robot.traj["left"][-1][1]) <= t_stop + (max_age + 1.0) * 1e9
        assert "stale" in read_log(proc)
        # the cameras come back: commands resume
        procs[0] = start_process(scene_cmd(), env, tmp / f"scene_{mode}.log")
        robot.wait_commands(2, "commands after the cameras returned")
    finally:
        stop_process(proc)
        if procs[0].poll() is not None:  # keep the module's cameras running for the next test
            procs[0] = start_process(scene_cmd(), env, tmp / f"scene_{mode}_restart.log")


def test_bad_joint_states_stop_commands_until_fixed(graph, models):
    robot, *_ = graph
    proc = start_policy(graph, "joints", models / "tiny")
    try:
        robot.wait_commands(2, "commands")
        robot.names["left"] = [j for j in ARM if j != "elbow"]  # a driver lost a joint
        robot.wait_log(proc, r"joint_states rejected: left: missing joints \['elbow'\]")
        robot.spin_until(
            lambda: (
                robot.last_status() is not None
                and "measured joint state rejected (left: missing joints"
                in robot.last_status().message
            ),
            "diagnostics naming the rejected joint states",
        )
        n = robot.count()
        robot.spin_for(1.0)
        assert robot.count() <= n + 1  # at most the hold
        robot.names["left"] = list(ARM)
        robot.q[2] = np.nan
        robot.wait_log(proc, r"joint_states rejected: left: elbow position is nan")
        robot.q[2] = Q0[2]
        robot.wait_commands(2, "commands after the joint states recovered")
    finally:
        robot.names["left"] = list(ARM)
        robot.q[:] = Q0
        stop_process(proc)


def _plan_at(msg: JointTrajectory, t_ns: int) -> np.ndarray:
    """(7,) where a JTC running ``msg`` is at ``t_ns`` (linear between points)."""
    t0 = stamp_to_ns(msg.header.stamp)
    times = np.array(
        [t0 + p.time_from_start.sec * 10**9 + p.time_from_start.nanosec for p in msg.points]
    )
    pos = np.array([list(p.positions) for p in msg.points])
    return np.array([np.interp(t_ns, times, pos[:, j]) for j in range(pos.shape[1])])


def check_command_stream(msgs: list[JointTrajectory], q_true: np.ndarray, side: int) -> int:
    """The invariant over everything one arm's controller received: every point within the
    limits and max_velocity x dt of the point before it on the plan the controller follows:
    the previous message's plan at the new start, or after a stop (an empty trajectory) the
    arm's true position. Returns the number of stops."""
    vmax = VMAX[7 * side : 7 * side + 7]
    follows, stops = q_true[7 * side : 7 * side + 7], 0
    for msg in msgs:
        if not msg.points:
            follows, stops = q_true[7 * side : 7 * side + 7], stops + 1
            continue
        times, pos = check_trajectory(msg, q_true, side)
        start = stamp_to_ns(msg.header.stamp)
        ref = follows if isinstance(follows, np.ndarray) else _plan_at(follows, start - 20_000_000)
        # one control period, plus the first point's lead over "now" when planned from rest
        jump = np.abs(pos[0] - ref)
        assert (jump <= vmax * 0.05 + 1e-6).all(), (
            f"{ARM[int(np.argmax(jump - vmax * 0.05))]} jumped {jump.max():.3f} at a new plan"
        )
        follows = msg
    return stops


HOSTILE = {
    "repeated name": (["waist", *ARM], lambda q: [2.5, *q], r"joint 'waist' appears 2 times"),
    "1e3 rad": (ARM, lambda q: [1e3, *q[1:]], r"waist at 1000, outside its limits"),
    "just past a limit": (ARM, lambda q: [3.3, *q[1:]], r"waist at 3.3, outside its limits"),
    "a 2.5 rad jump": (ARM, lambda q: [q[0] + 2.5, *q[1:]], r"waist moved 2.500 in"),
    "nanosec >= 1e9": (ARM, lambda q: list(q), r"malformed stamp: nanosec 4000000000"),
}


def test_hostile_joint_states_stop_commands_and_never_make_them_jump(graph, models):
    """The reported triggers, sent over DDS in place of the left arm's driver for a moment:
    each is rejected with its named reason (log and /diagnostics), commands stop, they resume
    when plausible states return, and no command ever breaks the velocity invariant."""
    robot, *_ = graph
    proc = start_policy(graph, "hostile_joints", models / "tiny")
    try:
        robot.wait_commands(3, "commands")
        first = robot.count()
        for what, (names, values, pattern) in HOSTILE.items():

            def bad(now, names=names, values=values, what=what):
                msg = JointState(name=list(names), position=[float(v) for v in values(Q0[:7])])
                msg.header.stamp = now
                if what.startswith("nanosec"):
                    msg.header.stamp.nanosec = 4_000_000_000
                return msg

            robot.diag.clear()
            robot.override["left"] = bad
            robot.wait_log(proc, r"joint_states rejected: left: .*" + pattern)
            robot.spin_until(
                lambda: any(
                    "measured joint state rejected" in st.message
                    or any(
                        kv.key == "last suppression" and "rejected" in kv.value for kv in st.values
                    )
                    for st in robot.diag
                ),
                f"diagnostics naming the rejected state ({what})",
            )
            robot.spin_for(0.3)
            del robot.override["left"]
            robot.wait_commands(3, f"commands after plausible states returned ({what})")
        left = [m for _, m in robot.traj["left"][first - 1 :]]
        right = [m for _, m in robot.traj["right"][first - 1 :]]
        assert check_command_stream(left, Q0, 0) >= 1  # the node did stop
        check_command_stream(right, Q0, 1)
    finally:
        robot.override.clear()
        stop_process(proc)


@pytest.mark.parametrize(
    "model, params, pattern",
    [
        ("corrupt", {}, r"configure failed: .*encoders\.onnx"),
        ("views48", {}, r"(?s)configure failed: .*image size"),
        ("missing", {}, r"configure failed: .*(missing|not exist|not found|No such)"),
        (
            "tiny",
            {"joint_names": ["a"] * 14},
            r"(?s)(configure failed|configuration error): .*joint_names",
        ),
    ],
)
def test_bad_models_fail_configure_with_a_clear_error(graph, models, model, params, pattern):
    proc = start_policy(graph, f"bad_{model}", models / model, **params)
    try:
        wait_for_log(proc, pattern)
        proc.wait(timeout=60)
        assert proc.returncode == 2, log_tail(proc)
    finally:
        stop_process(proc)


def test_clock_jump_backwards_resets_and_recovers(models, ros_domain_id, tmp_path):
    """Simulated time restarts: every node on /clock; the policy drops its chunks and history,
    and commands again once images with the new times arrive. A domain of its own, so the
    module's wall-clock cameras stay out of it."""
    env = child_env(
        1 + (ros_domain_id + 50) % 101,
        tmp_path / "ros_log",
        FASTDDS_BUILTIN_TRANSPORTS="LARGE_DATA",
    )
    with rclpy_session(env, "clock_checker") as node:
        robot = Robot(node)
        robot.clock_ns = 100 * 10**9
        scene = start_process(scene_cmd(use_sim_time=True), env, tmp_path / "scene_sim.log")
        proc = start_process(
            policy_cmd(models / "tiny", use_sim_time=True), env, tmp_path / "policy.log"
        )
        try:
            robot.wait_commands(2, "commands on sim time")
            robot.clock_ns = 10 * 10**9  # 90 s back
            robot.wait_log(proc, r"jumped back")
            robot.wait_commands(2, "commands after the clock reset")
            stamp = stamp_to_ns(robot.traj["left"][-1][1].header.stamp)
            assert stamp < 50 * 10**9  # new commands are on the new time line
        finally:
            robot.clock_ns = None
            stop_process(proc)
            stop_process(scene)


def _closed_loop(ros_domain_id, tmp_path, models, domain_offset, policy_params, want_seams):
    """Sim node + policy node (the tiny model) over DDS in a domain of their own (the module's
    synthetic cameras publish the same topics on the run's domain, with wall-clock stamps
    against the sim's: every frame a "clock reset"). Waits for commands and motion; returns
    (how far the left arm moved in rad, the policy's seam diagnostics, its log)."""
    env = child_env(
        1 + (ros_domain_id + domain_offset) % 101,
        tmp_path / "ros_log",
        FASTDDS_BUILTIN_TRANSPORTS="LARGE_DATA",
    )
    sim_spec, policy_spec = GRAPHS["sim_demo"]
    sim = start_process(
        node_command(sim_spec, {"width": 160, "height": 120}), env, tmp_path / "sim.log"
    )
    params = {
        "model": str(models / "tiny"),
        "perception.image_width": VIEW,
        "perception.image_height": VIEW,
        **policy_params,
    }
    policy = start_process(node_command(policy_spec, params), env, tmp_path / "policy.log")
    try:
        with rclpy_session(env, "closed_loop") as node:
            states: list[np.ndarray] = []
            trajs: list = []
            seams: list[dict] = []

            def on_diag(msg):
                for st in msg.status:
                    kv = {v.key: v.value for v in st.values}
                    if st.name.endswith(": policy") and kv.get("seam_jump_mrad p50", "-") != "-":
                        seams.append(kv)

            node.create_subscription(
                JointState,
                "/follower_left/joint_states",
                lambda m: states.append(np.array(m.position)),
                50,
            )
            node.create_subscription(
                JointTrajectory, "/left_arm_controller/joint_trajectory", trajs.append, 10
            )
            node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
            spin_until(node, lambda: len(trajs) >= 8, TIMEOUT_S, "policy commands to the sim")
            start = len(states)
            spin_until(node, lambda: len(states) > start + 50, TIMEOUT_S, "joint states")
            if want_seams:
                spin_until(node, lambda: len(seams) > 0, TIMEOUT_S, "seam diagnostics")
            moved = float(np.abs(states[-1][:6] - states[0][:6]).max())
    finally:
        stop_process(policy)
        stop_process(sim)
    return moved, seams, read_log(policy)


def test_closed_loop_with_the_sim_node_moves_the_arms(ros_domain_id, tmp_path, models):
    moved, _, log = _closed_loop(ros_domain_id, tmp_path, models, 60, {}, want_seams=False)
    assert "model 'tiny' loaded" in log, log[-3000:]
    assert moved > 0.05, f"arms moved only {moved:.3f} rad"


def test_seam_guided_mode_in_closed_loop_with_the_sim_node(ros_domain_id, tmp_path, models):
    """The seam-aware mode with two candidates per inference drives the sim over DDS; its
    seams (reported in /diagnostics) are small although the untrained model's chunks are wild:
    each new chunk starts on the plan the arm follows."""
    params = {"execution.mode": "seam_guided", "execution.candidates": 2}
    moved, seams, log = _closed_loop(ros_domain_id, tmp_path, models, 70, params, True)
    assert "execution 'seam_guided'" in log, log[-3000:]
    assert moved > 0.05, f"arms moved only {moved:.3f} rad"
    # a free chunk of this model lands anywhere in +-1.5 rad; a guided one on the plan
    assert float(seams[-1]["seam_jump_mrad p50"]) < 20.0, seams[-1]


def test_warning_and_error_throttles_share_rclpy_call_sites():
    """rclpy raises when one call site logs at two severities; the throttles must not."""
    from rclpy.logging import get_logger

    from clamp_ros.util import KeyedThrottle

    logger = get_logger("throttle_check")
    err, warn = KeyedThrottle(logger.error, 0.0), KeyedThrottle(logger.warning, 0.0)
    for i in range(3):
        err(("a", i), "an error")
        warn(("b", i), "a warning")


def test_views_from_a_perception_node_and_the_perception_process_killed(
    models, ros_domain_id, tmp_path
):
    """Split deployment: a perception node process renders the views, the policy node takes
    them from its topics. Killing perception stops the commands (watchdog); a new perception
    process brings them back. A domain of its own, so no other test's nodes are in it."""
    env = child_env(
        1 + (ros_domain_id + 70) % 101,
        tmp_path / "ros_log",
        FASTDDS_BUILTIN_TRANSPORTS="LARGE_DATA",
    )
    spec = NodeSpec("perception_node", "perception", ("config/synthetic_demo.yaml",))
    params = {"perception.image_width": VIEW, "perception.image_height": VIEW}
    with rclpy_session(env, "split_checker") as node:
        robot = Robot(node)
        scene = start_process(scene_cmd(), env, tmp_path / "scene.log")
        perception = start_process(node_command(spec, params), env, tmp_path / "perception.log")
        proc = start_process(
            policy_cmd(models / "tiny", views_from_topics=True), env, tmp_path / "split.log"
        )
        try:
            robot.wait_commands(2, "commands from topic views")
            stop_process(perception, sig=9)  # killed, not stopped
            t_kill = node.get_clock().now().nanoseconds
            robot.wait_log(proc, r"stale")
            last = robot.traj["left"][-1][1]
            end = _motion_end_ns(last)
            assert end <= t_kill + (SAFETY.max_input_age_s + 1.0) * 1e9
            robot.spin_until(lambda: node.get_clock().now().nanoseconds > end, "motion end")
            n = robot.count()
            robot.spin_for(1.5)
            assert robot.count() == n, "commands without perception"
            perception = start_process(
                node_command(spec, params), env, tmp_path / "perception2.log"
            )
            robot.wait_commands(2, "commands after perception came back")
        finally:
            stop_process(proc)
            stop_process(perception)
            stop_process(scene)


def test_tf_stopping_stops_commands_and_recovers(models, ros_domain_id, tmp_path):
    """Images keep coming but tf stops (a robot state publisher died): without camera poses
    there is no observation, so the watchdog cuts the commands; tf back, commands back. The
    scene's /tf goes through this process, which stops relaying it. A domain of its own."""
    from tf2_msgs.msg import TFMessage

    from clamp_ros.perception_node import TF_QOS

    env = child_env(
        1 + (ros_domain_id + 30) % 101,
        tmp_path / "ros_log",
        FASTDDS_BUILTIN_TRANSPORTS="LARGE_DATA",
    )
    with rclpy_session(env, "tf_checker") as node:
        robot = Robot(node)
        robot.follow = True
        relay = {"on": True}
        tf_pub = node.create_publisher(TFMessage, "/tf", TF_QOS)
        node.create_subscription(
            TFMessage, "/tf_scene", lambda m: relay["on"] and tf_pub.publish(m), TF_QOS
        )
        scene = start_process(scene_cmd() + ["-r", "/tf:=/tf_scene"], env, tmp_path / "scene.log")
        proc = start_process(
            policy_cmd(models / "tiny", **{"execution.mode": "async"}), env, tmp_path / "policy.log"
        )
        try:
            robot.wait_commands(2, "commands with tf")
            relay["on"] = False
            t_stop = node.get_clock().now().nanoseconds
            robot.wait_log(proc, r"stale input 'observation'")
            last = robot.traj["left"][-1][1]
            end = _motion_end_ns(last)
            assert end <= t_stop + (SAFETY.max_input_age_s + 1.0) * 1e9
            robot.spin_until(lambda: node.get_clock().now().nanoseconds > end, "motion end")
            n = robot.count()
            robot.spin_for(1.5)
            assert robot.count() == n, "commands without tf"
            relay["on"] = True
            robot.wait_commands(2, "commands after tf came back")
        finally:
            stop_process(proc)
            stop_process(scene)


def test_bench_e2e_json_reports_latency_and_its_split(ros_domain_id, tmp_path):
    """`clamp bench e2e --json` (the demo graph on the wall clock, the shipped model): one JSON
    object whose p95 ('ours') and p50 are real figures and whose split covers every stage."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    env = child_env(ros_domain_id, tmp_path / "ros_log")
    clamp = Path(sys.executable).with_name("clamp")
    cmd = [str(clamp), "bench", "e2e", "--json", "--episodes", "1", "--max-seconds", "6"]
    cmd += ["--camera-size", "160x120", "--out", str(tmp_path / "bench")]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["unit"] == "ms"
    assert 0 < res["p50"] <= res["ours"], res
    for stage in ("sync", "fuse_render", "inference", "publish"):
        assert 0 <= res["split"][stage]["p50"] <= res["split"][stage]["p95"], (stage, res)
    for sub in ("transport", "wait"):
        assert res["split"]["sync"][sub]["p50"] is not None, res
    assert res["config"]["episodes"] == 1
    assert (tmp_path / "bench" / "summary.json").is_file()
    # both nodes ran on the package's Fast DDS profile (a bad file is only logged, then ignored)
    assert Path(res["config"]["fastdds_profile"]).name == "fastdds.xml", res["config"]
    logs = {f.name: f.read_text() for f in (tmp_path / "bench" / "logs").glob("*.log")}
    assert {"sim.log", "policy.log"} <= set(logs), sorted(logs)
    for name, text in logs.items():
        assert "XMLPARSER" not in text and "profiles file" not in text.lower(), (name, text[-2000:])


T_JS = 1_800_000_000_000_000_000


def _policy_node_in_process(probe, model: Path, enable: bool):
    """A PolicyNode in this process, in ``probe``'s context, with small views (unconfigured)."""
    from rclpy.parameter import Parameter

    from clamp_ros.policy_node import PolicyNode

    params = {
        "model": str(model),
        "perception.image_width": VIEW,
        "perception.image_height": VIEW,
        "enable": enable,
    }
    return PolicyNode(
        context=probe.context,
        parameter_overrides=[Parameter(k, value=v) for k, v in params.items()],
    )


def test_no_plan_from_an_observation_older_than_the_last_enable(models, ros_domain_id, tmp_path):
    """An episode boundary (disable, reset the scene, enable): an observation stamped before the
    enable, or an inference that was running on one, never becomes a plan, and the next command
    starts from the measured state, not from the plan sent before the pause; the joint state
    given to the policy is the one stamped with its images. The node runs in this process so
    the test can hand it observations with chosen stamps."""
    from rclpy.lifecycle import TransitionCallbackReturn

    env = child_env(ros_domain_id, tmp_path / "ros_log")
    with rclpy_session(env, "restart_probe") as probe:
        node = _policy_node_in_process(probe, models / "tiny", enable=True)
        try:
            ok = TransitionCallbackReturn.SUCCESS
            assert node.trigger_configure() == ok and node.trigger_activate() == ok
            policy = node.policy
            meta = policy.metadata
            views = np.zeros(meta.views_shape, np.float32)
            now = node._now()

            def joint_states(stamp, value):
                for side in ("left", "right"):
                    msg = JointState(name=list(ARM), position=[float(v) for v in value[:7]])
                    msg.header.stamp = ns_to_stamp(stamp)
                    node.on_joint_state(side, msg)

            joint_states(now, Q0)
            node._infer(policy, now, views, now, time.perf_counter())
            engine = node.engine
            assert engine.executor.num_chunks == 1
            engine.last_plan = (np.array([now]), Q0[None] + 0.5)  # a plan sent before the pause
            node.on_enable(SetBool.Request(data=False), SetBool.Response())
            node.on_enable(SetBool.Request(data=True), SetBool.Response())
            assert engine.executor.num_chunks == 0 and engine.last_plan is None
            assert node._before_restart(now) and not node._before_restart(engine.plan_after_ns)
            joint_states(now + 1, Q0)
            node._infer(policy, now, views, now, time.perf_counter())  # from before enable
            assert engine.executor.num_chunks == 0
            fresh = engine.plan_after_ns
            joint_states(fresh, Q0)
            node._infer(policy, fresh, views, fresh, time.perf_counter())
            assert engine.executor.num_chunks == 1
            engine.vouch()  # judge the joint states below afresh (they restart at T_JS)
            # the policy gets the joint state taken with its images, not the newest one
            for k in range(5):  # plausible states: 10 mrad per 20 ms
                for side in ("left", "right"):
                    msg = JointState(name=list(ARM), position=[0.01 * k] * 7)
                    msg.header.stamp = ns_to_stamp(T_JS + k * 20_000_000)
                    node.on_joint_state(side, msg)
            np.testing.assert_array_equal(node._measured_at(T_JS + 45_000_000), np.full(14, 0.02))
            # before them: the newest earlier sample (Q0, fed above)
            np.testing.assert_array_equal(node._measured_at(T_JS - 1), Q0)
            np.testing.assert_array_equal(node._measured()[0], np.full(14, 0.04))
        finally:
            node.destroy_node()


def test_stops_are_empty_trajectories_and_nothing_goes_out_inactive_or_disabled(
    models, ros_domain_id, tmp_path
):
    """Stopping (disable, deactivate, watchdog) sends each arm's controller an empty trajectory
    (JointTrajectoryController then holds where the arm is), never a position (the measured one
    may be stale or invalid); a node that never sent anything sends nothing, not even a stop;
    an inference that finishes after the node was deactivated is never published. In this
    process, with the node's publishers recording what they are given."""
    from rclpy.lifecycle import TransitionCallbackReturn

    env = child_env(ros_domain_id, tmp_path / "ros_log")
    with rclpy_session(env, "stop_probe") as probe:
        node = _policy_node_in_process(probe, models / "tiny", enable=False)
        sent: list[tuple[str, JointTrajectory]] = []
        ok = TransitionCallbackReturn.SUCCESS

        def fresh() -> int:
            """Every input just received; returns now."""
            now = node._now()
            for i, side in enumerate(("left", "right")):
                msg = JointState(name=list(ARM), position=[float(v) for v in Q0[7 * i : 7 * i + 7]])
                msg.header.stamp = ns_to_stamp(now)
                node.on_joint_state(side, msg)
            for meter in node.rates.values():
                meter.tick()
            node.last_view_rx = time.monotonic()
            return now

        def infer(stamp: int) -> None:
            views = np.zeros(node.policy.metadata.views_shape, np.float32)
            node._infer(node.policy, stamp, views, stamp, time.perf_counter())

        def take() -> list[JointTrajectory]:
            out = [m for _, m in sent]
            sent.clear()
            return out

        try:
            assert node.trigger_configure() == ok and node.trigger_activate() == ok
            for arm in node.arms:
                node.pubs[arm].publish = lambda m, a=arm: sent.append((a, m))
            # never enabled: no plan and no stop goes out, whatever happens
            infer(fresh())
            node.on_enable(SetBool.Request(data=False), SetBool.Response())
            assert node.trigger_deactivate() == ok and node.trigger_activate() == ok
            assert take() == []
            # enabled: plans go out
            node.on_enable(SetBool.Request(data=True), SetBool.Response())
            infer(fresh())
            msgs = take()
            assert len(msgs) == 2 and all(len(m.points) > 1 for m in msgs)
            # deactivated while an inference ran: one stop per arm, the late chunk never follows
            running = fresh()
            assert node.trigger_deactivate() == ok
            stops = take()
            assert len(stops) == 2 and all(not m.points for m in stops)
            assert all(list(m.joint_names) == ARM for m in stops)
            infer(running)  # stamped before the deactivation
            infer(fresh())  # or after it: the node is inactive
            assert take() == []
            # the watchdog: an input goes stale while a trajectory runs -> a stop, no position
            assert node.trigger_activate() == ok
            infer(fresh())
            assert len(take()) == 2
            node.last_view_rx = time.monotonic() - 10.0
            node.on_control_tick()
            stops = take()
            assert len(stops) == 2 and all(not m.points for m in stops)
            node.on_control_tick()
            assert take() == []  # once
            # disabling after a stop sends nothing more (nothing of ours can be running)
            node.on_enable(SetBool.Request(data=False), SetBool.Response())
            assert take() == []
        finally:
            node.destroy_node()
