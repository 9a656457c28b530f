"""Live = replay: a closed-loop run over DDS (the sim node and the policy node as `clamp demo`
runs them) recorded by the recorder node with the policy's trajectories and its published chunks
(``publish_chunks``), then replayed with `clamp eval replay`'s ``replay()`` with the same model and
seed: for every observation the node inferred on, the replayed chunk equals the node's bit for bit.

The node's thread timing decides which synchronised sets it inferred on and the action history
and guidance prefix it fed the model (when control ticks ran, when chunks arrived); replay takes
those from the node's ``~/chunk_inputs`` (``follow_node``). Images, tf, joint states, perception,
the measured state at the stamp and the diffusion noise are replay's own, from the bag.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_srvs.srv import SetBool
from trajectory_msgs.msg import JointTrajectory

from clamp_core.eval.replay import ReplayConfig, replay
from clamp_ros.graph import GRAPHS, NodeSpec, node_command
from clamp_ros.policy_node import resolve_model
from test.ros.conftest import (
    call_service,
    child_env,
    log_tail,
    rclpy_session,
    spin_until,
    start_process,
    start_recording,
    stop_process,
)

pytestmark = pytest.mark.ros

SEED = 7
TIMEOUT_S = 300.0
CHUNKS = 8
"""Chunks the node publishes while recording."""


def test_recorded_live_run_replays_bit_for_bit(ros_domain_id, tmp_path):
    env = child_env(ros_domain_id, tmp_path / "ros_log", FASTDDS_BUILTIN_TRANSPORTS="LARGE_DATA")
    sim_spec, policy_spec = GRAPHS["sim_demo"]
    out = tmp_path / "bags"
    topics = [
        "/left_arm_controller/joint_trajectory",
        "/right_arm_controller/joint_trajectory",
        "/policy/chunks",
        "/policy/chunk_inputs",
    ]
    specs = [
        # the leader topics only feed the recorder (required there); the policy drives the arms
        (sim_spec, {"width": 64, "height": 48, "leader_source": "expert", "seed": 1}),
        (policy_spec, {"publish_chunks": True, "seed": SEED}),
        (
            NodeSpec("recorder_node", "recorder", ("config/sim_record.yaml",)),
            {
                "task": "drawer_open",
                "episode_name": "live",
                "recorder.output_dir": str(out),
                "recorder.min_free_gb": 0.1,
                "recorder.record_commands": True,
                "recorder.command_topics": topics,
                "recorder.camera_min_rate_hz": 0.0,
                "recorder.joint_states_min_rate_hz": 0.0,
            },
        ),
    ]
    procs = [start_process(node_command(s, p), env, tmp_path / f"{s.name}.log") for s, p in specs]
    try:
        with rclpy_session(env, "live_replay_checker") as node:
            seen: list[int] = []
            node.create_subscription(
                JointTrajectory,
                "/policy/chunks",
                lambda m: seen.append(m.header.stamp.sec * 10**9 + m.header.stamp.nanosec),
                QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE),
            )
            spin_until(node, lambda: len(seen) >= 2, TIMEOUT_S, "the policy's first chunks")
            # the recorder refuses to start until it has heard every required topic
            started = start_recording(node, TIMEOUT_S)
            assert started.success, started.message + log_tail(procs[2])
            n0 = len(seen)
            spin_until(node, lambda: len(seen) >= n0 + CHUNKS, TIMEOUT_S, f"{CHUNKS} chunks")
            stop = call_service(
                node,
                node.create_client(SetBool, "/recorder/stop"),
                SetBool.Request(data=True),
                "stop",
            )
            assert stop.success, stop.message + log_tail(procs[2])
    finally:
        for p in procs:
            stop_process(p)
    (bag,) = [p.parent for p in out.rglob("metadata.yaml")]

    r = replay(
        [bag],
        resolve_model("drawer_open"),
        ReplayConfig(seed=SEED, follow_node="/policy", tf_wait_s=0.5),
    )
    live = r["episodes"][0]["live"]
    print(live)
    assert live["node_chunks"] >= CHUNKS
    assert live["different"] == 0, live
    assert live["identical"] == live["compared"] >= CHUNKS - 1, live
    # only an inference whose images came before the recording started can be missing
    assert live["missing"] <= 1, live
    if live["missing"]:
        assert min(live["missing_stamps_ns"]) <= min(
            t for t in _stamps(bag) if t not in live["missing_stamps_ns"]
        )
    assert r["episodes"][0]["executed_chunks"] >= CHUNKS - 1

    # the comparison can fail: another run seed draws other noise, so every chunk differs
    other = replay(
        [bag],
        resolve_model("drawer_open"),
        ReplayConfig(seed=SEED + 1, follow_node="/policy", tf_wait_s=0.5),
    )["episodes"][0]["live"]
    assert other["different"] == other["compared"] == live["compared"], other


def _stamps(bag: Path) -> list[int]:
    from clamp_core.data.bags import Bag

    with Bag(bag) as b:
        return [
            m.header.stamp.sec * 10**9 + m.header.stamp.nanosec
            for _, _, _, m in b.messages(["/policy/chunks"])
        ]
