"""The `clamp` command as a user runs it: machine-readable output of the benchmark and the demo."""

from __future__ import annotations

import json
import subprocess

import pytest

from clamp_ros.graph import executable_path
from test.ros.conftest import child_env


def _run(args, env, timeout_s=600):
    proc = subprocess.run(
        [executable_path("clamp"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert proc.returncode == 0, f"clamp {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_bench_perception_json(tmp_path, ros_domain_id):
    env = child_env(ros_domain_id, tmp_path / "log")
    out = _run(
        ["bench", "perception", "--frames", "2", "--width", "160", "--height", "120", "--json"], env
    )
    assert set(out) >= {"metric", "unit", "ours", "baseline", "baseline_name", "ratio", "config"}
    assert out["unit"] == "ms" and out["ours"] > 0 and out["baseline"] > 0
    assert out["ratio"] == pytest.approx(out["baseline"] / out["ours"], rel=1e-6)
    assert out["config"]["agreement"] > 0.95


@pytest.mark.ros
def test_demo_runs_the_graph_and_writes_pictures(tmp_path, ros_domain_id):
    env = child_env(ros_domain_id, tmp_path / "log")
    out = _run(
        ["demo", "--perception-only", "--duration", "3", "--out", str(tmp_path / "demo"), "--json"],
        env,
    )
    names = ["overhead", "back_right", "front_left", "wrist_left", "wrist_right"]
    assert list(out["views_hz"]) == names
    assert all(out["coverage"][n] > 0.3 for n in names)
    assert (tmp_path / "demo" / "views.png").stat().st_size > 10_000
    for n in names:
        assert (tmp_path / "demo" / f"view_{n}.png").exists()
    assert "processing_ms p50" in out["perception"]
