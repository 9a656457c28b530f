"""EpisodeWriter / EpisodeReader / EpisodeIndex: round trip, windows, atomic publishing, errors.

Synthetic episodes are small (2 cameras 32x24, 10 frames) with distinct values per frame, so a
misplaced row or camera shows up as a mismatch.
"""

from __future__ import annotations

import errno
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from clamp_core.data import (
    ALOHA_JOINT_NAMES,
    CameraCalib,
    EpisodeFormatError,
    EpisodeIndex,
    EpisodeMeta,
    EpisodeReader,
    EpisodeValidationError,
    EpisodeWriteError,
    EpisodeWriter,
    check_dataset,
    episode_path,
    is_complete,
    partial_path,
)
from clamp_core.data.episode import GZIP_LEVEL, normalize_positions

REPO = Path(__file__).resolve().parents[3]
CAMS = ("cam_a", "cam_b")
W, H = 32, 24


def make_meta(task: str = "transfer_cube", seed: int = 7, **kw) -> EpisodeMeta:
    args = dict(
        task=task,
        instruction="put the red cube in the bin",
        sim=True,
        fps=50.0,
        seed=seed,
        camera_names=list(CAMS),
        object_names=["red_cube", "bin"],
        writer="test_episode",
    )
    args.update(kw)
    return EpisodeMeta(**args)


def make_cameras(names=CAMS) -> list[CameraCalib]:
    return [
        CameraCalib(
            name,
            W,
            H,
            [[40.0 + i, 0, 15.5], [0, 41.0 + i, 11.5], [0, 0, 1]],
            [0.1 * (i + 1), -0.01, 0.0, 0.0, 0.001],
            "plumb_bob",
        )
        for i, name in enumerate(names)
    ]


def rot_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def make_frames(T: int = 10, seed: int = 0, cams=CAMS, n_objects: int = 2) -> list[dict]:
    """Keyword arguments of add_frame for T frames; every value differs between frames."""
    rng = np.random.default_rng(seed)
    frames = []
    for t in range(T):
        qpos = rng.uniform(-1.5, 1.5, 14)
        qpos[[6, 13]] = rng.uniform(0, 1, 2)
        action = qpos + rng.normal(0, 0.05, 14)
        action[[6, 13]] = rng.uniform(0, 1, 2)
        extrinsics = {}
        for i, cam in enumerate(cams):
            X = np.eye(4)
            X[:3, :3] = rot_z(0.1 * t + i)
            X[:3, 3] = [0.1 * t, -0.2 * i, 0.8]
            extrinsics[cam] = X
        frames.append(
            dict(
                stamp_ns=1_000_000_000 + t * 20_000_000,
                qpos=qpos,
                qvel=rng.normal(0, 1, 14),
                effort=rng.normal(0, 3, 14).astype(np.float32),
                action=action,
                images={c: rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for c in cams},
                depth_mm={c: rng.integers(0, 3000, (H, W), dtype=np.uint16) for c in cams},
                extrinsics=extrinsics,
                object_positions=rng.uniform([-0.5, -0.4, 0.0], [0.5, 0.4, 0.5], (n_objects, 3)),
                task_progress=t // 4,
            )
        )
    return frames


def write_episode(path, frames=None, meta=None, success=True, **writer_kw) -> list[dict]:
    frames = make_frames() if frames is None else frames
    meta = make_meta() if meta is None else meta
    cams = make_cameras(meta.camera_names)
    with EpisodeWriter(path, meta, cams, **writer_kw) as w:
        for fr in frames:
            w.add_frame(**fr)
        w.close(success=success)
    return frames


@pytest.fixture
def episode(tmp_path) -> tuple[Path, list[dict]]:
    path = episode_path(tmp_path, "transfer_cube", 7)
    path.parent.mkdir(parents=True)
    return path, write_episode(path)


# ---------------------------------------------------------------------------------------------
# round trip


@pytest.mark.parametrize("compression", [None, "lzf", "gzip"])
def test_round_trip_every_field(tmp_path, compression):
    path = tmp_path / "ep.hdf5"
    meta = make_meta()
    frames = write_episode(path, meta=meta, compression=compression)
    assert path.exists() and not partial_path(path).exists()
    with EpisodeReader(path) as r:
        assert r.meta == meta
        assert r.cameras == {c.name: c for c in make_cameras()}
        assert r.num_frames == len(frames) == len(r)
        assert r.success is True
        assert r.created_unix > 0
        for t, fr in enumerate(frames):
            got = r.frame(t)
            assert got["stamp_ns"] == fr["stamp_ns"]
            for key in ("qpos", "qvel", "effort", "action"):
                assert got[key].dtype == np.float32
                np.testing.assert_array_equal(got[key], np.float32(fr[key]), err_msg=key)
            assert got["task_progress"] == fr["task_progress"]
            np.testing.assert_array_equal(
                got["object_positions"], np.float32(fr["object_positions"])
            )
            np.testing.assert_allclose(
                got["object_positions_normalized"],
                2
                * (fr["object_positions"] - meta.workspace_min)
                / (np.array(meta.workspace_max) - meta.workspace_min)
                - 1,
                atol=1e-6,
            )
            for cam in CAMS:
                np.testing.assert_array_equal(got["images"][cam], fr["images"][cam])
                np.testing.assert_array_equal(got["depth_mm"][cam], fr["depth_mm"][cam])
                np.testing.assert_array_equal(
                    got["extrinsics"][cam], np.float32(fr["extrinsics"][cam])
                )


def test_camera_frames_are_compressed_by_default(tmp_path):
    # rendered frames are mostly flat areas (table, background) with a few objects
    frames = make_frames(T=6)
    for t, fr in enumerate(frames):
        image = np.full((H, W, 3), 120, np.uint8)
        image[5:12, 4 + t : 14 + t] = (200, 30, 30)
        depth = np.full((H, W), 900, np.uint16)
        depth[5:12, 4 + t : 14 + t] = 850
        fr["images"] = {c: image for c in CAMS}
        fr["depth_mm"] = {c: depth for c in CAMS}
    write_episode(tmp_path / "raw.hdf5", frames, compression=None, depth_compression=None)
    write_episode(tmp_path / "default.hdf5", frames)
    with h5py.File(tmp_path / "raw.hdf5") as raw, h5py.File(tmp_path / "default.hdf5") as packed:
        for key in ("observations/images/cam_a", "observations/depth/cam_b"):
            assert packed[key].id.get_storage_size() < 0.5 * raw[key].id.get_storage_size()
            np.testing.assert_array_equal(packed[key][()], raw[key][()])


def test_plain_h5py_layout(episode):
    path, frames = episode
    T = len(frames)
    with h5py.File(path, "r") as f:
        a = f.attrs
        assert a["format"] == "clamp-episode" and a["format_version"] == 1
        assert a["task"] == "transfer_cube" and a["instruction"].startswith("put the red")
        assert bool(a["sim"]) and bool(a["success"]) and a["num_frames"] == T
        assert a["fps"] == 50.0 and a["seed"] == 7 and a["robot"] == "aloha"
        assert list(a["joint_names"]) == ALOHA_JOINT_NAMES
        assert list(a["camera_names"]) == list(CAMS)
        assert a["base_frame"] == "world" and a["writer"] == "test_episode"
        for key in ("observations/qpos", "observations/qvel", "observations/effort", "action"):
            assert f[key].shape == (T, 14) and f[key].dtype == np.float32
        assert f["observations/stamp_ns"].dtype == np.int64
        assert f["task_progress"].shape == (T,) and f["task_progress"].dtype == np.int32
        img = f["observations/images/cam_a"]
        assert img.shape == (T, H, W, 3) and img.dtype == np.uint8 and img.chunks[0] == 1
        assert (img.compression, img.compression_opts) == ("gzip", GZIP_LEVEL)
        dep = f["observations/depth/cam_b"]
        assert dep.shape == (T, H, W) and dep.dtype == np.uint16 and dep.chunks[0] == 1
        assert (dep.compression, dep.compression_opts, dep.shuffle) == ("gzip", GZIP_LEVEL, True)
        K = f["cameras/cam_a/K"]
        assert K.shape == (3, 3) and K.dtype == np.float64
        assert (K.attrs["width"], K.attrs["height"]) == (W, H)
        assert K.attrs["distortion_model"] == "plumb_bob"
        assert f["cameras/cam_a/D"].shape == (5,)
        assert f["cameras/cam_b/extrinsics"].shape == (T, 4, 4)
        assert list(f["objects/names"].asstr()[()]) == ["red_cube", "bin"]
        assert f["objects/positions"].shape == (T, 2, 3)
        np.testing.assert_array_equal(f["objects"].attrs["workspace_min"], [-0.6, -0.45, -0.05])
        np.testing.assert_array_equal(f["action"][3], np.float32(frames[3]["action"]))


def test_no_objects_and_unsuccessful(tmp_path):
    path = tmp_path / "ep.hdf5"
    meta = make_meta(object_names=[])
    frames = make_frames(T=3, n_objects=0)
    for fr in frames:
        fr["object_positions"] = None
    write_episode(path, frames, meta, success=False)
    with EpisodeReader(path) as r:
        assert r.success is False and r.meta.object_names == []
        assert r.frame(2)["object_positions"].shape == (0, 3)
    assert check_dataset(tmp_path)[1] == []


def test_normalized_positions_are_clipped_to_the_box():
    n = normalize_positions(
        [[-0.6, 0.45, 5.0], [0.0, 0.0, 0.275]], [-0.6, -0.45, -0.05], [0.6, 0.45, 0.6]
    )
    np.testing.assert_allclose(n, [[-1, 1, 1], [0, 0, 0]], atol=1e-6)


# ---------------------------------------------------------------------------------------------
# windows


def test_window_pads_like_the_policy_node(episode):
    path, frames = episode
    T = len(frames)
    q = np.float32([fr["qpos"] for fr in frames])
    a = np.float32([fr["action"] for fr in frames])
    with EpisodeReader(path) as r:
        w = r.window(0, obs_history=3, action_history=2, action_horizon=4)
        np.testing.assert_array_equal(w["qpos_history"], q[[0, 0, 0]])
        assert w["qpos_history_is_pad"].tolist() == [True, True, False]
        # before the first action: the measured position at t, as the node feeds it
        np.testing.assert_array_equal(w["action_history"], q[[0, 0]])
        assert w["action_history_is_pad"].tolist() == [True, True]
        w2 = r.window(1, action_history=3)
        np.testing.assert_array_equal(w2["action_history"], np.stack([q[1], q[1], a[0]]))
        assert w2["action_history_is_pad"].tolist() == [True, True, False]
        np.testing.assert_array_equal(w["action_future"], a[0:4])
        assert w["action_future_is_pad"].tolist() == [False] * 4

        w = r.window(T - 2, obs_history=2, action_history=3, action_horizon=4)
        np.testing.assert_array_equal(w["qpos_history"], q[[T - 3, T - 2]])
        assert not w["qpos_history_is_pad"].any()
        np.testing.assert_array_equal(w["action_history"], a[T - 5 : T - 2])
        assert not w["action_history_is_pad"].any()
        np.testing.assert_array_equal(w["action_future"], a[[T - 2, T - 1, T - 1, T - 1]])
        assert w["action_future_is_pad"].tolist() == [False, False, True, True]

        w = r.window(5, action_history=2, action_horizon=3)
        np.testing.assert_array_equal(w["action_history"], a[3:5])
        np.testing.assert_array_equal(w["action_future"], a[5:8])
        np.testing.assert_array_equal(w["qpos_history"], q[5:6])
        np.testing.assert_array_equal(w["images"]["cam_b"], frames[5]["images"]["cam_b"])
        np.testing.assert_array_equal(
            w["extrinsics"]["cam_a"], np.float32(frames[5]["extrinsics"]["cam_a"])
        )

        w = r.window(1, action_history=0, action_horizon=T + 5)
        assert w["action_history"].shape == (0, 14)
        assert w["action_future"].shape == (T + 5, 14)
        assert w["action_future_is_pad"].sum() == 6


def test_frame_returns_only_what_is_asked(episode):
    path, _ = episode
    with EpisodeReader(path) as r:
        fr = r.frame(3, cameras=["cam_b"], depth=False)
        assert set(fr["images"]) == {"cam_b"} and "depth_mm" not in fr
        assert set(fr["extrinsics"]) == {"cam_b"}
        assert "images" not in r.frame(3, images=False)
        with pytest.raises(IndexError, match="frame 10 out of range"):
            r.frame(10)
        with pytest.raises(KeyError, match="cam_x"):
            r.frame(0, cameras=["cam_x"])


# ---------------------------------------------------------------------------------------------
# atomic publishing


def test_exception_inside_with_leaves_nothing(tmp_path):
    path = tmp_path / "ep.hdf5"
    frames = make_frames(T=4)
    with pytest.raises(RuntimeError, match="simulated crash"):
        with EpisodeWriter(path, make_meta(), make_cameras()) as w:
            for fr in frames:
                w.add_frame(**fr)
            assert partial_path(path).exists() and not path.exists()
            raise RuntimeError("simulated crash")
    assert list(tmp_path.iterdir()) == []


def test_with_block_without_close_discards(tmp_path):
    path = tmp_path / "ep.hdf5"
    with pytest.raises(EpisodeWriteError, match=r"without close\(success"):
        with EpisodeWriter(path, make_meta(), make_cameras()) as w:
            w.add_frame(**make_frames(T=1)[0])
    assert list(tmp_path.iterdir()) == []


def test_discard_and_empty_close(tmp_path):
    path = tmp_path / "ep.hdf5"
    w = EpisodeWriter(path, make_meta(), make_cameras())
    w.add_frame(**make_frames(T=1)[0])
    w.discard()
    assert list(tmp_path.iterdir()) == []
    w = EpisodeWriter(path, make_meta(), make_cameras())
    with pytest.raises(EpisodeWriteError, match="no frames"):
        w.close(success=True)
    assert list(tmp_path.iterdir()) == []


def test_existing_episode_needs_overwrite(episode):
    path, _ = episode
    with pytest.raises(EpisodeWriteError, match="already exists"):
        EpisodeWriter(path, make_meta(), make_cameras())
    write_episode(path, make_frames(T=3), success=False, overwrite=True)
    with EpisodeReader(path) as r:
        assert r.num_frames == 3 and r.success is False


_KILLED_WRITER = """
import sys, time
import numpy as np
from clamp_core.data import CameraCalib, EpisodeMeta, EpisodeWriter
meta = EpisodeMeta(task="t", instruction="i", sim=True, fps=10.0, seed=1, camera_names=["c"])
cam = CameraCalib("c", 8, 6, [[5, 0, 3.5], [0, 5, 2.5], [0, 0, 1]])
w = EpisodeWriter(sys.argv[1], meta, [cam])
for t in range(1000):
    w.add_frame(t, np.zeros(14), np.zeros(14), np.zeros(14), np.zeros(14),
                {"c": np.zeros((6, 8, 3), np.uint8)}, {"c": np.zeros((6, 8), np.uint16)},
                {"c": np.eye(4)}, None, 0)
    print(f"frame {t}", flush=True)
    if t >= 3:
        time.sleep(1000)
"""


def test_sigkilled_writer_leaves_nothing_at_path(tmp_path, capsys):
    from clamp_core.cli import main

    path = tmp_path / "t" / "episode_000001.hdf5"
    path.parent.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_KILLED_WRITER), str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )
    try:
        for line in proc.stdout:
            if line.strip() == "frame 3":
                break
        else:
            pytest.fail(f"writer ended early: {proc.stderr.read()}")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not path.exists()
    assert not is_complete(path)
    leftovers = list(path.parent.iterdir())
    assert leftovers == [partial_path(path)]  # the killed writer's file, never at path
    assert not is_complete(leftovers[0])
    summary, problems = check_dataset(tmp_path)
    assert problems == [] and summary["episodes"] == 0
    assert summary["partial_files"] == [str(partial_path(path))]
    assert main(["data", "check", str(tmp_path)]) == 0
    assert "leftover partial" in capsys.readouterr().out
    # a new writer for the same path replaces the stale partial file
    meta = make_meta(task="t", seed=1)
    write_episode(path, make_frames(T=2), meta)
    assert is_complete(path) and not partial_path(path).exists()


# ---------------------------------------------------------------------------------------------
# output directory and disk errors


def test_missing_output_dir_is_a_clear_error(tmp_path):
    path = tmp_path / "nope" / "ep.hdf5"
    with pytest.raises(EpisodeWriteError, match="does not exist.*create_dirs=True"):
        EpisodeWriter(path, make_meta(), make_cameras())
    write_episode(path, make_frames(T=2), create_dirs=True)
    assert is_complete(path)


def test_output_dir_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(EpisodeWriteError, match="not a directory"):
        EpisodeWriter(tmp_path / "file" / "ep.hdf5", make_meta(), make_cameras())


def test_unwritable_dir_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    with pytest.raises(EpisodeWriteError, match="not writable"):
        EpisodeWriter(tmp_path / "ep.hdf5", make_meta(), make_cameras())


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_dir_reported(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    try:
        with pytest.raises(EpisodeWriteError, match="not writable"):
            EpisodeWriter(d / "ep.hdf5", make_meta(), make_cameras())
    finally:
        d.chmod(0o755)


def test_disk_full_removes_partial_and_says_so(tmp_path, monkeypatch):
    path = tmp_path / "ep.hdf5"
    frames = make_frames(T=3)
    w = EpisodeWriter(path, make_meta(), make_cameras())
    w.add_frame(**frames[0])

    def full(self, key, value):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(h5py.Dataset, "__setitem__", full)
    with pytest.raises(EpisodeWriteError, match="disk full"):
        w.add_frame(**frames[1])
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(EpisodeWriteError, match="closed"):
        w.add_frame(**frames[2])


# ---------------------------------------------------------------------------------------------
# validation


def _nan_at(a, i=3):
    a = np.array(a, dtype=np.float64)
    a.flat[i] = np.nan
    return a


def _skewed(X):
    X = np.array(X)
    X[0, 1] += 0.2
    return X


BAD_FRAMES = [
    ("qpos", lambda f: {"qpos": np.zeros(13)}, "qpos: needs shape (14,)"),
    ("qvel", lambda f: {"qvel": _nan_at(f["qvel"])}, "qvel: non-finite value"),
    ("effort", lambda f: {"effort": np.array(["a"] * 14)}, "effort: needs real numbers"),
    ("action", lambda f: {"action": np.full(14, 1e39)}, "action: non-finite"),
    ("stamp_ns", lambda f: {"stamp_ns": 1.5}, "stamp_ns: needs an integer"),
    ("task_progress", lambda f: {"task_progress": 1.0}, "task_progress: needs an integer"),
    ("task_progress", lambda f: {"task_progress": -1}, "task_progress: needs an int32 >= 0"),
    ("object_positions", lambda f: {"object_positions": np.zeros((3, 3))}, "object_positions:"),
    ("object_positions", lambda f: {"object_positions": None}, "object_positions:"),
    ("images", lambda f: {"images": {"cam_a": f["images"]["cam_a"]}}, "images: missing"),
    (
        "images",
        lambda f: {"images": {**f["images"], "cam_z": f["images"]["cam_a"]}},
        "images: unknown camera",
    ),
    (
        "images['cam_b']",
        lambda f: {"images": {**f["images"], "cam_b": np.zeros((H, W, 3), np.float32)}},
        "images['cam_b']: needs uint8",
    ),
    (
        "images['cam_a']",
        lambda f: {"images": {**f["images"], "cam_a": np.zeros((W, H, 3), np.uint8)}},
        "images['cam_a']: needs uint8 RGB of shape (24, 32, 3)",
    ),
    (
        "depth_mm['cam_a']",
        lambda f: {"depth_mm": {**f["depth_mm"], "cam_a": np.ones((H, W), np.float32)}},
        "encode_depth_mm",
    ),
    ("depth_mm", lambda f: {"depth_mm": [1, 2]}, "depth_mm: needs a dict"),
    (
        "extrinsics['cam_b']",
        lambda f: {"extrinsics": {**f["extrinsics"], "cam_b": _skewed(f["extrinsics"]["cam_b"])}},
        "extrinsics['cam_b']: not a rigid transform",
    ),
    (
        "extrinsics['cam_a']",
        lambda f: {"extrinsics": {**f["extrinsics"], "cam_a": _nan_at(np.eye(4))}},
        "extrinsics['cam_a']: non-finite",
    ),
]


@pytest.mark.parametrize("field,change,message", BAD_FRAMES, ids=[b[0] for b in BAD_FRAMES])
def test_bad_frame_names_the_field_and_keeps_the_episode(tmp_path, field, change, message):
    path = tmp_path / "ep.hdf5"
    frames = make_frames(T=3)
    with EpisodeWriter(path, make_meta(), make_cameras()) as w:
        w.add_frame(**frames[0])
        bad = {**frames[1], **change(frames[1])}
        with pytest.raises(EpisodeValidationError) as e:
            w.add_frame(**bad)
        assert str(e.value).startswith(field)
        assert message in str(e.value)
        assert w.num_frames == 1  # nothing of the rejected frame was written
        w.add_frame(**frames[1])
        w.add_frame(**frames[2])
        w.close(success=True)
    assert check_dataset(path)[1] == []


def test_stamps_must_increase(tmp_path):
    frames = make_frames(T=2)
    frames[1]["stamp_ns"] = frames[0]["stamp_ns"]
    with pytest.raises(EpisodeValidationError, match="stamp_ns: .* strictly increase"):
        write_episode(tmp_path / "ep.hdf5", frames)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kw,field",
    [
        ({"fps": 0}, "meta.fps"),
        ({"fps": float("nan")}, "meta.fps"),
        ({"joint_names": ALOHA_JOINT_NAMES[:13]}, "meta.joint_names"),
        ({"camera_names": ["a", "a"]}, "meta.camera_names"),
        ({"camera_names": ["a/b"]}, "meta.camera_names"),
        ({"task": "pick/place"}, "meta.task"),
        ({"instruction": ""}, "meta.instruction"),
        ({"seed": 1.5}, "meta.seed"),
        ({"workspace_min": [0, 0, 1]}, "meta.workspace_min"),
        ({"workspace_max": [1, 1]}, "meta.workspace_max"),
    ],
)
def test_bad_meta_names_the_field(kw, field):
    with pytest.raises(EpisodeValidationError) as e:
        make_meta(**kw)
    assert str(e.value).startswith(field)


def test_bad_writer_arguments(tmp_path):
    with pytest.raises(EpisodeValidationError, match="^cameras: need one CameraCalib"):
        EpisodeWriter(tmp_path / "ep.hdf5", make_meta(), make_cameras(["cam_a"]))
    with pytest.raises(EpisodeValidationError, match="^compression: use one of"):
        EpisodeWriter(tmp_path / "ep.hdf5", make_meta(), make_cameras(), compression="zstd")
    with pytest.raises(EpisodeValidationError, match="camera 'c': K must be"):
        CameraCalib("c", 8, 6, [[5, 0, 3], [0, 5, 2], [0, 1, 1]])
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# reading: formats, pickling, index


def test_reader_refuses_other_formats(tmp_path, episode):
    path, _ = episode
    other = tmp_path / "other.hdf5"
    with h5py.File(other, "w") as f:
        f.attrs["format"] = "aloha"
    with pytest.raises(EpisodeFormatError, match="not a clamp episode"):
        EpisodeReader(other).num_frames  # noqa: B018
    newer = tmp_path / "newer.hdf5"
    newer.write_bytes(path.read_bytes())
    with h5py.File(newer, "r+") as f:
        f.attrs["format_version"] = 2
    with pytest.raises(EpisodeFormatError, match="format_version 2 is not supported"):
        EpisodeReader(newer).meta  # noqa: B018
    junk = tmp_path / "junk.hdf5"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(EpisodeFormatError, match="cannot open as HDF5"):
        EpisodeReader(junk).meta  # noqa: B018
    with pytest.raises(FileNotFoundError):
        EpisodeReader(tmp_path / "missing.hdf5")
    assert not is_complete(other) and not is_complete(newer) and not is_complete(junk)


def test_reader_works_after_pickling(episode):
    path, frames = episode
    r = EpisodeReader(path)
    before = r.window(4, obs_history=2, action_horizon=3)
    r2 = pickle.loads(pickle.dumps(r))
    assert r2._file is None  # the handle does not travel
    after = r2.window(4, obs_history=2, action_horizon=3)
    for key in ("qpos_history", "action_future", "action_future_is_pad"):
        np.testing.assert_array_equal(after[key], before[key])
    np.testing.assert_array_equal(after["images"]["cam_a"], frames[4]["images"]["cam_a"])
    r.close()
    r2.close()


def test_episode_path_and_is_complete(tmp_path):
    p = episode_path(tmp_path, "transfer_cube", 42)
    assert p == tmp_path / "transfer_cube" / "episode_000042.hdf5"
    assert not is_complete(p)
    with pytest.raises(EpisodeValidationError, match="seed"):
        episode_path(tmp_path, "transfer_cube", -1)
    with pytest.raises(EpisodeValidationError, match="task"):
        episode_path(tmp_path, "../x", 1)
    write_episode(p, make_frames(T=2), make_meta(seed=42), create_dirs=True)
    assert is_complete(p)


def test_index_over_many_episodes(tmp_path):
    lengths = [3, 5, 2]
    for seed, T in enumerate(lengths):
        write_episode(
            episode_path(tmp_path, "task", seed),
            make_frames(T=T, seed=seed),
            make_meta(task="task", seed=seed),
            create_dirs=True,
        )
    (tmp_path / "task" / ".episode_000009.hdf5.partial").write_bytes(b"partial")
    index = EpisodeIndex(tmp_path, max_open=2)
    assert len(index) == sum(lengths)
    pairs = [(r.meta.seed, t) for r, t in (index[i] for i in range(len(index)))]
    assert pairs == [(s, t) for s, T in enumerate(lengths) for t in range(T)]
    assert sum(r._file is not None for r in index.readers) <= 2
    r, t = index[-1]
    assert (r.meta.seed, t) == (2, 1)
    with pytest.raises(IndexError):
        index[len(index)]
    clone = pickle.loads(pickle.dumps(index))
    r, t = clone[4]
    assert (r.meta.seed, t) == (1, 1)
    np.testing.assert_array_equal(r.frame(t)["qpos"], np.float32(make_frames(5, 1)[1]["qpos"]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no \\*.hdf5 episodes"):
        EpisodeIndex(tmp_path / "empty")


def test_index_in_dataloader_workers(tmp_path):
    torch = pytest.importorskip("torch")
    for seed in range(2):
        write_episode(
            episode_path(tmp_path, "task", seed),
            make_frames(T=4, seed=seed),
            make_meta(task="task", seed=seed),
            create_dirs=True,
        )
    index = EpisodeIndex(tmp_path)
    index[0][0].frame(0)  # the parent holds an open handle before the workers fork

    class Frames(torch.utils.data.Dataset):
        def __len__(self):
            return len(index)

        def __getitem__(self, i):
            reader, t = index[i]
            w = reader.window(t, action_horizon=2, depth=False)
            return i, w["action_future"], w["images"]["cam_a"]

    loader = torch.utils.data.DataLoader(Frames(), batch_size=3, num_workers=2)
    seen = 0
    for ids, actions, images in loader:
        for i, act, img in zip(ids.tolist(), actions.numpy(), images.numpy()):
            reader, t = index[i]
            w = reader.window(t, action_horizon=2)
            np.testing.assert_array_equal(act, w["action_future"])
            np.testing.assert_array_equal(img, w["images"]["cam_a"])
            seen += 1
    assert seen == len(index) == 8
