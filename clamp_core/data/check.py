"""Dataset checker behind `clamp data check`: validates every episode file against the schema.

Reads with plain h5py, independently of EpisodeReader, and never loads images or depth whole:
only their shapes and dtypes are checked. Collects every problem instead of stopping at the first.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np

from ..aloha import GRIPPER_INDICES, NUM_JOINTS
from .episode import (
    FORMAT,
    FORMAT_VERSION,
    RIGID_TOL,
    normalize_positions,
)

ARM_LIMIT_RAD = 2 * math.pi
"""Arm joint positions beyond +-2 pi rad are reported as insane."""
GRIPPER_RANGE = (-0.25, 1.25)
"""Normalised gripper values (0 closed .. 1 open) outside this range are reported."""
NORMALIZED_TOL = 1e-4
"""Allowed |positions_normalized - normalize(positions)| (float32 rounding)."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file."""

    file: str
    """Path of the episode file (or of the directory for dataset-level problems)."""
    field: str
    """HDF5 path or attribute at fault, e.g. '/observations/qpos' or '@fps'."""
    message: str
    """What is wrong, in words."""

    def __str__(self) -> str:
        return f"{self.file}: {self.field}: {self.message}"

    def as_dict(self) -> dict:
        return asdict(self)


class _FileCheck:
    """Checks of one open file; appends to ``problems``."""

    def __init__(self, f: h5py.File, path: Path, problems: list[Problem]) -> None:
        self.f, self.path, self.problems = f, path, problems
        self.T: int | None = None

    def bad(self, field: str, message: str) -> None:
        self.problems.append(Problem(str(self.path), field, message))

    # -- attributes

    def attr(self, name: str, kind: str, obj=None):
        obj = self.f if obj is None else obj
        where = f"{obj.name.strip('/')}@{name}"
        if name not in obj.attrs:
            self.bad(where, "missing attribute")
            return None
        v = obj.attrs[name]
        if kind == "str":
            if isinstance(v, bytes):
                v = v.decode(errors="replace")
            if not isinstance(v, str):
                self.bad(where, f"needs a string, got {type(v).__name__}")
                return None
        elif kind == "bool":
            if not isinstance(v, (bool, np.bool_)):
                self.bad(where, f"needs a bool, got {type(v).__name__}")
                return None
            v = bool(v)
        elif kind == "int":
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                self.bad(where, f"needs an integer, got {type(v).__name__}")
                return None
            v = int(v)
        elif kind == "float":
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.number)):
                self.bad(where, f"needs a number, got {type(v).__name__}")
                return None
            v = float(v)
            if not math.isfinite(v):
                self.bad(where, f"needs a finite number, got {v}")
                return None
        elif kind == "strlist":
            a = np.atleast_1d(v)
            if a.ndim != 1 or not all(isinstance(x, (str, bytes)) for x in a):
                self.bad(where, "needs a list of strings")
                return None
            v = [x.decode() if isinstance(x, bytes) else str(x) for x in a]
        return v

    # -- datasets

    def dataset(self, path: str, dtype, tail: tuple, time_indexed: bool = True):
        """The dataset if it exists with the right dtype and shape, else None (problem noted)."""
        if path not in self.f:
            self.bad(path, "missing dataset")
            return None
        ds = self.f[path]
        if not isinstance(ds, h5py.Dataset):
            self.bad(path, "is a group, needs a dataset")
            return None
        if ds.dtype != np.dtype(dtype):
            self.bad(path, f"dtype {ds.dtype}, needs {np.dtype(dtype)}")
            return None
        expected = (self.T,) + tail if time_indexed else tail
        if ds.shape != expected:
            what = f" (T = num_frames = {self.T})" if time_indexed else ""
            self.bad(path, f"shape {ds.shape}, needs {expected}{what}")
            return None
        return ds

    def finite(self, path: str, a: np.ndarray) -> bool:
        bad = ~np.isfinite(a)
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            self.bad(path, f"{int(bad.sum())} non-finite value(s), first at index {idx}")
            return False
        return True

    def run(self) -> dict:
        """Run every check; returns the facts the summary needs."""
        f = self.f
        info: dict = {}
        fmt = self.attr("format", "str")
        if fmt is not None and fmt != FORMAT:
            self.bad("@format", f"is {fmt!r}, needs {FORMAT!r}; not a clamp episode")
            return info
        version = self.attr("format_version", "int")
        if version is not None and version != FORMAT_VERSION:
            self.bad("@format_version", f"is {version}, this checker knows {FORMAT_VERSION}")
            return info
        for name in ("task", "instruction", "robot", "base_frame"):
            info[name] = self.attr(name, "str")
        if info["task"] is not None and not info["task"]:
            self.bad("@task", "is empty")
        info["success"] = self.attr("success", "bool")
        self.attr("sim", "bool")
        self.attr("seed", "int")
        self.attr("created_unix", "float")
        fps = self.attr("fps", "float")
        if fps is not None and fps <= 0:
            self.bad("@fps", f"is {fps}, needs > 0")
        if "writer" in f.attrs:
            self.attr("writer", "str")
        joints = self.attr("joint_names", "strlist")
        if joints is not None and len(joints) != NUM_JOINTS:
            self.bad("@joint_names", f"has {len(joints)} names, needs {NUM_JOINTS}")
        cams = self.attr("camera_names", "strlist") or []
        T = self.attr("num_frames", "int")
        if T is not None and T < 1:
            self.bad("@num_frames", f"is {T}, needs >= 1")
            T = None
        self.T = T
        info["num_frames"] = T
        if T is None:
            return info

        for key in ("observations/qpos", "observations/qvel", "observations/effort", "action"):
            ds = self.dataset(key, np.float32, (NUM_JOINTS,))
            if ds is None:
                continue
            a = ds[()]
            if not self.finite(key, a):
                continue
            if key in ("observations/qpos", "action"):
                self.joint_bounds(key, a)
        ds = self.dataset("observations/stamp_ns", np.int64, ())
        if ds is not None and T > 1:
            d = np.diff(ds[()])
            if (d <= 0).any():
                self.bad(
                    "observations/stamp_ns",
                    f"not strictly increasing (first at frame {int(np.argmax(d <= 0)) + 1})",
                )
        ds = self.dataset("task_progress", np.int32, ())
        if ds is not None and (ds[()] < 0).any():
            self.bad("task_progress", "has negative stages")
        self.objects()
        info["cameras"] = self.cameras(cams)
        return info

    def joint_bounds(self, key: str, a: np.ndarray) -> None:
        arm = np.ones(NUM_JOINTS, bool)
        arm[list(GRIPPER_INDICES)] = False
        over = np.abs(a[:, arm]) > ARM_LIMIT_RAD
        if over.any():
            t, j = np.argwhere(over)[0]
            col = np.flatnonzero(arm)[j]
            self.bad(key, f"arm joint {col} is {a[t, col]:.3g} rad at frame {t}, beyond +-2 pi")
        g = a[:, list(GRIPPER_INDICES)]
        lo, hi = GRIPPER_RANGE
        out = (g < lo) | (g > hi)
        if out.any():
            t, j = np.argwhere(out)[0]
            self.bad(
                key,
                f"gripper {GRIPPER_INDICES[j]} is {g[t, j]:.3g} at frame {t}; grippers are "
                f"normalised 0 closed .. 1 open (allowed {lo}..{hi})",
            )

    def objects(self) -> None:
        f = self.f
        if "objects" not in f:
            self.bad("objects", "missing group")
            return
        g = f["objects"]
        if "names" not in g:
            self.bad("objects/names", "missing dataset")
            return
        if h5py.check_string_dtype(g["names"].dtype) is None or g["names"].ndim != 1:
            self.bad("objects/names", "needs a 1-D variable-length string dataset")
            return
        N = g["names"].shape[0]
        box = []
        for name in ("workspace_min", "workspace_max"):
            v = g.attrs.get(name)
            v = None if v is None else np.asarray(v, dtype=np.float64)
            if v is None or v.shape != (3,) or not np.isfinite(v).all():
                self.bad(f"objects@{name}", "needs 3 finite numbers (m)")
                return
            box.append(v)
        if (box[0] >= box[1]).any():
            self.bad("objects@workspace_min", f"{box[0]} not below workspace_max {box[1]}")
            return
        pos = self.dataset("objects/positions", np.float32, (N, 3))
        norm = self.dataset("objects/positions_normalized", np.float32, (N, 3))
        if pos is None or norm is None:
            return
        p, n = pos[()], norm[()]
        if not self.finite("objects/positions", p):
            return
        if not self.finite("objects/positions_normalized", n):
            return
        if (np.abs(n) > 1.0).any():
            self.bad("objects/positions_normalized", "values outside [-1, 1]")
        elif np.abs(normalize_positions(p, box[0], box[1]) - n).max(initial=0.0) > NORMALIZED_TOL:
            self.bad(
                "objects/positions_normalized",
                "does not match positions over the workspace box (workspace_min..max)",
            )

    def cameras(self, cams: list[str]) -> dict:
        f = self.f
        sizes = {}
        for group in ("observations/images", "observations/depth", "cameras"):
            if group in f:
                for extra in sorted(set(f[group].keys()) - set(cams)):
                    self.bad(f"{group}/{extra}", "camera not listed in @camera_names")
        for cam in cams:
            kpath = f"cameras/{cam}/K"
            K = self.dataset(kpath, np.float64, (3, 3), time_indexed=False)
            if K is None:
                continue
            kobj = f[kpath]
            W = self.attr("width", "int", kobj)
            H = self.attr("height", "int", kobj)
            self.attr("distortion_model", "str", kobj)
            k = K[()]
            if self.finite(kpath, k) and (k[0, 0] <= 0 or k[1, 1] <= 0):
                self.bad(kpath, "fx and fy must be > 0")
            dpath = f"cameras/{cam}/D"
            if dpath not in f or f[dpath].dtype != np.float64 or f[dpath].ndim != 1:
                self.bad(dpath, "needs a 1-D float64 dataset (may be empty)")
            else:
                self.finite(dpath, f[dpath][()])
            xpath = f"cameras/{cam}/extrinsics"
            X = self.dataset(xpath, np.float32, (4, 4))
            if X is not None:
                x = X[()]
                if self.finite(xpath, x):
                    self.rigid(xpath, x)
            if W is None or H is None or W <= 0 or H <= 0:
                self.bad(kpath, "attrs width and height must be integers > 0")
                continue
            sizes[cam] = (W, H)
            self.dataset(f"observations/images/{cam}", np.uint8, (H, W, 3))
            self.dataset(f"observations/depth/{cam}", np.uint16, (H, W))
        return sizes

    def rigid(self, path: str, x: np.ndarray) -> None:
        x64 = x.astype(np.float64)
        R = x64[:, :3, :3]
        orth = np.abs(np.swapaxes(R, 1, 2) @ R - np.eye(3)).max(axis=(1, 2))
        det = np.abs(np.linalg.det(R) - 1.0)
        row = np.abs(x64[:, 3, :] - [0, 0, 0, 1]).max(axis=1)
        for err, what in (
            (orth, "rotation not orthonormal"),
            (det, "rotation determinant not +1"),
            (row, "last row not 0 0 0 1"),
        ):
            if (err > RIGID_TOL).any():
                t = int(np.argmax(err > RIGID_TOL))
                self.bad(path, f"{what} at frame {t} (off by {err[t]:.2e}); not a rigid transform")
                return


def check_file(path) -> tuple[dict, list[Problem]]:
    """Check one episode file; returns (facts for the summary, problems)."""
    path = Path(path)
    problems: list[Problem] = []
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        return {}, [Problem(str(path), "(file)", f"cannot open as HDF5: {e}")]
    with f:
        try:
            info = _FileCheck(f, path, problems).run()
        except Exception as e:  # noqa: BLE001 - a damaged file must not stop the whole check
            problems.append(Problem(str(path), "(file)", f"unreadable: {type(e).__name__}: {e}"))
            info = {}
    return info, problems


def check_dataset(directory) -> tuple[dict, list[Problem]]:
    """Validate every ``*.hdf5`` under ``directory`` (recursively; a single file also works).

    Returns (summary, problems). Leftover ``*.partial`` files of killed writers are listed in the
    summary (``partial_files``) but are not problems.
    """
    root = Path(directory)
    problems: list[Problem] = []
    summary: dict = {
        "directory": str(root),
        "episodes": 0,
        "valid": 0,
        "invalid": 0,
        "frames_total": 0,
        "frames_mean": 0.0,
        "size_bytes": 0,
        "tasks": {},
        "cameras": {},
        "partial_files": [],
    }
    if not root.exists():
        problems.append(Problem(str(root), "(directory)", "does not exist"))
        return summary, problems
    if root.is_dir():
        files = sorted(p for p in root.rglob("*.hdf5") if p.is_file())
        partials = sorted(p for p in root.rglob("*.partial") if p.is_file())
    else:
        files, partials = [root], []
    summary["partial_files"] = [str(p) for p in partials]
    frames = []
    cameras: dict[str, set] = {}
    for path in files:
        info, found = check_file(path)
        problems.extend(found)
        summary["episodes"] += 1
        summary["valid" if not found else "invalid"] += 1
        summary["size_bytes"] += path.stat().st_size
        task = info.get("task") or "(unknown)"
        t = summary["tasks"].setdefault(
            task, {"episodes": 0, "successes": 0, "success_rate": 0.0, "frames": 0}
        )
        t["episodes"] += 1
        t["successes"] += int(bool(info.get("success")))
        t["success_rate"] = t["successes"] / t["episodes"]
        if info.get("num_frames"):
            t["frames"] += info["num_frames"]
            frames.append(info["num_frames"])
        for cam, (w, h) in (info.get("cameras") or {}).items():
            cameras.setdefault(cam, set()).add(f"{w}x{h}")
    summary["frames_total"] = int(sum(frames))
    summary["frames_mean"] = float(np.mean(frames)) if frames else 0.0
    summary["cameras"] = {c: sorted(v) for c, v in sorted(cameras.items())}
    summary["tasks"] = dict(sorted(summary["tasks"].items()))
    return summary, problems


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def format_report(summary: dict, problems: list[Problem]) -> str:
    """The human-readable report `clamp data check` prints."""
    lines = [
        f"{summary['directory']}: {summary['episodes']} episodes ({summary['valid']} valid, "
        f"{summary['invalid']} invalid), {summary['frames_total']} frames "
        f"(mean {summary['frames_mean']:.1f}), {_human_bytes(summary['size_bytes'])}",
    ]
    if summary["tasks"]:
        width = max(10, *(len(t) for t in summary["tasks"]))
        lines.append(f"  {'task':<{width}}  episodes  success   frames")
        for task, t in summary["tasks"].items():
            lines.append(
                f"  {task:<{width}}  {t['episodes']:8d}  {100 * t['success_rate']:6.1f}%"
                f"  {t['frames']:7d}"
            )
    if summary["cameras"]:
        cams = ", ".join(f"{c} {'/'.join(s)}" for c, s in summary["cameras"].items())
        lines.append(f"  cameras: {cams}")
    if summary["partial_files"]:
        lines.append(
            f"  {len(summary['partial_files'])} leftover partial file(s) of interrupted writers "
            "(not episodes; safe to delete):"
        )
        lines.extend(f"    {p}" for p in summary["partial_files"])
    if problems:
        lines.append(f"{len(problems)} problem(s):")
        lines.extend(f"  {p}" for p in problems)
        lines.append("FAILED")
    else:
        lines.append("OK")
    return "\n".join(lines)
