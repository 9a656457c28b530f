"""Trajectories as the JointTrajectoryController runs them: validation and sampling."""

from __future__ import annotations

import numpy as np
import pytest

from clamp_core.policy.trajectory import TrajectoryError, parse_trajectory, sample_linear

ARM = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate")


def test_trajectory_sampling():
    """The executor's arithmetic (no DDS): hold until the start, linear segments from the current
    command, hold the last point; joints left out keep their command."""
    low, high = np.array([-3.0] * 6 + [0.0]), np.array([3.0] * 6 + [1.0])
    current = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 1.0])
    s = 1_000_000_000
    points = [([1.0, 0.1, 0.2, 0.3, 0.4, 0.5], s), ([2.0, 0.1, 0.2, 0.3, 0.4, 0.5], 3 * s)]
    traj = parse_trajectory(ARM, points, 10 * s, 9 * s, current, low, high)
    np.testing.assert_allclose(traj.sample(9 * s), current)  # before header.stamp: hold
    assert traj.sample(10 * s + s // 2)[0] == pytest.approx(0.5)  # current -> point 0
    assert traj.sample(12 * s)[0] == pytest.approx(1.5)  # point 0 -> point 1
    np.testing.assert_allclose(traj.sample(20 * s), [2.0, 0.1, 0.2, 0.3, 0.4, 0.5, 1.0])
    now_traj = parse_trajectory(ARM, points[:1], 0, 5 * s, current, low, high)  # stamp 0 = now
    assert now_traj.start_ns == 5 * s
    with pytest.raises(TrajectoryError, match="before now"):
        parse_trajectory(ARM, points, 1 * s, 9 * s, current, low, high)


def test_sample_linear_holds_the_ends_and_interpolates_between():
    times = np.array([10, 20, 40])
    pos = np.array([[0.0, 1.0], [1.0, 1.0], [3.0, -1.0]])
    np.testing.assert_allclose(sample_linear(times, pos, 0), [0.0, 1.0])
    np.testing.assert_allclose(sample_linear(times, pos, 15), [0.5, 1.0])
    np.testing.assert_allclose(sample_linear(times, pos, 30), [2.0, 0.0])
    np.testing.assert_allclose(sample_linear(times, pos, 99), [3.0, -1.0])
    out = sample_linear(times, pos, 99)
    out[0] = 7.0  # a copy: the plan is not modified through it
    assert pos[-1, 0] == 3.0


@pytest.mark.parametrize(
    "names, points, match",
    [
        ([], [([], 0)], "no joint names"),
        ([*ARM, "elbow"], [([0.0] * 7, 10)], "duplicate"),
        (ARM[:5], [([0.0] * 5, 10)], "missing joint names: wrist_rotate"),
        (ARM, [([0.0] * 5, 10)], "5 positions for 6"),
        (ARM, [([0.0, np.nan, 0, 0, 0, 0], 10)], "non-finite"),
        (ARM, [([0.0] * 6, 20), ([0.0] * 6, 20)], "not increasing"),
        (ARM, [([9.0, 0, 0, 0, 0, 0], 20)], "outside the joint limits"),
    ],
)
def test_invalid_trajectories_are_refused_with_the_reason(names, points, match):
    low, high = np.array([-3.0] * 6 + [0.0]), np.array([3.0] * 6 + [1.0])
    with pytest.raises(TrajectoryError, match=match):
        parse_trajectory(names, points, 0, 0, np.zeros(7), low, high)
