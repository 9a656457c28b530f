"""An analytic tabletop scene seen by ALOHA-like RGB-D cameras, two of them on moving wrists.

Depth is exact ray casting against a table plane and axis-aligned boxes, so tests can compare
fusion and rendering against closed-form geometry, and the demo needs no simulator.
Frames: ``world`` is the table centre (z up, robot front towards -y); camera frames use the
optical convention (x right, y down, z forward), named like RealSense drivers name them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..geometry.camera import PinholeCamera
from ..geometry.transforms import Transform, look_at

try:
    from numba import njit, prange

    @njit(parallel=True, cache=True, nogil=True)
    def _raycast_grid(origin, rot, rays, table_half, box_lo, box_hi, depth, hit):
        """Per pixel: ray o + s * R [rx, ry, 1]; s is then the optical-axis depth."""
        height, width = depth.shape
        for r in prange(height):
            for c in range(width):
                dx = rot[0, 0] * rays[r, c, 0] + rot[0, 1] * rays[r, c, 1] + rot[0, 2]
                dy = rot[1, 0] * rays[r, c, 0] + rot[1, 1] * rays[r, c, 1] + rot[1, 2]
                dz = rot[2, 0] * rays[r, c, 0] + rot[2, 1] * rays[r, c, 1] + rot[2, 2]
                best = np.inf
                best_id = -1
                if dz != 0.0:
                    s = -origin[2] / dz
                    px = origin[0] + s * dx
                    py = origin[1] + s * dy
                    if s > 0 and abs(px) <= table_half[0] and abs(py) <= table_half[1]:
                        best = s
                        best_id = 0
                d = (dx, dy, dz)
                for b in range(box_lo.shape[0]):
                    t_near = -np.inf
                    t_far = np.inf
                    for a in range(3):
                        if d[a] == 0.0:
                            if origin[a] < box_lo[b, a] or origin[a] > box_hi[b, a]:
                                t_near = np.inf
                            continue
                        t1 = (box_lo[b, a] - origin[a]) / d[a]
                        t2 = (box_hi[b, a] - origin[a]) / d[a]
                        t_near = max(t_near, min(t1, t2))
                        t_far = min(t_far, max(t1, t2))
                    if t_near <= t_far and t_near > 0 and t_near < best:
                        best = t_near
                        best_id = b + 1
                depth[r, c] = best if best_id >= 0 else 0.0
                hit[r, c] = best_id

    HAVE_NUMBA = True
except ImportError:
    HAVE_NUMBA = False


@dataclass(frozen=True)
class Box:
    name: str
    center: tuple[float, float, float]
    half_extents: tuple[float, float, float]
    color: tuple[int, int, int]


@dataclass(frozen=True)
class SceneCamera:
    name: str
    optical_frame: str
    parent_frame: str
    """``world`` for fixed cameras, the wrist frame for wrist cameras."""
    T_parent_cam: Transform


def default_boxes() -> list[Box]:
    return [
        Box("red_cube", (0.10, 0.05, 0.025), (0.025, 0.025, 0.025), (220, 40, 40)),
        Box("blue_block", (-0.15, 0.10, 0.04), (0.06, 0.03, 0.04), (40, 70, 220)),
        Box("green_tray", (0.0, -0.15, 0.01), (0.12, 0.08, 0.01), (40, 180, 60)),
    ]


TABLE_COLOR = (150, 120, 90)
TABLE_HALF = (
    0.7,
    0.5,
)  # table top x in [-0.7, 0.7], y in [-0.5, 0.5] at z = 0: beyond the crop box


@dataclass
class SyntheticScene:
    """Static objects on a table; wrists move on circles above it (period ``wrist_period_s``)."""

    boxes: list[Box] = field(default_factory=default_boxes)
    width: int = 640
    height: int = 480
    wrist_period_s: float = 8.0

    def __post_init__(self) -> None:
        self.intrinsics = PinholeCamera.from_fov(self.width, self.height, 58.0)  # D435-like
        down = np.array([0.0, 0.0, -1.0])
        wrist_cam = look_at([0.0, 0.0, 0.0], down * 0.5 + [0.0, 0.12, 0.0], [0.0, 1.0, 0.0])
        self.cameras = [
            SceneCamera(
                "cam_high",
                "cam_high_color_optical_frame",
                "world",
                look_at([0.0, -0.35, 0.75], [0.0, 0.0, 0.0]),
            ),
            SceneCamera(
                "cam_low",
                "cam_low_color_optical_frame",
                "world",
                look_at([0.0, -0.65, 0.3], [0.0, 0.05, 0.0]),
            ),
            SceneCamera(
                "cam_left_wrist", "cam_left_wrist_color_optical_frame", "left_wrist", wrist_cam
            ),
            SceneCamera(
                "cam_right_wrist", "cam_right_wrist_color_optical_frame", "right_wrist", wrist_cam
            ),
        ]
        self._by_name = {c.name: c for c in self.cameras}

    # ------------------------------------------------------------------------ kinematics
    def wrist_pose(self, side: str, t_s: float) -> Transform:
        """T_world_wrist of ``left_wrist`` / ``right_wrist`` at time ``t_s`` (z up, x inward)."""
        phase = 2.0 * math.pi * t_s / self.wrist_period_s + (0.0 if side == "left" else math.pi)
        cx = -0.25 if side == "left" else 0.25
        pos = [cx + 0.08 * math.cos(phase), -0.05 + 0.08 * math.sin(phase), 0.35]
        yaw = 0.0 if side == "left" else math.pi
        q = [0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2)]
        return Transform(np.array(pos), np.array(q))

    def camera_pose(self, name: str, t_s: float) -> Transform:
        """T_world_cam (optical frame) of camera ``name`` at ``t_s``."""
        cam = self._by_name[name]
        if cam.parent_frame == "world":
            return cam.T_parent_cam
        side = cam.parent_frame.split("_")[0]
        return self.wrist_pose(side, t_s) @ cam.T_parent_cam

    # ------------------------------------------------------------------------ ray casting
    def raycast(self, origins: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Intersect rays ``origins + s * dirs`` (N, 3) with the scene.

        Returns (s (N,) float64, inf where nothing is hit; object id (N,) int: -1 none,
        0 table, 1 + i for ``boxes[i]``). ``s`` is in units of ``dirs``' length.
        """
        o = np.asarray(origins, np.float64)
        d = np.asarray(dirs, np.float64)
        n = len(d)
        best = np.full(n, np.inf)
        hit = np.full(n, -1, np.int64)
        with np.errstate(divide="ignore", invalid="ignore"):
            s = -o[:, 2] / d[:, 2]
            p = o + s[:, None] * d
            ok = (s > 0) & (np.abs(p[:, 0]) <= TABLE_HALF[0]) & (np.abs(p[:, 1]) <= TABLE_HALF[1])
            best[ok] = s[ok]
            hit[ok] = 0
            for i, b in enumerate(self.boxes):
                c, h = np.asarray(b.center), np.asarray(b.half_extents)
                t1 = (c - h - o) / d
                t2 = (c + h - o) / d
                t_near = np.nanmax(np.minimum(t1, t2), axis=1)
                t_far = np.nanmin(np.maximum(t1, t2), axis=1)
                ok = (t_near <= t_far) & (t_near > 0) & (t_near < best)
                best[ok] = t_near[ok]
                hit[ok] = i + 1
        return best, hit

    def render(self, name: str, t_s: float) -> tuple[np.ndarray, np.ndarray]:
        """Camera ``name`` at ``t_s``: (depth (H, W) float32 metres along the optical axis, 0 where
        nothing is hit; color (H, W, 3) uint8 RGB)."""
        return self.render_pose(self.camera_pose(name, t_s), self.intrinsics)

    def render_pose(self, pose: Transform, cam: PinholeCamera) -> tuple[np.ndarray, np.ndarray]:
        rot = pose.matrix()[:3, :3]
        if HAVE_NUMBA:
            depth64 = np.empty((cam.height, cam.width))
            hit = np.empty((cam.height, cam.width), np.int64)
            lo = np.array([np.subtract(b.center, b.half_extents) for b in self.boxes]).reshape(
                -1, 3
            )
            hi = np.array([np.add(b.center, b.half_extents) for b in self.boxes]).reshape(-1, 3)
            _raycast_grid(
                pose.translation,
                rot,
                cam.ray_grid().astype(np.float64),
                np.array(TABLE_HALF),
                lo,
                hi,
                depth64,
                hit,
            )
            depth = depth64.astype(np.float32)
        else:
            rays = cam.ray_grid().reshape(-1, 2).astype(np.float64)
            d_cam = np.concatenate([rays, np.ones((len(rays), 1))], axis=1)  # z = 1: s = depth
            s, hit = self.raycast(np.broadcast_to(pose.translation, d_cam.shape), d_cam @ rot.T)
            depth = np.where(np.isfinite(s), s, 0.0).astype(np.float32)
            depth = depth.reshape(cam.height, cam.width)
        palette = np.array([[0, 0, 0], TABLE_COLOR] + [b.color for b in self.boxes], np.uint8)
        color = palette[hit.reshape(-1) + 1].reshape(cam.height, cam.width, 3)
        return depth, color

    def surface_distance(self, points: np.ndarray) -> np.ndarray:
        """(N,) distance of each (N, 3) world point to the nearest scene surface (m)."""
        p = np.asarray(points, np.float64)
        dist = np.abs(p[:, 2])
        outside = np.maximum(np.abs(p[:, 0]) - TABLE_HALF[0], 0) + np.maximum(
            np.abs(p[:, 1]) - TABLE_HALF[1], 0
        )
        dist = dist + outside
        for b in self.boxes:
            q = np.abs(p - np.asarray(b.center)) - np.asarray(b.half_extents)
            sdf = np.linalg.norm(np.maximum(q, 0), axis=1) + np.minimum(q.max(axis=1), 0)
            dist = np.minimum(dist, np.abs(sdf))
        return dist
