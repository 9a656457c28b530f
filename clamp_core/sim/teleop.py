"""A scripted expert at the leader arms, so demos are recorded over ROS without an operator:
the simulated follower tracks it through the same leader topics a real ALOHA uses."""

from __future__ import annotations

import numpy as np

from ..teleop import GripperMap, leader_positions


class ExpertLeader:
    """The task's scripted expert as the operator at the leader arms. Each control step it looks
    at the simulation (as an operator looks at the scene) and returns where the leader arms are:
    {side: (7,) leader joint positions}. Until ``start`` it holds the arms where they are, as an
    operator waits for the recording to begin."""

    def __init__(self, task, sim, gripper: GripperMap):
        self.task, self.sim, self.gripper = task, sim, gripper
        self.expert = None
        self.seed = None

    def reset(self, seed: int) -> None:
        """A new episode (the task was reset with ``seed``): wait for ``start``."""
        self.seed, self.expert = int(seed), None

    def start(self) -> None:
        """Begin the demonstration from the current state (the expert's stream of the seed, as
        ``clamp generate`` uses it)."""
        if self.seed is None:
            raise RuntimeError("ExpertLeader.start before reset")
        self.expert = self.task.expert(self.sim, np.random.default_rng(self.seed))

    @property
    def started(self) -> bool:
        return self.expert is not None

    def step(self, hold: np.ndarray) -> dict[str, np.ndarray]:
        """Leader positions for this control step; ``hold`` (14,) is the follower command to
        keep while the demonstration has not started."""
        action = self.expert.act(self.sim) if self.expert is not None else hold
        return leader_positions(action, self.gripper)
