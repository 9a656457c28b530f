"""check_dataset and `clamp data check`: good datasets pass, each kind of damage is reported with
its file and field, leftover partial files are listed without failing."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest

from clamp_core.cli import main
from clamp_core.data import check_dataset, episode_path

from .test_episode import make_frames, make_meta, write_episode


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory):
    """Two tasks: pick (2 episodes, one successful) and place (1 successful episode)."""
    root = tmp_path_factory.mktemp("dataset")
    for task, seed, T, success in (
        ("pick", 0, 6, True),
        ("pick", 1, 4, False),
        ("place", 0, 5, True),
    ):
        write_episode(
            episode_path(root, task, seed),
            make_frames(T=T, seed=seed),
            make_meta(task=task, seed=seed),
            success=success,
            create_dirs=True,
        )
    return root


def test_good_dataset_passes_and_is_summarised(good_dir):
    summary, problems = check_dataset(good_dir)
    assert problems == []
    assert (summary["episodes"], summary["valid"], summary["invalid"]) == (3, 3, 0)
    assert summary["frames_total"] == 15 and summary["frames_mean"] == 5.0
    assert summary["tasks"]["pick"] == {
        "episodes": 2,
        "successes": 1,
        "success_rate": 0.5,
        "frames": 10,
    }
    assert summary["tasks"]["place"]["success_rate"] == 1.0
    assert summary["cameras"] == {"cam_a": ["32x24"], "cam_b": ["32x24"]}
    assert summary["size_bytes"] > 0 and summary["partial_files"] == []


def _nan_qpos(f):
    f["observations/qpos"][2, 5] = np.nan


def _short_action(f):
    f["action"].resize(f["action"].shape[0] - 1, axis=0)


def _scaled_extrinsic(f):
    f["cameras/cam_b/extrinsics"][1, :3, :3] *= 1.5


def _bad_last_row(f):
    f["cameras/cam_a/extrinsics"][0, 3, 0] = 0.5


def _zero_fps(f):
    f.attrs["fps"] = 0.0


def _no_success(f):
    del f.attrs["success"]


def _wild_joint(f):
    f["observations/qpos"][1, 2] = 10.0


def _wild_gripper(f):
    f["action"][0, 13] = 255.0


def _float_images(f):
    T = f.attrs["num_frames"]
    del f["observations/images/cam_a"]
    f.create_dataset("observations/images/cam_a", data=np.zeros((T, 24, 32, 3), np.float32))


def _wrong_depth_size(f):
    T = f.attrs["num_frames"]
    del f["observations/depth/cam_b"]
    f.create_dataset("observations/depth/cam_b", data=np.zeros((T, 32, 24), np.uint16))


def _stamps_backwards(f):
    f["observations/stamp_ns"][3] = 0


def _no_objects_positions(f):
    del f["objects/positions"]


def _wrong_normalized(f):
    f["objects/positions_normalized"][0, 0, 0] = 0.99


def _foreign_format(f):
    f.attrs["format"] = "aloha"


def _joint_names(f):
    f.attrs["joint_names"] = np.array(["a", "b"], dtype=h5py.string_dtype())


DAMAGE = [
    (_nan_qpos, "observations/qpos", "non-finite"),
    (_short_action, "action", "shape"),
    (_scaled_extrinsic, "cameras/cam_b/extrinsics", "not orthonormal"),
    (_bad_last_row, "cameras/cam_a/extrinsics", "last row"),
    (_zero_fps, "@fps", "needs > 0"),
    (_no_success, "@success", "missing"),
    (_wild_joint, "observations/qpos", "rad"),
    (_wild_gripper, "action", "gripper 13"),
    (_float_images, "observations/images/cam_a", "dtype float32"),
    (_wrong_depth_size, "observations/depth/cam_b", "shape"),
    (_stamps_backwards, "observations/stamp_ns", "strictly increasing"),
    (_no_objects_positions, "objects/positions", "missing"),
    (_wrong_normalized, "objects/positions_normalized", "does not match"),
    (_foreign_format, "@format", "not a clamp episode"),
    (_joint_names, "@joint_names", "needs 14"),
]


@pytest.mark.parametrize("damage,field,words", DAMAGE, ids=[d[0].__name__[1:] for d in DAMAGE])
def test_damage_is_reported_with_file_and_field(good_dir, tmp_path, damage, field, words):
    shutil.copytree(good_dir, tmp_path / "ds")
    target = episode_path(tmp_path / "ds", "pick", 1)
    with h5py.File(target, "r+") as f:
        damage(f)
    summary, problems = check_dataset(tmp_path / "ds")
    assert problems, "damage not detected"
    assert {p.file for p in problems} == {str(target)}
    assert any(p.field == field and words in p.message for p in problems), problems
    assert (summary["valid"], summary["invalid"]) == (2, 1)


def test_unreadable_file_and_missing_dir(tmp_path):
    (tmp_path / "junk.hdf5").write_bytes(b"\x00" * 100)
    summary, problems = check_dataset(tmp_path)
    assert [(p.field, "cannot open as HDF5" in p.message) for p in problems] == [("(file)", True)]
    assert summary["invalid"] == 1
    _, problems = check_dataset(tmp_path / "missing")
    assert problems[0].message == "does not exist"


def test_partial_files_are_listed_not_failed(good_dir, tmp_path):
    shutil.copytree(good_dir, tmp_path / "ds")
    leftover = tmp_path / "ds" / "pick" / ".episode_000002.hdf5.partial"
    leftover.write_bytes(b"truncated")
    summary, problems = check_dataset(tmp_path / "ds")
    assert problems == [] and summary["episodes"] == 3
    assert summary["partial_files"] == [str(leftover)]


def test_cli_good_dataset(good_dir, capsys):
    assert main(["data", "check", str(good_dir)]) == 0
    out = capsys.readouterr().out
    assert "3 episodes (3 valid, 0 invalid)" in out and out.rstrip().endswith("OK")
    assert "pick" in out and "50.0%" in out
    assert main(["data", "check", str(good_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] is True and result["problems"] == []
    assert result["episodes"] == 3 and result["tasks"]["place"]["episodes"] == 1


def test_cli_damaged_dataset(good_dir, tmp_path, capsys):
    shutil.copytree(good_dir, tmp_path / "ds")
    target = episode_path(tmp_path / "ds", "place", 0)
    with h5py.File(target, "r+") as f:
        _nan_qpos(f)
        _scaled_extrinsic(f)
    assert main(["data", "check", str(tmp_path / "ds")]) == 1
    out = capsys.readouterr().out
    assert f"{target}: observations/qpos:" in out
    assert f"{target}: cameras/cam_b/extrinsics:" in out
    assert out.rstrip().endswith("FAILED")
    assert main(["data", "check", str(tmp_path / "ds"), "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] is False and result["invalid"] == 1
    assert {(p["file"], p["field"]) for p in result["problems"]} == {
        (str(target), "observations/qpos"),
        (str(target), "cameras/cam_b/extrinsics"),
    }
    assert main(["data", "check", str(tmp_path / "missing"), "--json"]) == 2  # bad input
    assert "does not exist" in capsys.readouterr().err
