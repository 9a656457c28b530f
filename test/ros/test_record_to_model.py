"""The loop a user runs to teach the robot, at tiny scale, every step a real command in its own
process: demos recorded over ROS 2 (`clamp demo --record`) -> `clamp data from-bag` ->
`clamp finetune` -> `clamp export` -> the policy node loads the model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from clamp_ros.graph import GRAPHS, node_command
from test.ros.conftest import (
    child_env,
    log_tail,
    start_process,
    stop_process,
    wait_for,
    wait_for_log,
)

pytestmark = pytest.mark.ros


def _clamp(args, env, timeout_s=600):
    p = subprocess.run(
        [sys.executable, "-m", "clamp_ros.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert p.returncode == 0, f"clamp {args[0]} failed:\n{p.stderr[-3000:]}"
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_recorded_demos_become_a_model_the_policy_node_loads(ros_domain_id, tmp_path):
    env = child_env(ros_domain_id, tmp_path / "ros_log", FASTDDS_BUILTIN_TRANSPORTS="LARGE_DATA")
    rec = _clamp(
        [
            "demo",
            "--record",
            "2",
            "--task",
            "drawer_open",
            "--camera-size",
            "64x48",
            "--out",
            str(tmp_path / "rec"),
            "--json",
        ],
        env,
    )
    assert rec["saved"] == 2 and rec["successes"] == 2, rec
    conv = _clamp(
        [
            "data",
            "from-bag",
            *[e["bag"] for e in rec["episodes"]],
            "--out",
            str(tmp_path / "episodes"),
            "--json",
        ],
        env,
    )
    assert conv["written"] == 2, conv
    check = _clamp(["data", "check", str(tmp_path / "episodes"), "--json"], env)
    assert check["ok"] and check["valid"] == 2
    run = tmp_path / "run"
    train = _clamp(
        [
            "finetune", "--scratch", "--preset", "cpu-small", "--data", str(tmp_path / "episodes"),
            "--out", str(run), "--steps", "3", "--batch-size", "4", "--json",
            "--set", f"cache_dir={tmp_path / 'cache'}", "--set", "frame_stride=4",
        ],
        env,
        timeout_s=900,
    )  # fmt: skip
    assert train["train"]["step"] == 3
    model = tmp_path / "model"
    exported = _clamp(["export", str(run), "--out", str(model), "--json"], env, timeout_s=900)
    assert exported["parity_max_abs_diff"] <= 1e-4

    spec = next(s for s in GRAPHS["sim_demo"] if s.executable == "policy_node")
    proc = start_process(node_command(spec, {"model": str(model)}), env, tmp_path / "policy.log")
    try:
        wait_for_log(proc, r"model '.*' loaded from " + str(model))
    finally:
        code = stop_process(proc)
    assert code in (0, -2), log_tail(tmp_path / "policy.log")
    wait_for(lambda: proc.poll() is not None, 30.0, what="the policy node to exit")
