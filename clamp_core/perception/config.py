"""Perception configuration: one dataclass per configurable thing.

The same structure is a ROS 2 parameters file (nested under ``/**: ros__parameters:``) and a
plain YAML for offline tools, so a node's parameters are exactly this config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration value that cannot work; the message says what to change."""


@dataclass
class CameraConfig:
    """One real RGB-D camera (RealSense-style topic layout)."""

    name: str
    color_topic: str = ""
    """Color image topic; default ``<name>/color/image_raw``."""
    depth_topic: str = ""
    """Depth image topic (16UC1 mm or 32FC1 m); default ``<name>/depth/image_raw``."""
    info_topic: str = ""
    """CameraInfo of the color stream; default ``<name>/color/camera_info``."""
    depth_info_topic: str = ""
    """CameraInfo of the depth stream, used only when ``registered`` is false."""
    registered: bool = True
    """Depth is registered to color (same intrinsics and frame); else the depth CameraInfo and
    the depth image's frame_id are used."""
    use_color: bool = True
    """Subscribe to color (for the colored debug cloud); views need depth only."""
    frame_id: str = ""
    """Override the optical frame given in message headers (empty: trust the header)."""

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("camera name must not be empty")
        n = self.name
        self.color_topic = self.color_topic or f"{n}/color/image_raw"
        self.depth_topic = self.depth_topic or f"{n}/depth/image_raw"
        self.info_topic = self.info_topic or f"{n}/color/camera_info"
        self.depth_info_topic = self.depth_info_topic or f"{n}/depth/camera_info"


@dataclass
class ViewConfig:
    """One virtual camera to render: fixed in the base frame, or attached to a tf frame."""

    name: str
    fov_deg: float = 60.0
    """Vertical field of view (square pixels, principal point at the image centre)."""
    eye: list[float] = field(default_factory=lambda: [0.0, 0.0, 1.0])
    """Fixed views: camera position in the base frame (m)."""
    target: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    """Fixed views: point the camera looks at (base frame, m)."""
    up: list[float] = field(default_factory=lambda: [0.0, 0.0, 1.0])
    """Fixed views: base-frame direction that appears up in the image."""
    attach_frame: str = ""
    """Attached views: tf frame (optical convention) the camera moves with; empty = fixed view."""
    offset_xyz: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    """Attached views: camera position in ``attach_frame`` (m)."""
    offset_rpy: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    """Attached views: camera orientation in ``attach_frame`` (roll, pitch, yaw, rad)."""

    def __post_init__(self) -> None:
        if not 1.0 <= self.fov_deg <= 170.0:
            raise ConfigError(f"view '{self.name}': fov_deg {self.fov_deg} must be in [1, 170]")
        for key in ("eye", "target", "up", "offset_xyz", "offset_rpy"):
            v = getattr(self, key)
            if len(v) != 3:
                raise ConfigError(f"view '{self.name}': {key} needs 3 numbers, got {v}")
            setattr(self, key, [float(x) for x in v])

    @property
    def attached(self) -> bool:
        return bool(self.attach_frame)


def default_views() -> list[ViewConfig]:
    """CLAMP's five views around the ALOHA workspace (base frame: table centre, z up, the robot's
    front towards -y): overhead, back-right, front-left fixed; one per wrist."""
    c = [0.0, 0.0, 0.05]
    return [
        ViewConfig("overhead", 60.0, [0.0, 0.0, 1.05], c, [0.0, 1.0, 0.0]),
        ViewConfig("back_right", 60.0, [0.55, 0.55, 0.6], c),
        ViewConfig("front_left", 60.0, [-0.55, -0.55, 0.6], c),
        ViewConfig(
            "wrist_left",
            75.0,
            attach_frame="cam_left_wrist_color_optical_frame",
            offset_xyz=[0.0, 0.0, -0.05],
        ),
        ViewConfig(
            "wrist_right",
            75.0,
            attach_frame="cam_right_wrist_color_optical_frame",
            offset_xyz=[0.0, 0.0, -0.05],
        ),
    ]


def default_cameras() -> list[CameraConfig]:
    return [CameraConfig(n) for n in ("cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist")]


@dataclass
class PerceptionConfig:
    """Fusion of the real cameras into one cloud and rendering of the virtual views."""

    base_frame: str = "world"
    """Frame of the fused cloud and of the XYZ channels (REP-103: x forward... z up)."""
    cameras: list[CameraConfig] = field(default_factory=default_cameras)
    views: list[ViewConfig] = field(default_factory=default_views)
    image_width: int = 224
    """Width of every rendered view (px)."""
    image_height: int = 224
    """Height of every rendered view (px)."""
    near_m: float = 0.02
    """Points closer than this to a virtual camera are not rendered in it."""
    workspace_min: list[float] = field(default_factory=lambda: [-0.6, -0.45, -0.05])
    """Crop box lower corner in the base frame (m)."""
    workspace_max: list[float] = field(default_factory=lambda: [0.6, 0.45, 0.6])
    """Crop box upper corner in the base frame (m)."""
    depth_min_m: float = 0.07
    """Depth readings at or below this are invalid (RealSense minimum range)."""
    depth_max_m: float = 3.0
    """Depth readings at or above this are invalid."""
    voxel_size_m: float = 0.0
    """Voxel-grid downsampling of the fused cloud before rendering (0 = off)."""
    sync_tolerance_s: float = 0.02
    """Max stamp difference between a camera's frame and the reference camera's frame."""
    sync_queue_size: int = 10
    """Frames buffered per stream while waiting for partners."""
    tf_tolerance_s: float = 0.05
    """A camera pose lookup may hold the nearest tf sample this far outside the tf data."""
    tf_cache_s: float = 10.0
    """History of dynamic tf kept for lookups at image stamps."""
    stale_after_s: float = 0.5
    """A camera whose newest frame is older than this (wall-clock) is reported stale."""
    backend: str = "auto"
    """Kernel implementation: auto (numba if installed), numba or numpy."""
    threads: int = 0
    """Threads for the numba kernels (0 = all cores)."""

    def __post_init__(self) -> None:
        self.cameras = [
            c if isinstance(c, CameraConfig) else CameraConfig(**c) for c in self.cameras
        ]
        self.views = [v if isinstance(v, ViewConfig) else ViewConfig(**v) for v in self.views]
        if not self.cameras:
            raise ConfigError("at least one camera is needed")
        if not self.views:
            raise ConfigError("at least one view is needed")
        for kind, items in (("camera", self.cameras), ("view", self.views)):
            names = [x.name for x in items]
            if len(set(names)) != len(names):
                raise ConfigError(f"{kind} names must be unique, got {names}")
        if self.image_width < 8 or self.image_height < 8:
            raise ConfigError(f"view size {self.image_width}x{self.image_height} is below 8x8")
        if len(self.workspace_min) != 3 or len(self.workspace_max) != 3:
            raise ConfigError("workspace_min and workspace_max need 3 numbers each")
        if any(a >= b for a, b in zip(self.workspace_min, self.workspace_max)):
            raise ConfigError(
                f"workspace_min {self.workspace_min} must be below workspace_max "
                f"{self.workspace_max} on every axis"
            )
        if not 0.0 <= self.depth_min_m < self.depth_max_m:
            raise ConfigError(
                f"need 0 <= depth_min_m ({self.depth_min_m}) < depth_max_m ({self.depth_max_m})"
            )
        if self.near_m <= 0:
            raise ConfigError("near_m must be > 0")
        if self.voxel_size_m < 0:
            raise ConfigError("voxel_size_m must be >= 0 (0 = off)")
        if self.sync_tolerance_s < 0 or self.tf_tolerance_s < 0:
            raise ConfigError("tolerances must be >= 0")
        if self.backend not in ("auto", "numba", "numpy"):
            raise ConfigError(f"backend '{self.backend}' must be auto, numba or numpy")

    # --------------------------------------------------------------------- (de)serialisation
    @staticmethod
    def from_dict(d: dict[str, Any]) -> PerceptionConfig:
        """Build from the nested structure of a YAML file (cameras / views keyed by name, in the
        order given by ``camera_names`` / ``view_names``). Unknown keys are errors."""
        d = dict(d)
        cams = d.pop("cameras", None)
        views = d.pop("views", None)
        cam_names = d.pop("camera_names", None)
        view_names = d.pop("view_names", None)
        known = {f.name for f in dataclasses.fields(PerceptionConfig)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown perception parameters: {sorted(unknown)}")
        kwargs = dict(d)
        if cam_names is not None or cams is not None:
            kwargs["cameras"] = _named_list(CameraConfig, cam_names, cams or {}, "camera")
        if view_names is not None or views is not None:
            defaults = {v.name: v for v in default_views()}
            kwargs["views"] = _named_list(ViewConfig, view_names, views or {}, "view", defaults)
        return PerceptionConfig(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["camera_names"] = [c.name for c in self.cameras]
        d["view_names"] = [v.name for v in self.views]
        d["cameras"] = {
            c["name"]: {k: v for k, v in c.items() if k != "name"} for c in d["cameras"]
        }
        d["views"] = {v["name"]: {k: x for k, x in v.items() if k != "name"} for v in d["views"]}
        return d

    @staticmethod
    def from_yaml(path: str | Path, node_name: str | None = None) -> PerceptionConfig:
        """Read a ROS 2 parameters file (``/**`` or ``node_name`` section) or a plain YAML."""
        return PerceptionConfig.from_dict(load_param_section(path, node_name, "perception"))


def _named_list(cls, names, table: dict, kind: str, defaults: dict | None = None) -> list:
    if names is None:
        names = list(table)
    missing_cfg = [n for n in table if n not in names]
    if missing_cfg:
        raise ConfigError(f"{kind}s {missing_cfg} are configured but not listed in {kind}_names")
    out = []
    for n in names:
        entry = table.get(n, {}) or {}
        fields = {f.name for f in dataclasses.fields(cls)} - {"name"}
        unknown = set(entry) - fields
        if unknown:
            raise ConfigError(f"{kind} '{n}': unknown keys {sorted(unknown)}")
        if defaults and n in defaults and not entry:
            out.append(defaults[n])
        else:
            out.append(cls(name=n, **entry))
    return out


def load_param_section(path: str | Path, node_name: str | None, section: str | None) -> dict:
    """Return the parameters for ``node_name`` from a ROS 2 params file (merging ``/**`` and the
    node's own section), or the whole document if it is plain YAML; then its ``section`` key if
    present (so one file can hold several nodes' configs)."""
    with open(path) as f:
        doc = yaml.safe_load(f) or {}
    params: dict = {}
    ros_style = any(isinstance(v, dict) and "ros__parameters" in v for v in doc.values())
    if ros_style:
        for key, val in doc.items():
            name = key.strip("/").split("/")[-1]
            if key == "/**" or name == node_name or (node_name and key.strip("/") == node_name):
                params.update(val.get("ros__parameters", {}))
    else:
        params = doc
    if section and isinstance(params.get(section), dict):
        return params[section]
    return params
