"""Tasks with articulated, fixed and multi-part objects: open a drawer, put a plate in a dish
rack, and the bimanual peg-in-socket insertion (as in ALOHA's Insertion).

Fixed objects (the cabinet, the rack, the plate stand) are bodies without joints; ``randomize``
moves them by editing the compiled model's ``body_pos``/``body_quat`` (each simulator owns its
model, and every reset sets them again, so episodes stay deterministic per seed).
"""

from __future__ import annotations

import math

import numpy as np

from ..aloha import START_POSE, TABLE_CENTRE_MJ, AlohaSim, grasp_orientation
from .base import ArmMover, Task, set_free_body

_BOX = 6  # mjtGeom.mjGEOM_BOX
_CYLINDER = 5  # mjtGeom.mjGEOM_CYLINDER
_GRIP_SOLREF = [0.01, 1]
_GRIP_SOLIMP = [0.95, 0.99, 0.001, 0.5, 2]


# ---------------------------------------------------------------------- geometry helpers
def _rot_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _skew(v) -> np.ndarray:
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])


def _exp_rot(v) -> np.ndarray:
    """Rotation matrix of the rotation vector ``v`` (Rodrigues)."""
    v = np.asarray(v, float)
    angle = float(np.linalg.norm(v))
    if angle < 1e-12:
        return np.eye(3)
    k = _skew(v / angle)
    return np.eye(3) + math.sin(angle) * k + (1.0 - math.cos(angle)) * (k @ k)


def _log_rot(r: np.ndarray) -> np.ndarray:
    """Rotation vector of the rotation matrix ``r``."""
    cos_a = float(np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0))
    angle = math.acos(cos_a)
    if angle < 1e-9:
        return np.zeros(3)
    if angle > math.pi - 1e-4:  # axis from the symmetric part: r = 2 n n^T - I
        b = (r + np.eye(3)) / 2.0
        axis = b[int(np.argmax(np.diag(b)))]
        return axis / np.linalg.norm(axis) * angle
    w = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    return w / (2.0 * math.sin(angle)) * angle


def _frame(x_axis, y_hint) -> np.ndarray:
    """Right-handed rotation whose x axis is ``x_axis`` and whose y axis is ``y_hint`` made
    orthogonal to it."""
    x = np.asarray(x_axis, float)
    x = x / np.linalg.norm(x)
    y = np.asarray(y_hint, float) - np.dot(y_hint, x) * x
    y /= np.linalg.norm(y)
    return np.column_stack([x, y, np.cross(x, y)])


def _quat_z(angle: float) -> list[float]:
    return [math.cos(angle / 2), 0.0, 0.0, math.sin(angle / 2)]


def _place_fixed(sim: AlohaSim, body: str, xyz, yaw: float) -> None:
    """Move a body without joints (welded to the world) to ``xyz`` (base frame), turned by
    ``yaw`` about z."""
    bid = sim.model.body(body).id
    sim.model.body_pos[bid] = np.asarray(xyz, float) + TABLE_CENTRE_MJ
    sim.model.body_quat[bid] = _quat_z(yaw)


def _add_box(body, name: str, half, pos, rgba, friction=(1.0, 0.005, 0.0001)) -> None:
    body.add_geom(
        name=name,
        type=_BOX,
        size=list(half),
        pos=list(pos),
        rgba=list(rgba),
        friction=list(friction),
        condim=4,
        solref=_GRIP_SOLREF,
        solimp=_GRIP_SOLIMP,
    )


def _free_body(spec, name: str, mass: float, inertia, pos=(0.0, 0.0, 0.5)):
    """A free body whose centre of mass is its origin, with explicit inertia."""
    body = spec.worldbody.add_body(
        name=name,
        pos=list(pos),
        ipos=[0.0, 0.0, 0.0],
        mass=mass,
        inertia=list(inertia),
        explicitinertial=True,
    )
    body.add_freejoint(name=f"{name}_joint")
    return body


def _box_inertia(mass: float, half) -> list[float]:
    hx, hy, hz = half
    return [mass / 3 * (hy**2 + hz**2), mass / 3 * (hx**2 + hz**2), mass / 3 * (hx**2 + hy**2)]


def _body_geoms(sim: AlohaSim, body: str) -> set[int]:
    bid = sim.model.body(body).id
    return {g for g in range(sim.model.ngeom) if sim.model.geom_bodyid[g] == bid}


def _finger_contacts(sim: AlohaSim, geoms: set[int], side: str) -> set[str]:
    """Names of ``side``'s finger geoms that touch any of ``geoms``."""
    touching = set()
    prefix = f"vx300s_{side}/10_"
    for c in sim.data.contact[: sim.data.ncon]:
        for mine, other in ((c.geom1, c.geom2), (c.geom2, c.geom1)):
            if mine in geoms:
                name = sim.model.geom(other).name
                if name.startswith(prefix):
                    touching.add(name)
    return touching


def _gripped(sim: AlohaSim, geoms: set[int], side: str) -> bool:
    """Both finger pads of ``side`` touch the object."""
    return len(_finger_contacts(sim, geoms, side)) == 2


def _touched_by_robot(sim: AlohaSim, geoms: set[int]) -> bool:
    for c in sim.data.contact[: sim.data.ncon]:
        for mine, other in ((c.geom1, c.geom2), (c.geom2, c.geom1)):
            if mine in geoms and sim.model.geom(other).name.startswith("vx300s_"):
                return True
    return False


def _tcp(sim: AlohaSim, side: str) -> np.ndarray:
    return sim.site_pose(f"{side}_tcp")


class _PoseMover:
    """Closed-loop Cartesian motion of one arm toward a full TCP pose: each call moves this
    step's goal at most ``max_speed`` along the straight line from the measured tool centre point
    and turns it at most ``max_turn`` (rad) along the shortest rotation from the measured
    orientation, re-solves IK from the commanded joints and scales the joint step as a whole."""

    def __init__(
        self,
        sim: AlohaSim,
        side: str,
        max_speed: float = 0.012,
        max_turn: float = 0.05,
        max_joint_step: float = 0.06,
    ):
        self.sim, self.side = sim, side
        self.max_speed, self.max_turn, self.max_joint_step = max_speed, max_turn, max_joint_step
        self.index = 0 if side == "left" else 7

    def toward(self, q_cmd: np.ndarray, xyz, rot: np.ndarray, speed: float | None = None):
        """Update ``q_cmd`` (14,) in place for this arm; returns (distance m, angle rad) to the
        goal pose."""
        here = _tcp(self.sim, self.side)
        xyz = np.asarray(xyz, float)
        delta = xyz - here[:3, 3]
        dist = float(np.linalg.norm(delta))
        step = self.max_speed if speed is None else speed
        goal = np.eye(4)
        goal[:3, 3] = xyz if dist <= step else here[:3, 3] + delta * (step / dist)
        turn = _log_rot(rot @ here[:3, :3].T)
        angle = float(np.linalg.norm(turn))
        if angle > self.max_turn:
            turn *= self.max_turn / angle
        goal[:3, :3] = _exp_rot(turn) @ here[:3, :3]
        i = self.index
        q_goal, _ = self.sim.solve_ik(self.side, goal, q_cmd[i : i + 6], orient_weight=0.5)
        dq = q_goal - q_cmd[i : i + 6]
        biggest = float(np.abs(dq).max())
        if biggest > self.max_joint_step:
            dq *= self.max_joint_step / biggest
        q_cmd[i : i + 6] += dq
        return dist, angle


class _PhaseExpert:
    """Bookkeeping shared by the experts: the commanded pose and a phase with its step count."""

    def __init__(self, phase: str):
        self.q = START_POSE.copy()
        self.phase, self.t = phase, 0

    def _go(self, phase: str) -> None:
        self.phase, self.t = phase, 0


# ---------------------------------------------------------------------- drawer_open
CAB_HALF = (0.10, 0.09, 0.05)
"""Half extents of the cabinet (x width, y depth, z height); its origin is the bottom centre."""
CAB_WALL = 0.01
DRAWER_TRAVEL = 0.15
DRAWER_FRONT = CAB_HALF[1] + 0.012
"""Distance from the cabinet origin to the outer face of the closed drawer's front (local -y)."""
HANDLE_LOCAL = np.array([0.0, -(DRAWER_FRONT + 0.05), 0.05])
"""Centre of the handle bar in the drawer frame (= the cabinet frame when closed)."""
HANDLE_HALF = (0.055, 0.006, 0.006)
OPEN_SUCCESS = 0.08


class DrawerOpen(Task):
    """A cabinet stands on the table with its drawer towards the robot's front; the nearer arm
    grips the drawer's handle bar from above and pulls the drawer open."""

    name = "drawer_open"
    instruction = "open the drawer of the cabinet"
    object_names = ("drawer", "cabinet")
    max_steps = 500

    def build(self, spec) -> None:
        wood, front = [0.55, 0.4, 0.25, 1], [0.75, 0.6, 0.4, 1]
        hx, hy, hz = CAB_HALF
        w = CAB_WALL
        cab = spec.worldbody.add_body(name="cabinet", pos=[*TABLE_CENTRE_MJ[:2], 0.0])
        _add_box(cab, "cabinet_bottom", [hx, hy, w / 2], [0, 0, w / 2], wood)
        _add_box(cab, "cabinet_top", [hx, hy, w / 2], [0, 0, 2 * hz - w / 2], wood)
        for sx in (-1, 1):
            _add_box(cab, f"cabinet_side{sx:+d}", [w / 2, hy, hz], [sx * (hx - w / 2), 0, hz], wood)
        _add_box(cab, "cabinet_back", [hx, w / 2, hz], [0, hy - w / 2, hz], wood)
        # the drawer is the cabinet's child: MuJoCo filters parent-child contacts, the slide
        # joint's range keeps it in its guide
        inner_x, inner_y = hx - w - 0.004, hy - 0.015
        drawer = cab.add_body(
            name="drawer",
            pos=[0, 0, 0],
            ipos=[0, -0.03, hz],
            mass=0.4,
            inertia=[0.002, 0.002, 0.003],
            explicitinertial=True,
        )
        drawer.add_joint(
            name="drawer_slide",
            type=2,  # mjtJoint.mjJNT_SLIDE
            axis=[0, -1, 0],
            range=[0.0, DRAWER_TRAVEL],
            limited=1,
            damping=4.0,
            frictionloss=0.8,
            armature=0.05,
        )
        y_front = -(DRAWER_FRONT - 0.006)
        _add_box(drawer, "drawer_front", [hx - 0.002, 0.006, hz - 0.002], [0, y_front, hz], front)
        box_y = -hy + inner_y  # the drawer box behind the front
        _add_box(drawer, "drawer_floor", [inner_x, inner_y, 0.004], [0, box_y, w + 0.006], front)
        for sx in (-1, 1):
            _add_box(
                drawer,
                f"drawer_wall{sx:+d}",
                [0.004, inner_y, 0.025],
                [sx * (inner_x - 0.004), box_y, w + 0.035],
                front,
            )
        _add_box(
            drawer, "drawer_back", [inner_x, 0.004, 0.025], [0, box_y + inner_y, w + 0.035], front
        )
        metal = [0.75, 0.75, 0.8, 1]
        post_len = (-HANDLE_LOCAL[1] - DRAWER_FRONT) / 2
        for sx in (-1, 1):
            _add_box(
                drawer,
                f"handle_post{sx:+d}",
                [0.005, post_len, 0.005],
                [sx * (HANDLE_HALF[0] - 0.005), -DRAWER_FRONT - post_len, HANDLE_LOCAL[2]],
                metal,
            )
        _add_box(drawer, "handle_bar", HANDLE_HALF, HANDLE_LOCAL, metal)
        drawer.add_site(name="drawer_handle", pos=list(HANDLE_LOCAL), size=[0.004, 0, 0])

    def randomize(self, sim: AlohaSim, rng: np.random.Generator) -> None:
        x, y = rng.uniform([-0.1, 0.08], [0.1, 0.16])
        _place_fixed(sim, "cabinet", [x, y, 0.0], rng.uniform(-0.25, 0.25))
        sim.data.qpos[sim.model.joint("drawer_slide").qposadr[0]] = 0.0

    @staticmethod
    def opening(sim: AlohaSim) -> float:
        """How far the drawer is out (m)."""
        return float(sim.data.qpos[sim.model.joint("drawer_slide").qposadr[0]])

    def success(self, sim: AlohaSim) -> bool:
        return self.opening(sim) >= OPEN_SUCCESS

    def progress(self, sim: AlohaSim) -> int:
        if self.success(sim):
            return 3
        if self.opening(sim) >= 0.02:
            return 2
        handle = _body_geoms(sim, "drawer")
        if any(_finger_contacts(sim, handle, s) for s in ("left", "right")):
            return 1
        return 0

    def expert(self, sim: AlohaSim, rng: np.random.Generator):
        return _DrawerExpert(self, sim)


class _DrawerExpert(_PhaseExpert):
    """Above the handle with the fingers half open, down around the bar, close, pull along the
    drawer's axis (the pull is along the fingers' closing direction, so the inner finger hooks
    the bar), let go and rise. Goals follow the handle's measured pose; a slipped grip sends the
    arm back to the handle wherever it now is."""

    PULL_TO = 0.13
    GRIP_DEPTH = 0.012

    def __init__(self, task: DrawerOpen, sim: AlohaSim):
        super().__init__("approach")
        self.task = task
        cab = sim.body_pose("cabinet")
        self.side = "left" if cab[0, 3] < 0 else "right"
        self.arm = ArmMover(sim, self.side)
        self.g = 6 if self.side == "left" else 13
        self.handle_geoms = {sim.model.geom("handle_bar").id}

    def act(self, sim: AlohaSim) -> np.ndarray:
        q, arm = self.q, self.arm
        cab = sim.body_pose("cabinet")
        yaw = float(np.arctan2(cab[1, 0], cab[0, 0]))
        pull_dir = -cab[:3, 1]
        handle = sim.site_pose("drawer_handle")[:3, 3]
        grip = handle - [0, 0, self.GRIP_DEPTH]
        tcp = _tcp(sim, self.side)[:3, 3]
        holding = np.linalg.norm((tcp - grip)[:2]) < 0.02 and abs(tcp[2] - grip[2]) < 0.02
        opening = self.task.opening(sim)
        self.t += 1
        if self.phase == "approach":
            q[self.g] = 0.45
            if arm.toward(q, handle + [0, 0, 0.08], yaw) < 0.01 or self.t > 100:
                self._go("descend")
        elif self.phase == "descend":
            q[self.g] = 0.45
            if arm.toward(q, grip, yaw) < 0.005 or self.t > 50:
                self._go("close")
        elif self.phase == "close":
            q[self.g] = 0.0
            arm.toward(q, grip, yaw)
            if self.t > 12:
                self._go("pull" if holding else "approach")
        elif self.phase == "pull":
            goal = grip + pull_dir * (self.PULL_TO - opening)
            arm.toward(q, goal, yaw)
            if not holding:
                self._go("let_go")
            elif opening >= self.PULL_TO - 0.01:
                self._go("let_go")
        elif self.phase == "let_go":
            q[self.g] = 0.45
            arm.toward(q, tcp, yaw)
            if self.t > 10:
                self._go("rise" if opening >= self.PULL_TO - 0.02 else "approach")
        elif self.phase == "rise":
            arm.toward(q, grip + [0, 0, 0.1], yaw)
        return q.copy()
