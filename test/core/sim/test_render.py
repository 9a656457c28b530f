"""The one-pass RGB-D renderer gives exactly what mujoco.Renderer gives with a colour pass and a
depth pass per camera, for every task's scene, and keeps the depth pass where one pass would not
do (translucent surfaces)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mujoco")
pytest.importorskip("gym_aloha")

import mujoco  # noqa: E402

from clamp_core.sim.aloha import AlohaSim  # noqa: E402
from clamp_core.sim.render import RgbdRenderer, has_translucent_parts, needs_depth_pass  # noqa: E402
from clamp_core.sim.tasks import TASKS, make_task  # noqa: E402


def reference_rgbd(model, data, cameras, width, height) -> dict:
    """camera -> (RGB, depth) the straightforward way: mujoco.Renderer, one scene update and a
    colour pass, then its depth pass; background depth set to 0."""
    out = {}
    far = model.vis.map.zfar * model.stat.extent
    with mujoco.Renderer(model, height, width) as r:
        r.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        r.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        for name in cameras:
            r.update_scene(data, camera=name)
            rgb = r.render().copy()
            r.enable_depth_rendering()
            depth = r.render().astype(np.float32)
            r.disable_depth_rendering()
            depth[depth >= 0.99 * far] = 0.0
            out[name] = rgb, depth
    return out


def assert_same_rgbd(sim: AlohaSim, expected: dict, cameras=None) -> None:
    frame = sim.observe(cameras=cameras)
    assert (frame.depth_m[next(iter(expected))] > 0).mean() > 0.3  # the cameras see the scene
    for name, (rgb, depth) in expected.items():
        assert frame.images[name].dtype == np.uint8 and frame.depth_m[name].dtype == np.float32
        np.testing.assert_array_equal(frame.images[name], rgb, err_msg=name)
        np.testing.assert_array_equal(frame.depth_m[name], depth, err_msg=name)
    # depth only (a depth-only ROS graph): the depth pass alone gives the same depth, no colour
    depth_only = sim.observe(cameras=cameras, color=False)
    assert depth_only.images == {}
    for name, (_, depth) in expected.items():
        np.testing.assert_array_equal(depth_only.depth_m[name], depth, err_msg=f"{name} depth-only")


@pytest.mark.parametrize("name", sorted(TASKS))
def test_one_pass_rgbd_is_bit_identical_to_a_colour_and_a_depth_pass(name):
    task = make_task(name)
    sim = task.make_sim(width=128, height=96)
    try:
        assert not sim._renderer_for().two_pass
        task.reset(sim, 2)
        expert = task.expert(sim, np.random.default_rng(2))
        for step in range(61):
            if step % 30 == 0:  # the arms and objects move between the checks
                cams = [c.name for c in sim.cameras]
                assert_same_rgbd(sim, reference_rgbd(sim.model, sim.data, cams, 128, 96))
            sim.step(expert.act(sim))
    finally:
        sim.close()


def test_frames_own_their_arrays():
    sim = AlohaSim(width=64, height=48)
    try:
        sim.reset()
        a = sim.observe()
        sim.step(sim.qpos14() + 0.3)
        sim.step(sim.qpos14() + 0.3)
        b = sim.observe()
        assert not np.array_equal(a.images["cam_left_wrist"], b.images["cam_left_wrist"])
        assert not np.shares_memory(a.images["cam_high"], b.images["cam_high"])
        assert not np.shares_memory(a.depth_m["cam_high"], b.depth_m["cam_high"])
    finally:
        sim.close()


def _translucent_box(spec) -> None:
    spec.worldbody.add_geom(
        type=mujoco.mjtGeom.mjGEOM_BOX,
        size=[0.05, 0.05, 0.05],
        pos=[0.0, 0.6, 0.1],
        rgba=[0.2, 0.4, 0.9, 0.5],
        contype=0,
        conaffinity=0,
    )


def _skybox(spec) -> None:
    spec.add_texture(
        name="sky",
        type=mujoco.mjtTexture.mjTEXTURE_SKYBOX,
        builtin=mujoco.mjtBuiltin.mjBUILTIN_GRADIENT,
        rgb1=[0.3, 0.5, 0.7],
        rgb2=[0.0, 0.0, 0.0],
        width=64,
        height=64,
    )


@pytest.mark.parametrize("build", [_translucent_box, _skybox])
def test_scenes_whose_colour_pass_depth_differs_keep_a_depth_pass(build):
    sim = AlohaSim(build_objects=build, width=96, height=72)
    try:
        sim.reset()
        assert sim._renderer_for().two_pass
        cams = ["cam_high", "cam_low"]
        assert_same_rgbd(sim, reference_rgbd(sim.model, sim.data, cams, 96, 72), cams)
    finally:
        sim.close()


def test_hidden_or_invisible_parts_do_not_count_as_translucent():
    sim = AlohaSim(render=False)
    # gym-aloha's sites are alpha 0 (not drawn); the collision plane is alpha 0 in group 3
    assert not has_translucent_parts(sim.model, mujoco.MjvOption())
    assert not needs_depth_pass(sim.model, mujoco.MjvOption(), mujoco.MjvScene().flags)
    option = mujoco.MjvOption()
    option.geomgroup[:] = 1
    assert not has_translucent_parts(sim.model, option)


def test_render_before_update_and_after_close_are_errors():
    sim = AlohaSim(width=32, height=24)
    r = RgbdRenderer(sim.model, 32, 24)
    with pytest.raises(RuntimeError, match="update"):
        r.render("cam_high")
    r.update(sim.data)
    with pytest.raises(ValueError, match="no camera"):
        r.render("nope")
    r.close()
    r.close()
    with pytest.raises(RuntimeError, match="close"):
        r.render("cam_high")
