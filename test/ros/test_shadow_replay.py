"""Shadow mode on a replayed recording equals `clamp eval replay` of it: a teleoperated demo
recorded over ROS (`clamp demo --record`) is played back into the graph by `clamp play` (its
timing and /clock); the policy node runs in shadow mode on it, publishing its chunks; the
recorder records that session; replaying the session's bag reproduces every chunk the shadow
node computed, bit for bit."""

from __future__ import annotations

import json
import subprocess
import sys

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

SEED, TIMEOUT_S = 11, 300.0


def test_shadow_mode_on_a_played_bag_matches_replay(ros_domain_id, tmp_path):
    env = child_env(
        1 + (ros_domain_id + 50) % 101,
        tmp_path / "ros_log",
        FASTDDS_BUILTIN_TRANSPORTS="LARGE_DATA",
    )
    rec = subprocess.run(
        [sys.executable, "-m", "clamp_ros.cli", "demo", "--record", "1", "--task", "drawer_open",
         "--camera-size", "64x48", "--out", str(tmp_path / "rec"), "--json"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert rec.returncode == 0, rec.stderr[-3000:]
    demo_bag = json.loads(rec.stdout.strip().splitlines()[-1])["episodes"][0]["bag"]

    _, policy_spec = GRAPHS["sim_demo"]
    out = tmp_path / "session"
    chunk_topics = ["/policy/chunks", "/policy/chunk_inputs"]
    specs = [
        (policy_spec, {"shadow": True, "enable": True, "publish_chunks": True, "seed": SEED}),
        (
            NodeSpec("recorder_node", "recorder", ("config/sim_record.yaml",)),
            {
                "task": "drawer_open",
                "episode_name": "shadow",
                "recorder.output_dir": str(out),
                "recorder.min_free_gb": 0.1,
                "recorder.record_commands": True,
                "recorder.command_topics": chunk_topics,
                "recorder.camera_min_rate_hz": 0.0,
                "recorder.joint_states_min_rate_hz": 0.0,
            },
        ),
    ]
    procs = [start_process(node_command(s, p), env, tmp_path / f"{s.name}.log") for s, p in specs]
    play = start_process(
        [sys.executable, "-m", "clamp_ros.cli", "play", demo_bag, "--rate", "0.5", "--delay", "3"],
        env,
        tmp_path / "play.log",
    )
    try:
        with rclpy_session(env, "shadow_replay_checker") as node:
            seen, to_arms = [], []
            node.create_subscription(
                JointTrajectory,
                "/policy/chunks",
                seen.append,
                QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE),
            )
            node.create_subscription(
                JointTrajectory, "/left_arm_controller/joint_trajectory", to_arms.append, 10
            )
            spin_until(node, lambda: len(seen) >= 1, TIMEOUT_S, "the shadow node's first chunk")
            started = start_recording(node, TIMEOUT_S)
            assert started.success, started.message + log_tail(procs[1])
            spin_until(node, lambda: play.poll() is not None, TIMEOUT_S, "clamp play to finish")
            stop = call_service(
                node,
                node.create_client(SetBool, "/recorder/stop"),
                SetBool.Request(data=True),
                "stop",
            )
            assert stop.success, stop.message + log_tail(procs[1])
            assert to_arms == [], "shadow mode commanded the arms"
    finally:
        stop_process(play)
        for p in procs:
            stop_process(p)
    assert play.returncode == 0, log_tail(tmp_path / "play.log")
    (bag,) = [p.parent for p in out.rglob("metadata.yaml")]
    live = replay(
        [bag],
        resolve_model("drawer_open"),
        ReplayConfig(seed=SEED, follow_node="/policy", tf_wait_s=0.5),
    )["episodes"][0]["live"]
    print(live)
    assert live["compared"] >= 3, live
    assert live["different"] == 0 and live["identical"] == live["compared"], live
    assert live["missing"] <= 1, live
