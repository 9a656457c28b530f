"""The ALOHA bimanual robot in MuJoCo: gym-aloha's vx300s model, task objects, RealSense-like
cameras, 14-D joint-space control at 50 Hz, and inverse kinematics for scripted experts.

The robot model is loaded at run time from the installed ``gym_aloha`` package (not copied).
Frames: the base frame ``world`` is the table centre (MuJoCo's (0, 0.6, 0)), z up, the arms on
the x axis facing each other, the robot's front towards -y. Cameras use the optical convention.
"""

from __future__ import annotations

import atexit
import math
import os
import weakref
from dataclasses import dataclass, field

import numpy as np

from ..aloha import ALOHA_JOINT_NAMES, ARM_JOINTS, SIDES
from ..geometry.camera import PinholeCamera
from .render import RgbdRenderer

JOINT_NAMES = ALOHA_JOINT_NAMES
FINGER_RANGE = (0.021, 0.057)  # slide joint of one finger (m): closed .. open
START_POSE = np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 1.0] * 2)
"""ALOHA's sleep-ready pose, grippers open."""
TABLE_CENTRE_MJ = np.array([0.0, 0.6, 0.0])
"""Origin of the base frame in MuJoCo's world frame."""
CONTROL_DT = 0.02
CAMERA_NAMES = ("cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist")

# offscreen rendering without a display: EGL (Mesa's software driver on machines without a
# GPU); MuJoCo reads this when it is first imported
os.environ.setdefault("MUJOCO_GL", "egl")


class SimError(ValueError):
    """A request the simulator cannot honour (bad action, unknown name)."""


def gripper_to_finger(g: float) -> float:
    """Normalised gripper (0 closed .. 1 open) -> finger slide position (m)."""
    lo, hi = FINGER_RANGE
    return lo + float(np.clip(g, 0.0, 1.0)) * (hi - lo)


def finger_to_gripper(q: float) -> float:
    lo, hi = FINGER_RANGE
    return (q - lo) / (hi - lo)


@dataclass
class CameraSpec:
    """A simulated RGB-D camera. Fixed cameras look from ``pos`` at ``target`` (base frame);
    wrist cameras sit on the gripper link at ``pos`` looking at ``target`` (gripper frame)."""

    name: str
    pos: tuple[float, float, float]
    target: tuple[float, float, float]
    fovy_deg: float
    body: str = ""
    """MuJoCo body the camera is attached to (empty: the world)."""


def default_cameras() -> list[CameraSpec]:
    # roughly where ALOHA mounts them: high and low at the front, D405s on the wrists
    return [
        CameraSpec("cam_high", (0.0, -0.55, 0.75), (0.0, 0.0, 0.0), 58.0),
        CameraSpec("cam_low", (0.0, -0.6, 0.22), (0.0, 0.05, 0.05), 58.0),
        CameraSpec(
            "cam_left_wrist",
            (-0.02, 0.0, 0.07),
            (0.2, 0.0, -0.04),
            70.0,
            "vx300s_left/gripper_link",
        ),
        CameraSpec(
            "cam_right_wrist",
            (-0.02, 0.0, 0.07),
            (0.2, 0.0, -0.04),
            70.0,
            "vx300s_right/gripper_link",
        ),
    ]


def _xyaxes(pos, target, up=(0.0, 0.0, 1.0)) -> list[float]:
    """MuJoCo camera axes (x right, y up, looking along -z) for a camera at pos looking at
    target, with ``up`` appearing up."""
    fwd = np.subtract(target, pos).astype(float)
    fwd /= np.linalg.norm(fwd)
    x = np.cross(fwd, up)
    if np.linalg.norm(x) < 1e-6:
        x = np.cross(fwd, (0.0, 1.0, 0.0))
    x /= np.linalg.norm(x)
    y = np.cross(x, fwd)
    return [*x, *y]


@dataclass
class SimFrame:
    """One control step's observation."""

    time_s: float
    qpos: np.ndarray
    """(14,) ALOHA order; grippers normalised 0 closed .. 1 open."""
    qvel: np.ndarray
    effort: np.ndarray
    images: dict[str, np.ndarray] = field(default_factory=dict)
    """camera -> (H, W, 3) uint8 RGB."""
    depth_m: dict[str, np.ndarray] = field(default_factory=dict)
    """camera -> (H, W) float32 metres along the optical axis, 0 where nothing was hit."""
    extrinsics: dict[str, np.ndarray] = field(default_factory=dict)
    """camera -> (4, 4) T_base_cam (optical frame)."""


class AlohaSim:
    """Physics + rendering of one scene. ``build_objects(spec)`` adds a task's bodies to the
    MjSpec before compilation."""

    def __init__(
        self,
        build_objects=None,
        cameras: list[CameraSpec] | None = None,
        width: int = 640,
        height: int = 480,
        render: bool = True,
    ):
        import mujoco
        from gym_aloha.constants import ASSETS_DIR

        self.mj = mujoco
        spec = mujoco.MjSpec.from_file(str(ASSETS_DIR / "bimanual_viperx_transfer_cube.xml"))
        spec.delete(spec.body("box"))  # gym-aloha's own task object
        for key in list(spec.keys):
            spec.delete(key)
        self.cameras = cameras or default_cameras()
        for cam in self.cameras:
            parent = spec.body(cam.body) if cam.body else spec.worldbody
            pos = np.asarray(cam.pos, float)
            target = np.asarray(cam.target, float)
            if not cam.body:  # base frame -> MuJoCo world
                pos, target = pos + TABLE_CENTRE_MJ, target + TABLE_CENTRE_MJ
            c = parent.add_camera(name=cam.name, pos=pos, fovy=cam.fovy_deg)
            c.alt.type = mujoco.mjtOrientation.mjORIENTATION_XYAXES
            c.alt.xyaxes = _xyaxes(pos, target)
        # the table mesh is a 3 cm shell that a gripper pressing on an object pushes things
        # through, and a big box under small ones gives too few contact points (objects rock and
        # walk): objects collide with an invisible plane at the table top (z = 0) instead
        table = spec.geom("table")
        table.contype, table.conaffinity = 0, 0
        spec.worldbody.add_geom(
            name="table_collision",
            type=mujoco.mjtGeom.mjGEOM_PLANE,
            size=[0.61, 0.38, 0.01],
            pos=[*TABLE_CENTRE_MJ[:2], 0.0],
            rgba=[0, 0, 0, 0],
            group=3,
        )
        for side in SIDES:  # tool centre point between the finger tips
            spec.body(f"vx300s_{side}/gripper_link").add_site(
                name=f"{side}_tcp", pos=[0.155, 0.0, 0.0], size=[0.005, 0, 0]
            )
        if build_objects is not None:
            build_objects(spec)
        self.model = spec.compile()
        self.model.vis.quality.offsamples = 0
        self.data = mujoco.MjData(self.model)
        self.n_substeps = max(1, int(round(CONTROL_DT / self.model.opt.timestep)))
        self._arm_qadr = {
            s: [self.model.joint(f"vx300s_{s}/{j}").qposadr[0] for j in ARM_JOINTS] for s in SIDES
        }
        self._arm_dadr = {
            s: [self.model.joint(f"vx300s_{s}/{j}").dofadr[0] for j in ARM_JOINTS] for s in SIDES
        }
        self._finger_qadr = {
            s: self.model.joint(f"vx300s_{s}/left_finger").qposadr[0] for s in SIDES
        }
        self._finger_dadr = {
            s: self.model.joint(f"vx300s_{s}/left_finger").dofadr[0] for s in SIDES
        }
        self.joint_low = np.array([self.model.actuator_ctrlrange[i, 0] for i in self._ctrl_ids()])
        self.joint_high = np.array([self.model.actuator_ctrlrange[i, 1] for i in self._ctrl_ids()])
        self.width, self.height = width, height
        self.intrinsics = {
            c.name: PinholeCamera.from_fov(width, height, c.fovy_deg) for c in self.cameras
        }
        self._renderer = None
        self.render_enabled = render
        self.time_s = 0.0

    def _ctrl_ids(self) -> list[int]:
        """Actuators of the 12 arm joints in ALOHA order (6 left, 6 right)."""
        return [self._actuator_for(f"vx300s_{s}/{j}") for s in SIDES for j in ARM_JOINTS]

    def _actuator_for(self, joint: str) -> int:
        """gym-aloha's actuators are unnamed: find the one that drives ``joint``."""
        cache = self.__dict__.setdefault("_act_cache", {})
        if joint not in cache:
            jid = self.model.joint(joint).id
            hits = [i for i in range(self.model.nu) if self.model.actuator_trnid[i, 0] == jid]
            if not hits:
                raise SimError(f"no actuator drives joint '{joint}'")
            cache[joint] = hits[0]
        return cache[joint]

    # ------------------------------------------------------------------ state
    def reset(self, arm_pose: np.ndarray = START_POSE) -> None:
        self.mj.mj_resetData(self.model, self.data)
        self.set_arm_pose(arm_pose)
        self.time_s = 0.0

    def set_arm_pose(self, q14: np.ndarray) -> None:
        """Teleport the arms (and their position targets) to a 14-D pose."""
        q14 = np.asarray(q14, float)
        for i, s in enumerate(SIDES):
            arm = q14[7 * i : 7 * i + 6]
            self.data.qpos[self._arm_qadr[s]] = arm
            f = gripper_to_finger(q14[7 * i + 6])
            self.data.qpos[self._finger_qadr[s]] = f
            self.data.qpos[self._finger_qadr[s] + 1] = -f
        self._apply_ctrl(q14)
        self.mj.mj_forward(self.model, self.data)

    def qpos14(self) -> np.ndarray:
        out = np.empty(14)
        for i, s in enumerate(SIDES):
            out[7 * i : 7 * i + 6] = self.data.qpos[self._arm_qadr[s]]
            out[7 * i + 6] = finger_to_gripper(self.data.qpos[self._finger_qadr[s]])
        return out

    def qvel14(self) -> np.ndarray:
        out = np.empty(14)
        lo, hi = FINGER_RANGE
        for i, s in enumerate(SIDES):
            out[7 * i : 7 * i + 6] = self.data.qvel[self._arm_dadr[s]]
            out[7 * i + 6] = self.data.qvel[self._finger_dadr[s]] / (hi - lo)
        return out

    def effort14(self) -> np.ndarray:
        out = np.empty(14)
        for i, s in enumerate(SIDES):
            out[7 * i : 7 * i + 6] = self.data.qfrc_actuator[self._arm_dadr[s]]
            out[7 * i + 6] = self.data.qfrc_actuator[self._finger_dadr[s]]
        return out

    # ------------------------------------------------------------------ control
    def check_action(self, action: np.ndarray) -> np.ndarray:
        a = np.asarray(action, float).reshape(-1)
        if a.shape != (14,):
            raise SimError(f"action has {a.size} values, expected 14 ({', '.join(JOINT_NAMES)})")
        if not np.all(np.isfinite(a)):
            raise SimError(f"action has non-finite values: {a.tolist()}")
        return a

    def _apply_ctrl(self, a: np.ndarray) -> None:
        ids = self._ctrl_ids()
        arm = np.concatenate([a[0:6], a[7:13]])
        self.data.ctrl[ids] = np.clip(arm, self.joint_low, self.joint_high)
        for i, s in enumerate(SIDES):
            f = gripper_to_finger(a[7 * i + 6])
            self.data.ctrl[self._actuator_for(f"vx300s_{s}/left_finger")] = f
            self.data.ctrl[self._actuator_for(f"vx300s_{s}/right_finger")] = -f

    def step(self, action: np.ndarray) -> None:
        """Hold ``action`` (14-D joint targets, grippers normalised) for one 20 ms control step."""
        self._apply_ctrl(self.check_action(action))
        self.mj.mj_step(self.model, self.data, nstep=self.n_substeps)
        self.time_s += self.n_substeps * self.model.opt.timestep

    @property
    def diverged(self) -> bool:
        """MuJoCo hit a non-finite or huge acceleration since ``reset`` (and reset the state
        itself to carry on): whatever the episode shows from then on is not physics, so
        nothing after it may count as success."""
        return bool(self.data.warning[self.mj.mjtWarning.mjWARN_BADQACC].number)

    # ------------------------------------------------------------------ geometry
    def body_pose(self, name: str) -> np.ndarray:
        """(4, 4) T_base_body."""
        b = self.data.body(name)
        return _base_pose(b.xmat, b.xpos)

    def site_pose(self, name: str) -> np.ndarray:
        """(4, 4) T_base_site."""
        s = self.data.site(name)
        return _base_pose(s.xmat, s.xpos)

    def camera_pose(self, name: str) -> np.ndarray:
        """(4, 4) T_base_cam of camera ``name`` in the optical convention (MuJoCo cameras look
        along -z with y up)."""
        c = self.data.cam(name)
        return _base_pose(c.xmat.reshape(3, 3) @ np.diag([1.0, -1.0, -1.0]), c.xpos)

    # ------------------------------------------------------------------ rendering
    def _renderer_for(self) -> RgbdRenderer:
        if self._renderer is None:
            self._renderer = RgbdRenderer(self.model, self.width, self.height)
            _track_renderer(self)
        return self._renderer

    def render(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(RGB (H, W, 3) uint8, depth (H, W) float32 m along the optical axis, 0 = nothing)
        of camera ``name`` in the current state."""
        r = self._renderer_for()
        r.update(self.data)
        return r.render(name)

    def observe(self, cameras=None, render: bool | None = None, color: bool = True) -> SimFrame:
        """The state now; with ``render``, every camera's depth (and, with ``color``, RGB: a
        depth-only frame has no ``images``) and pose."""
        frame = SimFrame(self.time_s, self.qpos14(), self.qvel14(), self.effort14())
        if self.render_enabled if render is None else render:
            r = self._renderer_for()
            r.update(self.data)  # one scene for all cameras: only the viewpoint changes
            for name in cameras or [c.name for c in self.cameras]:
                rgb, frame.depth_m[name] = r.render(name, color)
                if rgb is not None:
                    frame.images[name] = rgb
                frame.extrinsics[name] = self.camera_pose(name)
        return frame

    def close(self) -> None:
        """Release the GL context (also done at interpreter exit for every live simulator, in an
        order that EGL accepts)."""
        r, self._renderer = self._renderer, None
        if r is not None:
            try:
                r.close()
            except Exception:  # the GL display may already be gone at shutdown
                pass

    # ------------------------------------------------------------------ inverse kinematics
    def solve_ik(
        self,
        side: str,
        target: np.ndarray,
        q_arm0: np.ndarray | None = None,
        iters: int = 60,
        orient_weight: float = 0.3,
    ) -> tuple[np.ndarray, float]:
        """Arm joints that bring ``{side}_tcp`` to ``target`` (4, 4) T_base_tcp, by damped least
        squares from ``q_arm0`` (default: the current joints). Returns (q (6,), position
        error m). Works on a scratch copy; the simulation state is untouched."""
        mj = self.mj
        scratch = getattr(self, "_ik_data", None)
        if scratch is None:
            scratch = self._ik_data = mj.MjData(self.model)
        scratch.qpos[:] = self.data.qpos
        qadr, dadr = self._arm_qadr[side], self._arm_dadr[side]
        if q_arm0 is not None:
            scratch.qpos[qadr] = q_arm0
        site = self.model.site(f"{side}_tcp").id
        lo = np.array(
            [self.model.jnt_range[self.model.joint(f"vx300s_{side}/{j}").id, 0] for j in ARM_JOINTS]
        )
        hi = np.array(
            [self.model.jnt_range[self.model.joint(f"vx300s_{side}/{j}").id, 1] for j in ARM_JOINTS]
        )
        jacp = np.zeros((3, self.model.nv))
        jacr = np.zeros((3, self.model.nv))
        goal_p = target[:3, 3] + TABLE_CENTRE_MJ
        goal_r = target[:3, :3]
        err_p = np.inf
        for _ in range(iters):
            mj.mj_kinematics(self.model, scratch)
            mj.mj_comPos(self.model, scratch)
            p = scratch.site_xpos[site]
            r = scratch.site_xmat[site].reshape(3, 3)
            e_p = goal_p - p
            e_r = 0.5 * (
                np.cross(r[:, 0], goal_r[:, 0])
                + np.cross(r[:, 1], goal_r[:, 1])
                + np.cross(r[:, 2], goal_r[:, 2])
            )
            err_p = float(np.linalg.norm(e_p))
            if err_p < 1e-4 and np.linalg.norm(e_r) < 1e-3:
                break
            mj.mj_jacSite(self.model, scratch, jacp, jacr, site)
            j = np.vstack([jacp[:, dadr], orient_weight * jacr[:, dadr]])
            e = np.concatenate([e_p, orient_weight * e_r])
            dq = j.T @ np.linalg.solve(j @ j.T + 1e-4 * np.eye(6), e)
            scale = min(1.0, 0.3 / max(1e-9, float(np.abs(dq).max())))
            scratch.qpos[qadr] = np.clip(scratch.qpos[qadr] + scale * dq, lo, hi)
        return scratch.qpos[qadr].copy(), err_p


_LIVE_RENDERING: weakref.WeakSet = weakref.WeakSet()
_EXIT_HOOK: list = []


def _close_renderers() -> None:
    for sim in list(_LIVE_RENDERING):
        sim.close()


def _track_renderer(sim: AlohaSim) -> None:
    """Close renderers at exit before MuJoCo's EGL module terminates the display: atexit runs
    handlers last-in first-out, so ours is registered after MuJoCo created its first context."""
    _LIVE_RENDERING.add(sim)
    if not _EXIT_HOOK:
        atexit.register(_close_renderers)
        _EXIT_HOOK.append(True)


def _base_pose(xmat, xpos) -> np.ndarray:
    """MuJoCo world rotation + position -> (4, 4) pose in the base frame."""
    m = np.eye(4)
    m[:3, :3] = np.asarray(xmat).reshape(3, 3)
    m[:3, 3] = np.asarray(xpos) - TABLE_CENTRE_MJ
    return m


def grasp_orientation(side: str, yaw: float = 0.0, pitch: float = math.pi / 2) -> np.ndarray:
    """(3, 3) TCP orientation for a top-down grasp: gripper x axis (the approach direction)
    pointing down for pitch = pi/2, rotated about the vertical by ``yaw``; the arms face each
    other, so the right arm's default heading is turned by pi."""
    heading = yaw + (0.0 if side == "left" else math.pi)
    ch, sh = math.cos(heading), math.sin(heading)
    cp, sp = math.cos(pitch), math.sin(pitch)
    rz = np.array([[ch, -sh, 0], [sh, ch, 0], [0, 0, 1.0]])
    ry = np.array([[cp, 0, sp], [0, 1.0, 0], [-sp, 0, cp]])
    return rz @ ry
