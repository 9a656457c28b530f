"""Benchmark: our fuse+render path against the equivalent built from Open3D, in one run.

Input: the synthetic tabletop scene seen by 4 RGB-D cameras (16UC1-style uint16 millimetre
depth, the two wrist cameras moving), posed from a tf buffer at each image's stamp. Output of
both paths: 5 virtual views of 224x224 pixels with 4 channels (depth along the view axis, then
base-frame X, Y, Z), empty pixels 0.

Open3D equivalent, per frame: each camera's depth -> point cloud in the base frame
(``create_from_depth_image`` with the camera's K and the extrinsic T_cam_base, i.e. the inverse
of the tf pose), concatenate, crop to the workspace box (``AxisAlignedBoundingBox``), then per
view ``project_to_depth_image`` (tensor API, nearest point wins) and the back-projection of that
depth image (``create_vertex_map``) moved into the base frame for the XYZ channels. Two ways to
build the cloud are timed (tensor API, legacy API + ``from_legacy``); the faster is reported.

Open3D is imported inside :func:`bench_perception` only, so this module imports without it.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from ..geometry.image import encode_depth_mm
from ..geometry.tf_buffer import TfBuffer
from ..perception.config import PerceptionConfig
from ..perception.pipeline import PerceptionPipeline, RgbdFrame
from ..sim.synthetic_scene import SyntheticScene

AGREEMENT_TOL_M = 0.01
"""A pixel agrees when both outputs see a point there and their depths differ by less than this."""

_VARIANTS = {
    "tensor": "t.PointCloud.create_from_depth_image + t crop + t project_to_depth_image",
    "legacy": "geometry.PointCloud.create_from_depth_image + legacy crop + from_legacy "
    "+ t project_to_depth_image",
}


# --------------------------------------------------------------------------- input data
def make_scene_tf(
    scene: SyntheticScene, stamps_ns: list[int], span_ns: int = 50_000_000
) -> TfBuffer:
    """Static camera mounts plus wrist poses every 10 ms around each stamp."""
    tf = TfBuffer(cache_duration_s=1e6)
    for cam in scene.cameras:
        tf.set_transform(cam.parent_frame, cam.optical_frame, 0, cam.T_parent_cam, static=True)
    for stamp in stamps_ns:
        for t in range(stamp - span_ns, stamp + span_ns + 1, 10_000_000):
            for side in ("left", "right"):
                tf.set_transform("world", f"{side}_wrist", t, scene.wrist_pose(side, t * 1e-9))
    return tf


def make_frames(scene: SyntheticScene, stamp_ns: int) -> list[RgbdFrame]:
    """One synchronised set: every scene camera at ``stamp_ns``, depth as uint16 mm."""
    frames = []
    for cam in scene.cameras:
        depth_m, color = scene.render(cam.name, stamp_ns * 1e-9)
        frames.append(
            RgbdFrame(
                cam.name,
                stamp_ns,
                cam.optical_frame,
                scene.intrinsics,
                encode_depth_mm(depth_m),
                1e-3,
                color,
            )
        )
    return frames


# --------------------------------------------------------------------------- Open3D path
class Open3dBaseline:
    """The Open3D equivalent of :meth:`PerceptionPipeline.process` (depth + XYZ views)."""

    def __init__(self, pipe: PerceptionPipeline, variant: str = "tensor"):
        import open3d as o3d
        import open3d.core as o3c

        if variant not in _VARIANTS:
            raise ValueError(f"unknown Open3D variant '{variant}' (use {', '.join(_VARIANTS)})")
        self.o3d, self.o3c, self.pipe, self.variant = o3d, o3c, pipe, variant
        cfg = pipe.config
        lo = np.asarray(cfg.workspace_min, np.float32)
        hi = np.asarray(cfg.workspace_max, np.float32)
        self.aabb_t = o3d.t.geometry.AxisAlignedBoundingBox(o3c.Tensor(lo), o3c.Tensor(hi))
        self.aabb_legacy = o3d.geometry.AxisAlignedBoundingBox(
            lo.astype(np.float64), hi.astype(np.float64)
        )
        self.view_k = [o3c.Tensor(c.K) for c in pipe.view_cameras]
        self._k_t: dict = {}
        self._k_legacy: dict = {}

    def _intrinsics(self, cam):
        if cam not in self._k_t:  # static per camera, like our cached ray grids
            self._k_t[cam] = self.o3c.Tensor(cam.K)
            self._k_legacy[cam] = self.o3d.camera.PinholeCameraIntrinsic(
                cam.width, cam.height, cam.fx, cam.fy, cam.cx, cam.cy
            )
        return self._k_t[cam], self._k_legacy[cam]

    def fuse(self, frames: list[RgbdFrame], cam_poses: list[np.ndarray]):
        """Cropped fused cloud (an ``o3d.t.geometry.PointCloud``, float32 base frame)."""
        o3d, o3c, cfg = self.o3d, self.o3c, self.pipe.config
        if self.variant == "tensor":
            parts = []
            for f, pose in zip(frames, cam_poses, strict=True):
                k, _ = self._intrinsics(f.intrinsics)
                depth = o3d.t.geometry.Image(o3c.Tensor.from_numpy(np.ascontiguousarray(f.depth)))
                pcd = o3d.t.geometry.PointCloud.create_from_depth_image(
                    depth,
                    k,
                    o3c.Tensor(np.linalg.inv(pose)),
                    depth_scale=1.0 / f.depth_scale_m,
                    depth_max=cfg.depth_max_m,
                )
                parts.append(pcd.point.positions)
            cloud = o3d.t.geometry.PointCloud(o3c.concatenate(parts, axis=0))
            return cloud.crop(self.aabb_t)
        merged = o3d.geometry.PointCloud()
        # legacy truncation keeps d == depth_trunc; ours and the tensor API drop it
        trunc = float(np.nextafter(cfg.depth_max_m, 0.0))
        for f, pose in zip(frames, cam_poses, strict=True):
            _, k = self._intrinsics(f.intrinsics)
            merged += o3d.geometry.PointCloud.create_from_depth_image(
                o3d.geometry.Image(np.ascontiguousarray(f.depth)),
                k,
                np.linalg.inv(pose),
                depth_scale=1.0 / f.depth_scale_m,
                depth_trunc=trunc,
            )
        merged = merged.crop(self.aabb_legacy)
        return o3d.t.geometry.PointCloud.from_legacy(merged, o3c.float32)

    def render(self, cloud, view_poses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(V, H, W, 4) float32 [depth, x, y, z] and (V, H, W) mask, as our views."""
        cfg = self.pipe.config
        w, h = cfg.image_width, cfg.image_height
        out = np.zeros((len(view_poses), h, w, 4), np.float32)
        for v, (pose, k) in enumerate(zip(view_poses, self.view_k, strict=True)):
            depth = cloud.project_to_depth_image(
                w, h, k, self.o3c.Tensor(np.linalg.inv(pose)), depth_scale=1.0, depth_max=1e6
            )
            vertex = depth.create_vertex_map(k, 0.0).as_tensor().numpy()
            d = depth.as_tensor().numpy()[..., 0]
            out[v, ..., 0] = d
            out[v, ..., 1:] = vertex @ pose[:3, :3].T.astype(np.float32) + pose[:3, 3]
        mask = out[..., 0] > 0
        out[~mask] = 0.0
        return out, mask

    def process(self, frames: list[RgbdFrame], tf: TfBuffer, stamp_ns: int | None = None):
        """Same inputs and pose lookups as :meth:`PerceptionPipeline.process`.
        Returns (images, mask, number of fused points)."""
        stamp = frames[0].stamp_ns if stamp_ns is None else stamp_ns
        cam_poses = [self.pipe.camera_pose(f, tf) for f in frames]
        view_poses = self.pipe.view_poses(tf, stamp)
        cloud = self.fuse(frames, cam_poses)
        images, mask = self.render(cloud, view_poses)
        return images, mask, int(cloud.point.positions.shape[0])


# --------------------------------------------------------------------------- comparison
def depth_agreement(
    a: np.ndarray,
    a_mask: np.ndarray,
    b: np.ndarray,
    b_mask: np.ndarray,
    tol_m: float = AGREEMENT_TOL_M,
) -> tuple[float, int]:
    """(fraction of pixels valid in both whose depth differs by < ``tol_m``, that pixel count)."""
    both = a_mask & b_mask
    n = int(both.sum())
    if n == 0:
        return 0.0, 0
    close = np.abs(a[..., 0][both] - b[..., 0][both]) < tol_m
    return float(close.mean()), n


def compare_views(a: np.ndarray, a_mask: np.ndarray, b: np.ndarray, b_mask: np.ndarray) -> dict:
    """Pixel counts for pooling over frames: agreeing depths, valid in both, in either, and the
    summed XYZ distance where valid in both (ours holds the winning point, the back-projection
    the pixel centre's ray, so they differ by up to about a pixel's footprint)."""
    frac, n_both = depth_agreement(a, a_mask, b, b_mask)
    both = a_mask & b_mask
    xyz = np.linalg.norm(a[..., 1:][both] - b[..., 1:][both], axis=-1)
    return {
        "agree": frac * n_both,
        "both": n_both,
        "either": int((a_mask | b_mask).sum()),
        "xyz_sum": float(xyz.sum()),
    }


def _stats(ms: list[float]) -> tuple[float, float]:
    return float(np.median(ms)), float(np.percentile(ms, 90))


# --------------------------------------------------------------------------- the bench
def bench_perception(
    frames: int = 20,
    width: int = 640,
    height: int = 480,
    backend: str = "auto",
    baseline: bool = True,
    progress: bool = True,
) -> dict:
    """Median wall time of ``PerceptionPipeline.process`` (4 cameras -> 5 views of depth+XYZ)
    and of the Open3D equivalent, over ``frames`` time instants. Warm-up is not timed."""
    from tqdm import tqdm

    if frames < 1:
        raise ValueError("--frames must be >= 1")
    scene = SyntheticScene(width=width, height=height)
    config = PerceptionConfig(backend=backend)
    pipe = PerceptionPipeline(config)
    # spread the instants over one wrist period so the wrist cameras see different things
    period_ns = int(scene.wrist_period_s * 1e9)
    stamps = [1_000_000_000 + i * period_ns // frames for i in range(frames)]
    tf = make_scene_tf(scene, stamps)
    sets = [
        make_frames(scene, s)
        for s in tqdm(stamps, desc="render scene", file=sys.stderr, disable=not progress)
    ]

    o3d = None
    baselines: dict[str, Open3dBaseline] = {}
    baseline_error = None
    if baseline:
        try:
            import open3d as o3d

            baselines = {v: Open3dBaseline(pipe, v) for v in _VARIANTS}
        except ImportError as e:
            baseline_error = f"open3d not importable: {e}"

    # warm-up: JIT compilation, buffer allocation, Open3D's first-call set-up
    pipe.warmup()
    for _ in range(2):
        pipe.process(sets[0], tf)
        for b in baselines.values():
            b.process(sets[0], tf)

    ours_ms: list[float] = []
    o3d_ms: dict[str, list[float]] = {v: [] for v in baselines}
    agree: dict[str, list[dict]] = {v: [] for v in baselines}
    o3d_points: dict[str, list[int]] = {v: [] for v in baselines}
    our_points: list[int] = []
    order = list(baselines)
    # Each side is timed in its own pass over the same frames: interleaving them per frame let
    # one library's idle worker threads and cache footprint slow the other down, which is not
    # how either runs on a robot. Agreement is computed afterwards, untimed.
    bar = tqdm(
        total=len(sets) * (1 + len(order)),
        file=sys.stderr,
        disable=not progress,
        desc="time ours, then open3d" if baselines else "time ours",
    )
    for fs in sets:
        t0 = time.perf_counter()
        pipe.process(fs, tf)
        ours_ms.append((time.perf_counter() - t0) * 1e3)
        bar.update(1)
    for name in order:
        for fs in sets:
            t0 = time.perf_counter()
            baselines[name].process(fs, tf)
            o3d_ms[name].append((time.perf_counter() - t0) * 1e3)
            bar.update(1)
    bar.close()
    for fs in sets:
        our_points.append(len(pipe.fuse(fs, [pipe.camera_pose(f, tf) for f in fs]).xyz))
        views = pipe.process(fs, tf).views
        for name in order:
            images, mask, n_points = baselines[name].process(fs, tf)
            o3d_points[name].append(n_points)
            agree[name].append(compare_views(views.images, views.mask, images, mask))

    ours_med, ours_p90 = _stats(ours_ms)
    result_config: dict = {
        "frames": frames,
        "resolution": [width, height],
        "cameras": len(scene.cameras),
        "views": [config.image_width, config.image_height, len(config.views)],
        "backend": pipe.backend,
        "threads": _our_threads(pipe),
        "cpu_count": os.cpu_count(),
        "points_fused_median": int(np.median(our_points)),
        "ours_p90_ms": ours_p90,
    }
    base_med = base_name = ratio = None
    if baselines:
        medians = {v: _stats(ms)[0] for v, ms in o3d_ms.items()}
        best = min(medians, key=medians.get)
        base_med, base_p90 = _stats(o3d_ms[best])
        base_name = f"open3d {o3d.__version__} ({best}: {_VARIANTS[best]}; CPU)"
        ratio = base_med / ours_med
        pooled = {v: {k: sum(c[k] for c in a) for k in a[0]} for v, a in agree.items()}
        fractions = {v: c["agree"] / max(c["both"], 1) for v, c in pooled.items()}
        chosen = pooled[best]
        result_config.update(
            {
                "open3d_variant": best,
                "open3d_variant_desc": _VARIANTS[best],
                "open3d_variant_medians_ms": medians,
                "open3d_threads": _open3d_threads(),
                "baseline_p90_ms": base_p90,
                "open3d_points_fused_median": int(np.median(o3d_points[best])),
                "agreement": fractions[best],
                "agreement_by_variant": fractions,
                "mask_iou": chosen["both"] / max(chosen["either"], 1),
                "xyz_mean_diff_m": chosen["xyz_sum"] / max(chosen["both"], 1),
                "agreement_definition": (
                    f"fraction of view pixels valid in both outputs whose depths differ by < "
                    f"{AGREEMENT_TOL_M * 100:g} cm, pooled over all frames and views"
                ),
            }
        )
    elif baseline_error:
        result_config["baseline_error"] = baseline_error
    n_cam, n_views = len(scene.cameras), len(config.views)
    return {
        "metric": (
            f"fuse+render {n_cam}x{width}x{height} RGB-D -> {n_views}x"
            f"{config.image_width}x{config.image_height} depth+XYZ, median over "
            f"{frames} frames"
        ),
        "unit": "ms",
        "ours": ours_med,
        "baseline": base_med,
        "baseline_name": base_name,
        "ratio": ratio,
        "config": result_config,
    }


def _our_threads(pipe: PerceptionPipeline) -> int:
    if pipe.backend == "numba":
        import numba

        return int(numba.get_num_threads())
    return 1


def _open3d_threads() -> int:
    """Open3D's CPU kernels use OpenMP: OMP_NUM_THREADS if set, else every core."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else (os.cpu_count() or 1)


if __name__ == "__main__":  # python -m clamp_core.eval.bench_perception [frames]
    import json

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    print(json.dumps(bench_perception(frames=n), indent=2))
