"""The simulated ALOHA: control, inverse kinematics, and cameras whose depth, intrinsics and
extrinsics agree with the scene (fused through the perception core)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mujoco")
pytest.importorskip("gym_aloha")

from clamp_core.perception import PerceptionConfig, PerceptionPipeline, RgbdFrame  # noqa: E402
from clamp_core.sim.aloha import (  # noqa: E402
    START_POSE,
    AlohaSim,
    SimError,
    grasp_orientation,
)


@pytest.fixture(scope="module")
def sim():
    s = AlohaSim(width=160, height=120)
    yield s
    s.close()


def test_position_control_reaches_the_commanded_pose(sim):
    sim.reset()
    target = START_POSE.copy()
    target[[0, 7]] = [0.3, -0.3]
    target[[6, 13]] = [0.2, 0.8]
    for _ in range(75):
        sim.step(target)
    q = sim.qpos14()
    np.testing.assert_allclose(q[[0, 7]], [0.3, -0.3], atol=0.02)
    np.testing.assert_allclose(q[[6, 13]], [0.2, 0.8], atol=0.05)


@pytest.mark.parametrize("side, xyz", [("left", [-0.15, -0.05, 0.06]), ("right", [0.2, 0.1, 0.1])])
def test_ik_then_control_puts_the_tool_centre_point_on_target(sim, side, xyz):
    sim.reset()
    goal = np.eye(4)
    goal[:3, :3] = grasp_orientation(side)
    goal[:3, 3] = xyz
    q, err = sim.solve_ik(side, goal)
    assert err < 1e-3
    action = sim.qpos14()
    i = 0 if side == "left" else 7
    action[i : i + 6] = q
    for _ in range(60):
        sim.step(action)
    pose = sim.site_pose(f"{side}_tcp")
    np.testing.assert_allclose(pose[:3, 3], xyz, atol=5e-3)
    assert pose[2, 0] < -0.95  # approach axis points down


def test_bad_actions_are_refused(sim):
    with pytest.raises(SimError, match="14"):
        sim.step(np.zeros(13))
    with pytest.raises(SimError, match="non-finite"):
        sim.step(np.full(14, np.nan))


def test_camera_depth_and_poses_put_the_table_at_z_zero(sim):
    sim.reset()
    frame = sim.observe()
    assert set(frame.images) == {"cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist"}
    config = PerceptionConfig(workspace_min=[-0.5, -0.3, -0.1], workspace_max=[0.5, 0.35, 0.02])
    pipe = PerceptionPipeline(config)
    for name in ("cam_high", "cam_low"):
        f = RgbdFrame(name, 0, name, sim.intrinsics[name], frame.depth_m[name], 1.0)
        cloud = pipe.fuse([f], [frame.extrinsics[name]])
        assert len(cloud.xyz) > 1000
        # most of what the fixed cameras see below 2 cm is the table top, exactly at z = 0 (the
        # rest: the arms' base plates)
        assert np.mean(np.abs(cloud.xyz[:, 2]) < 1e-3) > 0.8
