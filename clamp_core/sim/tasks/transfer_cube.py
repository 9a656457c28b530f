"""Transfer Cube (as in ALOHA): the right arm picks up the cube and hands it to the left arm."""

from __future__ import annotations

import numpy as np

from ..aloha import START_POSE, AlohaSim
from .base import ArmMover, Task, add_free_box, set_free_body

CUBE_HALF = 0.016


class TransferCube(Task):
    name = "transfer_cube"
    instruction = "pick up the red cube with the right arm and hand it over to the left arm"
    object_names = ("cube",)
    max_steps = 600

    def build(self, spec) -> None:
        add_free_box(spec, "cube", [CUBE_HALF] * 3, [0.9, 0.1, 0.1, 1])

    def randomize(self, sim: AlohaSim, rng: np.random.Generator) -> None:
        xy = rng.uniform([0.05, -0.15], [0.2, 0.05])
        set_free_body(sim, "cube", [xy[0], xy[1], CUBE_HALF], rng.uniform(-0.5, 0.5))

    def _grasped_by(self, sim: AlohaSim, side: str) -> bool:
        """Both finger pads of ``side`` touch the cube."""
        cube = sim.model.geom("cube").id
        touching = set()
        for c in sim.data.contact[: sim.data.ncon]:
            pair = {c.geom1, c.geom2}
            if cube in pair:
                other = (pair - {cube}).pop() if len(pair) == 2 else cube
                name = sim.model.geom(other).name
                if name.startswith(f"vx300s_{side}/10_"):
                    touching.add(name)
        return len(touching) == 2

    def _on_table(self, sim: AlohaSim) -> bool:
        return sim.body_pose("cube")[2, 3] < CUBE_HALF + 0.005

    def _lifted(self, sim: AlohaSim) -> bool:
        return sim.body_pose("cube")[2, 3] > CUBE_HALF + 0.04

    def success(self, sim: AlohaSim) -> bool:
        return (
            self._grasped_by(sim, "left")
            and not self._grasped_by(sim, "right")
            and self._lifted(sim)
        )

    def progress(self, sim: AlohaSim) -> int:
        if self.success(sim):
            return 3
        if self._grasped_by(sim, "left"):
            return 2
        if self._grasped_by(sim, "right") and self._lifted(sim):
            return 1
        return 0

    def expert(self, sim: AlohaSim, rng: np.random.Generator):
        return _TransferExpert(self, sim)


class _TransferExpert:
    """Right arm: above the cube, down, close, lift, carry to the hand-over spot, set down,
    open, back off; left arm: above the cube, down, close, lift. Every goal is recomputed from
    the cube's current pose each step, and a failed grasp sends the arm back to its approach."""

    HANDOVER = np.array([-0.02, -0.02])
    LIFT = 0.12

    def __init__(self, task: TransferCube, sim: AlohaSim):
        self.task, self.sim = task, sim
        self.arms = {"right": ArmMover(sim, "right"), "left": ArmMover(sim, "left")}
        self.q = START_POSE.copy()
        self.phase, self.t = ("right", "approach"), 0

    def _go(self, side: str, phase: str) -> None:
        self.phase, self.t = (side, phase), 0

    def act(self, sim: AlohaSim) -> np.ndarray:
        q, cube = self.q, sim.body_pose("cube")
        c = cube[:3, 3]
        yaw = float(np.arctan2(cube[1, 0], cube[0, 0])) % (np.pi / 2)
        yaw = yaw - np.pi / 2 if yaw > np.pi / 4 else yaw
        side, phase = self.phase
        arm = self.arms[side]
        g = 13 if side == "right" else 6
        heading = yaw  # grasp_orientation turns the right arm by pi itself
        self.t += 1
        grasped = self.task._grasped_by(sim, side)
        # contacts flicker from step to step: judge "still holding" by where the cube is
        holding = np.linalg.norm(c - sim.site_pose(f"{side}_tcp")[:3, 3]) < 0.03
        if phase == "approach":
            q[g] = 1.0
            if arm.toward(q, c + [0, 0, 0.08], heading) < 0.01 or self.t > 120:
                self._go(side, "descend")
        elif phase == "descend":
            if arm.toward(q, c + [0, 0, 0.01], heading) < 0.006 or self.t > 50:
                self._go(side, "close")
        elif phase == "close":
            q[g] = 0.0
            arm.toward(q, c + [0, 0, 0.01], heading)
            if self.t > 20:
                self._go(side, "lift" if grasped else "approach")
        elif phase == "lift":
            goal = (
                np.array([c[0], c[1], self.LIFT])
                if side == "left"
                else np.array([*self.HANDOVER, self.LIFT])
            )
            if not holding:
                self._go(side, "approach")  # lost it: start over from wherever it is
            elif side == "right" and arm.toward(q, goal, heading) < 0.01:
                self._go(side, "set_down")
            elif side == "left":
                arm.toward(q, goal, heading)
        elif phase == "set_down":
            # lower until the cube is 3 mm above the table: pressing it down would twist it
            offset = sim.site_pose("right_tcp")[2, 3] - c[2]
            goal = [*self.HANDOVER, CUBE_HALF + 0.003 + offset]
            if arm.toward(q, goal, heading) < 0.004 or self.t > 60:
                self._go(side, "open")
        elif phase == "open":
            q[13] = 1.0
            if self.t > 12:
                self._go(side, "retreat")
        elif phase == "retreat":  # up, then back to its own side, out of the left arm's way
            high = sim.site_pose("right_tcp")[2, 3] > 0.12
            goal = [0.25, -0.05, 0.2] if high else [*self.HANDOVER, 0.16]
            if arm.toward(q, goal, heading) < 0.03 and high or self.t > 120:
                self._go("left", "approach")
        return q.copy()
