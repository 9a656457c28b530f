"""Hostile input against the running closed loop: the simulated ALOHA and the policy node as
separate processes, and a third process (``clamp_ros.fuzz``) that publishes malformed and
adversarial messages of every kind on the robot's own topics. The nodes stay alive, commands
resume once the hostile stream ends, no command the controllers received ever breaks the
position or velocity invariant, and the policy node's memory stays flat."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from sensor_msgs.msg import JointState
from trajectory_msgs.msg import JointTrajectory

from clamp_core.policy.safety import aloha_defaults
from clamp_ros.conversions import stamp_to_ns
from clamp_ros.fuzz import FUZZ_MARK
from clamp_ros.graph import GRAPHS, node_command
from test.ros.conftest import (
    child_env,
    log_tail,
    rclpy_session,
    spin_until,
    start_process,
    stop_process,
)

pytestmark = pytest.mark.ros

TIMEOUT_S = 180.0
SAFETY = aloha_defaults()
LO, HI = SAFETY.limits()
VMAX = np.array(SAFETY.max_velocity)
ARM = ["waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "gripper"]


def rss_mb(pid: int) -> float:
    """Resident memory of a process (MB), from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise AssertionError(f"no VmRSS for pid {pid}")


def plan(msg: JointTrajectory) -> tuple[np.ndarray, np.ndarray]:
    t0 = stamp_to_ns(msg.header.stamp)
    times = np.array(
        [t0 + p.time_from_start.sec * 10**9 + p.time_from_start.nanosec for p in msg.points]
    )
    return times, np.array([list(p.positions) for p in msg.points])


def check_stream(events: list, side: int) -> tuple[int, int]:
    """``events``: ("state", (7,) true positions) and ("traj", msg) in arrival order for one
    arm. Every point is within the limits and max_velocity x dt of the point before it on the
    plan the controller follows: the previous plan at the new start, or after a stop (or
    before any command) the arm's true position. Returns (plans, stops)."""
    lo, hi, vmax = (
        LO[7 * side : 7 * side + 7],
        HI[7 * side : 7 * side + 7],
        VMAX[7 * side : 7 * side + 7],
    )
    follows, recent, plans, stops = None, [], 0, 0
    for kind, item in events:
        if kind == "state":
            recent = [*recent[-9:], item]  # the node plans from one of these (its newest)
            continue
        if not item.points:
            follows, stops = None, stops + 1
            continue
        assert list(item.joint_names) == ARM
        times, pos = plan(item)
        assert (pos >= lo - 1e-9).all() and (pos <= hi + 1e-9).all(), "outside the limits"
        if len(times) > 1:
            steps = np.abs(np.diff(pos, axis=0)) / (np.diff(times)[:, None] * 1e-9)
            assert (steps <= vmax * (1 + 1e-6)).all(), f"{steps.max():.2f} rad/s within a plan"
        if follows is not None:  # one control period from the plan the controller follows
            ft, fp = follows
            ref = np.array([np.interp(times[0] - 20_000_000, ft, fp[:, j]) for j in range(7)])
            jump = np.abs(pos[0] - ref)
            allowed = vmax * 0.02 + 1e-6
            assert (jump <= allowed).all(), (
                f"{ARM[int(np.argmax(jump - allowed))]} jumped {jump.max():.3f} at a new plan"
            )
        elif recent:  # from rest: a few periods from a state the arm reported just before
            allowed = vmax * 0.1 + 1e-6
            excess = [float((np.abs(pos[0] - q) - allowed).max()) for q in recent]
            assert min(excess) <= 0, f"a plan from rest starts {min(excess):.3f} too far away"
        follows = (times, pos)
        plans += 1
    return plans, stops


def test_hostile_messages_of_every_kind_against_the_closed_loop(ros_domain_id, tmp_path):
    env = child_env(ros_domain_id, tmp_path / "ros_log", FASTDDS_BUILTIN_TRANSPORTS="LARGE_DATA")
    sim_spec, policy_spec = GRAPHS["sim_demo"]
    sim = start_process(
        node_command(sim_spec, {"width": 160, "height": 120}), env, tmp_path / "sim.log"
    )
    policy = start_process(node_command(policy_spec, {}), env, tmp_path / "policy.log")
    fuzz = None
    try:
        with rclpy_session(env, "fuzz_observer") as node:
            events: dict[int, list] = {0: [], 1: []}

            def on_state(side, m):
                if m.header.frame_id != FUZZ_MARK and list(m.name) == ARM:
                    events[side].append(("state", np.array(m.position)))

            for side, arm in enumerate(("left", "right")):
                node.create_subscription(
                    JointState,
                    f"/follower_{arm}/joint_states",
                    lambda m, s=side: on_state(s, m),
                    100,
                )
                node.create_subscription(
                    JointTrajectory,
                    f"/{arm}_arm_controller/joint_trajectory",
                    lambda m, s=side: events[s].append(("traj", m)),
                    100,
                )

            def n_plans():
                return sum(1 for k, m in events[0] if k == "traj" and m.points)

            spin_until(node, lambda: n_plans() >= 10, TIMEOUT_S, "policy commands to the sim")
            rss_before = rss_mb(policy.pid)
            fuzz = start_process(
                [
                    sys.executable,
                    "-m",
                    "clamp_ros.fuzz",
                    "--seconds",
                    "25",
                    "--rate",
                    "60",
                    "--use-sim-time",
                    "--seed",
                    "7",
                ],
                env,
                tmp_path / "fuzz.log",
            )
            spin_until(node, lambda: fuzz.poll() is not None, TIMEOUT_S, "the hostile stream")
            assert fuzz.returncode == 0, log_tail(fuzz)
            sent = json.loads(fuzz.log_path.read_text().strip().splitlines()[-1])
            assert sent["sent"] > 500 and len(sent["by_kind"]) > 30, sent
            assert sim.poll() is None, log_tail(sim)
            assert policy.poll() is None, log_tail(policy)
            # the hostile stream is over: plausible states, views and commands come back
            after = n_plans()
            spin_until(node, lambda: n_plans() >= after + 10, TIMEOUT_S, "commands after fuzzing")
            rss_after = rss_mb(policy.pid)
        stops = 0
        for side in (0, 1):
            plans, n = check_stream(events[side], side)
            assert plans >= 20
            stops += n
        assert stops >= 1  # the hostile joint states did stop the arms at least once
        assert rss_after - rss_before < 40.0, f"policy node grew {rss_after - rss_before:.0f} MB"
    finally:
        if fuzz is not None:
            stop_process(fuzz)
        stop_process(policy)
        stop_process(sim)
    log = policy.log_path.read_text(errors="replace")
    assert "joint_states rejected" in log
    assert max(len(line) for line in log.splitlines()) < 4000, "an unbounded log line"
