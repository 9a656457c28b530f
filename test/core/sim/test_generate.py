"""Expert data generation: valid, resumable episodes whose depth and camera poses put the
objects where the simulator says they are."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

pytest.importorskip("mujoco")
pytest.importorskip("gym_aloha")

from clamp_core import cli  # noqa: E402
from clamp_core.data import EpisodeReader, check_dataset, episode_path  # noqa: E402
from clamp_core.geometry.camera import PinholeCamera  # noqa: E402
from clamp_core.perception import PerceptionConfig, PerceptionPipeline, RgbdFrame  # noqa: E402
from clamp_core.sim.generate import WORKER_THREADS, Job, _environment, generate  # noqa: E402
from clamp_core.sim.tasks.transfer_cube import CUBE_HALF  # noqa: E402


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen")
    results = list(generate([Job("transfer_cube", 11, str(out), 160, 120)], progress=False))
    return out, results


def test_generated_episode_is_valid_and_complete(dataset):
    out, results = dataset
    assert [r.status for r in results] == ["written"]
    summary, problems = check_dataset(out)
    assert problems == []
    with EpisodeReader(episode_path(out, "transfer_cube", 11)) as ep:
        assert ep.success and ep.meta.seed == 11 and ep.meta.task == "transfer_cube"
        assert ep.num_frames == results[0].frames > 100
        last = ep.frame(ep.num_frames - 1, images=False, depth=False)
        assert last["task_progress"] == 3
        w = ep.window(50, action_history=10, action_horizon=50)
        assert w["action_future"].shape == (50, 14)


def test_rested_and_jittered_start_poses(dataset, tmp_path):
    """--rest-steps / --start-jitter: the episode starts from arms that rested at a perturbed
    pose (as a robot's do before an episode), the expert still succeeds from there, and the
    same seed gives the same episode."""
    out, _ = dataset
    with EpisodeReader(episode_path(out, "transfer_cube", 11)) as ep:
        exact = ep.frame(0, images=False, depth=False)["qpos"]
    firsts = []
    for run in ("a", "b"):
        job = Job("transfer_cube", 11, str(tmp_path / run), 160, 120, None, 25, 0.05)
        (r,) = generate([job], progress=False)
        assert r.status == "written", r
        with EpisodeReader(episode_path(tmp_path / run, "transfer_cube", 11)) as ep:
            assert ep.success
            firsts.append(ep.frame(0, images=False, depth=False)["qpos"])
    np.testing.assert_array_equal(firsts[0], firsts[1])
    arm = [i for i in range(14) if i not in (6, 13)]
    moved = np.abs(firsts[0][arm] - exact[arm])
    assert moved.max() > 0.005 and moved.max() < 0.08, moved


def test_rerun_skips_finished_episodes(dataset):
    out, _ = dataset
    again = list(generate([Job("transfer_cube", 11, str(out), 160, 120)], progress=False))
    assert [r.status for r in again] == ["skipped"]


def test_fused_depth_lands_on_the_true_cube_position(dataset):
    out, _ = dataset
    with EpisodeReader(episode_path(out, "transfer_cube", 11)) as ep:
        f = ep.frame(0)
        cube = f["object_positions"][0]
        lo, hi = cube - 0.04, cube + 0.04
        lo[2] = 0.004  # above the table top
        config = PerceptionConfig(workspace_min=list(lo), workspace_max=list(hi))
        pipe = PerceptionPipeline(config)
        frames, poses = [], []
        for cam in ep.meta.camera_names:
            calib = ep.cameras[cam]
            k = np.asarray(calib.K)
            intr = PinholeCamera(calib.width, calib.height, k[0, 0], k[1, 1], k[0, 2], k[1, 2])
            frames.append(RgbdFrame(cam, 0, cam, intr, f["depth_mm"][cam], 1e-3))
            poses.append(f["extrinsics"][cam])
        pts = pipe.fuse(frames, poses).xyz
    assert len(pts) > 30
    # every point seen in the box around the cube is on the cube (mm depth quantisation)
    assert np.all(np.abs(pts - cube) <= CUBE_HALF * np.sqrt(2) + 0.004)
    np.testing.assert_allclose(pts[:, 2].max(), cube[2] + CUBE_HALF, atol=0.004)


def test_cli_refuses_bad_requests(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert cli.main(["generate", "--task", "transfer_cube", "--out", str(blocker / "x")]) == 1
    assert "not writable" in capsys.readouterr().err
    assert cli.main(["generate", "--task", "transfer_cube", "--seed", "-1"]) == 2
    assert cli.main(["generate", "--task", "transfer_cube", "--start-jitter", "0.05"]) == 2
    assert "needs --rest-steps" in capsys.readouterr().err
    assert cli.main(["generate", "--task", "fold_laundry"]) == 2  # one line, no traceback
    assert "unknown task 'fold_laundry'" in capsys.readouterr().err


def test_cli_json_summary_counts_skips(dataset, capsys):
    out, _ = dataset
    code = cli.main(
        [
            "generate",
            "--task",
            "transfer_cube",
            "--episodes",
            "1",
            "--seed",
            "11",
            "--out",
            str(out),
            "--width",
            "160",
            "--height",
            "120",
            "--json",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["tasks"]["transfer_cube"] == {
        "written": 0,
        "skipped": 1,
        "failed": 0,
        "error": 0,
    }


def test_worker_processes_write_the_same_episodes_as_one_process(dataset, tmp_path):
    out, _ = dataset
    jobs = [Job("transfer_cube", s, str(tmp_path), 160, 120) for s in (11, 12)]
    results = list(generate(jobs, workers=2, progress=False))
    assert sorted((r.seed, r.status) for r in results) == [(11, "written"), (12, "written")]
    with (
        EpisodeReader(episode_path(out, "transfer_cube", 11)) as a,
        EpisodeReader(episode_path(tmp_path, "transfer_cube", 11)) as b,
    ):
        assert len(a) == len(b)
        for t in (0, len(a) // 2, len(a) - 1):
            fa, fb = a.frame(t), b.frame(t)
            np.testing.assert_array_equal(fa["qpos"], fb["qpos"])
            for cam in fa["images"]:
                np.testing.assert_array_equal(fa["images"][cam], fb["images"][cam])
                np.testing.assert_array_equal(fa["depth_mm"][cam], fb["depth_mm"][cam])


def test_workers_get_one_thread_per_pool_unless_the_environment_says_otherwise(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    with _environment({"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}):
        assert os.environ["OMP_NUM_THREADS"] == "3"  # the user's choice stands
        assert os.environ["OPENBLAS_NUM_THREADS"] == "1"
    assert os.environ["OMP_NUM_THREADS"] == "3"
    assert "OPENBLAS_NUM_THREADS" not in os.environ  # the parent process is left as it was
    assert WORKER_THREADS["OPENBLAS_NUM_THREADS"] == "1"
