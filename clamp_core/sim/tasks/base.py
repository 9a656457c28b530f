"""What a simulated task is: objects it adds to the scene, seeded randomisation, a success
detector, language, object positions, task progress, and a closed-loop scripted expert."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from ..aloha import TABLE_CENTRE_MJ, AlohaSim, SimError, grasp_orientation


class Task(ABC):
    """One task. Subclasses set the class attributes and implement the abstract methods."""

    name: str = ""
    instruction: str = ""
    object_names: tuple[str, ...] = ()
    max_steps: int = 400
    """Episode length at 50 Hz."""

    @abstractmethod
    def build(self, spec) -> None:
        """Add the task's bodies to the MuJoCo spec (before compilation)."""

    @abstractmethod
    def randomize(self, sim: AlohaSim, rng: np.random.Generator) -> None:
        """Place the objects for a new episode (``sim.reset()`` has been called)."""

    @abstractmethod
    def success(self, sim: AlohaSim) -> bool:
        """True once the goal state is reached."""

    @abstractmethod
    def progress(self, sim: AlohaSim) -> int:
        """Integer stage of the task (0 = nothing done yet)."""

    @abstractmethod
    def expert(self, sim: AlohaSim, rng: np.random.Generator):
        """A closed-loop scripted expert: an object with ``act(sim) -> (14,) action``."""

    # ------------------------------------------------------------------ shared helpers
    def object_positions(self, sim: AlohaSim) -> np.ndarray:
        """(N, 3) positions of ``object_names`` bodies in the base frame (m)."""
        return np.array([sim.body_pose(n)[:3, 3] for n in self.object_names]).reshape(-1, 3)

    def make_sim(self, **kwargs) -> AlohaSim:
        return AlohaSim(build_objects=self.build, **kwargs)

    def reset(self, sim: AlohaSim, seed: int) -> None:
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise SimError(f"seed must be a non-negative integer, got {seed!r}")
        sim.reset()
        self.randomize(sim, np.random.default_rng(int(seed)))
        sim.mj.mj_forward(sim.model, sim.data)


SUCCESS_HOLD_STEPS = 10
"""Control steps (0.2 s at 50 Hz) the success detector must hold before an episode counts as a
success: an object knocked into the air can touch the right fingers for an instant."""


class SuccessMonitor:
    """Success that lasts: call ``update`` once per control step; ``done`` once the task's
    detector has held for ``hold_steps`` steps in a row (and stays done until ``reset``). A
    diverged simulation (``AlohaSim.diverged``) never succeeds."""

    def __init__(self, task: Task, hold_steps: int = SUCCESS_HOLD_STEPS):
        if hold_steps < 1:
            raise ValueError(f"hold_steps must be >= 1, got {hold_steps}")
        self.task, self.hold_steps = task, int(hold_steps)
        self.reset()

    def reset(self) -> None:
        self.run, self.steps, self.done_at, self.progress = 0, 0, None, 0
        self.diverged = False

    @property
    def done(self) -> bool:
        return self.done_at is not None

    def update(self, sim: AlohaSim) -> bool:
        """Judge the state after one more control step; returns ``done``."""
        self.steps += 1
        self.diverged = self.diverged or sim.diverged
        if self.done or self.diverged:
            return self.done
        self.progress = max(self.progress, int(self.task.progress(sim)))
        self.run = self.run + 1 if self.task.success(sim) else 0
        if self.run >= self.hold_steps:
            self.done_at = self.steps
        return self.done


def set_free_body(sim: AlohaSim, body: str, xyz_base, yaw: float = 0.0) -> None:
    """Place a free-jointed body at ``xyz_base`` (base frame) turned by ``yaw`` about z."""
    jid = sim.model.body(body).jntadr[0]
    adr = sim.model.jnt_qposadr[jid]
    sim.data.qpos[adr : adr + 3] = np.asarray(xyz_base, float) + TABLE_CENTRE_MJ
    sim.data.qpos[adr + 3 : adr + 7] = [np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]
    sim.data.qvel[sim.model.jnt_dofadr[jid] : sim.model.jnt_dofadr[jid] + 6] = 0.0


def add_free_box(
    spec, name: str, half_size, rgba, mass: float = 0.05, friction=(1.0, 0.005, 0.0001)
):
    """A free box of uniform density. Inertia is explicit, centred on the box (the robot
    model's compiler computes inertia only from its own geom groups)."""
    import mujoco

    hx, hy, hz = half_size
    inertia = [mass / 3 * (hy**2 + hz**2), mass / 3 * (hx**2 + hz**2), mass / 3 * (hx**2 + hy**2)]
    body = spec.worldbody.add_body(
        name=name,
        pos=[0, 0, 0.5],
        ipos=[0, 0, 0],
        mass=mass,
        inertia=inertia,
        explicitinertial=True,
    )
    body.add_freejoint(name=f"{name}_joint")
    body.add_geom(
        name=name,
        type=mujoco.mjtGeom.mjGEOM_BOX,
        size=list(half_size),
        rgba=list(rgba),
        friction=list(friction),
        condim=4,
        solref=[0.01, 1],
        solimp=[0.95, 0.99, 0.001, 0.5, 2],
    )
    return body


class ArmMover:
    """Closed-loop Cartesian motion of one arm. Each call moves the goal for this step at most
    ``max_speed`` along the straight line from the measured tool centre point toward the target,
    re-solves IK from the commanded joints, and scales the joint step as a whole (clipping
    joints one by one would bend the path, e.g. into the table)."""

    def __init__(
        self, sim: AlohaSim, side: str, max_speed: float = 0.012, max_joint_step: float = 0.06
    ):
        self.sim, self.side = sim, side
        self.max_speed, self.max_joint_step = max_speed, max_joint_step
        self.index = 0 if side == "left" else 7

    def toward(self, q_cmd: np.ndarray, xyz, yaw: float = 0.0, pitch: float = np.pi / 2):
        """Update ``q_cmd`` (14,) in place for this arm; returns the TCP's distance to goal (m)."""
        xyz = np.asarray(xyz, float)
        here = self.sim.site_pose(f"{self.side}_tcp")[:3, 3]
        delta = xyz - here
        dist = float(np.linalg.norm(delta))
        waypoint = xyz if dist <= self.max_speed else here + delta * (self.max_speed / dist)
        goal = np.eye(4)
        goal[:3, :3] = grasp_orientation(self.side, yaw, pitch)
        goal[:3, 3] = waypoint
        i = self.index
        q_goal, _ = self.sim.solve_ik(self.side, goal, q_cmd[i : i + 6])
        dq = q_goal - q_cmd[i : i + 6]
        biggest = float(np.abs(dq).max())
        if biggest > self.max_joint_step:
            dq *= self.max_joint_step / biggest
        q_cmd[i : i + 6] += dq
        return dist
