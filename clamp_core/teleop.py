"""Teleoperation as ALOHA does it: the follower arms track the leader arms' joints, and the
leader gripper's angle maps linearly onto the follower's normalised gripper (0 closed .. 1 open).
Used by the simulated follower, the bag converter (leader arms are the demos' actions) and the
policy node's shadow mode (its error against the operator)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .aloha import ARM_JOINT_NAMES, SIDES
from .geometry.messages import arm_joint_values

LEADER_GRIPPER_CLOSED_RAD = -0.0552
"""The leader gripper joint's angle when squeezed shut (ALOHA 2's calibration)."""
LEADER_GRIPPER_OPEN_RAD = 0.8298
"""The leader gripper joint's angle when fully open (ALOHA 2's calibration)."""


class TeleopError(ValueError):
    """A leader joint state that cannot drive the follower; the message says why."""


@dataclass(frozen=True)
class GripperMap:
    """The leader gripper's joint angle (rad) <-> the follower's normalised gripper (0 closed ..
    1 open), linear between the two calibrated angles."""

    closed_rad: float = LEADER_GRIPPER_CLOSED_RAD
    """Leader gripper angle that commands the follower fully closed (rad)."""
    open_rad: float = LEADER_GRIPPER_OPEN_RAD
    """Leader gripper angle that commands the follower fully open (rad)."""

    def __post_init__(self) -> None:
        a, b = float(self.closed_rad), float(self.open_rad)
        if not (math.isfinite(a) and math.isfinite(b)) or abs(b - a) < 1e-3:
            raise ValueError(
                f"leader gripper range [{a}, {b}] rad: the closed and open angles must be "
                "finite and at least 1 mrad apart"
            )

    @classmethod
    def from_range(cls, values: Sequence[float]) -> GripperMap:
        if len(values) != 2:
            raise ValueError(
                f"leader gripper range must be [closed_rad, open_rad], got {list(values)}"
            )
        return cls(float(values[0]), float(values[1]))

    def to_leader(self, normalised: float) -> float:
        return self.closed_rad + float(normalised) * (self.open_rad - self.closed_rad)

    def to_follower(self, angle_rad: float) -> float:
        """Normalised follower gripper for a leader angle, clipped to 0 .. 1."""
        x = (float(angle_rad) - self.closed_rad) / (self.open_rad - self.closed_rad)
        return min(max(x, 0.0), 1.0)


def leader_positions(action: np.ndarray, gripper: GripperMap) -> dict[str, np.ndarray]:
    """(14,) follower action (ALOHA order) -> {side: (7,) leader joint positions}, grippers as
    leader angles: what the leader arms read when an operator commands ``action``."""
    a = np.asarray(action, float).reshape(len(SIDES), len(ARM_JOINT_NAMES))
    out = {}
    for i, side in enumerate(SIDES):
        q = a[i].copy()
        q[6] = gripper.to_leader(q[6])
        out[side] = q
    return out


def follower_command(
    names: Sequence[str],
    positions: Sequence[float],
    gripper: GripperMap,
    low: np.ndarray,
    high: np.ndarray,
) -> np.ndarray:
    """One leader arm's JointState -> that follower arm's (7,) command (joints in
    ARM_JOINT_NAMES order, gripper normalised), clipped to the follower's limits ``low``/``high``
    (7,). Raises TeleopError naming the problem: a missing, repeated or non-finite joint."""
    names, positions = list(names), list(positions)
    if len(positions) < len(names):
        raise TeleopError(f"{len(names)} names but {len(positions)} positions")
    try:  # the joint-state picker every consumer of JointState uses (extra values ignored)
        q = arm_joint_values(names, positions[: len(names)], "position")
    except ValueError as e:
        raise TeleopError(str(e)) from None
    q[6] = gripper.to_follower(q[6])
    return np.clip(q, low, high)


class ShadowComparison:
    """Shadow mode's live score: what the policy would command against what the operator does.
    Each leader state is compared with the policy's last plan at the leader state's stamp (when
    the plan covers it); the errors of the newest ``window`` comparisons are kept per arm."""

    def __init__(self, window: int = 500):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = int(window)
        self.errors: dict[str, list[np.ndarray]] = {}

    def add(self, arm: str, leader_q: np.ndarray, plan_q: np.ndarray | None) -> None:
        """``leader_q``: (7,) the leader arm mapped to the follower (``follower_command``);
        ``plan_q``: (7,) the policy's plan for that arm at the leader state's stamp, or None
        when no plan covers it (nothing is counted then)."""
        if plan_q is None:
            return
        buf = self.errors.setdefault(arm, [])
        buf.append(np.abs(np.asarray(plan_q, float) - np.asarray(leader_q, float)))
        del buf[: -self.window]

    def summary(self) -> dict[str, dict[str, float]]:
        """{arm: {"joints_rad": mean |error| over the six arm joints, "gripper": mean |error| of
        the normalised gripper, "samples": n}} over the window."""
        out = {}
        for arm, buf in self.errors.items():
            if buf:
                e = np.array(buf)
                out[arm] = {
                    "joints_rad": float(e[:, :6].mean()),
                    "gripper": float(e[:, 6].mean()),
                    "samples": len(buf),
                }
        return out
