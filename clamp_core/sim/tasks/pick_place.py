"""Pick-and-place tasks: one arm picks up an object and puts it on or into a receptacle (a mug on
a plate, a pen in a pen cup, a can opener or a screwdriver in a caddy).

Each episode picks the acting arm at random and puts the object and its receptacle on that
arm's half of the table. Objects are free bodies built from primitive geoms, their inertia
computed from the parts about their centre of mass (the body origin). Receptacles are mocap
bodies: fixed during an episode, placed by ``randomize``. In every object's body frame x is its
long axis (for the mug: the direction of the handle), z is up when it lies as built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from ..aloha import START_POSE, TABLE_CENTRE_MJ, AlohaSim
from .base import ArmMover, Task

FRICTION = (1.0, 0.005, 0.0001)
SOLREF = (0.01, 1.0)
SOLIMP = (0.95, 0.99, 0.001, 0.5, 2.0)
FINGERS = ("10_left_gripper_finger", "10_right_gripper_finger")
HALF_PI = math.pi / 2


# ---------------------------------------------------------------------------- building objects
@dataclass(frozen=True)
class Part:
    """One primitive of an object. ``size``: MuJoCo's (box: half sizes; cylinder and capsule:
    radius, half length along the part's ``axis``); ``yaw`` turns a box about z."""

    kind: str
    size: tuple[float, ...]
    pos: tuple[float, float, float]
    mass: float = 0.0
    rgba: tuple[float, float, float, float] = (0.5, 0.5, 0.5, 1.0)
    axis: str = "z"
    yaw: float = 0.0

    def quat(self) -> list[float]:
        if self.kind == "box":
            return [math.cos(self.yaw / 2), 0.0, 0.0, math.sin(self.yaw / 2)]
        c = math.cos(math.pi / 4)
        return {"x": [c, 0.0, c, 0.0], "y": [c, -c, 0.0, 0.0], "z": [1.0, 0.0, 0.0, 0.0]}[self.axis]

    def rotation(self) -> np.ndarray:
        w, x, y, z = self.quat()
        return np.array(
            [
                [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
            ]
        )

    def inertia(self) -> np.ndarray:
        """(3, 3) inertia about the part's centre, in the object's frame (uniform density)."""
        m = self.mass
        if self.kind == "box":
            hx, hy, hz = self.size
            local = np.diag([hy**2 + hz**2, hx**2 + hz**2, hx**2 + hy**2]) * m / 3
        else:  # cylinder, capsule (as a cylinder of the same overall length)
            r, h = self.size
            if self.kind == "capsule":
                h += r
            perp = m * (3 * r**2 + 4 * h**2) / 12
            local = np.diag([perp, perp, m * r**2 / 2])
        rot = self.rotation()
        return rot @ local @ rot.T

    def bottom(self) -> float:
        """Lowest z of the part in the object's frame."""
        if self.kind == "box":
            return self.pos[2] - self.size[2]
        if self.axis == "z":
            return self.pos[2] - self.size[1] - (self.size[0] if self.kind == "capsule" else 0)
        return self.pos[2] - self.size[0]


def centred(parts: list[Part]) -> tuple[list[Part], np.ndarray]:
    """The parts moved so that their centre of mass is the origin, and the offset removed."""
    masses = np.array([p.mass for p in parts])
    com = (np.array([p.pos for p in parts]) * masses[:, None]).sum(0) / max(masses.sum(), 1e-9)
    moved = [replace(p, pos=tuple(float(v) for v in np.subtract(p.pos, com))) for p in parts]
    return moved, com


def ring(radius: float, thickness: float, height: float, z0: float, n: int, mass: float, rgba):
    """``n`` boxes standing in a circle: the wall of a cup, ``height`` tall from ``z0``."""
    r_mid = radius - thickness / 2
    half_w = radius * math.tan(math.pi / n) + 0.0005
    return [
        Part(
            "box",
            (thickness / 2, half_w, height / 2),
            (r_mid * math.cos(a), r_mid * math.sin(a), z0 + height / 2),
            mass / n,
            rgba,
            yaw=a,
        )
        for a in (2 * math.pi * i / n for i in range(n))
    ]


def add_object(
    spec, name: str, parts: list[Part], mocap: bool = False, condim: int = 4, friction=FRICTION
):
    """A free body (or a mocap body) made of ``parts`` whose centre of mass is at the origin."""
    import mujoco

    kinds = {
        "box": mujoco.mjtGeom.mjGEOM_BOX,
        "cylinder": mujoco.mjtGeom.mjGEOM_CYLINDER,
        "capsule": mujoco.mjtGeom.mjGEOM_CAPSULE,
    }
    if mocap:
        body = spec.worldbody.add_body(name=name, pos=[0, 0, 0.5], mocap=True)
    else:
        mass = sum(p.mass for p in parts)
        inertia = np.zeros((3, 3))
        for p in parts:
            d = np.asarray(p.pos, float)
            inertia += p.inertia() + p.mass * (d @ d * np.eye(3) - np.outer(d, d))
        body = spec.worldbody.add_body(
            name=name,
            pos=[0, 0, 0.5],
            ipos=[0, 0, 0],
            mass=mass,
            explicitinertial=True,
        )
        body.fullinertia = [
            inertia[0, 0],
            inertia[1, 1],
            inertia[2, 2],
            inertia[0, 1],
            inertia[0, 2],
            inertia[1, 2],
        ]
        body.add_freejoint(name=f"{name}_joint")
    for i, p in enumerate(parts):
        size = list(p.size) + [0.0] * (3 - len(p.size))
        body.add_geom(
            name=f"{name}_{i}",
            type=kinds[p.kind],
            size=size,
            pos=list(p.pos),
            quat=p.quat(),
            rgba=list(p.rgba),
            friction=list(friction),
            condim=condim,
            solref=list(SOLREF),
            solimp=list(SOLIMP),
        )
    return body


# ---------------------------------------------------------------------------- the objects
MUG_R, MUG_H = 0.026, 0.08
MUG_RED = (0.85, 0.15, 0.15, 1.0)
MUG_PARTS, _ = centred(
    [
        *ring(MUG_R, 0.004, MUG_H, 0.0, 12, 0.06, MUG_RED),
        Part("cylinder", (MUG_R - 0.003, 0.003), (0.0, 0.0, 0.003), 0.025, MUG_RED),
        Part("box", (0.004, 0.005, 0.024), (MUG_R + 0.016, 0.0, 0.04), 0.007, MUG_RED),
        Part("box", (0.009, 0.005, 0.004), (MUG_R + 0.007, 0.0, 0.06), 0.004, MUG_RED),
        Part("box", (0.009, 0.005, 0.004), (MUG_R + 0.007, 0.0, 0.02), 0.004, MUG_RED),
    ]
)
PLATE_R, PLATE_TOP = 0.075, 0.012
PLATE_PARTS = [
    Part("cylinder", (PLATE_R, PLATE_TOP / 2), (0, 0, PLATE_TOP / 2), 0.0, (0.92,) * 3 + (1,))
]

PEN_HALF = (0.06, 0.008, 0.008)
PEN_PARTS = [Part("box", PEN_HALF, (0.0, 0.0, 0.0), 0.02, (0.1, 0.25, 0.9, 1.0))]
CUP_R, CUP_WALL, CUP_H, CUP_FLOOR = 0.042, 0.005, 0.10, 0.005
CUP_GREEN = (0.15, 0.65, 0.3, 1.0)
CUP_PARTS = [
    *ring(CUP_R, CUP_WALL, CUP_H, 0.0, 12, 0.0, CUP_GREEN),
    Part("cylinder", (CUP_R - 0.002, CUP_FLOOR / 2), (0, 0, CUP_FLOOR / 2), 0.0, CUP_GREEN),
]

OPENER_PARTS, _OPENER_COM = centred(
    [
        Part("box", (0.05, 0.010, 0.010), (0.05, 0.0, 0.010), 0.05, (0.95, 0.55, 0.1, 1.0)),
        Part("box", (0.025, 0.015, 0.006), (0.125, 0.0, 0.006), 0.03, (0.6, 0.6, 0.65, 1.0)),
    ]
)
DRIVER_PARTS, _DRIVER_COM = centred(
    [
        Part("cylinder", (0.012, 0.04), (0.0, 0.0, 0.012), 0.04, (0.95, 0.85, 0.1, 1.0), "x"),
        Part("capsule", (0.003, 0.035), (0.075, 0.0, 0.012), 0.015, (0.75, 0.75, 0.8, 1.0), "x"),
    ]
)
CADDY_IN = (0.095, 0.055)  # inner half length, half width
CADDY_WALL, CADDY_H, CADDY_FLOOR = 0.006, 0.06, 0.005
CADDY_PURPLE = (0.5, 0.3, 0.75, 1.0)
_CX, _CY, _T = CADDY_IN[0] + CADDY_WALL, CADDY_IN[1] + CADDY_WALL, CADDY_WALL / 2
CADDY_PARTS = [
    Part("box", (_CX, _CY, CADDY_FLOOR / 2), (0, 0, CADDY_FLOOR / 2), 0.0, CADDY_PURPLE),
    *(
        Part("box", (_CX, _T, CADDY_H / 2), (0, s * (_CY - _T), CADDY_H / 2), 0.0, CADDY_PURPLE)
        for s in (-1, 1)
    ),
    *(
        Part("box", (_T, _CY, CADDY_H / 2), (s * (_CX - _T), 0, CADDY_H / 2), 0.0, CADDY_PURPLE)
        for s in (-1, 1)
    ),
]


# ---------------------------------------------------------------------------- sim helpers
def set_mocap(sim: AlohaSim, body: str, xyz_base, yaw: float = 0.0) -> None:
    mid = sim.model.body(body).mocapid[0]
    sim.data.mocap_pos[mid] = np.asarray(xyz_base, float) + TABLE_CENTRE_MJ
    sim.data.mocap_quat[mid] = [math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)]


def place_free(sim: AlohaSim, body: str, xyz_base, yaw: float) -> None:
    jid = sim.model.body(body).jntadr[0]
    adr, dadr = sim.model.jnt_qposadr[jid], sim.model.jnt_dofadr[jid]
    sim.data.qpos[adr : adr + 3] = np.asarray(xyz_base, float) + TABLE_CENTRE_MJ
    sim.data.qpos[adr + 3 : adr + 7] = [math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)]
    sim.data.qvel[dadr : dadr + 6] = 0.0


def body_speed(sim: AlohaSim, body: str) -> tuple[float, float]:
    """(linear m/s, angular rad/s) speed of a free body."""
    dadr = sim.model.jnt_dofadr[sim.model.body(body).jntadr[0]]
    v = sim.data.qvel[dadr : dadr + 6]
    return float(np.linalg.norm(v[:3])), float(np.linalg.norm(v[3:]))


def _contacts(sim: AlohaSim) -> tuple[np.ndarray, np.ndarray]:
    n = sim.data.ncon
    g1, g2 = sim.data.contact.geom1[:n], sim.data.contact.geom2[:n]
    return g1, g2


def touching_robot(sim: AlohaSim, body: str) -> bool:
    """Any geom of ``body`` touches any part of either arm."""
    m = sim.model
    bid = m.body(body).id
    g1, g2 = _contacts(sim)
    b1, b2 = m.geom_bodyid[g1], m.geom_bodyid[g2]
    others = np.concatenate([b2[b1 == bid], b1[b2 == bid]])
    if others.size == 0:
        return False
    robot = {m.body(f"vx300s_{s}").id for s in ("left", "right")}
    return any(int(m.body_rootid[b]) in robot for b in others)


def grasped_by(sim: AlohaSim, body: str, side: str) -> bool:
    """Both fingers of ``side`` touch ``body``."""
    m = sim.model
    bid = m.body(body).id
    g1, g2 = _contacts(sim)
    touched = set()
    for f in FINGERS:
        fid = m.geom(f"vx300s_{side}/{f}").id
        if np.any((g1 == fid) & (m.geom_bodyid[g2] == bid)) or np.any(
            (g2 == fid) & (m.geom_bodyid[g1] == bid)
        ):
            touched.add(f)
    return len(touched) == 2


def wrap(a: float) -> float:
    """Angle in [-pi, pi)."""
    return (a + math.pi) % (2 * math.pi) - math.pi


def side_base(side: str) -> float:
    """World heading of ``grasp_orientation(side, yaw=0)``'s lateral (finger width) axis."""
    return 0.0 if side == "left" else math.pi


def layout(rng: np.random.Generator, side: str, obj_box, rec_box, min_sep: float):
    """Object and receptacle xy, each uniform in its (u_lo, u_hi, y_lo, y_hi) box, where u is
    the distance from the table's centre line towards ``side``'s arm, at least ``min_sep``
    apart."""
    sign = -1.0 if side == "left" else 1.0
    for _ in range(1000):
        o = rng.uniform(obj_box[::2], obj_box[1::2])
        r = rng.uniform(rec_box[::2], rec_box[1::2])
        if np.hypot(*(o - r)) >= min_sep:
            break
    return np.array([sign * o[0], o[1]]), np.array([sign * r[0], r[1]])


# ---------------------------------------------------------------------------- the tasks
class PickPlaceTask(Task):
    """Shared randomisation, success detection and progress of the pick-and-place tasks.
    Subclasses describe their object (``obj``), receptacle (``rec``) and goal."""

    obj: str = ""
    rec: str = ""
    max_steps = 600
    obj_parts: list[Part] = []
    rec_parts: list[Part] = []
    obj_box = (0.04, 0.28, -0.22, 0.12)
    rec_box = (0.06, 0.26, -0.16, 0.12)
    min_sep = 0.17
    rec_yaw_range = 0.0
    axis_yaw_range = 0.7
    """Objects lie with their long axis within this of the acting arm's heading."""
    obj_condim = 4
    obj_friction = FRICTION

    # expert parameters
    grasp_x = 0.0
    """Grasp point along the object's x axis (m from the centre of mass, towards the end that
    ends up farther from the arm)."""
    grasp_z = 0.004
    """Height of the tool centre point above the object's lowest point when grasping."""
    carry_z = 0.13
    """Height of the object's centre while carried."""
    place_pitch = HALF_PI
    release_gripper = 1.0

    @property
    def rest_z(self) -> float:
        """Height of the object's centre above the surface it lies on."""
        return -min(p.bottom() for p in self.obj_parts)

    def build(self, spec) -> None:
        add_object(
            spec, self.obj, self.obj_parts, condim=self.obj_condim, friction=self.obj_friction
        )
        add_object(spec, self.rec, self.rec_parts, mocap=True)

    def randomize(self, sim: AlohaSim, rng: np.random.Generator) -> None:
        side = "left" if rng.random() < 0.5 else "right"
        o, r = layout(rng, side, self.obj_box, self.rec_box, self.min_sep)
        heading = side_base(side) + rng.uniform(-self.axis_yaw_range, self.axis_yaw_range)
        yaw = self.object_yaw(rng, heading)
        place_free(sim, self.obj, [o[0], o[1], self.rest_z + 0.001], yaw)
        rec_yaw = rng.uniform(-self.rec_yaw_range, self.rec_yaw_range)
        set_mocap(sim, self.rec, [r[0], r[1], 0.0], rec_yaw)

    def object_yaw(self, rng: np.random.Generator, heading: float) -> float:
        """Yaw of the object's x axis given a heading comfortable for the arm."""
        return wrap(heading + (math.pi if rng.random() < 0.5 else 0.0))

    def in_goal(self, sim: AlohaSim) -> bool:
        raise NotImplementedError

    def place_target(self, sim: AlohaSim) -> tuple[np.ndarray, float | None]:
        """Where the object's centre should be when released, and the world yaw (mod pi) its x
        axis should have there (None: any)."""
        raise NotImplementedError

    def success(self, sim: AlohaSim) -> bool:
        if not self.in_goal(sim) or touching_robot(sim, self.obj):
            return False
        v, w = body_speed(sim, self.obj)
        return v < 0.05 and w < 0.5

    def held(self, sim: AlohaSim) -> bool:
        return any(grasped_by(sim, self.obj, s) for s in ("left", "right"))

    def progress(self, sim: AlohaSim) -> int:
        """0 start, 1 grasped, 2 lifted (or in the receptacle, not yet let go), 3 done."""
        if self.success(sim):
            return 3
        held = self.held(sim)
        lifted = sim.body_pose(self.obj)[2, 3] > self.rest_z + 0.03
        if (held and lifted) or self.in_goal(sim):
            return 2
        return 1 if held else 0

    def expert(self, sim: AlohaSim, rng: np.random.Generator):
        return PickPlaceExpert(self, sim)

    # ------------------------------------------------------------------ expert geometry
    def grasp_plan(self, sim: AlohaSim, side: str) -> tuple[np.ndarray, float]:
        """(grasp point in the object's frame, yaw for ``grasp_orientation``): the fingers
        close across the object's x axis, the gripper heading the way of x or -x, whichever is
        nearer the arm's own heading; the grasp point shifts that way by ``grasp_x``."""
        pose = sim.body_pose(self.obj)
        axis = math.atan2(pose[1, 0], pose[0, 0])
        yaw = wrap(axis - side_base(side))
        sign = 1.0
        if abs(yaw) > HALF_PI:
            yaw, sign = wrap(yaw + math.pi), -1.0
        point = np.array([sign * self.grasp_x, 0.0, self.grasp_z - self.rest_z])
        return point, yaw


class MugOnPlate(PickPlaceTask):
    name = "mug_on_plate"
    instruction = "put the red mug on the white plate"
    obj, rec = "mug", "plate"
    object_names = ("mug", "plate")
    obj_parts, rec_parts = MUG_PARTS, PLATE_PARTS
    min_sep = 0.17
    rec_box = (0.06, 0.26, -0.18, 0.12)
    grasp_z = 0.03

    def object_yaw(self, rng: np.random.Generator, heading: float) -> float:
        return float(rng.uniform(-math.pi, math.pi))  # where the handle points

    def in_goal(self, sim: AlohaSim) -> bool:
        mug, plate = sim.body_pose("mug"), sim.body_pose("plate")
        upright = mug[2, 2] > 0.95
        centred_ = np.hypot(*(mug[:2, 3] - plate[:2, 3])) < PLATE_R - 0.015
        bottom = mug[2, 3] - self.rest_z
        return bool(upright and centred_ and abs(bottom - PLATE_TOP) < 0.008)

    def place_target(self, sim: AlohaSim) -> tuple[np.ndarray, float | None]:
        plate = sim.body_pose("plate")[:3, 3]
        return np.array([plate[0], plate[1], PLATE_TOP + self.rest_z + 0.004]), None


class PenInContainer(PickPlaceTask):
    name = "pen_in_container"
    instruction = "put the blue pen into the green pen cup"
    obj, rec = "pen", "pen_cup"
    object_names = ("pen", "pen_cup")
    obj_parts, rec_parts = PEN_PARTS, CUP_PARTS
    rec_box = (0.02, 0.2, -0.16, 0.12)  # the pen is held upright: not too near the arm's base
    min_sep = 0.17
    grasp_x = 0.025
    carry_z = 0.19
    place_pitch = 0.0
    obj_friction = (1.0, 0.03, 0.0001)

    def _ends(self, sim: AlohaSim) -> np.ndarray:
        pose = sim.body_pose("pen")
        return pose[:3, 3] + np.outer([-1.0, 1.0], pose[:3, 0] * PEN_HALF[0])

    def in_goal(self, sim: AlohaSim) -> bool:
        cup = sim.body_pose("pen_cup")[:3, 3]
        ends = self._ends(sim)
        low = ends[np.argmin(ends[:, 2])]
        centre = sim.body_pose("pen")[:3, 3]
        r_in = CUP_R - CUP_WALL
        return all(np.hypot(*(p[:2] - cup[:2])) < r_in and p[2] < CUP_H for p in (low, centre))

    def place_target(self, sim: AlohaSim) -> tuple[np.ndarray, float | None]:
        cup = sim.body_pose("pen_cup")[:3, 3]
        # the fingers (3 cm either side of the grasp point) stay above the rim
        return np.array([cup[0], cup[1], CUP_H + 0.04 - self.grasp_x]), None


class _InCaddy(PickPlaceTask):
    rec = "caddy"
    rec_parts = CADDY_PARTS
    rec_box = (0.1, 0.2, -0.16, 0.1)
    obj_box = (0.05, 0.28, -0.22, 0.12)
    min_sep = 0.2
    rec_yaw_range = 0.4
    carry_z = 0.12
    release_gripper = 0.5
    x_extent = (-0.075, 0.075)
    """The object's extent along its x axis from its centre of mass (m)."""

    def in_goal(self, sim: AlohaSim) -> bool:
        caddy, pose = sim.body_pose("caddy"), sim.body_pose(self.obj)
        pts = [pose[:3, 3] + pose[:3, 0] * x for x in self.x_extent] + [pose[:3, 3]]
        inv = np.linalg.inv(caddy)
        for p in pts:
            local = inv[:3, :3] @ p + inv[:3, 3]
            if abs(local[0]) > CADDY_IN[0] or abs(local[1]) > CADDY_IN[1]:
                return False
        return bool(pose[2, 3] < CADDY_H)

    def place_target(self, sim: AlohaSim) -> tuple[np.ndarray, float | None]:
        caddy = sim.body_pose("caddy")
        mid = (self.x_extent[0] + self.x_extent[1]) / 2  # centre the object's length
        yaw = math.atan2(caddy[1, 0], caddy[0, 0])
        flip = 1.0
        pose = sim.body_pose(self.obj)
        if pose[:3, 0] @ caddy[:3, 0] < 0:
            flip = -1.0
        xy = caddy[:2, 3] - flip * caddy[:2, 0] * mid
        return np.array([*xy, CADDY_FLOOR + self.rest_z + 0.012]), yaw


class CanOpenerInCaddy(_InCaddy):
    name = "can_opener_in_caddy"
    instruction = "put the can opener into the purple caddy"
    obj = "can_opener"
    object_names = ("can_opener", "caddy")
    obj_parts = OPENER_PARTS
    grasp_x = 0.0
    grasp_z = 0.005
    x_extent = (-_OPENER_COM[0], 0.15 - _OPENER_COM[0])


class ScrewdriverInCaddy(_InCaddy):
    name = "screwdriver_in_caddy"
    instruction = "put the screwdriver into the purple caddy"
    obj = "screwdriver"
    object_names = ("screwdriver", "caddy")
    obj_parts = DRIVER_PARTS
    obj_condim = 6  # rolling friction: the round handle does not roll away
    obj_friction = (1.0, 0.005, 0.002)
    grasp_z = 0.009
    x_extent = (-0.04 - _DRIVER_COM[0], 0.113 - _DRIVER_COM[0])


# ---------------------------------------------------------------------------- the expert
class PickPlaceExpert:
    """One arm, closed loop: above the object, down, close, lift, carry to above the target
    (turning the object as the receptacle needs), lower, open, back up. Every goal is
    recomputed from the current object and receptacle poses; a lost object, or one that ends
    up outside the receptacle, sends the arm back to its approach."""

    HOVER = 0.08
    SAFE_Z = 0.16
    TURN_RATE = 0.03  # rad per step of the commanded yaw and pitch
    SPEED = 0.025  # m: how far ahead of the tool centre point each step aims
    RAMP = 0.002  # m per step: how fast that lead grows at the start of a phase

    def __init__(self, task: PickPlaceTask, sim: AlohaSim):
        self.task = task
        self.side = "left" if sim.body_pose(task.obj)[0, 3] < 0 else "right"
        self.arm = ArmMover(sim, self.side, max_speed=self.SPEED)
        self.g = 6 if self.side == "left" else 13
        self.q = START_POSE.copy()
        self.phase, self.t = "approach", 0
        self.yaw, self.pitch = 0.0, HALF_PI
        self.grip_point: np.ndarray | None = None
        self.release_z = 0.0
        self.tries = 0
        self.tilting = False
        self.lift_xy = np.zeros(2)
        self.retreat_goal = np.zeros(3)

    def _go(self, phase: str) -> None:
        self.phase, self.t = phase, 0

    def _turn(self, yaw: float | None, pitch: float) -> bool:
        """Ramp the commanded orientation; True once there."""
        if yaw is not None:
            self.yaw += float(np.clip(wrap(yaw - self.yaw), -self.TURN_RATE, self.TURN_RATE))
        self.pitch += float(np.clip(pitch - self.pitch, -self.TURN_RATE, self.TURN_RATE))
        return (yaw is None or abs(wrap(yaw - self.yaw)) < 1e-3) and abs(pitch - self.pitch) < 1e-3

    def _move(self, xyz) -> float:
        return self.arm.toward(self.q, xyz, self.yaw, self.pitch)

    def _travel(self, tcp: np.ndarray, goal: np.ndarray, safe_z: float) -> float:
        """Straight up to ``safe_z``, across, then down to ``goal``; distance to ``goal``."""
        far = np.hypot(*(goal[:2] - tcp[:2])) > 0.03
        if far and tcp[2] < safe_z - 0.02:
            self._move([tcp[0], tcp[1], safe_z])
        elif far:
            self._move([goal[0], goal[1], max(goal[2], safe_z)])
        else:
            self._move(goal)
        return float(np.linalg.norm(goal - tcp))

    def _in_hand_yaw(self, sim: AlohaSim, tcp_pose: np.ndarray) -> float:
        """Object x-axis heading minus the gripper's, mod pi, in [-pi/2, pi/2)."""
        obj = sim.body_pose(self.task.obj)
        a = math.atan2(obj[1, 0], obj[0, 0]) - math.atan2(tcp_pose[1, 2], tcp_pose[0, 2])
        return (a + HALF_PI) % math.pi - HALF_PI

    def act(self, sim: AlohaSim) -> np.ndarray:
        task, q, g = self.task, self.q, self.g
        self.t += 1
        # each phase starts slowly: a jerk would shake the object loose
        self.arm.max_speed = min(self.SPEED, self.RAMP * self.t)
        obj = sim.body_pose(task.obj)
        tcp_pose = sim.site_pose(f"{self.side}_tcp")
        tcp = tcp_pose[:3, 3]
        phase = self.phase
        if phase in ("lift", "carry", "lower"):
            grip = obj[:3, :3] @ self.grip_point + obj[:3, 3]
            if np.linalg.norm(grip - tcp) > 0.03:  # dropped it: done if where it belongs
                phase = "open" if task.in_goal(sim) else "approach"
                self._go(phase)
                self.release_z = tcp[2]
        if phase == "approach":
            point, yaw = task.grasp_plan(sim, self.side)
            q[g] = 1.0
            self._turn(yaw, HALF_PI)
            goal = obj[:3, :3] @ point + obj[:3, 3] + [0, 0, self.HOVER]
            if self._travel(tcp, goal, self.SAFE_Z) < 0.01 and abs(wrap(yaw - self.yaw)) < 0.05:
                self._go("descend")
            elif self.t > 200:
                self._go("descend")
        elif phase == "descend":
            point, yaw = task.grasp_plan(sim, self.side)
            self._turn(yaw, HALF_PI)
            goal = obj[:3, :3] @ point + obj[:3, 3]
            if self._move(goal) < 0.005 or self.t > 60:
                self._go("close")
        elif phase == "close":
            q[g] = 0.0
            if self.t == 1:
                point, _ = task.grasp_plan(sim, self.side)
                self.grip_point = point
            self._move(obj[:3, :3] @ self.grip_point + obj[:3, 3])
            if self.t > 20:
                if grasped_by(sim, task.obj, self.side):
                    # remember where the fingers hold it, in the object's frame
                    self.grip_point = obj[:3, :3].T @ (tcp - obj[:3, 3])
                    self.lift_xy = tcp[:2].copy()
                    self.tilting = False
                    self._go("lift")
                else:
                    self._go("approach")
        elif phase == "lift":
            offset = tcp - obj[:3, 3]
            goal = np.array([*self.lift_xy, task.carry_z + offset[2]])
            if self._move(goal) < 0.01:
                self._go("carry")
        elif phase in ("carry", "lower"):
            target, rec_yaw = task.place_target(sim)
            yaw = None
            if rec_yaw is not None:
                want = rec_yaw - self._in_hand_yaw(sim, tcp_pose) - side_base(self.side)
                # of the two headings that align the object, the one nearer the current one
                yaw = wrap(want)
                if abs(wrap(yaw - self.yaw)) > HALF_PI:
                    yaw = wrap(yaw + math.pi)
            pitch = task.place_pitch
            offset = tcp - obj[:3, 3]
            if task.place_pitch < 1.0:
                # turn the gripper to point along the arm's own vertical plane first, then
                # tilt it within that plane over the target: no forearm roll, no wrist flip
                base = sim.body_pose(f"vx300s_{self.side}")[:2, 3]
                heading = math.atan2(target[1] - base[1], target[0] - base[0])
                yaw = wrap(heading - side_base(self.side))
                above = np.array([target[0], target[1], task.carry_z]) + offset
                near = np.linalg.norm(above - tcp) < 0.02 and abs(wrap(yaw - self.yaw)) < 0.02
                self.tilting = self.tilting or near
                pitch = task.place_pitch if self.tilting else HALF_PI
            turned = self._turn(yaw, pitch) and pitch == task.place_pitch
            if phase == "carry":
                goal = np.array([target[0], target[1], task.carry_z]) + offset
                if self._move(goal) < 0.008 and turned and self.t > 10:
                    self._go("lower")
            else:
                goal = target + offset
                if self._move(goal) < 0.004 or self.t > 80 or task.in_goal(sim):
                    self.release_z = tcp[2]
                    self._go("open")
        elif phase == "open":
            q[g] = task.release_gripper
            if self.t > 15:
                self._go("retreat")
        elif phase == "retreat":
            goal = np.array([tcp[0], tcp[1], max(self.release_z + 0.1, self.SAFE_Z)])
            if self.t == 1:
                self.retreat_goal = goal
            self._move(self.retreat_goal)
            if self.t > 25:
                self._go("wait")
        elif phase == "wait":
            if self.t > 40 and not task.in_goal(sim) and self.tries < 3:
                self.tries += 1  # it fell out or missed: pick it up again
                self._go("approach")
        return q.copy()
