"""Shadow mode over DDS: the expert teleoperates the simulated follower through the leader
topics while the policy node runs live in shadow mode. The arms' controllers never hear from
the policy; its would-be commands arrive on its shadow topics and its error against the
operator is in /diagnostics."""

from __future__ import annotations

import pytest
from diagnostic_msgs.msg import DiagnosticArray
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

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


def test_shadow_mode_commands_nothing_and_scores_against_the_leader(ros_domain_id, tmp_path):
    env = child_env(
        1 + (ros_domain_id + 40) % 101,
        tmp_path / "ros_log",
        FASTDDS_BUILTIN_TRANSPORTS="LARGE_DATA",
    )
    sim_spec, policy_spec = GRAPHS["sim_demo"]
    sim = start_process(
        node_command(
            sim_spec,
            {"width": 160, "height": 120, "leader_source": "expert", "follow_leader": True},
        ),
        env,
        tmp_path / "sim.log",
    )
    policy = start_process(
        node_command(policy_spec, {"shadow": True, "enable": True}), env, tmp_path / "policy.log"
    )
    try:
        with rclpy_session(env, "shadow_checker") as node:
            to_arms, shadow, diag = [], [], {}

            def on_diag(msg):
                for st in msg.status:
                    if st.name.endswith(": policy"):
                        diag.update({v.key: v.value for v in st.values}, _message=st.message)

            node.create_subscription(
                JointTrajectory, "/left_arm_controller/joint_trajectory", to_arms.append, 10
            )
            node.create_subscription(
                JointTrajectory, "/policy/shadow/left/joint_trajectory", shadow.append, 10
            )
            node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
            start = node.create_client(Trigger, "/sim/start_demo")
            spin_until(node, start.service_is_ready, TIMEOUT_S, "the sim's start_demo")
            spin_until(node, lambda: len(shadow) >= 3, TIMEOUT_S, "shadow commands")
            fut = start.call_async(Trigger.Request())
            spin_until(node, fut.done, TIMEOUT_S, "the expert to start")
            assert fut.result().success
            spin_until(
                node,
                lambda: int(diag.get("shadow left samples", 0)) >= 50,
                TIMEOUT_S,
                "the shadow error in /diagnostics",
            )
            assert diag["_message"].startswith("shadow")
            assert 0.0 <= float(diag["shadow left error_rad"]) < 3.0
            # plans (an empty one is a stop: the operator, not the plan, moves the arm)
            plans = [m for m in shadow if len(m.points) > 1]
            assert plans and list(plans[-1].joint_names)[-1] == "gripper"
            assert to_arms == [], "shadow mode sent a trajectory to the arms' controller"
    finally:
        stop_process(policy)
        stop_process(sim)
    assert "ERROR" not in "".join(
        ln for ln in log_tail(policy, 400).splitlines(True) if "shadow" in ln
    ), log_tail(policy)
