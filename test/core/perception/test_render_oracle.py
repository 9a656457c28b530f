"""Fusion and rendering against closed-form geometry.

The synthetic scene is exact ray casting against a table and boxes, so a virtual view can be
ray cast too: the rendered depth must match it, and every rendered XYZ must lie on a surface and
project into its own pixel.
"""

from __future__ import annotations

import numpy as np
import pytest

from clamp_core.geometry import TfBuffer, Transform
from clamp_core.geometry.camera import PinholeCamera
from clamp_core.perception import PerceptionConfig, PerceptionPipeline, RgbdFrame
from clamp_core.sim.synthetic_scene import SyntheticScene
from test.conftest import scene_frames, scene_tf

STAMP = 3_000_000_000


@pytest.fixture(scope="module")
def setup():
    scene = SyntheticScene()
    frames = scene_frames(scene, STAMP, float_depth=True)
    tf = scene_tf(scene, STAMP)
    pipe = PerceptionPipeline(PerceptionConfig())
    result = pipe.process(frames, tf, want_cloud=True, want_colors=True)
    return scene, frames, tf, pipe, result


def _smooth(depth: np.ndarray, tol: float = 0.005) -> np.ndarray:
    """Pixels whose 8 neighbours have nearly the same analytic depth (no silhouette edge)."""
    ok = depth > 0
    smooth = ok.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            shifted = np.roll(np.roll(depth, dy, 0), dx, 1)
            smooth &= (np.abs(shifted - depth) < tol) & (shifted > 0)
    smooth[[0, -1], :] = False
    smooth[:, [0, -1]] = False
    return smooth


def test_every_fused_point_lies_on_a_scene_surface(setup):
    scene, _, _, _, result = setup
    assert len(result.cloud.xyz) > 500_000
    assert scene.surface_distance(result.cloud.xyz).max() < 1e-4


@pytest.mark.parametrize(
    "view", ["overhead", "back_right", "front_left", "wrist_left", "wrist_right"]
)
def test_rendered_depth_matches_ray_cast_virtual_camera(setup, view):
    scene, _, _, pipe, result = setup
    v = result.views.names.index(view)
    cam = result.views.intrinsics[v]
    pose = Transform.from_matrix(result.views.poses[v])
    expected, _ = scene.render_pose(pose, cam)
    got = result.views.images[v, ..., 0]
    mask = result.views.mask[v]
    smooth = _smooth(expected)
    both = smooth & mask
    # where the scene is smooth and some input camera saw it, the view sees it too
    assert both.sum() > 0.2 * smooth.sum()
    err = np.abs(got[both] - expected[both])
    # the winning point lies somewhere inside the pixel, not on its centre ray: allow the depth
    # change across half a pixel (local gradient), plus float32 rounding
    gy, gx = np.gradient(expected)
    slack = 0.5 * (np.abs(gx) + np.abs(gy))[both] + 1e-4
    assert np.mean(err <= slack) > 0.99, f"{view}: median error {np.median(err):.5f} m"


@pytest.mark.parametrize("view", range(5))
def test_view_xyz_is_on_surfaces_projects_into_its_pixel_and_matches_depth(setup, view):
    scene, _, _, _, result = setup
    img, mask = result.views.images[view], result.views.mask[view]
    cam: PinholeCamera = result.views.intrinsics[view]
    xyz = img[mask][:, 1:].astype(np.float64)
    assert len(xyz) > 1000
    assert scene.surface_distance(xyz).max() < 1e-4
    t_view_base = np.linalg.inv(result.views.poses[view])
    p = xyz @ t_view_base[:3, :3].T + t_view_base[:3, 3]
    np.testing.assert_allclose(img[mask][:, 0], p[:, 2], atol=2e-5)
    uv = cam.project(p)
    rows, cols = np.nonzero(mask)
    assert np.all(np.abs(uv[:, 0] - cols) <= 0.5 + 1e-3)
    assert np.all(np.abs(uv[:, 1] - rows) <= 0.5 + 1e-3)
    # documented empty-pixel value: 0 in every channel
    assert np.all(img[~mask] == 0)


def test_nearest_point_wins(setup):
    """Over a box the overhead view sees the box top, not the table under it."""
    scene, _, _, _, result = setup
    v = result.views.names.index("overhead")
    img, mask = result.views.images[v], result.views.mask[v]
    box = scene.boxes[0]
    top = box.center[2] + box.half_extents[2]
    xyz = img[..., 1:]
    over = mask & (np.abs(xyz[..., 0] - box.center[0]) < box.half_extents[0] - 0.005)
    over &= np.abs(xyz[..., 1] - box.center[1]) < box.half_extents[1] - 0.005
    assert over.sum() > 20
    np.testing.assert_allclose(xyz[over][:, 2], top, atol=1e-4)


def test_wrist_view_moves_with_its_tf_frame(setup):
    scene, frames, _, pipe, _ = setup
    fixed_frames = [f for f in frames if f.camera in ("cam_high", "cam_low")]
    v = pipe.config.views.index(next(x for x in pipe.config.views if x.name == "wrist_left"))
    outs = []
    for dx in (0.0, 0.05):
        tf = scene_tf(scene, STAMP)
        pose = scene.wrist_pose("left", STAMP * 1e-9)
        tf.set_transform(
            "world", "left_wrist", STAMP, Transform(pose.translation + [dx, 0, 0], pose.rotation)
        )
        outs.append(pipe.process(fixed_frames, tf, stamp_ns=STAMP).views)
    a, b = outs
    both = a.mask[v] & b.mask[v]
    assert both.sum() > 1000
    # translating the camera translates what each pixel sees (points on the table plane)
    on_table = both & (np.abs(a.images[v, ..., 3]) < 1e-3) & (np.abs(b.images[v, ..., 3]) < 1e-3)
    shift = b.images[v, ..., 1:][on_table] - a.images[v, ..., 1:][on_table]
    assert np.median(shift[:, 0]) == pytest.approx(0.05, abs=0.003)
    assert np.median(shift[:, 1]) == pytest.approx(0.0, abs=0.003)
    np.testing.assert_allclose(b.poses[v][:3, 3] - a.poses[v][:3, 3], [0.05, 0, 0], atol=1e-9)


def test_camera_pose_is_looked_up_at_the_image_stamp(setup):
    """The wrist cameras move: process() must pose each image with tf at the image's stamp."""
    scene, frames, tf, pipe, _ = setup
    wrist = [f for f in frames if f.camera == "cam_left_wrist"]
    got = pipe.process(wrist, tf, want_cloud=True).cloud.xyz
    pose = scene.camera_pose("cam_left_wrist", STAMP * 1e-9).matrix()
    truth = pipe.fuse(wrist, [pose]).xyz
    np.testing.assert_allclose(got, truth, atol=1e-5)
    # ...and the pose of another instant (80 ms later) would misplace them by millimetres
    late_pose = scene.camera_pose("cam_left_wrist", (STAMP + 80_000_000) * 1e-9).matrix()
    moved = late_pose @ np.linalg.inv(pose)
    late = truth @ moved[:3, :3].T + moved[:3, 3]
    assert np.median(np.linalg.norm(late - truth, axis=1)) > 3e-3


def test_invalid_depth_and_points_outside_the_workspace_are_dropped():
    cam = PinholeCamera.from_fov(8, 6, 60.0)
    depth = np.full((6, 8), 0.5, np.float32)
    depth[0, 0] = 0.0
    depth[0, 1] = np.nan
    depth[0, 2] = np.inf
    depth[0, 3] = -1.0
    depth[0, 4] = 5.0  # beyond depth_max_m
    depth[0, 5] = 0.05  # below depth_min_m
    config = PerceptionConfig(workspace_min=[-1, -1, -1], workspace_max=[1, 1, 1])
    config.views = config.views[:3]
    pipe = PerceptionPipeline(config)
    frame = RgbdFrame("c", 0, "c", cam, depth, 1.0)
    cloud = pipe.fuse([frame], [np.eye(4)])
    assert len(cloud.xyz) == 48 - 6
    assert np.all(np.isfinite(cloud.xyz))
    np.testing.assert_allclose(cloud.xyz[:, 2], 0.5, atol=1e-6)
    # move the camera so half the points leave the crop box (x > 1)
    pose = np.eye(4)
    pose[0, 3] = 1.0
    cropped = pipe.fuse([frame], [pose])
    assert 0 < len(cropped.xyz) < len(cloud.xyz)
    assert np.all(cropped.xyz[:, 0] <= 1.0)


def test_uint16_millimetres_and_float_metres_give_the_same_cloud(scene):
    frames_mm = scene_frames(scene, STAMP)
    frames_m = scene_frames(scene, STAMP, float_depth=True)
    tf = scene_tf(scene, STAMP)
    pipe = PerceptionPipeline(PerceptionConfig())
    a = pipe.process(frames_mm, tf, want_cloud=True).cloud
    b = pipe.process(frames_m, tf, want_cloud=True).cloud
    assert abs(len(a.xyz) - len(b.xyz)) < 0.01 * len(b.xyz)
    assert scene.surface_distance(a.xyz[::50]).max() < 2e-3  # mm quantisation along the ray


def test_colors_follow_their_points(setup):
    scene, _, _, _, result = setup
    cloud = result.cloud
    for box in scene.boxes:
        top = box.center[2] + box.half_extents[2]
        on_top = np.abs(cloud.xyz[:, 2] - top) < 1e-4
        on_top &= np.all(
            np.abs(cloud.xyz[:, :2] - box.center[:2]) < np.asarray(box.half_extents[:2]) - 0.002,
            axis=1,
        )
        assert on_top.sum() > 100
        assert np.all(cloud.rgb[on_top] == box.color)
    assert set(np.unique(cloud.camera_index)) == {0, 1, 2, 3}


def test_voxel_downsampling_keeps_one_point_per_voxel(setup):
    scene, frames, tf, _, full = setup
    config = PerceptionConfig(voxel_size_m=0.01)
    result = PerceptionPipeline(config).process(frames, tf, want_cloud=True)
    cells = np.floor(result.cloud.xyz / 0.01).astype(np.int64)
    assert len(np.unique(cells, axis=0)) == len(cells)
    assert 1000 < len(cells) < len(full.cloud.xyz) / 10
    assert result.views.mask.sum() > 0.1 * full.views.mask.sum()


def test_frames_that_disagree_with_their_camera_info_are_refused():
    cam = PinholeCamera.from_fov(8, 6, 60.0)
    pipe = PerceptionPipeline(PerceptionConfig())
    frame = RgbdFrame("cam_x", 0, "f", cam, np.ones((5, 8), np.float32), 1.0)
    with pytest.raises(ValueError, match="cam_x.*8x5.*8x6"):
        pipe.fuse([frame], [np.eye(4)])
    frame = RgbdFrame(
        "cam_y", 0, "f", cam, np.ones((6, 8), np.float32), 1.0, color=np.zeros((3, 4, 3), np.uint8)
    )
    with pytest.raises(ValueError, match="cam_y.*color"):
        pipe.fuse([frame], [np.eye(4)])


def test_tiled_views_are_side_by_side(setup):
    *_, result = setup
    tiled = result.views.tiled()
    assert tiled.shape == (224, 5 * 224, 4)
    np.testing.assert_array_equal(tiled[:, 224:448], result.views.images[1])


def test_tf_missing_for_a_camera_names_the_frame():
    scene = SyntheticScene(width=32, height=24)
    frames = scene_frames(scene, STAMP)
    pipe = PerceptionPipeline(PerceptionConfig())
    tf = TfBuffer()
    with pytest.raises(LookupError, match="cam_high_color_optical_frame"):
        pipe.process(frames, tf)
