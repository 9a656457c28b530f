"""Teleoperation over DDS: the sim node's follower arms track leader joint states, and its
expert plays the leader arms on the Trossen topics (what a recorded demo is made of).

Each sim node is its own process (console script, config/sim_aloha.yaml, small images); this
process calls the services, reads the topics and plays an external leader. Waits are on
conditions with generous timeouts, never on wall-clock time.
"""

from __future__ import annotations

import numpy as np
import pytest
from rcl_interfaces.msg import Log
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState
from std_srvs.srv import Trigger

from clamp_core.aloha import ARM_JOINT_NAMES, SIDES
from clamp_core.teleop import GripperMap
from clamp_ros.conversions import stamp_to_ns
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

SMALL = {"width": 64, "height": 48, "camera_rate_hz": 5.0, "task": "drawer_open", "seed": 2}
TIMEOUT_S = 180.0


class Probe:
    def __init__(self, node):
        self.node = node
        self.leader = {s: [] for s in SIDES}
        self.follower = {s: [] for s in SIDES}
        self.logs: list[str] = []
        for s in SIDES:
            node.create_subscription(
                JointState,
                f"/leader_{s}/joint_states",
                lambda m, s=s: self._add(self.leader[s], m),
                50,
            )
            node.create_subscription(
                JointState,
                f"/follower_{s}/joint_states",
                lambda m, s=s: self._add(self.follower[s], m),
                50,
            )
        qos = QoSProfile(
            depth=1000,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
        node.create_subscription(Log, "/rosout", lambda m: self.logs.append(m.msg), qos)
        self.pubs = {
            s: node.create_publisher(JointState, f"/leader_{s}/joint_states", 10) for s in SIDES
        }
        self.start = node.create_client(Trigger, "/sim/start_demo")
        self.reset = node.create_client(Trigger, "/sim/reset")
        self.success = node.create_client(Trigger, "/sim/success")

    @staticmethod
    def _add(buf, msg):
        buf.append(msg)
        del buf[:-3000]

    def spin_until(self, predicate, what):
        return spin_until(self.node, predicate, TIMEOUT_S, what)

    def call(self, client, what):
        self.spin_until(lambda: client.service_is_ready(), f"service {what}")
        fut = client.call_async(Trigger.Request())
        self.spin_until(fut.done, f"answer of {what}")
        return fut.result()

    def position(self, kind, side) -> np.ndarray:
        buf = getattr(self, kind)[side]
        self.spin_until(lambda: buf, f"{kind} {side} joint states")
        return np.array(buf[-1].position)


def _sim(ros_domain_id, tmp, name, **params):
    spec = next(s for s in GRAPHS["sim_aloha"] if s.executable == "sim_node")
    env = child_env(ros_domain_id, tmp / "ros_log", FASTDDS_BUILTIN_TRANSPORTS="LARGE_DATA")
    proc = start_process(node_command(spec, {**SMALL, **params}), env, tmp / f"{name}.log")
    return proc, env


def test_expert_leader_drives_the_follower_to_success_over_dds(ros_domain_id, tmp_path):
    proc, env = _sim(ros_domain_id, tmp_path, "sim", leader_source="expert", follow_leader=True)
    try:
        with rclpy_session(env, "teleop_checker") as node:
            p = Probe(node)
            # before the demo starts the leader holds the follower's pose: nothing moves
            p.spin_until(lambda: len(p.leader["left"]) >= 20, "20 leader states")
            held = np.array([m.position for m in p.leader["left"][-10:]])
            assert np.ptp(held, axis=0).max() < 1e-9
            g = GripperMap()
            q_follower = p.position("follower", "left")
            np.testing.assert_allclose(held[-1][:6], q_follower[:6], atol=0.02)
            assert held[-1][6] == pytest.approx(g.to_leader(q_follower[6]), abs=0.05)
            assert list(p.leader["left"][-1].name) == list(ARM_JOINT_NAMES)

            first = p.call(p.start, "start_demo")
            assert first.success, first.message
            again = p.call(p.start, "start_demo")
            assert not again.success and "already running" in again.message

            p.spin_until(lambda: p.call(p.success, "success").success, "the drawer open")
            # the leader moved (the expert) and its grippers stayed in the leader's angle range
            lead = np.array([m.position for m in p.leader["left"]])
            assert np.ptp(lead[:, :6], axis=0).max() > 0.1
            lo, hi = sorted((g.closed_rad, g.open_rad))
            assert lead[:, 6].min() >= lo - 1e-9 and lead[:, 6].max() <= hi + 1e-9
            # the follower tracked it: its arm joints at the leader's stamp + a few steps
            f = {stamp_to_ns(m.header.stamp): np.array(m.position) for m in p.follower["left"]}
            errs = [
                np.abs(f[t + 60_000_000][:6] - np.array(m.position[:6])).max()
                for m in p.leader["left"][-200:]
                if (t := stamp_to_ns(m.header.stamp)) + 60_000_000 in f
            ]
            assert len(errs) > 50 and np.median(errs) < 0.05

            # after a reset the leader waits again and the expert has to be started anew
            assert p.call(p.reset, "reset").success
            p.leader["left"].clear()
            p.spin_until(lambda: len(p.leader["left"]) >= 20, "leader states after the reset")
            held = np.array([m.position for m in p.leader["left"][-10:]])
            assert np.ptp(held, axis=0).max() < 1e-9
            assert p.call(p.start, "start_demo").success
    finally:
        code = stop_process(proc)
        assert code in (0, -2), f"sim node exited with {code}:\n{log_tail(proc)}"


def test_follower_tracks_an_external_leader_and_refuses_bad_states(ros_domain_id, tmp_path):
    closed, opened = -0.2, 0.8
    proc, env = _sim(
        ros_domain_id, tmp_path, "sim", follow_leader=True, leader_gripper_range=[closed, opened]
    )
    try:
        with rclpy_session(env, "leader_player") as node:
            p = Probe(node)
            q0 = p.position("follower", "right")
            left0 = p.position("follower", "left")
            goal = q0.copy()
            goal[0] += 0.3  # waist
            goal[6] = closed + 0.25 * (opened - closed)  # leader angle for a quarter-open gripper

            def publish(names, positions):
                now = max(stamp_to_ns(p.follower["right"][-1].header.stamp), 1)
                msg = JointState(name=list(names), position=[float(x) for x in positions])
                msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now, 1_000_000_000)
                p.pubs["right"].publish(msg)

            p.spin_until(lambda: p.pubs["right"].get_subscription_count() > 0, "sim subscribed")

            def reached():
                publish(ARM_JOINT_NAMES, goal)
                q = np.array(p.follower["right"][-1].position)
                return abs(q[0] - goal[0]) < 0.01 and abs(q[6] - 0.25) < 0.05

            p.spin_until(reached, "the right follower at the leader's pose")
            # the left arm had no leader message: it holds
            np.testing.assert_allclose(p.position("follower", "left")[:6], left0[:6], atol=0.01)
            # a leader state that repeats a joint is refused, named, and the follower keeps its pose
            bad = [*ARM_JOINT_NAMES, "waist"]
            for _ in range(5):
                publish(bad, [*(goal + [1.0, 0, 0, 0, 0, 0, 0]), goal[0] + 1.0])
                p.spin_until(lambda: True, "spin")
            p.spin_until(
                lambda: any(
                    "leader_right/joint_states rejected" in s and "more than once" in s
                    for s in p.logs
                ),
                "the rejection in the log",
            )
            p.follower["right"].clear()
            p.spin_until(lambda: len(p.follower["right"]) >= 10, "10 more follower states")
            assert abs(p.follower["right"][-1].position[0] - goal[0]) < 0.01
    finally:
        code = stop_process(proc)
        assert code in (0, -2), f"sim node exited with {code}:\n{log_tail(proc)}"
