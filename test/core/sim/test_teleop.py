"""Teleoperation's arithmetic and the expert at the leader arms, without ROS."""

from __future__ import annotations

import numpy as np
import pytest

from clamp_core.aloha import ARM_JOINT_NAMES
from clamp_core.sim.generate import _rollout
from clamp_core.sim.tasks import make_task
from clamp_core.sim.teleop import ExpertLeader
from clamp_core.teleop import GripperMap, TeleopError, follower_command, leader_positions

LOW = np.array([-3.0] * 6 + [0.0])
HIGH = np.array([3.0] * 6 + [1.0])


def test_gripper_map_is_linear_between_the_calibrated_angles_and_clips():
    g = GripperMap(closed_rad=-0.1, open_rad=0.9)
    assert g.to_follower(-0.1) == 0.0 and g.to_follower(0.9) == 1.0
    assert g.to_follower(0.4) == pytest.approx(0.5)
    assert g.to_follower(2.0) == 1.0 and g.to_follower(-5.0) == 0.0  # beyond the stops
    for x in (0.0, 0.25, 1.0):
        assert g.to_follower(g.to_leader(x)) == pytest.approx(x, abs=1e-12)
    reversed_ = GripperMap(closed_rad=0.9, open_rad=-0.1)  # a leader whose angle falls to open
    assert reversed_.to_follower(-0.1) == 1.0
    with pytest.raises(ValueError, match="apart"):
        GripperMap(0.5, 0.5)
    with pytest.raises(ValueError, match="closed_rad, open_rad"):
        GripperMap.from_range([0.1])


def test_follower_command_maps_names_not_order_and_refuses_bad_states():
    g = GripperMap(0.0, 1.0)
    names = list(reversed(ARM_JOINT_NAMES))
    pos = [0.25, 0.5, 0.1, 0.2, 0.3, 0.4, 0.6][::-1]  # gripper first, then wrist_rotate ...
    q = follower_command(names, pos, g, LOW, HIGH)
    np.testing.assert_allclose(q, [0.25, 0.5, 0.1, 0.2, 0.3, 0.4, 0.6])
    beyond = follower_command(ARM_JOINT_NAMES, [9.0, 0, 0, 0, 0, 0, 0.5], g, LOW, HIGH)
    assert beyond[0] == 3.0  # clipped to the follower's limit
    with pytest.raises(TeleopError, match="appears more than once"):
        follower_command(["waist", *ARM_JOINT_NAMES], [0.0] * 8, g, LOW, HIGH)
    with pytest.raises(TeleopError, match="missing"):
        follower_command(ARM_JOINT_NAMES[:6], [0.0] * 6, g, LOW, HIGH)
    with pytest.raises(TeleopError, match="non-finite"):
        follower_command(ARM_JOINT_NAMES, [0, np.nan, 0, 0, 0, 0, 0], g, LOW, HIGH)
    with pytest.raises(TeleopError, match="positions"):
        follower_command(ARM_JOINT_NAMES, [0.0] * 3, g, LOW, HIGH)


def test_the_expert_at_the_leader_arms_drives_the_follower_like_generate():
    """In one process, leader -> follower mapping -> physics must reproduce `clamp generate`'s
    expert rollout of the same seed, rest steps included: the mapping loses nothing."""
    task = make_task("drawer_open")
    sim = task.make_sim(width=64, height=48)
    seed, rest = 3, 4
    actions_direct = []
    _rollout(task, sim, seed, lambda k, f, a: actions_direct.append(a.copy()), rest_steps=rest)
    qpos_direct = sim.qpos14().copy()

    task.reset(sim, seed)
    g = GripperMap()
    leader = ExpertLeader(task, sim, g)
    leader.reset(seed)
    lo, hi = sim.joint_low, sim.joint_high
    low = {s: np.append(lo[6 * i : 6 * i + 6], 0.0) for i, s in enumerate(("left", "right"))}
    high = {s: np.append(hi[6 * i : 6 * i + 6], 1.0) for i, s in enumerate(("left", "right"))}
    hold = sim.qpos14().copy()
    actions_teleop = []
    for k in range(rest + len(actions_direct)):
        if k == rest:
            leader.start()
        arms = leader.step(hold)
        cmd = np.concatenate(
            [follower_command(ARM_JOINT_NAMES, arms[s], g, low[s], high[s]) for s in arms]
        )
        if leader.started:
            actions_teleop.append(cmd)
        sim.step(cmd)
    np.testing.assert_allclose(np.array(actions_teleop), np.array(actions_direct), atol=1e-9)
    np.testing.assert_allclose(sim.qpos14(), qpos_direct, atol=1e-6)
    assert task.success(sim)


def test_leader_positions_put_the_gripper_in_leader_angles():
    g = GripperMap(-0.5, 1.5)
    a = np.zeros(14)
    a[6], a[13] = 1.0, 0.0
    arms = leader_positions(a, g)
    assert arms["left"][6] == 1.5 and arms["right"][6] == -0.5


def test_shadow_comparison_scores_the_plan_against_the_leader_over_a_window():
    from clamp_core.teleop import ShadowComparison

    s = ShadowComparison(window=3)
    leader = np.zeros(7)
    s.add("left", leader, None)  # no plan covers this state: nothing counted
    assert s.summary() == {}
    for err in (0.4, 0.1, 0.2, 0.3):  # the first falls out of the window
        s.add("left", leader, np.array([err] * 6 + [2 * err]))
    out = s.summary()["left"]
    assert out["samples"] == 3
    assert out["joints_rad"] == pytest.approx(0.2) and out["gripper"] == pytest.approx(0.4)
    with pytest.raises(ValueError, match="window"):
        ShadowComparison(window=0)
