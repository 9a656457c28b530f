"""The model's ``metadata.json``: everything the runtime and the ROS node need besides the graphs.

Written by the exporter next to ``encoders.onnx`` and ``denoiser.onnx``; read by ``OnnxPolicy``;
``check_compatible`` compares it with a node's configuration before the node activates.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import atomic_open
from ..perception.config import PerceptionConfig, ViewConfig
from .normalize import MinMax, NormalizationError
from .schedule import ScheduleConfig

FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
DEFAULT_FILES = {"encoders": "encoders.onnx", "denoiser": "denoiser.onnx"}
NORMALIZED_KEYS = ("qpos", "action")


class MetadataError(ValueError):
    """A metadata field that is missing, malformed or inconsistent; the message names it."""


class MetadataMismatch(MetadataError):  # noqa: N818 - the name the nodes catch
    """The model does not fit the node's configuration; ``mismatches`` lists every difference."""

    def __init__(self, name: str, mismatches: list[str]):
        self.mismatches = list(mismatches)
        lines = "\n".join(f"  - {m}" for m in self.mismatches)
        super().__init__(
            f"model '{name}' does not match this node's configuration "
            f"({len(self.mismatches)} mismatches); re-export the model for this setup or "
            f"configure the node as the model was trained:\n{lines}"
        )


@dataclass(kw_only=True)
class PolicyMetadata:
    """What an exported policy is and what it expects: layout, rates, perception, statistics."""

    format_version: int = FORMAT_VERSION
    """Version of this file's layout; the runtime reads exactly FORMAT_VERSION."""
    name: str
    """Model name, e.g. 'clamp_dp_transfer_cube'; used in logs and errors."""
    preset: str
    """Model preset (architecture / size) the exporter built, e.g. 'small'."""
    task: str = ""
    """Task the model was trained on; '' for a multi-task model."""
    instruction: str = ""
    """Language instruction the model was trained with (free text; may be empty)."""
    joint_names: list[str]
    """Names of the action (and qpos) dimensions, in order; len == action_dim."""
    action_dim: int
    """A: values per action (14 for bimanual ALOHA joint positions)."""
    action_horizon: int
    """F: actions per predicted chunk."""
    action_history: int
    """Ha: past actions fed to the encoders, oldest first (0 = none)."""
    action_history_stride: int = 1
    """Control periods between consecutive history samples (the history spans
    action_history x action_history_stride periods before the observation)."""
    control_rate_hz: float
    """Rate of the actions in a chunk (Hz); consecutive actions are 1/rate apart."""
    cameras: list[str]
    """Real cameras the perception config fuses (names of perception.cameras)."""
    rgb_cameras: list[str] = field(default_factory=list)
    """Cameras whose color images feed the RGB branch, in input order; [] = no RGB branch."""
    rgb_size: list[int] = field(default_factory=list)
    """[w, h] of the RGB branch's images (px); [] without an RGB branch."""
    perception: dict[str, Any]
    """``PerceptionConfig.to_dict()`` of training's rendering (a PerceptionConfig is accepted)."""
    normalization: dict[str, Any]
    """{"qpos": {"min", "max"}, "action": {"min", "max"}} (MinMax values are accepted)."""
    schedule: dict[str, Any] = field(default_factory=lambda: ScheduleConfig().to_dict())
    """``ScheduleConfig`` fields of training's noise schedule (a ScheduleConfig is accepted)."""
    cond_tokens: int
    """Nc: conditioning tokens the encoders produce."""
    cond_dim: int
    """D: width of each conditioning token."""
    files: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_FILES))
    """Graph files relative to the model directory: {"encoders": ..., "denoiser": ...}."""
    versions: dict[str, str] = field(default_factory=dict)
    """Versions of the software that exported the model (clamp_core, torch, onnx, ...)."""
    training: dict[str, Any] = field(default_factory=dict)
    """Where the weights come from (informative, never checked): the checkpoint's ``step`` and
    ``weights_sha1``, its ``tasks`` and ``data``, and ``init`` (what it was fine-tuned from:
    ``path``, ``step``, ``weights_sha1``; ``{"scratch": true}``; ``{}`` for a pretraining)."""
    parity_max_abs_diff: float | None = None
    """Largest |torch - ONNX Runtime| over the exporter's parity check (None = not checked)."""
    created_unix: float = field(default_factory=time.time)
    """When the model was exported (Unix time, s)."""

    def __post_init__(self) -> None:
        if isinstance(self.format_version, bool) or self.format_version != FORMAT_VERSION:
            raise MetadataError(_version_message(self.format_version))
        for key in ("name", "preset"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key).strip():
                raise MetadataError(f"{key}: needs a non-empty string, got {getattr(self, key)!r}")
        for key in ("task", "instruction"):
            if not isinstance(getattr(self, key), str):
                raise MetadataError(f"{key}: needs a string, got {getattr(self, key)!r}")
        self.action_dim = _int("action_dim", self.action_dim, 1)
        self.action_horizon = _int("action_horizon", self.action_horizon, 1)
        self.action_history = _int("action_history", self.action_history, 0)
        self.action_history_stride = _int("action_history_stride", self.action_history_stride, 1)
        self.cond_tokens = _int("cond_tokens", self.cond_tokens, 1)
        self.cond_dim = _int("cond_dim", self.cond_dim, 1)
        self.control_rate_hz = _float("control_rate_hz", self.control_rate_hz)
        if self.control_rate_hz <= 0:
            raise MetadataError(f"control_rate_hz: needs a value > 0, got {self.control_rate_hz}")
        self.created_unix = _float("created_unix", self.created_unix)
        if self.parity_max_abs_diff is not None:
            self.parity_max_abs_diff = _float("parity_max_abs_diff", self.parity_max_abs_diff)
            if self.parity_max_abs_diff < 0:
                raise MetadataError(
                    f"parity_max_abs_diff: needs a value >= 0 or null, got "
                    f"{self.parity_max_abs_diff}"
                )

        self.joint_names = _str_list("joint_names", self.joint_names)
        if len(self.joint_names) != self.action_dim:
            raise MetadataError(
                f"joint_names: has {len(self.joint_names)} names but action_dim is "
                f"{self.action_dim}; give one name per action dimension"
            )

        if isinstance(self.perception, PerceptionConfig):
            self.perception = self.perception.to_dict()
        try:  # stored in canonical, fully explicit form
            perception = PerceptionConfig.from_dict(self.perception)
        except (TypeError, ValueError, AttributeError) as e:
            raise MetadataError(f"perception: not a valid PerceptionConfig: {e}") from None
        self.perception = perception.to_dict()
        self.cameras = _str_list("cameras", self.cameras)
        fused = [c.name for c in perception.cameras]
        if self.cameras != fused:
            raise MetadataError(
                f"cameras: {self.cameras} but perception fuses {fused}; they must be equal"
            )
        self.rgb_cameras = _str_list("rgb_cameras", self.rgb_cameras)
        not_fused = [c for c in self.rgb_cameras if c not in self.cameras]
        if not_fused:
            raise MetadataError(f"rgb_cameras: {not_fused} are not among cameras {self.cameras}")
        self.rgb_size = [_int("rgb_size", v, 1) for v in self.rgb_size]
        if self.rgb_cameras and len(self.rgb_size) != 2:
            raise MetadataError(
                f"rgb_size: an RGB branch ({self.rgb_cameras}) needs [w, h], got {self.rgb_size}"
            )
        if not self.rgb_cameras and self.rgb_size:
            raise MetadataError(
                f"rgb_size: must be [] without an RGB branch (rgb_cameras is []), got "
                f"{self.rgb_size}"
            )

        self.normalization = self._checked_normalization()

        if isinstance(self.schedule, ScheduleConfig):
            self.schedule = self.schedule.to_dict()
        try:
            self.schedule = ScheduleConfig.from_dict(dict(self.schedule)).to_dict()
        except (TypeError, ValueError) as e:
            raise MetadataError(f"schedule: {e}") from None

        if not isinstance(self.files, dict) or set(self.files) != set(DEFAULT_FILES):
            got = sorted(self.files) if isinstance(self.files, dict) else self.files
            raise MetadataError(f"files: needs exactly the keys {sorted(DEFAULT_FILES)}, got {got}")
        for key, rel in self.files.items():
            if not isinstance(rel, str) or not rel or Path(rel).is_absolute() or ".." in rel:
                raise MetadataError(
                    f"files.{key}: needs a file name inside the model directory, got {rel!r}"
                )
        if not isinstance(self.versions, dict):
            raise MetadataError(f"versions: needs a mapping name -> version, got {self.versions}")
        self.versions = {str(k): str(v) for k, v in self.versions.items()}

    def _checked_normalization(self) -> dict[str, Any]:
        norm = self.normalization
        if not isinstance(norm, dict) or set(norm) != set(NORMALIZED_KEYS):
            got = sorted(norm) if isinstance(norm, dict) else norm
            raise MetadataError(
                f"normalization: needs exactly the keys {sorted(NORMALIZED_KEYS)}, got {got}"
            )
        out = {}
        for key in NORMALIZED_KEYS:
            stats = norm[key]
            try:
                mm = stats if isinstance(stats, MinMax) else MinMax.from_dict(stats)
            except NormalizationError as e:
                raise MetadataError(f"normalization.{key}: {e}") from None
            if mm.dim != self.action_dim:
                raise MetadataError(
                    f"normalization.{key}: has {mm.dim} dimensions but action_dim is "
                    f"{self.action_dim} (qpos and actions share joint_names)"
                )
            out[key] = mm.to_dict()
        return out

    # ------------------------------------------------------------------------------- helpers
    def perception_config(self) -> PerceptionConfig:
        return PerceptionConfig.from_dict(self.perception)

    def schedule_config(self) -> ScheduleConfig:
        return ScheduleConfig.from_dict(self.schedule)

    def qpos_normalizer(self) -> MinMax:
        return MinMax.from_dict(self.normalization["qpos"])

    def action_normalizer(self) -> MinMax:
        return MinMax.from_dict(self.normalization["action"])

    @property
    def view_names(self) -> list[str]:
        return list(self.perception["view_names"])

    @property
    def views_shape(self) -> tuple[int, int, int, int]:
        """(V, H, W, 4): one observation's rendered views."""
        p = self.perception
        return (len(p["view_names"]), int(p["image_height"]), int(p["image_width"]), 4)

    @property
    def dt_s(self) -> float:
        """Time between consecutive actions of a chunk (s)."""
        return 1.0 / self.control_rate_hz

    # ------------------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> PolicyMetadata:
        """Build from ``to_dict``'s output; a missing required key or an unknown key is an
        error, and so is any format_version other than FORMAT_VERSION."""
        if not isinstance(d, dict):
            raise MetadataError(f"metadata must be a JSON object, got {type(d).__name__}")
        if "format_version" not in d:
            raise MetadataError("format_version: missing; this is not a clamp policy metadata file")
        if isinstance(d["format_version"], bool) or d["format_version"] != FORMAT_VERSION:
            raise MetadataError(_version_message(d["format_version"]))
        fields = {f.name: f for f in dataclasses.fields(PolicyMetadata)}
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise MetadataError(
                f"unknown keys {unknown}; format {FORMAT_VERSION} knows {sorted(fields)}"
            )
        missing = sorted(
            n
            for n, f in fields.items()
            if n not in d
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        )
        if missing:
            raise MetadataError(f"missing keys {missing}")
        return PolicyMetadata(**d)

    def save(self, path: str | Path) -> Path:
        """Write JSON atomically (temp file, fsync, rename) to ``path``, or to
        ``path/metadata.json`` when ``path`` is a directory; returns the file's path."""
        path = Path(path)
        if path.is_dir():
            path = path / METADATA_FILE
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"
        with atomic_open(path, "w") as f:
            f.write(text)
        return path

    @staticmethod
    def load(model_dir_or_json_path: str | Path) -> PolicyMetadata:
        """Read ``metadata.json`` from a model directory, or the given JSON file."""
        path = Path(model_dir_or_json_path)
        if path.is_dir():
            path = path / METADATA_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no such file; a model directory holds {METADATA_FILE}, "
                f"{DEFAULT_FILES['encoders']} and {DEFAULT_FILES['denoiser']} as the exporter "
                "writes them"
            )
        try:
            d = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise MetadataError(f"{path}: not valid JSON: {e}") from None
        try:
            return PolicyMetadata.from_dict(d)
        except MetadataError as e:
            raise MetadataError(f"{path}: {e}") from None


def check_compatible(
    meta: PolicyMetadata,
    *,
    joint_names: list[str] | None = None,
    perception: PerceptionConfig | None = None,
    cameras: list[str] | None = None,
    action_dim: int | None = None,
) -> None:
    """Raise ``MetadataMismatch`` listing every way the node's configuration differs from the
    model's; arguments left at None are not checked. ``cameras`` defaults to the cameras of
    ``perception``. Only settings that change what the model sees are compared (not topics,
    sync tolerances or backends)."""
    out: list[str] = []

    def differ(what: str, model, node) -> None:
        out.append(f"{what}: model has {model} but the node is configured with {node}")

    if action_dim is not None and action_dim != meta.action_dim:
        differ("action_dim", meta.action_dim, action_dim)
    if joint_names is not None and list(joint_names) != meta.joint_names:
        differ("joint_names", meta.joint_names, list(joint_names))
    if perception is not None:
        out += _perception_mismatches(meta.perception_config(), perception)
        if cameras is None:
            cameras = [c.name for c in perception.cameras]
        no_color = [
            c.name for c in perception.cameras if c.name in meta.rgb_cameras and not c.use_color
        ]
        if no_color:
            out.append(
                f"rgb_cameras: the model's RGB branch needs color images from {no_color} but "
                "the node's cameras there have use_color false"
            )
    if cameras is not None:
        cameras = list(cameras)
        if set(cameras) != set(meta.cameras):
            differ("cameras", meta.cameras, cameras)
        no_rgb = [c for c in meta.rgb_cameras if c not in cameras]
        if no_rgb:
            out.append(
                f"rgb_cameras: the model's RGB branch needs {meta.rgb_cameras} but the node has "
                f"no camera {no_rgb}"
            )
    if out:
        raise MetadataMismatch(meta.name, out)


def _perception_mismatches(model: PerceptionConfig, node: PerceptionConfig) -> list[str]:
    out: list[str] = []

    def differ(what: str, a, b) -> None:
        out.append(f"{what}: model has {a} but the node is configured with {b}")

    m_names, n_names = [v.name for v in model.views], [v.name for v in node.views]
    if m_names != n_names:
        differ("perception.views (names, in order)", m_names, n_names)
    m_size = f"{model.image_width}x{model.image_height}"
    n_size = f"{node.image_width}x{node.image_height}"
    if m_size != n_size:
        differ("perception view image size (w x h)", m_size, n_size)
    node_views = {v.name: v for v in node.views}
    for mv in model.views:
        nv = node_views.get(mv.name)
        if nv is not None:
            out += [f"perception.views.{mv.name}.{m}" for m in _view_mismatches(mv, nv)]
    if model.base_frame != node.base_frame:
        differ("perception.base_frame", repr(model.base_frame), repr(node.base_frame))
    for key in ("workspace_min", "workspace_max"):
        if not np.allclose(getattr(model, key), getattr(node, key), rtol=0, atol=1e-6):
            differ(f"perception.{key}", getattr(model, key), getattr(node, key))
    # both change the rendered images themselves
    for key in ("near_m", "voxel_size_m"):
        if not math.isclose(getattr(model, key), getattr(node, key), rel_tol=0, abs_tol=1e-9):
            differ(f"perception.{key}", getattr(model, key), getattr(node, key))
    return out


def _view_mismatches(m: ViewConfig, n: ViewConfig) -> list[str]:
    out = []
    if not math.isclose(m.fov_deg, n.fov_deg, rel_tol=0, abs_tol=1e-6):
        out.append(f"fov_deg: model has {m.fov_deg} but the node is configured with {n.fov_deg}")
    if m.attach_frame != n.attach_frame:
        out.append(
            f"attach_frame: model has {m.attach_frame!r} but the node is configured with "
            f"{n.attach_frame!r}"
        )
    # the pose fields a view does not use are left out: they do not change its images
    keys = ("offset_xyz", "offset_rpy") if m.attached else ("eye", "target", "up")
    for key in keys:
        a, b = getattr(m, key), getattr(n, key)
        if not np.allclose(a, b, rtol=0, atol=1e-6):
            out.append(f"{key}: model has {a} but the node is configured with {b}")
    return out


def _version_message(v) -> str:
    return (
        f"format_version: the model directory has format {v!r} but this clamp_core reads "
        f"format {FORMAT_VERSION}; export the model again with this clamp_core (or run the "
        "clamp_core it was exported with)"
    )


def _int(name: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise MetadataError(f"{name}: needs an integer >= {lo}, got {v!r}")
    return int(v)


def _float(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise MetadataError(f"{name}: needs a number, got {v!r}")
    if not math.isfinite(v):
        raise MetadataError(f"{name}: needs a finite number, got {v}")
    return float(v)


def _str_list(name: str, values) -> list[str]:
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        raise MetadataError(f"{name}: needs a list of strings, got {values!r}")
    if not all(isinstance(v, str) and v for v in values):
        raise MetadataError(f"{name}: every entry must be a non-empty string, got {values}")
    if len(set(values)) != len(values):
        raise MetadataError(f"{name}: entries must be unique, got {list(values)}")
    return list(values)
