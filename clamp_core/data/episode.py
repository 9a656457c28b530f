"""Episode files: one HDF5 file per recorded or simulated episode, in the ALOHA layout, extended.

The writer streams frames to disk and publishes the file atomically on close; the reader opens
lazily and slices single frames or training windows. ``docs/episodes.md`` documents the schema.
"""

from __future__ import annotations

import errno
import math
import os
import re
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ..aloha import ALOHA_JOINT_NAMES, NUM_JOINTS
from ..fileio import fsync_dir

FORMAT = "clamp-episode"
FORMAT_VERSION = 1
DEFAULT_CAMERAS = ["cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist"]
COMPRESSIONS = (None, "lzf", "gzip")
GZIP_LEVEL = 1
"""gzip level of images and depth: on simulated episodes level 1 comes within 10-25 % of the size
of h5py's default level 4 (7-20x smaller than raw frames) in about half its write time, and
reads about as fast as raw frames."""
LOWDIM_CHUNK = 64  # frames per chunk of the small time-indexed datasets
RIGID_TOL = 1e-3  # |R^T R - I| and |det R - 1| tolerance for float32 extrinsics

_STR = h5py.string_dtype()
_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


class EpisodeError(Exception):
    """Base class of the errors of this module."""


class EpisodeValidationError(EpisodeError, ValueError):
    """A metadata field or frame value that does not fit the schema; the message names it."""


class EpisodeWriteError(EpisodeError, OSError):
    """The episode could not be written (directory, permissions, full disk); nothing published."""


class EpisodeFormatError(EpisodeError, ValueError):
    """A file that is not a readable clamp episode of a supported format version."""


# ---------------------------------------------------------------------------------------------
# metadata


def _str_list(name: str, values) -> list[str]:
    if isinstance(values, (str, bytes)):
        raise EpisodeValidationError(f"{name}: needs a list of strings, got one string")
    out = [str(v) for v in values]
    if len(set(out)) != len(out):
        raise EpisodeValidationError(f"{name}: entries must be unique, got {out}")
    return out


def _check_name(field_name: str, name: str) -> None:
    if not _NAME_RE.match(name) or name in (".", ".."):
        raise EpisodeValidationError(
            f"{field_name}: '{name}' is not usable as an HDF5/path name; "
            "use letters, digits, '_', '-', '.' only"
        )


@dataclass
class EpisodeMeta:
    """What an episode is: task, language instruction, robot layout and recording settings."""

    task: str
    """Task identifier, e.g. 'transfer_cube'; names the task's directory of episodes."""
    instruction: str
    """Language instruction given to the policy, e.g. 'pick up the red cube'."""
    sim: bool
    """True for simulated episodes, False for real-robot recordings."""
    fps: float
    """Nominal control/recording rate (frames per second, > 0)."""
    seed: int
    """Random seed of the episode (scene layout in sim); also names the file."""
    robot: str = "aloha"
    """Robot model, e.g. 'aloha'."""
    joint_names: list[str] = field(default_factory=lambda: list(ALOHA_JOINT_NAMES))
    """14 names: left 6 arm joints, left gripper, right 6 arm joints, right gripper."""
    camera_names: list[str] = field(default_factory=lambda: list(DEFAULT_CAMERAS))
    """Cameras recorded each frame (RGB + depth + extrinsics), in a fixed order."""
    base_frame: str = "world"
    """Frame of extrinsics and object positions (REP-103: x forward, y left, z up)."""
    object_names: list[str] = field(default_factory=list)
    """Tracked objects (may be empty); positions are recorded per frame in this order."""
    workspace_min: list[float] = field(default_factory=lambda: [-0.6, -0.45, -0.05])
    """Lower corner of the workspace box in base_frame (m); maps to -1 when normalised."""
    workspace_max: list[float] = field(default_factory=lambda: [0.6, 0.45, 0.6])
    """Upper corner of the workspace box in base_frame (m); maps to +1 when normalised."""
    writer: str = ""
    """Optional free text naming the program that wrote the episode (stored if non-empty)."""
    extra: dict[str, str] = field(default_factory=dict)
    """Optional facts about where the episode came from (e.g. operator, notes, source bag), as
    name -> text; stored as attributes of the ``/extra`` group when non-empty."""

    def __post_init__(self) -> None:
        for name in ("task", "instruction", "robot", "base_frame"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise EpisodeValidationError(
                    f"meta.{name}: needs a non-empty string, got {value!r}"
                )
        _check_name("meta.task", self.task)
        self.sim = bool(self.sim)
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise EpisodeValidationError(f"meta.seed: needs an integer, got {self.seed!r}")
        self.seed = int(self.seed)
        try:
            self.fps = float(self.fps)
        except (TypeError, ValueError):
            raise EpisodeValidationError(f"meta.fps: needs a number, got {self.fps!r}") from None
        if not math.isfinite(self.fps) or self.fps <= 0:
            raise EpisodeValidationError(f"meta.fps: needs a finite value > 0, got {self.fps}")
        self.joint_names = _str_list("meta.joint_names", self.joint_names)
        if len(self.joint_names) != NUM_JOINTS:
            raise EpisodeValidationError(
                f"meta.joint_names: needs {NUM_JOINTS} names (left 6 joints, left gripper, "
                f"right 6 joints, right gripper), got {len(self.joint_names)}"
            )
        self.camera_names = _str_list("meta.camera_names", self.camera_names)
        for cam in self.camera_names:
            _check_name("meta.camera_names", cam)
        self.object_names = _str_list("meta.object_names", self.object_names)
        for name in ("workspace_min", "workspace_max"):
            v = np.asarray(getattr(self, name), dtype=np.float64)
            if v.shape != (3,) or not np.isfinite(v).all():
                raise EpisodeValidationError(f"meta.{name}: needs 3 finite numbers (m), got {v}")
            setattr(self, name, [float(x) for x in v])
        if any(a >= b for a, b in zip(self.workspace_min, self.workspace_max)):
            raise EpisodeValidationError(
                f"meta.workspace_min {self.workspace_min} must be below meta.workspace_max "
                f"{self.workspace_max} on every axis"
            )
        self.writer = str(self.writer or "")
        if not isinstance(self.extra, Mapping):
            raise EpisodeValidationError(
                f"meta.extra: needs a dict name -> text, got {type(self.extra).__name__}"
            )
        self.extra = {str(k): str(v) for k, v in self.extra.items()}
        for name in self.extra:
            _check_name("meta.extra", name)


@dataclass(eq=False)
class CameraCalib:
    """Intrinsics of one recorded camera, as in sensor_msgs/CameraInfo."""

    name: str
    """Camera name, one of EpisodeMeta.camera_names."""
    width: int
    """Image width (px)."""
    height: int
    """Image height (px)."""
    K: np.ndarray
    """(3, 3) float64 camera matrix [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] (px)."""
    D: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """(k,) float64 distortion coefficients of distortion_model (empty = none)."""
    distortion_model: str = "plumb_bob"
    """CameraInfo distortion model name, e.g. 'plumb_bob'."""

    def __post_init__(self) -> None:
        where = f"camera '{self.name}'"
        self.width, self.height = int(self.width), int(self.height)
        if self.width <= 0 or self.height <= 0:
            raise EpisodeValidationError(f"{where}: size {self.width}x{self.height} is empty")
        self.K = np.array(self.K, dtype=np.float64)
        if self.K.shape != (3, 3) or not np.isfinite(self.K).all():
            raise EpisodeValidationError(f"{where}: K needs a finite (3, 3) matrix, got {self.K}")
        if self.K[0, 0] <= 0 or self.K[1, 1] <= 0 or not np.allclose(self.K[2], [0, 0, 1]):
            raise EpisodeValidationError(
                f"{where}: K must be [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0"
            )
        self.D = np.array(self.D, dtype=np.float64).reshape(-1)
        if not np.isfinite(self.D).all():
            raise EpisodeValidationError(f"{where}: D has non-finite coefficients {self.D}")
        self.distortion_model = str(self.distortion_model)

    @classmethod
    def from_pinhole(cls, name: str, camera) -> CameraCalib:
        """From a ``clamp_core.geometry.PinholeCamera`` (or anything with its attributes)."""
        K = [[camera.fx, 0.0, camera.cx], [0.0, camera.fy, camera.cy], [0.0, 0.0, 1.0]]
        model = camera.distortion_model or ("plumb_bob" if camera.distortion else "")
        return cls(name, camera.width, camera.height, K, list(camera.distortion), model)

    def __eq__(self, other) -> bool:
        if not isinstance(other, CameraCalib):
            return NotImplemented
        return (
            (self.name, self.width, self.height, self.distortion_model)
            == (other.name, other.width, other.height, other.distortion_model)
            and np.array_equal(self.K, other.K)
            and np.array_equal(self.D, other.D)
        )


# ---------------------------------------------------------------------------------------------
# paths


def episode_path(out_dir, task: str, seed: int) -> Path:
    """``out_dir/<task>/episode_<seed:06d>.hdf5``: where resumable generation puts an episode."""
    _check_name("task", str(task))
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise EpisodeValidationError(f"seed: needs an integer >= 0, got {seed!r}")
    return Path(out_dir) / str(task) / f"episode_{int(seed):06d}.hdf5"


def partial_path(path) -> Path:
    """The temporary file an EpisodeWriter writes before publishing: ``.<name>.partial``."""
    path = Path(path)
    return path.with_name(f".{path.name}.partial")


def is_complete(path) -> bool:
    """True if ``path`` exists and is a published episode (right format, valid num_frames)."""
    try:
        with h5py.File(path, "r") as f:
            _check_format(f, path)
            n = f.attrs.get("num_frames")
            return isinstance(n, (int, np.integer)) and int(n) >= 1
    except (OSError, EpisodeError):
        return False


def _check_format(f: h5py.File, path) -> None:
    fmt = _attr_str(f.attrs.get("format"))
    if fmt != FORMAT:
        raise EpisodeFormatError(f"{path}: not a clamp episode (root attr format={fmt!r})")
    version = f.attrs.get("format_version")
    if not isinstance(version, (int, np.integer)) or int(version) != FORMAT_VERSION:
        raise EpisodeFormatError(
            f"{path}: format_version {version} is not supported by this clamp_core "
            f"(reads version {FORMAT_VERSION}); use a matching clamp_core or convert the file"
        )
    if "num_frames" not in f.attrs:
        raise EpisodeFormatError(f"{path}: has no num_frames attr (never closed by its writer)")


def _attr_str(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def _attr_str_list(value) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.atleast_1d(value)]


# ---------------------------------------------------------------------------------------------
# frame validation


def _real_array(name: str, value, shape: tuple, dtype=np.float32) -> np.ndarray:
    a = np.asarray(value)
    if a.dtype.kind not in "fiu":
        raise EpisodeValidationError(f"{name}: needs real numbers, got dtype {a.dtype}")
    if a.shape != shape:
        raise EpisodeValidationError(f"{name}: needs shape {shape}, got {a.shape}")
    with np.errstate(over="ignore", invalid="ignore"):
        a = a.astype(dtype)  # too large for float32 -> inf, reported below
    bad = ~np.isfinite(a)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise EpisodeValidationError(
            f"{name}: non-finite value {a[idx]} at index {idx} (or too large for {a.dtype})"
        )
    return a


def _int_scalar(name: str, value) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise EpisodeValidationError(
            f"{name}: needs an integer, got {type(value).__name__} {value!r}"
        )
    return int(value)


def rigid_error(T: np.ndarray) -> float:
    """How far the (..., 4, 4) matrices are from rigid transforms (0 for exact ones)."""
    T = np.asarray(T, dtype=np.float64)
    R = T[..., :3, :3]
    orth = np.abs(np.swapaxes(R, -1, -2) @ R - np.eye(3)).max(initial=0.0)
    det = np.abs(np.linalg.det(R) - 1.0).max(initial=0.0) if R.size else 0.0
    row = np.abs(T[..., 3, :] - [0.0, 0.0, 0.0, 1.0]).max(initial=0.0)
    return float(max(orth, det, row))


def _camera_dict(name: str, value, cameras: Sequence[str]) -> Mapping:
    if not isinstance(value, Mapping):
        raise EpisodeValidationError(
            f"{name}: needs a dict camera name -> array, got {type(value).__name__}"
        )
    missing = [c for c in cameras if c not in value]
    extra = [c for c in value if c not in cameras]
    if missing:
        raise EpisodeValidationError(
            f"{name}: missing camera(s) {missing}; every camera of meta.camera_names needs one "
            "each frame"
        )
    if extra:
        raise EpisodeValidationError(
            f"{name}: unknown camera(s) {extra}; meta.camera_names is {list(cameras)}"
        )
    return value


def normalize_positions(positions: np.ndarray, lo: Sequence[float], hi: Sequence[float]):
    """Base-frame positions (..., 3) m -> [-1, 1] over the box lo..hi (clipped outside it)."""
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    n = 2.0 * (np.asarray(positions, dtype=np.float64) - lo) / (hi - lo) - 1.0
    return np.clip(n, -1.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# writer


class EpisodeWriter:
    """Streams one episode to ``.<name>.partial`` next to ``path``; ``close`` publishes it.

    Every ``add_frame`` is validated in full before anything is written, so a rejected frame
    leaves the episode as it was. Leaving a ``with`` block by an exception discards the episode;
    leaving it normally requires ``close(success=...)`` to have been called.
    """

    def __init__(
        self,
        path,
        meta: EpisodeMeta,
        cameras: Sequence[CameraCalib] | Mapping[str, CameraCalib],
        *,
        compression: str | None = "gzip",
        depth_compression: str | None = "gzip",
        overwrite: bool = False,
        create_dirs: bool = False,
    ) -> None:
        """``compression`` applies to RGB images, ``depth_compression`` to depth: 'gzip' (level
        ``GZIP_LEVEL``, readable by every HDF5 build), 'lzf' or None (raw frames: least CPU,
        largest files); ``overwrite`` replaces an existing file at ``path`` on close;
        ``create_dirs`` makes the output directory if missing (otherwise that is an error)."""
        self.path = Path(path)
        self.partial = partial_path(self.path)
        if not isinstance(meta, EpisodeMeta):
            raise EpisodeValidationError(f"meta: needs an EpisodeMeta, got {type(meta).__name__}")
        self.meta = meta
        cams = list(cameras.values()) if isinstance(cameras, Mapping) else list(cameras)
        names = [c.name for c in cams]
        if sorted(names) != sorted(meta.camera_names) or len(names) != len(set(names)):
            raise EpisodeValidationError(
                f"cameras: need one CameraCalib per meta.camera_names {meta.camera_names}, "
                f"got {names}"
            )
        self.cameras = {c.name: c for c in cams}
        for name, value in (("compression", compression), ("depth_compression", depth_compression)):
            if value not in COMPRESSIONS:
                raise EpisodeValidationError(f"{name}: use one of {COMPRESSIONS}, got {value!r}")
        self._compression = compression
        self._depth_compression = depth_compression
        self._overwrite = overwrite
        self.num_frames = 0
        self._last_stamp: int | None = None
        self._file: h5py.File | None = None
        self._closed = False
        self._prepare_dir(create_dirs)
        try:
            self._file = h5py.File(self.partial, "w")
            self._create_layout()
        except OSError as e:
            self._abort()
            raise self._write_error("creating", e) from e

    # -- setup

    def _prepare_dir(self, create_dirs: bool) -> None:
        d = self.path.parent
        if create_dirs:
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise EpisodeWriteError(f"cannot create output directory {d}: {e}") from e
        if not d.exists():
            raise EpisodeWriteError(
                f"output directory {d} does not exist; create it first or pass create_dirs=True"
            )
        if not d.is_dir():
            raise EpisodeWriteError(f"output directory {d} is not a directory")
        if not os.access(d, os.W_OK | os.X_OK):
            raise EpisodeWriteError(
                f"output directory {d} is not writable by this user; fix its permissions or "
                "choose another output directory"
            )
        if self.path.exists() and not self._overwrite:
            raise EpisodeWriteError(
                f"{self.path} already exists; delete it, skip it (is_complete) or pass "
                "overwrite=True"
            )

    def _create_layout(self) -> None:
        f = self._file
        m = self.meta
        J, N = NUM_JOINTS, len(m.object_names)

        def series(name, tail, dtype, chunk_rows=LOWDIM_CHUNK, **kw):
            chunks = (chunk_rows,) + tuple(max(s, 1) for s in tail)
            maxshape = (None,) + tuple(s if s else None for s in tail)
            return f.create_dataset(
                name, shape=(0,) + tail, maxshape=maxshape, dtype=dtype, chunks=chunks, **kw
            )

        self._series: dict[str, h5py.Dataset] = {}
        for key in ("qpos", "qvel", "effort"):
            self._series[key] = series(f"observations/{key}", (J,), np.float32)
        self._series["stamp_ns"] = series("observations/stamp_ns", (), np.int64)
        self._series["action"] = series("action", (J,), np.float32)
        self._series["task_progress"] = series("task_progress", (), np.int32)
        objects = f.create_group("objects")
        objects.attrs["workspace_min"] = np.asarray(m.workspace_min, dtype=np.float64)
        objects.attrs["workspace_max"] = np.asarray(m.workspace_max, dtype=np.float64)
        objects.create_dataset("names", data=np.array(m.object_names, dtype=_STR), dtype=_STR)
        self._series["object_positions"] = series("objects/positions", (N, 3), np.float32)
        self._series["object_positions_normalized"] = series(
            "objects/positions_normalized", (N, 3), np.float32
        )
        f.create_group("observations/images")
        f.create_group("observations/depth")
        for cam in m.camera_names:
            c = self.cameras[cam]
            hw = (c.height, c.width)
            self._series[f"images/{cam}"] = series(
                f"observations/images/{cam}",
                hw + (3,),
                np.uint8,
                1,
                **_filters(self._compression, shuffle=False),
            )
            self._series[f"depth/{cam}"] = series(
                f"observations/depth/{cam}",
                hw,
                np.uint16,
                1,
                **_filters(self._depth_compression, shuffle=True),
            )
            g = f.create_group(f"cameras/{cam}")
            K = g.create_dataset("K", data=c.K.astype(np.float64))
            K.attrs["width"] = c.width
            K.attrs["height"] = c.height
            K.attrs["distortion_model"] = c.distortion_model
            g.create_dataset("D", data=c.D.astype(np.float64), dtype=np.float64)
            self._series[f"extrinsics/{cam}"] = series(
                f"cameras/{cam}/extrinsics", (4, 4), np.float32
            )
        self._created = time.time()
        self._write_root_attrs()
        f.flush()

    def _write_root_attrs(self) -> None:
        a = self._file.attrs
        m = self.meta
        a["format"] = FORMAT
        a["format_version"] = FORMAT_VERSION
        a["task"] = m.task
        a["instruction"] = m.instruction
        a["sim"] = bool(m.sim)
        a["fps"] = float(m.fps)
        a["seed"] = int(m.seed)
        a["robot"] = m.robot
        a["joint_names"] = np.array(m.joint_names, dtype=_STR)
        a["camera_names"] = np.array(m.camera_names, dtype=_STR)
        a["base_frame"] = m.base_frame
        a["created_unix"] = float(self._created)
        if m.writer:
            a["writer"] = m.writer
        if m.extra:
            g = self._file.create_group("extra")
            for name, text in m.extra.items():
                g.attrs[name] = text

    # -- frames

    def add_frame(
        self,
        stamp_ns: int,
        qpos,
        qvel,
        effort,
        action,
        images: Mapping[str, np.ndarray],
        depth_mm: Mapping[str, np.ndarray],
        extrinsics: Mapping[str, np.ndarray],
        object_positions=None,
        task_progress: int = 0,
    ) -> None:
        """Validate and append one frame.

        stamp_ns: int ns, strictly increasing. qpos, qvel, effort, action: (14,) numbers (rad,
        rad/s, N·m; grippers normalised 0 closed .. 1 open). images: cam -> (H, W, 3) uint8 RGB.
        depth_mm: cam -> (H, W) uint16 mm, 0 = invalid. extrinsics: cam -> (4, 4) T_base_cam.
        object_positions: (N, 3) m in base_frame (None when there are no objects).
        task_progress: int >= 0, the task stage.
        """
        if self._closed or self._file is None:
            raise EpisodeWriteError(f"{self.path}: writer is closed; start a new EpisodeWriter")
        values = self._validate(
            stamp_ns,
            qpos,
            qvel,
            effort,
            action,
            images,
            depth_mm,
            extrinsics,
            object_positions,
            task_progress,
        )
        t = self.num_frames
        try:
            for key, value in values.items():
                ds = self._series[key]
                ds.resize(t + 1, axis=0)
                ds[t] = value
        except OSError as e:
            self._abort()
            raise self._write_error(f"writing frame {t}", e) from e
        self.num_frames = t + 1
        self._last_stamp = values["stamp_ns"]

    def _validate(
        self,
        stamp_ns,
        qpos,
        qvel,
        effort,
        action,
        images,
        depth_mm,
        extrinsics,
        object_positions,
        task_progress,
    ) -> dict:
        m = self.meta
        out: dict = {}
        stamp = _int_scalar("stamp_ns", stamp_ns)
        if self._last_stamp is not None and stamp <= self._last_stamp:
            raise EpisodeValidationError(
                f"stamp_ns: {stamp} is not after the previous frame's {self._last_stamp}; "
                "stamps must strictly increase"
            )
        out["stamp_ns"] = np.int64(stamp)
        for name, value in (("qpos", qpos), ("qvel", qvel), ("effort", effort), ("action", action)):
            out[name] = _real_array(name, value, (NUM_JOINTS,))
        progress = _int_scalar("task_progress", task_progress)
        if not 0 <= progress < 2**31:
            raise EpisodeValidationError(f"task_progress: needs an int32 >= 0, got {progress}")
        out["task_progress"] = np.int32(progress)
        N = len(m.object_names)
        if object_positions is None and N == 0:
            object_positions = np.zeros((0, 3), np.float32)
        if object_positions is None:
            raise EpisodeValidationError(
                f"object_positions: needs an ({N}, 3) array for objects {m.object_names}"
            )
        pos = _real_array("object_positions", object_positions, (N, 3))
        out["object_positions"] = pos
        out["object_positions_normalized"] = normalize_positions(
            pos, m.workspace_min, m.workspace_max
        )
        _camera_dict("images", images, m.camera_names)
        _camera_dict("depth_mm", depth_mm, m.camera_names)
        _camera_dict("extrinsics", extrinsics, m.camera_names)
        for cam in m.camera_names:
            c = self.cameras[cam]
            img = np.asarray(images[cam])
            if img.dtype != np.uint8 or img.shape != (c.height, c.width, 3):
                raise EpisodeValidationError(
                    f"images['{cam}']: needs uint8 RGB of shape {(c.height, c.width, 3)} "
                    f"(H, W, 3), got {img.dtype} {img.shape}"
                )
            depth = np.asarray(depth_mm[cam])
            if depth.dtype != np.uint16 or depth.shape != (c.height, c.width):
                raise EpisodeValidationError(
                    f"depth_mm['{cam}']: needs uint16 millimetres of shape "
                    f"{(c.height, c.width)}, got {depth.dtype} {depth.shape}; convert metres "
                    "with clamp_core.geometry.image.encode_depth_mm"
                )
            T = _real_array(f"extrinsics['{cam}']", extrinsics[cam], (4, 4))
            err = rigid_error(T)
            if err > RIGID_TOL:
                raise EpisodeValidationError(
                    f"extrinsics['{cam}']: not a rigid transform (orthonormal rotation, last row "
                    f"0 0 0 1); off by {err:.2e}"
                )
            out[f"images/{cam}"] = img
            out[f"depth/{cam}"] = depth
            out[f"extrinsics/{cam}"] = T
        return out

    # -- finishing

    def close(self, success: bool) -> Path:
        """Write the final attrs and publish the file at ``path`` atomically; returns ``path``."""
        if self._closed:
            raise EpisodeWriteError(f"{self.path}: writer already closed")
        if self.num_frames == 0:
            self.discard()
            raise EpisodeWriteError(
                f"{self.path}: no frames were added; nothing published (call discard() for "
                "episodes you do not keep)"
            )
        try:
            self._file.attrs["success"] = bool(success)
            self._file.attrs["num_frames"] = int(self.num_frames)
            self._file.flush()
            self._file.close()
            self._file = None
            with open(self.partial, "rb") as fh:
                os.fsync(fh.fileno())
            if self.path.exists() and not self._overwrite:
                raise FileExistsError(errno.EEXIST, "appeared while writing", str(self.path))
            os.replace(self.partial, self.path)
            fsync_dir(self.path.parent)
        except OSError as e:
            self._abort()
            raise self._write_error("publishing", e) from e
        self._closed = True
        return self.path

    def discard(self) -> None:
        """Drop the episode: close and delete the partial file; nothing appears at ``path``."""
        self._abort()

    def _abort(self) -> None:
        self._closed = True
        if self._file is not None:
            try:
                self._file.close()
            except Exception:  # noqa: BLE001 - a failing close must not hide the cause
                pass
            self._file = None
        try:
            self.partial.unlink()
        except OSError:
            pass

    def _write_error(self, doing: str, e: OSError) -> EpisodeWriteError:
        if getattr(e, "errno", None) == errno.ENOSPC or "No space left" in str(e):
            return EpisodeWriteError(
                f"{self.path}: disk full while {doing} (ENOSPC); the partial file was removed. "
                "Free space or choose another output directory"
            )
        return EpisodeWriteError(
            f"{self.path}: failed while {doing}: {e}; the partial file was removed"
        )

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._abort()
            return
        if not self._closed:
            self._abort()
            raise EpisodeWriteError(
                f"{self.path}: the with block ended without close(success=...); episode "
                "discarded. Call writer.close(success) (or writer.discard()) inside the block"
            )

    def __del__(self) -> None:
        # garbage-collected without close: the episode is incomplete, so discard it
        if getattr(self, "_file", None) is not None:
            self._abort()


def _filters(compression: str | None, shuffle: bool) -> dict:
    """h5py create_dataset arguments for one of COMPRESSIONS; ``shuffle`` groups the bytes of
    multi-byte values (uint16 depth) first, which helps both codecs."""
    if compression is None:
        return {}
    kw: dict = {"compression": compression, "shuffle": shuffle}
    if compression == "gzip":
        kw["compression_opts"] = GZIP_LEVEL
    return kw


# ---------------------------------------------------------------------------------------------
# reader


class EpisodeReader:
    """Random access to one episode file. The HDF5 handle is opened on first use and reopened
    in a new process (fork or unpickling), so readers can go to DataLoader workers."""

    def __init__(self, path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"episode file {self.path} does not exist")
        self._file: h5py.File | None = None
        self._pid: int | None = None
        self._info: dict | None = None

    # -- handle

    def _h5(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file = None  # a handle inherited through fork is not used
            try:
                f = h5py.File(self.path, "r")
            except OSError as e:
                raise EpisodeFormatError(f"{self.path}: cannot open as HDF5: {e}") from e
            try:
                _check_format(f, self.path)
            except EpisodeFormatError:
                f.close()
                raise
            self._file, self._pid = f, os.getpid()
        return self._file

    def close(self) -> None:
        """Close the HDF5 handle (reopened on next use); cached metadata stays."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __enter__(self) -> EpisodeReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_file"] = None
        state["_pid"] = None
        return state

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # -- metadata

    def _load_info(self) -> dict:
        if self._info is None:
            f = self._h5()
            a = f.attrs
            objects = f["objects"]
            meta = EpisodeMeta(
                task=_attr_str(a["task"]),
                instruction=_attr_str(a["instruction"]),
                sim=bool(a["sim"]),
                fps=float(a["fps"]),
                seed=int(a["seed"]),
                robot=_attr_str(a["robot"]),
                joint_names=_attr_str_list(a["joint_names"]),
                camera_names=_attr_str_list(a["camera_names"]),
                base_frame=_attr_str(a["base_frame"]),
                object_names=list(objects["names"].asstr()[()]),
                workspace_min=list(objects.attrs["workspace_min"]),
                workspace_max=list(objects.attrs["workspace_max"]),
                writer=_attr_str(a.get("writer", "")),
                extra={k: _attr_str(v) for k, v in f["extra"].attrs.items()}
                if "extra" in f
                else {},
            )
            cameras = {}
            for cam in meta.camera_names:
                K = f[f"cameras/{cam}/K"]
                cameras[cam] = CameraCalib(
                    cam,
                    int(K.attrs["width"]),
                    int(K.attrs["height"]),
                    K[()],
                    f[f"cameras/{cam}/D"][()],
                    _attr_str(K.attrs["distortion_model"]),
                )
            self._info = {
                "meta": meta,
                "cameras": cameras,
                "num_frames": int(a["num_frames"]),
                "success": bool(a["success"]),
                "created_unix": float(a["created_unix"]),
            }
        return self._info

    @property
    def meta(self) -> EpisodeMeta:
        return self._load_info()["meta"]

    @property
    def cameras(self) -> dict[str, CameraCalib]:
        return self._load_info()["cameras"]

    @property
    def num_frames(self) -> int:
        return self._load_info()["num_frames"]

    @property
    def success(self) -> bool:
        return self._load_info()["success"]

    @property
    def created_unix(self) -> float:
        return self._load_info()["created_unix"]

    def __len__(self) -> int:
        return self.num_frames

    # -- data

    def _check_t(self, t) -> int:
        t = _int_scalar("t", t)
        if not 0 <= t < self.num_frames:
            raise IndexError(f"{self.path}: frame {t} out of range 0..{self.num_frames - 1}")
        return t

    def _cams(self, cameras) -> list[str]:
        names = self.meta.camera_names
        if cameras is None:
            return list(names)
        cams = [cameras] if isinstance(cameras, str) else list(cameras)
        unknown = [c for c in cams if c not in names]
        if unknown:
            raise KeyError(f"cameras: unknown {unknown}; this episode has {names}")
        return cams

    def frame(self, t: int, cameras=None, depth: bool = True, images: bool = True) -> dict:
        """One frame: stamp_ns, qpos, qvel, effort, action (14,), task_progress, object_positions
        (N, 3), object_positions_normalized, extrinsics {cam: (4, 4)} and, if asked, images
        {cam: (H, W, 3) uint8} and depth_mm {cam: (H, W) uint16}."""
        t = self._check_t(t)
        f = self._h5()
        cams = self._cams(cameras)
        out = {
            "t": t,
            "stamp_ns": int(f["observations/stamp_ns"][t]),
            "qpos": f["observations/qpos"][t],
            "qvel": f["observations/qvel"][t],
            "effort": f["observations/effort"][t],
            "action": f["action"][t],
            "task_progress": int(f["task_progress"][t]),
            "object_positions": f["objects/positions"][t],
            "object_positions_normalized": f["objects/positions_normalized"][t],
            "extrinsics": {c: f[f"cameras/{c}/extrinsics"][t] for c in cams},
        }
        if images:
            out["images"] = {c: f[f"observations/images/{c}"][t] for c in cams}
        if depth:
            out["depth_mm"] = {c: f[f"observations/depth/{c}"][t] for c in cams}
        return out

    LOWDIM = {
        "stamp_ns": "observations/stamp_ns",
        "qpos": "observations/qpos",
        "qvel": "observations/qvel",
        "action": "action",
        "task_progress": "task_progress",
        "object_positions": "objects/positions",
        "object_positions_normalized": "objects/positions_normalized",
    }

    def lowdim(self) -> dict[str, np.ndarray]:
        """Every small per-frame series in full (no images): stamp_ns (T,), qpos, qvel,
        action (T, 14), task_progress (T,), object_positions(_normalized) (T, N, 3)."""
        f = self._h5()
        return {name: f[key][()] for name, key in self.LOWDIM.items()}

    def extrinsics(self, cameras=None) -> dict[str, np.ndarray]:
        """{cam: (T, 4, 4)} every frame's camera-to-base pose, in one read per camera."""
        f = self._h5()
        return {c: f[f"cameras/{c}/extrinsics"][()] for c in self._cams(cameras)}

    def depth_mm(self, t: int, camera: str) -> np.ndarray:
        """(H, W) uint16 depth of one camera at frame ``t`` (mm, 0 = no reading)."""
        t = self._check_t(t)
        return self._h5()[f"observations/depth/{self._cams(camera)[0]}"][t]

    def _padded(self, key: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows start..stop-1 of a time series; out-of-range rows repeat the edge row."""
        ds = self._h5()[key]
        if stop <= start:
            return np.zeros((0,) + ds.shape[1:], ds.dtype), np.zeros(0, bool)
        T = self.num_frames
        idx = np.arange(start, stop)
        clipped = np.clip(idx, 0, T - 1)
        lo, hi = int(clipped[0]), int(clipped[-1]) + 1
        rows = ds[lo:hi]  # one contiguous read of the rows in range
        return rows[clipped - lo], (idx < 0) | (idx >= T)

    def window(
        self,
        t: int,
        obs_history: int = 1,
        action_history: int = 0,
        action_horizon: int = 1,
        cameras=None,
        depth: bool = True,
        images: bool = True,
    ) -> dict:
        """``frame(t)`` plus training windows with boolean ``*_is_pad`` masks: qpos_history
        (obs_history, 14) = qpos t-obs_history+1..t (edge-padded); action_history
        (action_history, 14) = actions t-H..t-1, before the episode's start the measured qpos
        at t (as the policy node and training feed it); action_future (action_horizon, 14) =
        actions t..t+F-1 (edge-padded)."""
        for name, v, least in (
            ("obs_history", obs_history, 1),
            ("action_history", action_history, 0),
            ("action_horizon", action_horizon, 0),
        ):
            if _int_scalar(name, v) < least:
                raise ValueError(f"{name}: needs an integer >= {least}, got {v}")
        out = self.frame(t, cameras=cameras, depth=depth, images=images)
        t = out["t"]
        out["qpos_history"], out["qpos_history_is_pad"] = self._padded(
            "observations/qpos", t - obs_history + 1, t + 1
        )
        # the policy engine's action history: before the episode's first action, the measured
        # position at t (what the node feeds before it has commanded anything)
        from ..policy.engine import action_history as history_of

        h5 = self._h5()
        lo = max(0, t - action_history)
        rows = h5["action"][lo:t]
        hist = history_of(np.arange(lo, t), rows, t, action_history, 1, h5["observations/qpos"][t])
        out["action_history"] = hist.astype(h5["action"].dtype, copy=False)
        out["action_history_is_pad"] = np.arange(t - action_history, t) < 0
        out["action_future"], out["action_future_is_pad"] = self._padded(
            "action", t, t + action_horizon
        )
        return out


# ---------------------------------------------------------------------------------------------
# many episodes


def find_episodes(paths_or_dir) -> list[Path]:
    """Episode files from a directory (searched recursively for ``*.hdf5``), a file or a list."""
    if isinstance(paths_or_dir, (str, os.PathLike)):
        p = Path(paths_or_dir)
        if p.is_dir():
            return sorted(q for q in p.rglob("*.hdf5") if q.is_file())
        return [p]
    return [Path(p) for p in paths_or_dir]


class EpisodeIndex:
    """All (episode, t) pairs of many episode files, for random access during training.

    Keeps at most ``max_open`` HDF5 handles open at once (least recently used closed first);
    picklable, so each DataLoader worker gets its own handles.
    """

    def __init__(self, paths_or_dir: str | os.PathLike | Iterable, max_open: int = 64) -> None:
        paths = find_episodes(paths_or_dir)
        if not paths:
            raise FileNotFoundError(f"no *.hdf5 episodes found in {paths_or_dir}")
        self.readers: list[EpisodeReader] = []
        for p in paths:
            r = EpisodeReader(p)
            r.num_frames  # noqa: B018 - reads and caches the metadata, checks the format
            r.close()
            self.readers.append(r)
        self.max_open = max(1, int(max_open))
        counts = np.array([r.num_frames for r in self.readers], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(counts)])
        self._open: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return int(self._starts[-1])

    def locate(self, i: int) -> tuple[int, int]:
        """Global index -> (episode number, frame t)."""
        n = len(self)
        i = _int_scalar("index", i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for {n} frames")
        e = int(np.searchsorted(self._starts, i, side="right")) - 1
        return e, i - int(self._starts[e])

    def __getitem__(self, i: int) -> tuple[EpisodeReader, int]:
        e, t = self.locate(i)
        self._open[e] = None
        self._open.move_to_end(e)
        while len(self._open) > self.max_open:
            old, _ = self._open.popitem(last=False)
            self.readers[old].close()
        return self.readers[e], t

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()
        return state
