"""Open3D as an independent oracle for fusion, and a smoke test of the Open3D benchmark.

Our back-projection (ray grid, depth scale, pose, crop) must give the very points Open3D's
RGB-D back-projection gives for the same depth, intrinsics and extrinsic. Open3D's tensor API
emits points in no fixed order (parallel append), so points are matched by the pixel they
re-project to in their camera.
"""

from __future__ import annotations

import numpy as np
import pytest

from clamp_core.geometry import PinholeCamera
from clamp_core.geometry.image import encode_depth_mm
from clamp_core.perception import PerceptionConfig, PerceptionPipeline, RgbdFrame
from test.conftest import scene_frames, scene_tf

o3d = pytest.importorskip("open3d")
o3c = pytest.importorskip("open3d.core")

STAMP_NS = 3_000_000_000
# crop faces away from the table edges and box faces, so no point sits on a face (where
# float32 rounding could put it inside for one implementation and outside for the other)
WS_MIN, WS_MAX = [-0.5, -0.4, -0.05], [0.5, 0.4, 0.6]


def _off_centre(cam: PinholeCamera, dx: float, dy: float, fy_scale: float) -> PinholeCamera:
    """Principal point moved off the image centre, non-square pixels."""
    return PinholeCamera(cam.width, cam.height, cam.fx, cam.fy * fy_scale, cam.cx + dx, cam.cy + dy)


def _frames(scene):
    """All four cameras; cam_low (fixed) and cam_right_wrist (moving) get off-centre intrinsics
    and are re-rendered with them."""
    frames = scene_frames(scene, STAMP_NS)
    shifted = {"cam_low": (-9.3, 6.7, 1.07), "cam_right_wrist": (7.6, -5.2, 0.94)}
    for i, f in enumerate(frames):
        if f.camera in shifted:
            cam = _off_centre(f.intrinsics, *shifted[f.camera])
            depth_m, color = scene.render_pose(scene.camera_pose(f.camera, STAMP_NS * 1e-9), cam)
            frames[i] = RgbdFrame(
                f.camera, f.stamp_ns, f.frame_id, cam, encode_depth_mm(depth_m), 1e-3, color
            )
    return frames


def _pixel_keys(xyz_base: np.ndarray, t_base_cam: np.ndarray, cam: PinholeCamera) -> np.ndarray:
    """Flat index of the pixel each base-frame point re-projects to (checked to be a centre)."""
    t_cam_base = np.linalg.inv(t_base_cam)
    p = xyz_base.astype(np.float64) @ t_cam_base[:3, :3].T + t_cam_base[:3, 3]
    uv = cam.project(p)
    rounded = np.rint(uv)
    assert np.abs(uv - rounded).max() < 0.01, "a point does not lie on a pixel-centre ray"
    keys = rounded[:, 1].astype(np.int64) * cam.width + rounded[:, 0].astype(np.int64)
    assert len(np.unique(keys)) == len(keys), "two points from one pixel"
    return keys


def _open3d_cloud(frame: RgbdFrame, t_base_cam: np.ndarray, api: str):
    """(xyz (N, 3), rgb (N, 3) uint8 or None) by Open3D, cropped to the workspace box."""
    cam = frame.intrinsics
    extrinsic = np.linalg.inv(t_base_cam)  # Open3D wants T_cam_base
    if api == "tensor":
        pcd = o3d.t.geometry.PointCloud.create_from_depth_image(
            o3d.t.geometry.Image(o3c.Tensor(frame.depth)),
            o3c.Tensor(cam.K),
            o3c.Tensor(extrinsic),
            depth_scale=1000.0,
            depth_max=3.0,
        )
        box = o3d.t.geometry.AxisAlignedBoundingBox(
            o3c.Tensor(np.float32(WS_MIN)), o3c.Tensor(np.float32(WS_MAX))
        )
        return pcd.crop(box).point.positions.numpy(), None
    rgbd = o3d.geometry.RGBDImage.create_from_color_and_depth(
        o3d.geometry.Image(np.ascontiguousarray(frame.color)),
        o3d.geometry.Image(frame.depth),
        depth_scale=1000.0,
        depth_trunc=float(np.nextafter(3.0, 0.0)),
        convert_rgb_to_intensity=False,
    )
    intr = o3d.camera.PinholeCameraIntrinsic(cam.width, cam.height, cam.fx, cam.fy, cam.cx, cam.cy)
    pcd = o3d.geometry.PointCloud.create_from_rgbd_image(rgbd, intr, extrinsic)
    pcd = pcd.crop(o3d.geometry.AxisAlignedBoundingBox(np.array(WS_MIN), np.array(WS_MAX)))
    rgb = np.rint(np.asarray(pcd.colors) * 255.0).astype(np.uint8)
    return np.asarray(pcd.points), rgb


@pytest.mark.parametrize("api", ["tensor", "legacy_rgbd"])
def test_fused_cloud_equals_open3d_backprojection(small_scene, api):
    scene = small_scene
    frames = _frames(scene)
    assert frames[1].intrinsics.cx != (scene.width - 1) / 2  # the off-centre case is exercised
    # Open3D has no minimum depth: switch ours off so both keep the same readings
    config = PerceptionConfig(
        backend="numpy", depth_min_m=0.0, workspace_min=WS_MIN, workspace_max=WS_MAX
    )
    pipe = PerceptionPipeline(config)
    ours = pipe.process(frames, scene_tf(scene, STAMP_NS), want_cloud=True, want_colors=True).cloud
    for i, frame in enumerate(frames):
        # the oracle's pose comes from the scene's kinematics, not from our tf buffer
        t_base_cam = scene.camera_pose(frame.camera, STAMP_NS * 1e-9).matrix()
        ref_xyz, ref_rgb = _open3d_cloud(frame, t_base_cam, api)
        sel = ours.camera_index == i
        xyz = ours.xyz[sel]
        assert len(ref_xyz) > 1000, frame.camera
        assert len(xyz) == len(ref_xyz), frame.camera
        a = np.argsort(_pixel_keys(xyz, t_base_cam, frame.intrinsics))
        b = np.argsort(_pixel_keys(ref_xyz, t_base_cam, frame.intrinsics))
        np.testing.assert_array_equal(
            _pixel_keys(xyz, t_base_cam, frame.intrinsics)[a],
            _pixel_keys(ref_xyz, t_base_cam, frame.intrinsics)[b],
            err_msg=frame.camera,
        )
        np.testing.assert_allclose(xyz[a], ref_xyz[b], rtol=0, atol=1e-5, err_msg=frame.camera)
        if ref_rgb is not None:
            np.testing.assert_array_equal(ours.rgb[sel][a], ref_rgb[b], err_msg=frame.camera)


def test_bench_perception_smoke():
    from clamp_core.eval.bench_perception import bench_perception

    r = bench_perception(frames=2, width=160, height=120, progress=False)
    assert set(r) == {"metric", "unit", "ours", "baseline", "baseline_name", "ratio", "config"}
    assert r["unit"] == "ms"
    assert "160x120" in r["metric"] and "224x224" in r["metric"]
    for key in ("ours", "baseline", "ratio"):
        assert isinstance(r[key], float) and np.isfinite(r[key]) and r[key] > 0, key
    assert r["ratio"] == pytest.approx(r["baseline"] / r["ours"])
    assert r["baseline_name"].startswith(f"open3d {o3d.__version__} (")
    c = r["config"]
    assert c["frames"] == 2 and list(c["resolution"]) == [160, 120]
    assert c["backend"] in ("numba", "numpy")
    assert c["open3d_variant"] in ("tensor", "legacy")
    assert c["open3d_variant"] in r["baseline_name"]
    for key in ("threads", "cpu_count", "points_fused_median"):
        assert isinstance(c[key], int) and c[key] > 0, key
    for key in ("ours_p90_ms", "baseline_p90_ms"):
        assert isinstance(c[key], float) and c[key] > 0, key
    assert c["points_fused_median"] > 10_000
    # both paths fuse the same points and render the same depth
    assert c["open3d_points_fused_median"] == pytest.approx(c["points_fused_median"], rel=1e-3)
    assert c["agreement"] > 0.95
    assert c["mask_iou"] > 0.95
