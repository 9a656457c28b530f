"""The perception pipeline: synchronised RGB-D frames + tf -> fused cloud -> rendered views.

One object serves the live node, rosbag replay and training-time rendering, so the three paths
cannot drift apart. Pose lookups happen at each image's own stamp; attached (wrist) views use the
observation stamp (the reference camera's).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..geometry.camera import PinholeCamera
from ..geometry.tf_buffer import TfBuffer
from ..geometry.transforms import Transform, look_at, rpy_to_matrix
from .config import PerceptionConfig, ViewConfig
from .kernels import make_kernels

# channel order of a rendered view; empty pixels hold 0 in every channel and mask == False
VIEW_CHANNELS = ("depth_m", "x", "y", "z")


class PerceptionError(ValueError):
    """An input frame the pipeline cannot use; the message names the camera and the problem."""


@dataclass
class RgbdFrame:
    """One camera's decoded input at one instant."""

    camera: str
    stamp_ns: int
    frame_id: str
    """Optical frame of the depth data (x right, y down, z forward)."""
    intrinsics: PinholeCamera
    """Intrinsics of the depth data."""
    depth: np.ndarray
    """(H, W) uint16 or float32, stored units (see ``depth_scale_m``)."""
    depth_scale_m: float
    color: np.ndarray | None = None
    """(H, W, 3) uint8 RGB registered to ``depth`` (None when not used)."""

    def validate(self) -> None:
        h, w = self.depth.shape[:2]
        cam = self.intrinsics
        if (cam.width, cam.height) != (w, h):
            raise PerceptionError(
                f"camera '{self.camera}': depth is {w}x{h} but its CameraInfo says "
                f"{cam.width}x{cam.height}"
            )
        if self.color is not None and self.color.shape[:2] != (h, w):
            raise PerceptionError(
                f"camera '{self.camera}': color is {self.color.shape[1]}x{self.color.shape[0]} "
                f"but depth is {w}x{h}; registered depth must match color"
            )
        if not self.frame_id:
            raise PerceptionError(f"camera '{self.camera}': empty frame_id")


@dataclass
class PointCloud:
    """Fused cloud in the base frame."""

    xyz: np.ndarray
    """(N, 3) float32, metres."""
    rgb: np.ndarray | None
    """(N, 3) uint8 or None."""
    camera_index: np.ndarray
    """(N,) uint8: which input camera each point came from."""


@dataclass
class RenderedViews:
    """The virtual views of one observation."""

    stamp_ns: int
    names: list[str]
    images: np.ndarray
    """(V, H, W, 4) float32: depth along the view axis (m), then base-frame X, Y, Z (m)."""
    mask: np.ndarray
    """(V, H, W) bool: pixel saw a point. Empty pixels are 0 in every channel."""
    poses: np.ndarray
    """(V, 4, 4) float64 T_base_view of each virtual camera (optical convention)."""
    intrinsics: list[PinholeCamera]

    def tiled(self) -> np.ndarray:
        """(H, V*W, 4): views side by side, as CLAMP's image encoder consumes them."""
        return np.concatenate(list(self.images), axis=1)


@dataclass
class PerceptionResult:
    views: RenderedViews
    cloud: PointCloud | None
    """The fused cloud, when asked for."""
    timings_ms: dict[str, float] = field(default_factory=dict)


class PerceptionPipeline:
    """Stateless per call apart from reusable scratch buffers; use one instance per thread."""

    def __init__(self, config: PerceptionConfig):
        self.config = config
        self.kernels = make_kernels(config.backend, config.threads)
        self.view_cameras = [
            PinholeCamera.from_fov(config.image_width, config.image_height, v.fov_deg)
            for v in config.views
        ]
        self._lo = np.asarray(config.workspace_min, np.float32)
        self._hi = np.asarray(config.workspace_max, np.float32)
        self._fixed = {v.name: _fixed_pose(v) for v in config.views if not v.attached}
        self._offsets = {v.name: _offset(v) for v in config.views if v.attached}

    @property
    def backend(self) -> str:
        return type(self.kernels).__name__.replace("Kernels", "").lower()

    def warmup(self) -> None:
        """Compile / touch every kernel once so the first real frame is not slow."""
        cam = PinholeCamera.from_fov(32, 24, 60.0)
        poses = np.tile(np.eye(4), (len(self.config.views), 1, 1))
        for depth, scale in (
            (np.full((24, 32), 500, np.uint16), 1e-3),
            (np.full((24, 32), 0.5, np.float32), 1.0),
        ):
            frame = RgbdFrame("warmup", 0, "warmup", cam, depth, scale)
            self._run([frame], [np.eye(4)], poses, 0, want_cloud=True, want_colors=False)
        self.render(np.zeros((4, 3), np.float32), poses)

    # ----------------------------------------------------------------------------- poses
    def camera_pose(self, frame: RgbdFrame, tf: TfBuffer) -> np.ndarray:
        """(4, 4) T_base_cam at the image's stamp (raises TfError)."""
        return tf.lookup_matrix(self.config.base_frame, frame.frame_id, frame.stamp_ns)

    def view_poses(self, tf: TfBuffer | None, stamp_ns: int) -> np.ndarray:
        """(V, 4, 4) T_base_view of every virtual camera at ``stamp_ns`` (raises TfError)."""
        poses = []
        for v in self.config.views:
            if v.attached:
                if tf is None:
                    raise PerceptionError(f"view '{v.name}' is attached to a frame but no tf given")
                t = tf.lookup_matrix(self.config.base_frame, v.attach_frame, stamp_ns)
                poses.append(t @ self._offsets[v.name])
            else:
                poses.append(self._fixed[v.name])
        return np.stack(poses)

    # ----------------------------------------------------------------------------- main call
    def process(
        self,
        frames: list[RgbdFrame],
        tf: TfBuffer,
        stamp_ns: int | None = None,
        want_cloud: bool = False,
        want_colors: bool = False,
    ) -> PerceptionResult:
        """Fuse ``frames`` (camera poses from ``tf`` at each image's stamp) and render every view
        (attached views posed at ``stamp_ns``, default: the first frame's stamp). The fused cloud
        is materialised only when ``want_cloud`` (it costs a copy)."""
        if not frames:
            raise PerceptionError("no camera frames to fuse")
        stamp = frames[0].stamp_ns if stamp_ns is None else stamp_ns
        t0 = time.perf_counter()
        cam_poses = [self.camera_pose(f, tf) for f in frames]
        view_poses = self.view_poses(tf, stamp)
        t1 = time.perf_counter()
        result = self._run(frames, cam_poses, view_poses, stamp, want_cloud, want_colors)
        result.timings_ms["tf_ms"] = (t1 - t0) * 1e3
        return result

    def process_posed(
        self,
        frames: list[RgbdFrame],
        cam_poses: list[np.ndarray],
        view_poses: np.ndarray,
        stamp_ns: int = 0,
        want_cloud: bool = False,
        want_colors: bool = False,
    ) -> PerceptionResult:
        """As :meth:`process` with explicit (4, 4) T_base_cam per frame and (V, 4, 4) view poses
        (offline data that stores extrinsics per frame)."""
        return self._run(frames, cam_poses, view_poses, stamp_ns, want_cloud, want_colors)

    def _run(self, frames, cam_poses, view_poses, stamp, want_cloud, want_colors):
        for f in frames:
            f.validate()
        t0 = time.perf_counter()
        cams = [self._camera_args(f, p) for f, p in zip(frames, cam_poses)]
        cfg = self.config
        limits = (np.float32(cfg.depth_min_m), np.float32(cfg.depth_max_m), self._lo, self._hi)
        if cfg.voxel_size_m > 0:
            _, _, parts = self.kernels.fuse_render(
                cams, *limits, *self._view_args(None), want_cloud=True
            )
            cloud = self._cloud(frames, parts, want_colors)
            t1 = time.perf_counter()
            views = self.render(cloud.xyz, view_poses, stamp)
        else:
            images, mask, parts = self.kernels.fuse_render(
                cams, *limits, *self._view_args(view_poses), want_cloud=want_cloud
            )
            t1 = time.perf_counter()
            views = self._views(images, mask, view_poses, stamp)
            cloud = self._cloud(frames, parts, want_colors) if want_cloud else None
        t2 = time.perf_counter()
        timings = {"fuse_render_ms": (t1 - t0) * 1e3, "cloud_ms": (t2 - t1) * 1e3}
        return PerceptionResult(views, cloud, timings)

    def fuse(
        self, frames: list[RgbdFrame], poses: list[np.ndarray], want_colors: bool = False
    ) -> PointCloud:
        """Back-project every frame with its pose T_base_cam, crop, drop invalid depth."""
        for f in frames:
            f.validate()
        cams = [self._camera_args(f, p) for f, p in zip(frames, poses)]
        cfg = self.config
        _, _, parts = self.kernels.fuse_render(
            cams,
            np.float32(cfg.depth_min_m),
            np.float32(cfg.depth_max_m),
            self._lo,
            self._hi,
            *self._view_args(None),
            want_cloud=True,
        )
        return self._cloud(frames, parts, want_colors)

    def render(self, xyz: np.ndarray, view_poses: np.ndarray, stamp_ns: int = 0) -> RenderedViews:
        """Z-buffer an (N, 3) base-frame cloud into every view at the given (V, 4, 4) poses."""
        images, mask = self.kernels.render(
            np.ascontiguousarray(xyz, np.float32), *self._view_args(view_poses)
        )
        return self._views(images, mask, view_poses, stamp_ns)

    # ----------------------------------------------------------------------------- helpers
    def _camera_args(self, f: RgbdFrame, pose: np.ndarray):
        depth = f.depth if f.depth.dtype in (np.uint16, np.float32) else f.depth.astype(np.float32)
        return (
            np.ascontiguousarray(depth),
            np.float32(f.depth_scale_m),
            f.intrinsics.ray_grid(),
            np.ascontiguousarray(pose[:3, :3], np.float32),
            np.ascontiguousarray(pose[:3, 3], np.float32),
        )

    def _view_args(self, view_poses: np.ndarray | None):
        cfg = self.config
        n = len(cfg.views) if view_poses is not None else 0
        if view_poses is None:
            view_poses = np.zeros((0, 4, 4))
        elif view_poses.shape != (n, 4, 4):
            raise PerceptionError(f"expected {n} view poses, got array of shape {view_poses.shape}")
        inv = np.linalg.inv(view_poses) if n else view_poses
        rots = np.ascontiguousarray(inv[:, :3, :3], np.float32)
        trans = np.ascontiguousarray(inv[:, :3, 3], np.float32)
        intr = np.array([[c.fx, c.fy, c.cx, c.cy] for c in self.view_cameras[:n]], np.float32)
        return (
            rots,
            trans,
            intr.reshape(n, 4),
            cfg.image_width,
            cfg.image_height,
            np.float32(cfg.near_m),
        )

    def _views(self, images, mask, view_poses, stamp_ns) -> RenderedViews:
        names = [v.name for v in self.config.views]
        return RenderedViews(stamp_ns, names, images, mask, view_poses, self.view_cameras)

    def _cloud(self, frames, parts, want_colors) -> PointCloud:
        xyz = np.concatenate([p[0] for p in parts]).astype(np.float32, copy=False)
        index = np.concatenate([np.full(len(p[0]), i, np.uint8) for i, p in enumerate(parts)])
        rgb = None
        if want_colors:
            rgb = np.concatenate(
                [
                    np.full((len(pix), 3), 255, np.uint8)
                    if f.color is None
                    else np.ascontiguousarray(f.color).reshape(-1, 3)[pix]
                    for f, (_, pix) in zip(frames, parts)
                ]
            )
        if self.config.voxel_size_m > 0:
            keep = voxel_downsample_indices(xyz, self.config.voxel_size_m)
            xyz, index = xyz[keep], index[keep]
            rgb = rgb[keep] if rgb is not None else None
        return PointCloud(xyz, rgb, index)


def voxel_downsample_indices(xyz: np.ndarray, voxel_m: float) -> np.ndarray:
    """Indices of one point per occupied voxel (the first in input order), sorted."""
    if len(xyz) == 0:
        return np.zeros(0, np.int64)
    cells = np.floor(xyz / voxel_m).astype(np.int64)
    cells -= cells.min(axis=0)
    dims = cells.max(axis=0) + 1
    keys = (cells[:, 0] * dims[1] + cells[:, 1]) * dims[2] + cells[:, 2]
    _, first = np.unique(keys, return_index=True)
    return np.sort(first)


def _fixed_pose(v: ViewConfig) -> np.ndarray:
    return look_at(v.eye, v.target, v.up).matrix()


def _offset(v: ViewConfig) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = rpy_to_matrix(*v.offset_rpy)
    m[:3, 3] = v.offset_xyz
    return m


__all__ = [
    "VIEW_CHANNELS",
    "PerceptionError",
    "PerceptionPipeline",
    "PointCloud",
    "RenderedViews",
    "RgbdFrame",
    "Transform",
]
