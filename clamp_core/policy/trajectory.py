"""Joint trajectories as ros2_control's JointTrajectoryController runs them (linear
interpolation; velocities and accelerations ignored): validation of one arm's trajectory and
sampling it in time. The sim node executes them; the policy engine follows what it sent."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..aloha import ARM_JOINT_NAMES, ARM_JOINTS


def sample_linear(times_ns: np.ndarray, positions: np.ndarray, t_ns: int) -> np.ndarray:
    """Positions at ``t_ns`` on a piecewise-linear plan: ``times_ns`` (n,) increasing,
    ``positions`` (n, d); the first point before it starts, the last after it ends."""
    i = int(np.searchsorted(times_ns, t_ns, side="right"))  # times[i-1] <= t < times[i]
    if i == 0:
        return np.array(positions[0], copy=True)
    if i >= len(times_ns):
        return np.array(positions[-1], copy=True)
    t0, t1 = int(times_ns[i - 1]), int(times_ns[i])
    w = (t_ns - t0) / (t1 - t0)
    return positions[i - 1] + w * (positions[i] - positions[i - 1])


class TrajectoryError(ValueError):
    """A trajectory that cannot be executed; the message names the problem."""


@dataclass
class ArmTrajectory:
    """A validated trajectory of one arm, in absolute time (ns). ROS-free."""

    start_ns: int
    times_ns: np.ndarray
    """(n,) time from start of each point, strictly increasing."""
    positions: np.ndarray
    """(n, 7) targets in ARM_JOINT_NAMES order (joints the message left out hold)."""
    hold: np.ndarray
    """(7,) the command when the trajectory was accepted: held until it starts."""

    @property
    def end_ns(self) -> int:
        return self.start_ns + int(self.times_ns[-1])

    def sample(self, t_ns: int) -> np.ndarray:
        """(7,) command at ``t_ns``: the held command before the start, then from it to the first
        point and on linearly between points; the last point once it has passed."""
        rel = t_ns - self.start_ns
        if rel < 0:
            return self.hold.copy()
        if self.times_ns[0] > 0:  # the move from the held command to the first point
            if rel < self.times_ns[0]:
                return sample_linear(
                    np.array([0, self.times_ns[0]]), np.stack([self.hold, self.positions[0]]), rel
                )
        return sample_linear(self.times_ns, self.positions, rel)


def parse_trajectory(
    joint_names,
    points,
    stamp_ns: int,
    now_ns: int,
    current: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
) -> ArmTrajectory:
    """Validate one arm's trajectory and build it. ``points``: [(positions, time_from_start_ns)];
    ``current``: the arm's (7,) command now; ``low``/``high``: (7,) limits. Raises
    TrajectoryError."""
    names = list(joint_names)
    expected = ", ".join(ARM_JOINT_NAMES)
    if not names:
        raise TrajectoryError(f"no joint names (expected {expected})")
    for n in names:
        if n not in ARM_JOINT_NAMES:
            raise TrajectoryError(f"unknown joint name '{n}' (expected {expected})")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise TrajectoryError(f"duplicate joint names: {', '.join(dup)}")
    missing = [j for j in ARM_JOINTS if j not in names]
    if missing:
        raise TrajectoryError(
            f"missing joint names: {', '.join(missing)} (all six arm joints are required, "
            f"the gripper is optional)"
        )
    if not points:
        raise TrajectoryError("empty trajectory: no points")
    index = [ARM_JOINT_NAMES.index(n) for n in names]
    times = np.empty(len(points), dtype=np.int64)
    full = np.empty((len(points), len(ARM_JOINT_NAMES)))
    base = current.copy()
    for k, (pos, t_ns) in enumerate(points):
        pos = np.asarray(pos, dtype=float).reshape(-1)
        if pos.size != len(names):
            raise TrajectoryError(
                f"point {k} has {pos.size} positions for {len(names)} joint names"
            )
        bad = [names[i] for i in np.flatnonzero(~np.isfinite(pos))]
        if bad:
            raise TrajectoryError(
                f"point {k} has a non-finite position (NaN or inf) for {', '.join(bad)}"
            )
        if t_ns < 0:
            raise TrajectoryError(f"point {k} has a negative time_from_start ({t_ns * 1e-9:.3f}s)")
        if k > 0 and t_ns <= times[k - 1]:
            raise TrajectoryError(
                f"time_from_start is not increasing: point {k} at {t_ns * 1e-9:.3f}s, "
                f"point {k - 1} at {times[k - 1] * 1e-9:.3f}s"
            )
        for i, j in enumerate(index):
            if not low[j] <= pos[i] <= high[j]:
                raise TrajectoryError(
                    f"point {k}: {names[i]} = {pos[i]:.4f} is outside the joint limits "
                    f"[{low[j]:.4f}, {high[j]:.4f}]"
                )
        row = (full[k - 1] if k > 0 else base).copy()
        row[index] = pos
        full[k] = row
        times[k] = t_ns
    start = stamp_ns if stamp_ns != 0 else now_ns
    if start + times[-1] < now_ns:
        raise TrajectoryError(
            f"trajectory ends at {(start + times[-1]) * 1e-9:.3f}s, before now "
            f"({now_ns * 1e-9:.3f}s): check header.stamp and the clock (use_sim_time)"
        )
    return ArmTrajectory(start, times, full, current.copy())
