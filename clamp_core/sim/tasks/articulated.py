"""Tasks with articulated, fixed and multi-part objects: open a drawer, put a plate in a dish
rack, and the bimanual peg-in-socket insertion (as in ALOHA's Insertion).

Fixed objects (the cabinet, the rack, the plate stand) are bodies without joints; ``randomize``
moves them by editing the compiled model's ``body_pos``/``body_quat`` (each simulator owns its
model, and every reset sets them again, so episodes stay deterministic per seed).
"""

from __future__ import annotations

import math

import numpy as np

from ..aloha import ARM_JOINTS as _ARM_JOINTS
from ..aloha import START_POSE, TABLE_CENTRE_MJ, AlohaSim, grasp_orientation
from .base import Task, set_free_body

_BOX = 6  # mjtGeom.mjGEOM_BOX
_CYLINDER = 5  # mjtGeom.mjGEOM_CYLINDER
_GRIP_SOLREF = [0.01, 1]
_GRIP_SOLIMP = [0.95, 0.99, 0.001, 0.5, 2]
_PAD_FRICTION = (1.0, 0.02, 0.0001)
"""Sliding and torsional friction of objects that are held in the air: the gripper's pads
touch them near the finger tips only, over a centimetre or so, and the robot model's own
torsional friction (0.005) lets a held object swing about the pad normal."""


# ---------------------------------------------------------------------- geometry helpers
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
    """Cartesian motion of one arm toward a full TCP pose, closed on the measured TCP.

    The commanded TCP pose (forward kinematics of the commanded joints) moves at most
    ``max_speed`` per step and turns at most ``max_turn`` (rad) per step toward the goal plus
    ``offset``, and never leads the measured TCP by more than ``max_lead`` (an arm blocked by an
    object does not wind up). ``offset`` integrates the measured error near the goal: the joints'
    friction and gravity leave the arm millimetres off where it is told to be; while the command
    is still on its way only the error across the direction of travel is integrated (the lag
    along it is not an error). IK from the commanded joints turns the pose into joint targets and
    the joint step is scaled as a whole (clipping joints one by one would bend the path)."""

    def __init__(
        self,
        sim: AlohaSim,
        side: str,
        max_speed: float = 0.012,
        max_turn: float = 0.05,
        max_joint_step: float = 0.08,
        max_lead: float = 0.03,
    ):
        self.sim, self.side = sim, side
        self.max_speed, self.max_turn = max_speed, max_turn
        self.max_joint_step, self.max_lead = max_joint_step, max_lead
        self.index = 0 if side == "left" else 7
        self._scratch = sim.mj.MjData(sim.model)
        self._site = sim.model.site(f"{side}_tcp").id
        self._qadr = [sim.model.joint(f"vx300s_{side}/{j}").qposadr[0] for j in _ARM_JOINTS]
        self.offset = np.zeros(3)

    def commanded_pose(self, q_cmd: np.ndarray) -> np.ndarray:
        """(4, 4) TCP pose that the commanded joints ``q_cmd`` (14,) put the arm in."""
        d = self._scratch
        d.qpos[:] = self.sim.data.qpos
        d.qpos[self._qadr] = q_cmd[self.index : self.index + 6]
        self.sim.mj.mj_kinematics(self.sim.model, d)
        out = np.eye(4)
        out[:3, :3] = d.site_xmat[self._site].reshape(3, 3)
        out[:3, 3] = d.site_xpos[self._site] - TABLE_CENTRE_MJ
        return out

    def toward(self, q_cmd: np.ndarray, xyz, rot: np.ndarray, speed: float | None = None):
        """Update ``q_cmd`` (14,) in place for this arm; returns the measured TCP's (distance m,
        angle rad) to the goal pose."""
        here = _tcp(self.sim, self.side)
        cmd = self.commanded_pose(q_cmd)
        xyz = np.asarray(xyz, float)
        err = xyz - here[:3, 3]
        dist = float(np.linalg.norm(err))
        angle = float(np.linalg.norm(_log_rot(rot @ here[:3, :3].T)))
        step = self.max_speed if speed is None else speed
        delta = xyz + self.offset - cmd[:3, 3]
        n = float(np.linalg.norm(delta))
        if dist < 0.08:
            if n > step:  # on the way: only the error across the path
                d = delta / n
                err = err - float(err @ d) * d
            self.offset = np.clip(self.offset + 0.1 * err, -0.015, 0.015)
        pos = cmd[:3, 3] + (delta if n <= step else delta * (step / n))
        lead = pos - here[:3, 3]
        if np.linalg.norm(lead) > self.max_lead:
            pos = here[:3, 3] + lead * (self.max_lead / np.linalg.norm(lead))
        turn = _log_rot(rot @ cmd[:3, :3].T)
        a = float(np.linalg.norm(turn))
        if a > self.max_turn:
            turn *= self.max_turn / a
        goal = np.eye(4)
        goal[:3, :3] = _exp_rot(turn) @ cmd[:3, :3]
        goal[:3, 3] = pos
        i = self.index
        q_goal, _ = self.sim.solve_ik(self.side, goal, q_cmd[i : i + 6], orient_weight=0.5)
        dq = q_goal - q_cmd[i : i + 6]
        biggest = float(np.abs(dq).max())
        if biggest > self.max_joint_step:
            dq *= self.max_joint_step / biggest
        q_cmd[i : i + 6] += dq
        return dist, angle


def _ik_natural(sim: AlohaSim, side: str, goals, q_arm: np.ndarray):
    """Joints (6,) that reach one of the (4, 4) TCP ``goals`` with the forearm unrolled (the
    weak forearm-roll joint near zero, away from its limits), found from several wrist seeds;
    of those within 3 mm and 0.05 rad, the one nearest to ``q_arm``. None if none is."""
    best, best_cost = None, np.inf
    mover = _PoseMover(sim, side)
    for goal in goals:
        for pitch in (0.0, math.pi / 2, -math.pi / 2):
            for roll in (0.0, math.pi / 2, -math.pi / 2, math.pi):
                seed = np.array(q_arm, float)
                seed[3] = 0.0
                seed[4] = np.clip(seed[4] + pitch, -1.8, 2.2)
                seed[5] = roll
                q, err = sim.solve_ik(side, goal, seed, iters=150, orient_weight=0.5)
                full = np.zeros(14)
                full[mover.index : mover.index + 6] = q
                pose = mover.commanded_pose(full)
                turn = float(np.linalg.norm(_log_rot(goal[:3, :3] @ pose[:3, :3].T)))
                if err > 0.003 or turn > 0.05 or abs(q[3]) > 0.6:
                    continue
                cost = float(np.abs(q - q_arm).sum())
                if cost < best_cost:
                    best, best_cost = q, cost
    return best


def _pose(rot: np.ndarray, xyz) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = rot
    out[:3, 3] = xyz
    return out


def _joint_step(q_cmd: np.ndarray, index: int, target: np.ndarray, max_step: float) -> float:
    """Move the arm's commanded joints ``q_cmd[index:index+6]`` toward ``target`` by at most
    ``max_step`` (rad, the step scaled as a whole); returns the largest difference left."""
    dq = target - q_cmd[index : index + 6]
    biggest = float(np.abs(dq).max())
    q_cmd[index : index + 6] += dq * min(1.0, max_step / max(biggest, 1e-9))
    return max(0.0, biggest - max_step)


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
        drawer = _body_geoms(sim, "drawer")
        if any(_finger_contacts(sim, drawer, s) for s in ("left", "right")):
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
    OPEN = 0.5

    def __init__(self, task: DrawerOpen, sim: AlohaSim):
        super().__init__("preshape")
        self.plan = None
        self.task = task
        cab = sim.body_pose("cabinet")
        self.side = "left" if cab[0, 3] < 0 else "right"
        self.arm = _PoseMover(sim, self.side)
        self.g = 6 if self.side == "left" else 13

    def act(self, sim: AlohaSim) -> np.ndarray:
        q, arm = self.q, self.arm
        cab = sim.body_pose("cabinet")
        rot = grasp_orientation(self.side, float(np.arctan2(cab[1, 0], cab[0, 0])))
        pull_dir = -cab[:3, 1]
        handle = sim.site_pose("drawer_handle")[:3, 3]
        grip = handle - [0, 0, self.GRIP_DEPTH]
        tcp = _tcp(sim, self.side)[:3, 3]
        off = np.linalg.norm((tcp - grip)[:2])
        holding = off < 0.02 and abs(tcp[2] - grip[2]) < 0.02
        opening = self.task.opening(sim)
        self.t += 1
        if self.phase == "preshape":  # in joint space to above the handle, wrist unflipped
            q[self.g] = self.OPEN
            if self.t == 1:
                i = arm.index
                self.plan = _ik_natural(
                    sim, self.side, [_pose(rot, handle + [0, 0, 0.08])], q[i : i + 6]
                )
            if self.plan is None or _joint_step(q, arm.index, self.plan, 0.05) < 0.01:
                self._go("approach")
        elif self.phase == "approach":
            q[self.g] = self.OPEN
            if arm.toward(q, handle + [0, 0, 0.08], rot)[0] < 0.008 or self.t > 150:
                self._go("descend")
        elif self.phase == "descend":
            q[self.g] = self.OPEN
            # straight down once above the bar; off to the side, line up at this height first
            goal = grip if off < 0.006 else np.array([*grip[:2], max(tcp[2], handle[2] + 0.03)])
            if arm.toward(q, goal, rot)[0] < 0.005 or self.t > 60:
                self._go("close" if tcp[2] < grip[2] + 0.01 else "approach")
        elif self.phase == "close":
            q[self.g] = 0.0
            arm.toward(q, grip, rot)
            if self.t > 12:
                self._go("pull" if holding else "approach")
        elif self.phase == "pull":
            goal = grip + pull_dir * (self.PULL_TO - opening)
            arm.toward(q, goal, rot, speed=0.008)
            if not holding or opening >= self.PULL_TO - 0.01:
                self._go("let_go")
        elif self.phase == "let_go":
            q[self.g] = self.OPEN
            arm.toward(q, tcp, rot)
            if self.t > 10:
                self._go("rise" if opening >= self.PULL_TO - 0.02 else "approach")
        elif self.phase == "rise":
            if arm.toward(q, grip + [0, 0, 0.1], rot)[0] < 0.01 or self.t > 60:
                self._go("done")  # and hold still
        return q.copy()


# ---------------------------------------------------------------------- insertion
PEG_HALF = (0.05, 0.01, 0.01)
SOCKET_HALF_LEN = 0.04
SOCKET_HALF_OUT = 0.025
"""Half the socket's outer width and height (a square tube along its local x axis)."""
SOCKET_HALF_HOLE = 0.014
INSERT_DEPTH = 0.01
"""How far a peg end must be inside the socket's hole for success (m)."""
LIFTED = 0.02
"""Clearance above the table that counts as lifted (m)."""


def _min_rotation(a, b) -> np.ndarray:
    """The smallest rotation taking unit vector ``a`` to unit vector ``b``."""
    a = np.asarray(a, float) / np.linalg.norm(a)
    b = np.asarray(b, float) / np.linalg.norm(b)
    axis = np.cross(a, b)
    s, c = float(np.linalg.norm(axis)), float(np.dot(a, b))
    if s < 1e-9:
        if c > 0:
            return np.eye(3)
        perp = np.cross(a, [1.0, 0, 0] if abs(a[0]) < 0.9 else [0, 1.0, 0])
        return _exp_rot(perp / np.linalg.norm(perp) * math.pi)
    return _exp_rot(axis / s * math.atan2(s, c))


def _lowest_point(pose: np.ndarray, half) -> float:
    """Lowest z of a box with half extents ``half`` at ``pose``."""
    return float(pose[2, 3] - np.abs(pose[2, :3]) @ np.asarray(half))


def _yaw_of_axis(axis) -> float:
    return float(math.atan2(axis[1], axis[0]))


class Insertion(Task):
    """ALOHA's Insertion: the left arm picks up the socket (a square tube), the right arm picks
    up the peg, they meet in the air and the right arm pushes the peg into the socket's hole."""

    name = "insertion"
    instruction = (
        "pick up the blue socket with the left arm and the red peg with the right arm, and insert "
        "the peg into the socket in the air"
    )
    object_names = ("peg", "socket")
    max_steps = 600

    def build(self, spec) -> None:
        peg = _free_body(spec, "peg", 0.05, _box_inertia(0.05, PEG_HALF))
        _add_box(peg, "peg", PEG_HALF, [0, 0, 0], [0.85, 0.15, 0.1, 1], _PAD_FRICTION)
        half_out = (SOCKET_HALF_LEN, SOCKET_HALF_OUT, SOCKET_HALF_OUT)
        socket = _free_body(spec, "socket", 0.08, _box_inertia(0.08, half_out), (0, 0.2, 0.5))
        wall = (SOCKET_HALF_OUT - SOCKET_HALF_HOLE) / 2
        mid = SOCKET_HALF_HOLE + wall
        blue = [0.15, 0.3, 0.85, 1]
        for sz in (-1, 1):  # floor and roof
            _add_box(
                socket,
                f"socket_{'roof' if sz > 0 else 'floor'}",
                [SOCKET_HALF_LEN, SOCKET_HALF_OUT, wall],
                [0, 0, sz * mid],
                blue,
                _PAD_FRICTION,
            )
        for sy in (-1, 1):  # side walls between them
            _add_box(
                socket,
                f"socket_wall{sy:+d}",
                [SOCKET_HALF_LEN, wall, SOCKET_HALF_HOLE],
                [0, sy * mid, 0],
                blue,
                _PAD_FRICTION,
            )

    def randomize(self, sim: AlohaSim, rng: np.random.Generator) -> None:
        sx, sy, syaw = rng.uniform([-0.2, -0.08, -0.35], [-0.1, 0.06, 0.35])
        px, py, pyaw = rng.uniform([0.1, -0.08, -0.35], [0.2, 0.06, 0.35])
        set_free_body(sim, "socket", [sx, sy, SOCKET_HALF_OUT], syaw)
        set_free_body(sim, "peg", [px, py, PEG_HALF[2]], pyaw)

    @staticmethod
    def peg_depth(sim: AlohaSim) -> float:
        """How deep the deeper end of the peg is inside the socket's hole (m; negative: not in
        the hole)."""
        peg, socket = sim.body_pose("peg"), sim.body_pose("socket")
        best = -1.0
        for end in (-1, 1):
            tip = peg[:3, 3] + end * PEG_HALF[0] * peg[:3, 0]
            local = socket[:3, :3].T @ (tip - socket[:3, 3])
            margin = SOCKET_HALF_HOLE - max(abs(local[1]), abs(local[2]))
            depth = SOCKET_HALF_LEN - abs(local[0])
            if margin > 0:
                best = max(best, depth)
        return best

    def _lifted(self, sim: AlohaSim) -> tuple[bool, bool]:
        half_out = (SOCKET_HALF_LEN, SOCKET_HALF_OUT, SOCKET_HALF_OUT)
        return (
            bool(_lowest_point(sim.body_pose("peg"), PEG_HALF) > LIFTED),
            bool(_lowest_point(sim.body_pose("socket"), half_out) > LIFTED),
        )

    def success(self, sim: AlohaSim) -> bool:
        return bool(all(self._lifted(sim)) and self.peg_depth(sim) >= INSERT_DEPTH)

    def progress(self, sim: AlohaSim) -> int:
        if self.success(sim):
            return 3
        lifted = self._lifted(sim)
        return 2 if all(lifted) else 1 if any(lifted) else 0

    def expert(self, sim: AlohaSim, rng: np.random.Generator):
        return _InsertionExpert(self, sim)


class _InsertionExpert:
    """Both arms at once: above their object, down, close, lift; the left arm brings the socket
    to a fixed spot in the air with its hole along the x axis; the right arm lines the peg up
    with the measured hole axis a few centimetres out, then pushes it in. Every goal comes from
    the objects' measured poses (through the measured object-in-hand transform), and an arm
    that lost its object goes back for it."""

    SOCKET_AT = np.array([-0.075, 0.0, 0.16])
    STANDOFF = 0.03
    DEPTH = 0.03
    SOCKET_GRIP = -0.012  # along the socket axis from its centre, away from the entrance
    PEG_GRIP = 0.015  # along the peg axis from its centre, away from its tip

    def __init__(self, task: Insertion, sim: AlohaSim):
        self.task = task
        self.q = START_POSE.copy()
        self.arms = {s: _PoseMover(sim, s) for s in ("left", "right")}
        self.phases = {"left": "preshape", "right": "preshape"}
        self.ts = {"left": 0, "right": 0}
        self.plans: dict[str, np.ndarray | None] = {"left": None, "right": None}
        self.steady = 0

    @property
    def phase(self) -> str:
        return f"{self.phases['left']}/{self.phases['right']}"

    def _go(self, side: str, phase: str) -> None:
        self.phases[side], self.ts[side] = phase, 0

    @staticmethod
    def _axis(pose: np.ndarray) -> np.ndarray:
        """The object's long axis, pointing towards +x (the right arm's side)."""
        a = pose[:3, 0]
        return a if a[0] >= 0 else -a

    def _grip_point(self, side: str, pose: np.ndarray) -> np.ndarray:
        a = self._axis(pose)
        return pose[:3, 3] + a * (self.SOCKET_GRIP if side == "left" else self.PEG_GRIP)

    def act(self, sim: AlohaSim) -> np.ndarray:
        socket, peg = sim.body_pose("socket"), sim.body_pose("peg")
        socket_ok = self._pick(sim, "left", socket, SOCKET_HALF_OUT, 0.015)
        peg_ok = self._pick(sim, "right", peg, PEG_HALF[2], 0.008)
        if socket_ok:
            self._carry_socket(sim, socket)
        if peg_ok:
            self._insert_peg(sim, socket, peg, socket_ok)
        return self.q.copy()

    def _pick(self, sim, side: str, pose, half_height: float, grip_z: float) -> bool:
        """Runs the pick phases of ``side``; True once the object is in hand."""
        q, arm = self.q, self.arms[side]
        g = 6 if side == "left" else 13
        a = self._axis(pose)
        rot = grasp_orientation(side, _yaw_of_axis(a))  # fingers closing across the axis
        grip = self._grip_point(side, pose)
        tcp = _tcp(sim, side)[:3, 3]
        holding = np.linalg.norm(tcp - grip) < 0.03
        phase = self.phases[side]
        self.ts[side] += 1
        t = self.ts[side]
        low = np.array([*grip[:2], grip[2] - half_height + grip_z])
        if phase == "preshape":  # in joint space to above the object, wrist unflipped
            q[g] = 1.0
            i = arm.index
            if t == 1:
                self.plans[side] = _ik_natural(
                    sim, side, [_pose(rot, low + [0, 0, 0.1])], q[i : i + 6]
                )
            plan = self.plans[side]
            if plan is None or _joint_step(q, i, plan, 0.05) < 0.01:
                self._go(side, "approach")
        elif phase == "approach":
            q[g] = 1.0
            if arm.toward(q, low + [0, 0, 0.1], rot)[0] < 0.01 or t > 150:
                self._go(side, "descend")
        elif phase == "descend":
            q[g] = 1.0
            off = np.linalg.norm((tcp - low)[:2])
            goal = low if off < 0.006 else np.array([*low[:2], max(tcp[2], low[2] + 0.06)])
            if arm.toward(q, goal, rot)[0] < 0.005 or t > 60:
                self._go(side, "close")
        elif phase == "close":
            q[g] = 0.0
            arm.toward(q, low, rot)
            if t > 15:
                self._go(side, "lift" if holding else "preshape")
        elif holding:
            return True
        else:  # lost it: open and start over from wherever it is now
            self._go(side, "preshape")
        return False

    def _carry_socket(self, sim, socket) -> None:
        q, arm, tcp = self.q, self.arms["left"], _tcp(sim, "left")
        self.ts["left"] += 1
        # where the hand must be for the socket to sit at SOCKET_AT, its hole along +x, level
        a = self._axis(socket)
        turn = _min_rotation(a, [1.0, 0.0, 0.0])
        goal_rot = turn @ tcp[:3, :3]
        goal_pos = self.SOCKET_AT + turn @ (tcp[:3, 3] - socket[:3, 3])
        if tcp[2, 3] < 0.08:  # straight up first
            goal_pos = np.array([*tcp[:2, 3], 0.12])
        arm.toward(q, goal_pos, goal_rot)
        self.phases["left"] = "hold"

    def socket_ready(self, sim) -> bool:
        socket = sim.body_pose("socket")
        near = np.linalg.norm(socket[:3, 3] - self.SOCKET_AT) < 0.01
        return bool(near and self._axis(socket)[0] > math.cos(0.08))

    def _insert_peg(self, sim, socket, peg, socket_ok: bool) -> None:
        q, arm, tcp = self.q, self.arms["right"], _tcp(sim, "right")
        phase = self.phases["right"]
        self.ts["right"] += 1
        if phase == "lift":
            self._go("right", "wait")
            phase = "wait"
        axis = self._axis(socket)  # from the socket's centre out through the entrance
        entrance = socket[:3, 3] + axis * SOCKET_HALF_LEN
        a_peg = self._axis(peg)  # from the peg's tip to its gripped end
        turn = _min_rotation(a_peg, axis)
        tip_now = peg[:3, 3] - a_peg * PEG_HALF[0]
        goal_rot = turn @ tcp[:3, :3]

        def hand_for(tip):  # the TCP pose that puts the peg's tip at ``tip``, along the axis
            centre = tip + axis * PEG_HALF[0]
            return centre + turn @ (tcp[:3, 3] - peg[:3, 3])

        # the tip's offset from the hole's axis, and how far along it it is
        rel = tip_now - entrance
        along = float(rel @ axis)
        lateral = float(np.linalg.norm(rel - along * axis))
        if phase == "wait":
            goal = np.array([0.12, self.SOCKET_AT[1], self.SOCKET_AT[2]])
            if tcp[2, 3] < 0.08:
                goal = np.array([*tcp[:2, 3], 0.12])
            arm.toward(q, goal, goal_rot)
            if socket_ok and self.socket_ready(sim):
                self._go("right", "align")
        elif phase == "align":
            _, ang = arm.toward(q, hand_for(entrance + axis * self.STANDOFF), goal_rot)
            steady = lateral < 0.0025 and abs(along - self.STANDOFF) < 0.006 and ang < 0.05
            self.steady = self.steady + 1 if steady else 0
            if not socket_ok:
                self._go("right", "wait")
            elif self.steady >= 4:
                self._go("right", "insert")
        elif phase == "insert":
            # in small steps, re-centred on the hole's axis at every one: a long straight move
            # bends (the joints lag unequally) and stubs the tip on the socket's rim
            nxt = along if lateral > 0.002 else max(-self.DEPTH, along - 0.006)
            arm.toward(q, hand_for(entrance + axis * nxt), goal_rot)
            if not socket_ok or (-0.002 < along < 0.004 and lateral > 0.005):
                self._go("right", "back_off")
            elif along < 0.005 - self.DEPTH:
                self._go("right", "inserted")  # deep enough: hold still, push no further
        elif phase == "back_off":
            arm.toward(q, hand_for(entrance + axis * self.STANDOFF * 1.5), goal_rot)
            if along > self.STANDOFF:
                self._go("right", "align")
        # "inserted": the commanded joints stay as they are


# ---------------------------------------------------------------------- plate_on_rack
PLATE_R = 0.07
PLATE_HALF_T = 0.006
STAND_R = 0.015
STAND_H = 0.09
"""The plate lies on a round stand (a cake stand) so that a finger fits under its rim."""
RACK_HALF = (0.09, 0.075, 0.005)
"""Half extents of the rack's base plate; slots are across its local x axis."""
RAIL_Y = 0.035
RAIL_TOP = 0.026
BAR_Y = 0.055
BAR_TOP = 0.1
BAR_HALF = 0.003
SLOT_X = (-0.045, 0.0, 0.045)
"""Slot centres along the rack's local x axis; bar rows stand halfway between them and at the
ends."""
SLOT_PITCH = 0.045
PLATE_REST_Z = RAIL_TOP + math.sqrt(PLATE_R**2 - RAIL_Y**2)
"""Height of the plate's centre above the rack's base frame when it stands on both rails."""
UPRIGHT_TILT = math.radians(25)


class PlateOnRack(Task):
    """A plate lies flat on a stand at the front of one side of the table and a dish rack with
    three slots stands at the back of the other. The arm on the rack's side reaches across,
    pinches the plate's rim from the side (fingers above and below), turns the plate upright
    below the gripper, carries it over the rack's middle slot, lowers it in between the bars
    until it stands on the rack's two rails, and lets go.

    Design choices: the plate lies on a stand (a cake stand), not on the table, because a finger
    has to get under its rim (the gripper cannot pinch a thin disc lying flat on the table), and
    the gripper's body reaches 7.5 cm below a level pinch, hence the stand's 9 cm. The slots are
    upright: the plate goes in vertically and, once let go, leans at most ~10 degrees onto a
    bar. Success: the plate's centre over a slot (between two rows of bars), its face within 25
    degrees of vertical, resting on the rails, still, and touched by no part of the robot."""

    name = "plate_on_rack"
    instruction = "put the plate upright into the dish rack"
    object_names = ("plate", "rack")
    max_steps = 700

    def build(self, spec) -> None:
        m = 0.04
        inertia = [m * (3 * PLATE_R**2 + (2 * PLATE_HALF_T) ** 2) / 12] * 2 + [m * PLATE_R**2 / 2]
        plate = _free_body(spec, "plate", m, inertia, (0.0, 0.0, 0.6))
        plate.add_geom(
            name="plate",
            type=_CYLINDER,
            size=[PLATE_R, PLATE_HALF_T, 0],
            rgba=[0.92, 0.92, 0.88, 1],
            friction=list(_PAD_FRICTION),
            condim=4,
            solref=_GRIP_SOLREF,
            solimp=_GRIP_SOLIMP,
        )
        stand = spec.worldbody.add_body(name="plate_stand", pos=[0.3, 0.6, 0.0])
        stand.add_geom(
            name="plate_stand",
            type=_CYLINDER,
            size=[STAND_R, STAND_H / 2, 0],
            pos=[0, 0, STAND_H / 2],
            rgba=[0.35, 0.5, 0.35, 1],
        )
        stand.add_geom(
            name="plate_stand_foot",
            type=_CYLINDER,
            size=[0.045, 0.004, 0],
            pos=[0, 0, 0.004],
            rgba=[0.35, 0.5, 0.35, 1],
        )
        rack = spec.worldbody.add_body(name="rack", pos=[-0.3, 0.6, 0.0])
        wood, steel = [0.6, 0.45, 0.3, 1], [0.7, 0.72, 0.75, 1]
        _add_box(rack, "rack_base", RACK_HALF, [0, 0, RACK_HALF[2]], wood)
        rail_half = (RACK_HALF[0], 0.005, (RAIL_TOP - 2 * RACK_HALF[2]) / 2)
        for sy in (-1, 1):
            _add_box(
                rack,
                f"rack_rail{sy:+d}",
                rail_half,
                [0, sy * RAIL_Y, 2 * RACK_HALF[2] + rail_half[2]],
                wood,
            )
        bar_half_h = (BAR_TOP - 2 * RACK_HALF[2]) / 2
        rows = [SLOT_X[0] - SLOT_PITCH / 2 + k * SLOT_PITCH for k in range(len(SLOT_X) + 1)]
        for i, x in enumerate(rows):
            for sy in (-1, 1):
                _add_box(
                    rack,
                    f"rack_bar{i}{'ab'[sy > 0]}",
                    [BAR_HALF, BAR_HALF, bar_half_h],
                    [x, sy * BAR_Y, 2 * RACK_HALF[2] + bar_half_h],
                    steel,
                )

    def randomize(self, sim: AlohaSim, rng: np.random.Generator) -> None:
        # the plate at the front of one side, the rack at the back of the other: the arm on the
        # rack's side reaches across to the plate's near rim
        s = 1.0 if rng.random() < 0.5 else -1.0
        sx, sy = rng.uniform([0.07, -0.13], [0.13, -0.06])
        rx, ry = rng.uniform([0.1, 0.06], [0.17, 0.13])
        _place_fixed(sim, "plate_stand", [s * sx, sy, 0.0], 0.0)
        _place_fixed(sim, "rack", [-s * rx, ry, 0.0], math.pi / 2 + rng.uniform(-0.25, 0.25))
        off = rng.uniform(-0.008, 0.008, 2)
        top = STAND_H + PLATE_HALF_T + 0.001
        set_free_body(sim, "plate", [s * sx + off[0], sy + off[1], top], rng.uniform(-3, 3))

    # ------------------------------------------------------------------ state
    @staticmethod
    def slot_centres(sim: AlohaSim) -> np.ndarray:
        """(3, 3) slot centres on the rack's base (base frame)."""
        rack = sim.body_pose("rack")
        return np.array([rack[:3, 3] + rack[:3, 0] * x for x in SLOT_X])

    @staticmethod
    def _in_rack(sim: AlohaSim) -> np.ndarray:
        """The plate's centre in the rack's frame."""
        rack, plate = sim.body_pose("rack"), sim.body_pose("plate")
        return rack[:3, :3].T @ (plate[:3, 3] - rack[:3, 3])

    @staticmethod
    def _upright(sim: AlohaSim) -> bool:
        normal = sim.body_pose("plate")[:3, 2]
        return abs(normal[2]) < math.sin(UPRIGHT_TILT)

    def _released(self, sim: AlohaSim) -> bool:
        return not _touched_by_robot(sim, {sim.model.geom("plate").id})

    def success(self, sim: AlohaSim) -> bool:
        local = self._in_rack(sim)
        in_slot = min(abs(local[0] - x) for x in SLOT_X) < SLOT_PITCH / 2 - BAR_HALF
        jid = sim.model.body("plate").jntadr[0]
        v = sim.data.qvel[sim.model.jnt_dofadr[jid] : sim.model.jnt_dofadr[jid] + 3]
        return bool(
            in_slot
            and abs(local[1]) < 0.03
            and local[2] < PLATE_REST_Z + 0.015
            and self._upright(sim)
            and self._released(sim)
            and np.linalg.norm(v) < 0.05
        )

    def progress(self, sim: AlohaSim) -> int:
        if self.success(sim):
            return 3
        local = self._in_rack(sim)
        over_rack = abs(local[0]) < RACK_HALF[0] and abs(local[1]) < RACK_HALF[1]
        if over_rack and self._upright(sim) and local[2] < PLATE_R + 0.15:
            return 2
        lifted = sim.body_pose("plate")[2, 3] > STAND_H + PLATE_HALF_T + 0.02
        plate = {sim.model.geom("plate").id}
        if lifted or any(_gripped(sim, plate, s) for s in ("left", "right")):
            return 1
        return 0

    def expert(self, sim: AlohaSim, rng: np.random.Generator):
        return _PlateExpert(self, sim)


class _PlateExpert(_PhaseExpert):
    """Beside the rim at the plate's height, gripper level and turned so that the fingers close
    up and down; in over the rim; close; lift off the stand; up; over the rack; turn the gripper
    to point down (in joint space, to an IK solution with the forearm unrolled: the plate now
    hangs below the gripper, its face along the slots); line the plate's centre up over the
    middle slot; down until it stands on the rails; open; up. Goals come from the plate's and
    the rack's measured poses; a missed pinch backs out and reaches in again, and a plate that
    slipped back onto the stand is picked again (one that fell to the table is given up)."""

    DEPTH = 0.045
    """How far the finger tips reach in over the rim."""
    CARRY_Z = 0.27
    LOWER_SPEED = 0.004

    def __init__(self, task: PlateOnRack, sim: AlohaSim):
        super().__init__("approach")
        self.task = task
        self.side = "left" if sim.body_pose("plate_stand")[0, 3] > 0 else "right"
        self.arm = _PoseMover(sim, self.side)
        self.g = 6 if self.side == "left" else 13
        self.plate_geoms = {sim.model.geom("plate").id}
        self.down_rot = None
        self.swing_to = None
        self.anchor = np.zeros(3)
        self.still = 0
        self.last_z = None

    def _side_rot(self, sim) -> tuple[np.ndarray, np.ndarray]:
        """(TCP orientation for the side grip, unit vector from the plate's centre to the rim
        point it grips): level, pointing from the arm's base at the plate's centre, fingers
        closing vertically."""
        stand = sim.body_pose("plate_stand")[:3, 3]
        base = np.array([-0.469 if self.side == "left" else 0.469, -0.1, 0.0])
        out = base - stand
        out[2] = 0.0
        out /= np.linalg.norm(out)
        return _frame(-out, [0.0, 0.0, 1.0]), out

    def _down_rot(self, sim, tcp_rot: np.ndarray) -> np.ndarray:
        """Gripper pointing down with the plate's face along the slot (normal along the rack's
        x axis), of the two such orientations the one nearer to ``tcp_rot``."""
        n = sim.body_pose("rack")[:3, 0]
        best = None
        for sign in (1.0, -1.0):
            r = _frame([0.0, 0.0, -1.0], sign * n)
            if best is None or np.trace(r @ tcp_rot.T) > np.trace(best @ tcp_rot.T):
                best = r
        return best

    def _plan_swing(self, sim, xyz) -> None:
        """Joints for the gripper pointing down at ``xyz``, the plate's face along the slots."""
        n = sim.body_pose("rack")[:3, 0]
        goals = []
        for sign in (1.0, -1.0):
            goal = np.eye(4)
            goal[:3, :3] = _frame([0.0, 0.0, -1.0], sign * n)
            goal[:3, 3] = xyz
            goals.append(goal)
        i = self.arm.index
        self.swing_to = _ik_natural(sim, self.side, goals, self.q[i : i + 6])

    def act(self, sim: AlohaSim) -> np.ndarray:
        q, arm = self.q, self.arm
        plate = sim.body_pose("plate")
        c = plate[:3, 3]
        tcp = _tcp(sim, self.side)
        side_rot, out = self._side_rot(sim)
        stand = sim.body_pose("plate_stand")[:3, 3]
        on_stand = c[2] > STAND_H and np.linalg.norm((c - stand)[:2]) < 0.05
        # the plate's centre, as the grip should hold it, seen from the TCP
        holding = np.linalg.norm(c - tcp[:3, 3]) < PLATE_R - self.DEPTH + 0.03
        pinched = (
            sim.qpos14()[self.g] > 0.08
            and holding
            and len(_finger_contacts(sim, self.plate_geoms, self.side)) > 0
        )
        self.t += 1
        ph = self.phase
        rim = c + out * (PLATE_R - self.DEPTH)
        if ph == "approach":
            q[self.g] = 1.0
            goal = c + out * (PLATE_R + 0.06)
            # come in from above, outside the rim
            if np.linalg.norm((tcp[:3, 3] - goal)[:2]) > 0.03:
                goal = goal + [0, 0, 0.06]
            d, ang = arm.toward(q, goal, side_rot)
            if (d < 0.008 and ang < 0.05) or self.t > 200:
                self._go("reach_in")
        elif ph == "reach_in":
            q[self.g] = 1.0
            if arm.toward(q, rim, side_rot, speed=0.006)[0] < 0.005 or self.t > 60:
                self._go("close")
        elif ph == "close":
            q[self.g] = 0.0
            arm.toward(q, rim, side_rot)
            # closed on the plate: the fingers stop apart, with the plate between them
            if self.t > 15:
                self._go("lift" if pinched else "back_out")
        elif ph == "back_out":  # open, and out past the rim at the plate's height
            q[self.g] = 1.0
            if self.t > 10 and arm.toward(q, c + out * (PLATE_R + 0.06), side_rot)[0] < 0.01:
                self._go("reach_in")
        elif ph == "lift":  # gently off the stand, then up
            if self.t == 1:
                self.anchor = tcp[:3, 3].copy()
            if not holding:
                self._go("lost")
            elif arm.toward(q, self.anchor + [0, 0, 0.04], side_rot, speed=0.003)[0] < 0.005:
                self._go("raise")
        elif ph == "raise":
            goal = np.array([*self.anchor[:2], self.CARRY_Z])
            if not holding:
                self._go("lost")
            elif arm.toward(q, goal, side_rot, speed=0.006)[0] < 0.015 or self.t > 100:
                self._go("transfer")
        elif ph == "transfer":  # still level, to above the rack: pointing down is reachable there
            goal = np.array([*self.task.slot_centres(sim)[1][:2], self.CARRY_Z])
            if not holding:
                self._go("lost")
            elif arm.toward(q, goal, side_rot, speed=0.008)[0] < 0.015 or self.t > 120:
                self._plan_swing(sim, goal)
                self._go("swing")
        elif ph == "swing":  # in joint space, to a solution with the forearm unrolled
            i = arm.index
            if self.swing_to is None:
                self._go("carry")
            else:
                left = _joint_step(q, i, self.swing_to, 0.03)
                if not holding:
                    self._go("lost")
                elif left < 0.02 and self.t > 10:
                    self._go("carry")
        elif ph in ("carry", "lower"):
            self.down_rot = self._down_rot(sim, tcp[:3, :3])
            slot = self.task.slot_centres(sim)[1]
            rack_z = sim.body_pose("rack")[2, 3]
            high = rack_z + PLATE_REST_Z + BAR_TOP - RAIL_TOP + 0.02
            low = rack_z + PLATE_REST_Z + 0.003
            err_xy = np.linalg.norm((slot - c)[:2])
            if ph == "carry":
                want = np.array([*slot[:2], max(high, min(c[2], high + 0.05))])
                d, ang = arm.toward(q, tcp[:3, 3] + want - c, self.down_rot)
                if not holding:
                    self._go("lost")
                elif err_xy < 0.004 and abs(c[2] - want[2]) < 0.01 and ang < 0.05:
                    self._go("lower")
            else:
                want = np.array([*slot[:2], low])
                arm.toward(q, tcp[:3, 3] + want - c, self.down_rot, speed=self.LOWER_SPEED)
                moved = abs(c[2] - self.last_z) if self.last_z is not None else 1.0
                self.still = self.still + 1 if moved < 0.0005 else 0
                if not holding:
                    self._go("lost")
                elif c[2] < low + 0.004 or (self.still > 5 and c[2] < low + 0.02):
                    self._go("release")
            self.last_z = c[2]
        elif ph == "release":
            q[self.g] = 1.0
            arm.toward(q, tcp[:3, 3], self.down_rot)
            if self.t > 15:
                self._go("retreat")
        elif ph == "retreat":
            arm.toward(q, tcp[:3, 3] + [0, 0, 0.02], self.down_rot)
            if tcp[2, 3] > 0.3:
                self._go("done")
        elif ph == "lost":  # dropped: back on the stand, pick it again; elsewhere, give up
            q[self.g] = 1.0
            arm.toward(q, [*tcp[:2, 3], max(tcp[2, 3], 0.2)], tcp[:3, :3])
            if self.t > 30 and on_stand:
                self._go("approach")
        return q.copy()
