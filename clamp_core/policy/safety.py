"""The always-on safety filter between chunk execution and the robot.

Every trajectory the policy node sends passes ``SafetyFilter.filter``: it is clipped to the joint
position limits and velocity-limited point by point, from the command the controller is already
following (or, with none, from the measured joint state), it never leads the measured state by
more than the arm's tracking lag allows, and it is suppressed altogether, with a reason, when
commanding is disabled, the measured state is missing or non-finite, an input has gone stale,
or the command itself holds NaN. Bad numbers never raise; only calls with the wrong shapes
(programming errors) do.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..aloha import ALOHA_JOINT_NAMES, GRIPPER_INDICES

# vx300s joint ranges (rad), the same for both arms: gym-aloha's MuJoCo model (gym_aloha 0.1.5,
# assets/vx300s_left.xml / vx300s_right.xml, model.jnt_range of vx300s_<side>/<joint>), copied so
# that the runtime does not need MuJoCo; test_safety asserts they still equal the model's.
VX300S_JOINT_RANGES: dict[str, tuple[float, float]] = {
    "waist": (-3.14158, 3.14158),
    "shoulder": (-1.85005, 1.25664),
    "elbow": (-1.76278, 1.6057),
    "forearm_roll": (-3.14158, 3.14158),
    "wrist_angle": (-1.8675, 2.23402),
    "wrist_rotate": (-3.14158, 3.14158),
}
VX300S_MAX_VELOCITY = math.pi
"""rad/s for every arm joint: the Interbotix vx300s URDF's <limit velocity="${pi}">. The sim's
scripted experts command at most 0.05 rad per 20 ms step (2.5 rad/s), so expert-like motion
passes."""
GRIPPER_MAX_VELOCITY = 5.0
"""Normalised gripper units/s: a full stroke (0 closed .. 1 open) takes at least 0.2 s. Experts
and policies command open/close as one-step jumps; this turns them into a short ramp."""

POSITION_LIMIT = "position_limit"
VELOCITY_LIMIT = "velocity_limit"
LEAD_LIMIT = "lead_limit"


@dataclass
class SafetyConfig:
    """Limits and freshness thresholds of the safety filter; one field per ROS parameter."""

    joint_names: list[str]
    """The command's columns, in order (A names; ALOHA: 14)."""
    position_min: list[float]
    """(A,) lower position limits: rad for arm joints, grippers in their own (normalised) units."""
    position_max: list[float]
    """(A,) upper position limits, same units as position_min."""
    max_velocity: list[float]
    """(A,) largest speed a command may ask for, units/s (> 0)."""
    gripper_indices: tuple[int, ...] = (6, 13)
    """Columns that hold grippers (ALOHA: left 6, right 13)."""
    gripper_min: float = 0.0
    """Gripper lower limit (normalised: 0 closed); applies on top of position_min."""
    gripper_max: float = 1.0
    """Gripper upper limit (normalised: 1 open); applies on top of position_max."""
    max_input_age_s: float = 0.5
    """Watchdog: suppress commands when any input (camera, joint state, tf) is older, s."""
    max_chunk_age_s: float = 1.0
    """Suppress commands planned from an observation older than this, s."""
    control_period_s: float = 0.02
    """Shortest time over which the first point may move away from the measured state, s."""
    tracking_lag_s: float = 0.1
    """How far a position-controlled arm may trail its command, s: a command may lead the
    measured state by max_velocity x (tracking_lag_s + time since the measurement). The sim's
    experts lead it by up to 0.12 rad (wrist) and squeeze the gripper 0.5 past contact; a
    limit of one control period (0.06 rad) cut a Drawer Open policy's success by half."""
    max_disagreement_s: float = 0.1
    """The plan the controller follows may lie beyond the lead bound (plus one step) by up to
    max_velocity x this: the next point then eases back towards the arm at the velocity limit
    (a fresh measurement shows the arm did not keep up). Further than that (a blocked arm, a
    wrong measurement), the plan stops instead, s."""
    measured_tolerance: float = 0.05
    """A measured arm joint further than this outside its position limits is implausible (a
    wrong reading, not the arm): commands stop until plausible states return, rad."""
    gripper_measured_tolerance: float = 0.5
    """The same for grippers, normalised units: fingers squeezing an object or pushed open
    read past 0 and 1 (the sim's: -0.30 .. 1.17 in 40 Drawer Open episodes)."""
    measured_overshoot_s: float = 0.1
    """A joint reading further from the last believed state than max_velocity x (the time
    between them + this) + ``measured_noise`` is implausible: the arm cannot move that fast.
    The allowance covers physics and controllers overshooting briefly (the sim's arms: up to
    0.2 rad in one 20 ms step, 10 rad/s); a 2.5 rad jump in one message is far beyond it."""
    measured_noise: float = 0.05
    """Measurement noise allowed on top of the speed bound, units as the limits."""

    def __post_init__(self):
        if isinstance(self.joint_names, str) or len(self.joint_names) == 0:
            raise ValueError(
                f"joint_names: needs a non-empty list of names, got {self.joint_names}"
            )
        self.joint_names = [str(n) for n in self.joint_names]
        if len(set(self.joint_names)) != len(self.joint_names):
            raise ValueError(f"joint_names: must be unique, got {self.joint_names}")
        A = len(self.joint_names)
        for name in ("position_min", "position_max", "max_velocity"):
            values = getattr(self, name)
            try:
                values = [float(v) for v in values]
            except (TypeError, ValueError):
                raise ValueError(f"{name}: needs {A} numbers, got {values!r}") from None
            if len(values) != A or not all(math.isfinite(v) for v in values):
                raise ValueError(
                    f"{name}: needs {A} finite numbers, one per joint of joint_names, got {values}"
                )
            setattr(self, name, values)
        bad = [n for n, v in zip(self.joint_names, self.max_velocity) if v <= 0]
        if bad:
            raise ValueError(f"max_velocity: must be > 0; raise it for {bad}")
        bad = [
            n
            for n, lo, hi in zip(self.joint_names, self.position_min, self.position_max)
            if lo > hi
        ]
        if bad:
            raise ValueError(f"position_min > position_max for {bad}; swap or fix those limits")
        g = tuple(self.gripper_indices)
        if any(isinstance(i, bool) or not isinstance(i, (int, np.integer)) for i in g) or any(
            not 0 <= i < A for i in g
        ):
            raise ValueError(f"gripper_indices: needs column indices in [0, {A}), got {g}")
        if len(set(g)) != len(g):
            raise ValueError(f"gripper_indices: must be unique, got {g}")
        self.gripper_indices = tuple(int(i) for i in g)
        for name in ("gripper_min", "gripper_max"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name}: needs a finite number, got {v!r}")
        if self.gripper_min > self.gripper_max:
            raise ValueError(
                f"gripper_min ({self.gripper_min}) > gripper_max ({self.gripper_max}); swap them"
            )
        lo, hi = self.limits()
        bad = [self.joint_names[i] for i in g if lo[i] > hi[i]]
        if bad:
            raise ValueError(
                f"gripper_min/gripper_max [{self.gripper_min}, {self.gripper_max}] do not overlap "
                f"position_min/position_max of {bad}; make the two ranges overlap"
            )
        for name in (
            "max_input_age_s",
            "max_chunk_age_s",
            "control_period_s",
            "tracking_lag_s",
            "max_disagreement_s",
            "measured_tolerance",
            "gripper_measured_tolerance",
            "measured_overshoot_s",
            "measured_noise",
        ):
            v = getattr(self, name)
            if (
                isinstance(v, bool)
                or not isinstance(v, (int, float))
                or not (math.isfinite(v) and v > 0)
            ):
                raise ValueError(f"{name}: needs a finite number > 0 (seconds), got {v!r}")
        if self.tracking_lag_s < self.control_period_s:
            raise ValueError(
                f"tracking_lag_s ({self.tracking_lag_s} s) < control_period_s "
                f"({self.control_period_s} s): an arm trails its command by at least one control "
                "period; raise tracking_lag_s"
            )

    def measured_tolerances(self) -> np.ndarray:
        """(A,) how far outside the limits a measured position may read: measured_tolerance,
        gripper_measured_tolerance on the gripper columns."""
        tol = np.full(len(self.joint_names), float(self.measured_tolerance))
        tol[list(self.gripper_indices)] = float(self.gripper_measured_tolerance)
        return tol

    def limits(self) -> tuple[np.ndarray, np.ndarray]:
        """Effective position limits (lo (A,), hi (A,)) float64: position_min/max, with the
        gripper columns narrowed to [gripper_min, gripper_max] (both constraints hold)."""
        lo = np.array(self.position_min, dtype=np.float64)
        hi = np.array(self.position_max, dtype=np.float64)
        for i in self.gripper_indices:
            lo[i] = max(lo[i], float(self.gripper_min))
            hi[i] = min(hi[i], float(self.gripper_max))
        return lo, hi


def aloha_defaults(**overrides) -> SafetyConfig:
    """SafetyConfig for the bimanual ALOHA (two vx300s, normalised grippers) in the 14-D ALOHA
    order; ``overrides`` replace fields (e.g. ``max_input_age_s=0.3``)."""
    lo, hi, vmax = [], [], []
    for name in ALOHA_JOINT_NAMES:
        joint = name.split("_", 1)[1]
        gripper = joint == "gripper"
        low, high = (0.0, 1.0) if gripper else VX300S_JOINT_RANGES[joint]
        lo.append(low)
        hi.append(high)
        vmax.append(GRIPPER_MAX_VELOCITY if gripper else VX300S_MAX_VELOCITY)
    fields = dict(
        joint_names=list(ALOHA_JOINT_NAMES),
        position_min=lo,
        position_max=hi,
        max_velocity=vmax,
        gripper_indices=tuple(GRIPPER_INDICES),
        gripper_min=0.0,
        gripper_max=1.0,
    )
    fields.update(overrides)
    return SafetyConfig(**fields)


@dataclass
class SafetyResult:
    """What may be commanded. Exactly one of ``positions`` and ``suppressed`` is None."""

    positions: np.ndarray | None
    """(K, A) float64 safe positions at the input times, or None when suppressed."""
    suppressed: str | None
    """Why nothing may be commanded (e.g. "disabled", "stale input 'cam_high' (0.83 s > 0.50 s)");
    None when ``positions`` is set."""
    clipped: dict[str, int]
    """Values changed per reason (0 when suppressed): "position_limit", "velocity_limit" (a
    step too fast), "lead_limit" (too far ahead of the measured state)."""
    hold_position: np.ndarray | None
    """(A,) measured joint state clipped to the limits (what to command to hold still); None
    when the measured state is missing or non-finite."""

    @property
    def ok(self) -> bool:
        return self.positions is not None


class SafetyFilter:
    """Applies a ``SafetyConfig`` to planned trajectories; stateless between calls."""

    def __init__(self, cfg: SafetyConfig):
        self.cfg = cfg
        self.lo, self.hi = cfg.limits()
        self.max_velocity = np.array(cfg.max_velocity, dtype=np.float64)

    def filter(
        self,
        times_ns: np.ndarray,
        positions: np.ndarray,
        measured_qpos: np.ndarray | None,
        measured_stamp_ns: int | None,
        input_stamps: Mapping[str, int | None],
        now_ns: int,
        enabled: bool,
        chunk_stamp_ns: int | None = None,
        previous: np.ndarray | None = None,
        measured_problem: str | None = None,
    ) -> SafetyResult:
        """Make a planned trajectory safe, or say why nothing may be commanded.

        ``times_ns`` (K,) integer stamps of the points; ``positions`` (K, A) in
        ``cfg.joint_names`` order; ``measured_qpos`` (A,) and its ``measured_stamp_ns`` (None:
        not received yet); ``input_stamps`` name -> newest stamp of each watched input (None:
        never received); ``now_ns`` the control clock; ``enabled`` the operator's switch;
        ``chunk_stamp_ns`` the observation stamp the plan was computed from (None: not
        checked); ``previous`` (A,) the point before ``times_ns[0]`` on the plan the controller
        follows: the last plan sent, one control period before ``times_ns[0]`` (None or
        non-finite: nothing commanded yet);
        ``measured_problem`` why the newest joint state was rejected (a
        :class:`MeasuredStateValidator` verdict; None: it was believed).

        Velocity: each point moves at most ``max_velocity`` x its time step from the one
        before; the first from ``previous`` over one control period, or without it from the
        measured state over the time since the measurement (at least one period). Lead: no
        point is further from the measured state than ``max_velocity`` x (``tracking_lag_s`` +
        its time after the measurement); a ``previous`` command further ahead than that (the
        arm stopped following: blocked, collided) is pulled back to that bound.

        Suppression reasons are checked in this order: disabled, measured state (rejected,
        missing, non-finite, implausible),
        stale inputs, stale chunk, malformed command. Raises ValueError only for wrong shapes
        or types (programming errors)."""
        A = len(self.cfg.joint_names)
        times = np.asarray(times_ns)
        if times.ndim != 1 or not (times.size == 0 or np.issubdtype(times.dtype, np.integer)):
            raise ValueError(
                f"times_ns: needs a (K,) integer array of ns stamps, got {times.dtype} "
                f"{times.shape}"
            )
        pos = np.asarray(positions)
        if pos.shape != (times.shape[0], A) or not _is_real(pos):
            raise ValueError(
                f"positions: needs a ({times.shape[0]}, {A}) real array matching times_ns and "
                f"joint_names, got {pos.dtype} {pos.shape}"
            )
        measured = self._measured(measured_qpos)
        now = _stamp("now_ns", now_ns)
        m_stamp = None
        if measured_stamp_ns is not None:
            m_stamp = _stamp("measured_stamp_ns", measured_stamp_ns)

        hold = None
        if measured is not None and np.isfinite(measured).all():
            hold = np.clip(measured, self.lo, self.hi)
        clipped = {POSITION_LIMIT: 0, VELOCITY_LIMIT: 0, LEAD_LIMIT: 0}

        def suppress(reason: str) -> SafetyResult:
            return SafetyResult(None, reason, clipped, hold)

        if not enabled:
            return suppress("disabled")
        problem = self._input_problem(measured, m_stamp, input_stamps, now, measured_problem)
        if problem:
            return suppress(problem)
        if chunk_stamp_ns is not None:
            age = (now - _stamp("chunk_stamp_ns", chunk_stamp_ns)) * 1e-9
            if age > self.cfg.max_chunk_age_s:
                return suppress(f"stale chunk ({age:.2f} s > {self.cfg.max_chunk_age_s:.2f} s)")
        if times.size == 0:
            return suppress("empty trajectory")
        finite = np.isfinite(pos)
        if not finite.all():
            return suppress(f"non-finite command ({int(finite.size - finite.sum())} values)")
        if (np.diff(times) <= 0).any():
            return suppress("command times not strictly increasing")

        target = np.clip(pos.astype(np.float64), self.lo, self.hi)
        clipped[POSITION_LIMIT] = int(np.count_nonzero(target != pos))
        out = np.empty_like(target)
        period = self.cfg.control_period_s
        dt_s = np.empty(len(times))
        dt_s[1:] = np.diff(times) * 1e-9
        previous = None if previous is None else np.asarray(previous)
        if (
            previous is not None
            and previous.shape == (A,)
            and _is_real(previous)
            and np.isfinite(previous).all()
        ):
            prev = np.clip(np.asarray(previous, np.float64), self.lo, self.hi)
            dt_s[0] = period
        else:  # a measured state just beyond a limit counts as at the limit
            prev = hold
            # nothing was commanded, so the arm is still where it was measured: it has from now
            # (not from the measurement, however old) until the first point to get there
            dt_s[0] = max((int(times[0]) - max(m_stamp, now)) * 1e-9, period)
        since_m = np.maximum((times - m_stamp) * 1e-9, 0.0)
        for k in range(len(times)):
            step_max = self.max_velocity * dt_s[k]
            lead = self.max_velocity * (self.cfg.tracking_lag_s + since_m[k])
            # the velocity bound is around the point before (the invariant); the lead bound
            # narrows it, never widens it. The lead only grows along a plan, so the two can only
            # be disjoint at the first point: the plan followed is further from the measured
            # state than the arm can trail it (the arm lags or is blocked, or the measurement is
            # wrong). A little further: the point eases back towards the arm at the velocity
            # limit. Much further: the plan stops. It never jumps to the lead bound.
            lo_k = np.maximum(prev - step_max, hold - lead)
            hi_k = np.minimum(prev + step_max, hold + lead)
            disjoint = lo_k > hi_k
            if disjoint.any():
                gap = np.abs(prev - hold) - lead - step_max
                far = disjoint & (gap > self.max_velocity * self.cfg.max_disagreement_s)
                if far.any():
                    j = int(np.argmax(np.where(far, gap, -np.inf)))
                    return suppress(
                        f"measured joint state disagrees with the plan: "
                        f"{self.cfg.joint_names[j]} measured {hold[j]:.3f}, commanded "
                        f"{prev[j]:.3f} (at most {lead[j]:.3f} + "
                        f"{step_max[j] + self.max_velocity[j] * self.cfg.max_disagreement_s:.3f}"
                        " apart)"
                    )
                back = np.where(prev > hold, prev - step_max, prev + step_max)
                lo_k = np.where(disjoint, back, lo_k)
                hi_k = np.where(disjoint, back, hi_k)
            changed = (
                (np.abs(target[k] - prev) > step_max) | (np.abs(target[k] - hold) > lead) | disjoint
            )
            # untouched values are passed through bit for bit (identity on safe input)
            out[k] = np.where(changed, np.clip(target[k], lo_k, hi_k), target[k])
            # which bound held it: the tighter one on the side it was clipped
            up = target[k] > hi_k
            by_velocity = ~disjoint & np.where(
                up, prev + step_max <= hold + lead, prev - step_max >= hold - lead
            )
            clipped[VELOCITY_LIMIT] += int(np.count_nonzero(changed & by_velocity))
            clipped[LEAD_LIMIT] += int(np.count_nonzero(changed & ~by_velocity))
            prev = out[k]
        return SafetyResult(out, None, clipped, hold)

    def input_problem(
        self,
        measured_qpos: np.ndarray | None,
        measured_stamp_ns: int | None,
        input_stamps: Mapping[str, int | None],
        now_ns: int,
        measured_problem: str | None = None,
    ) -> str | None:
        """The watchdog alone: why nothing may be commanded now because of the inputs (measured
        state missing or non-finite, an input stale or never received), else None. The same
        checks and reasons as :meth:`filter`, for a command already handed to a controller."""
        m_stamp = (
            None if measured_stamp_ns is None else _stamp("measured_stamp_ns", measured_stamp_ns)
        )
        return self._input_problem(
            self._measured(measured_qpos),
            m_stamp,
            input_stamps,
            _stamp("now_ns", now_ns),
            measured_problem,
        )

    def _measured(self, measured_qpos) -> np.ndarray | None:
        if measured_qpos is None:
            return None
        A = len(self.cfg.joint_names)
        measured = np.asarray(measured_qpos)
        if measured.shape != (A,) or not _is_real(measured):
            raise ValueError(
                f"measured_qpos: needs a ({A},) real array, got {measured.dtype} {measured.shape}"
            )
        return measured.astype(np.float64)

    def _input_problem(self, measured, m_stamp, input_stamps, now, measured_problem=None):
        if measured_problem:
            return f"measured joint state rejected ({measured_problem})"
        if measured is None or m_stamp is None:
            return "measured joint state missing"
        finite = np.isfinite(measured)
        if not finite.all():
            bad = [n for n, ok in zip(self.cfg.joint_names, finite) if not ok]
            return f"measured joint state non-finite ({', '.join(bad)})"
        tol = self.cfg.measured_tolerances()
        out = (measured < self.lo - tol) | (measured > self.hi + tol)
        if out.any():
            j = int(np.argmax(out))
            return (
                f"measured joint state implausible: {self.cfg.joint_names[j]} at "
                f"{measured[j]:.4g}, outside [{self.lo[j]:.3f}, {self.hi[j]:.3f}] by more "
                f"than {tol[j]}"
            )
        max_age = self.cfg.max_input_age_s
        stale = []
        m_age = (now - m_stamp) * 1e-9
        if m_age > max_age:
            stale.append((m_age, f"stale measured joint state ({m_age:.2f} s > {max_age:.2f} s)"))
        elif m_age < -max_age:  # from before a clock reset: its age means nothing
            stale.append((math.inf, f"measured joint state {-m_age:.2f} s in the future"))
        for name in sorted(input_stamps):
            stamp = input_stamps[name]
            if stamp is None:
                stale.append((math.inf, f"no input '{name}' received"))
                continue
            age = (now - _stamp(f"input_stamps['{name}']", stamp)) * 1e-9
            if age > max_age:
                stale.append((age, f"stale input '{name}' ({age:.2f} s > {max_age:.2f} s)"))
            elif age < -max_age:
                stale.append((math.inf, f"input '{name}' {-age:.2f} s in the future"))
        if stale:
            stale.sort(key=lambda x: -x[0])  # the oldest first
            return "; ".join(text for _, text in stale)
        return None


@dataclass
class JointStateCheck:
    """The verdict on one joint state message. ``positions`` is set when it is believed;
    ``problem`` says why it was rejected (commands must stop until a plausible one comes);
    both None: ignored (out of order), neither believed nor a reason to stop."""

    positions: np.ndarray | None
    """(n,) float64 positions in the order of the source's joints, or None."""
    problem: str | None


MAX_JOINT_NAMES = 64
"""A JointState listing more names than this is refused: an arm's driver lists its joints and
fingers (ALOHA's: 9); a message that grows the table is not a state of the arm."""
MAX_JOINT_NAME_CHARS = 256
"""A joint name longer than this is refused (as frame ids are)."""


class MeasuredStateValidator:
    """Believes a joint state only if it could describe the arm. A measured state is an input
    to validate, not a target: a message whose names repeat a joint or lack one, with a
    non-finite position, a joint further than ``measured_tolerance`` outside its limits, or a
    joint that moved faster than the arm can since the last believed state is rejected, with a
    reason. Each source (an arm's joint state topic) is checked against its own last believed
    state; a rejected message leaves that reference where it was, so one bogus message is
    caught whatever follows it, and plausible states are believed again as soon as they
    return. After a jump the time allowance stops growing: commands stopped, so the arm held
    still, and a wrong reading that persists stays rejected (named) until the readings come
    back or :meth:`reset` (the operator re-enables). Pure logic: the node feeds it messages,
    replay feeds it recorded ones."""

    def __init__(
        self,
        cfg: SafetyConfig,
        sources: Mapping[str, Sequence[tuple[str, int]]],
        time_reset_s: float = 1.0,
    ):
        """``sources``: source name -> (joint name in its messages, column of
        ``cfg.joint_names``) per joint it must deliver; ``time_reset_s``: a stamp this far
        behind the last believed one is a clock reset (forget the reference), a smaller step
        back an out-of-order message (ignored)."""
        self.cfg = cfg
        lo, hi = cfg.limits()
        vmax = np.array(cfg.max_velocity, np.float64)
        tol = cfg.measured_tolerances()
        self._sources = {}
        for name, joints in sources.items():
            cols = [int(c) for _, c in joints]
            if any(not 0 <= c < len(cfg.joint_names) for c in cols):
                raise ValueError(f"sources['{name}']: columns must index joint_names, got {cols}")
            self._sources[name] = (
                [str(j) for j, _ in joints],
                lo[cols],
                hi[cols],
                vmax[cols],
                tol[cols],
            )
        self.reset_ns = int(time_reset_s * 1e9)
        self._last: dict[str, tuple[int, np.ndarray]] = {}
        self._frozen: dict[str, int] = {}  # source -> stamp of its first implausible jump

    def reset(self) -> None:
        """Forget every reference state: the operator (re-)enabled commanding, a new episode,
        a clock reset. The next state of each source is believed if it is within limits."""
        self._last.clear()
        self._frozen.clear()

    def check(self, source: str, names: Sequence[str], positions, stamp_ns: int) -> JointStateCheck:
        """Validate one message of ``source`` (its ``name`` and ``position`` fields and its
        stamp); reasons name the source and the joint and are short whatever the message
        holds."""
        joints, lo, hi, vmax, tol = self._sources[source]
        stamp = _stamp("stamp_ns", stamp_ns)
        if len(names) > MAX_JOINT_NAMES:  # no arm's driver lists that many: a hostile table
            return JointStateCheck(
                None,
                f"{source}: {len(names)} joint names (one arm's state has at most "
                f"{MAX_JOINT_NAMES})",
            )
        names = [str(n) for n in names]
        long_name = next((n for n in names if len(n) > MAX_JOINT_NAME_CHARS), None)
        if long_name is not None:
            return JointStateCheck(
                None,
                f"{source}: a joint name of {len(long_name)} characters (at most "
                f"{MAX_JOINT_NAME_CHARS})",
            )
        if len(positions) != len(names):
            return JointStateCheck(
                None, f"{source}: {len(names)} names but {len(positions)} positions"
            )
        counts: dict[str, int] = {}
        for n in names:
            counts[n] = counts.get(n, 0) + 1
        dup = next((n for n in names if counts[n] > 1), None)
        if dup is not None:
            return JointStateCheck(
                None, f"{source}: joint '{_short(dup)}' appears {counts[dup]} times"
            )
        missing = [j for j in joints if j not in counts]
        if missing:
            return JointStateCheck(
                None,
                f"{source}: missing joints {missing} (has {_short(', '.join(names), 120)})",
            )
        index = {n: i for i, n in enumerate(names)}
        try:
            pos = np.array([float(positions[index[j]]) for j in joints], np.float64)
        except (TypeError, ValueError):
            return JointStateCheck(None, f"{source}: positions are not numbers")
        finite = np.isfinite(pos)
        if not finite.all():
            j = int(np.argmin(finite))
            return JointStateCheck(None, f"{source}: {joints[j]} position is {pos[j]}")
        out = (pos < lo - tol) | (pos > hi + tol)
        if out.any():
            j = int(np.argmax(out))
            return JointStateCheck(
                None,
                f"{source}: {joints[j]} at {pos[j]:.4g}, outside its limits "
                f"[{lo[j]:.3f}, {hi[j]:.3f}] by more than {tol[j]}",
            )
        last = self._last.get(source)
        if last is not None:
            last_stamp, last_pos = last
            if stamp < last_stamp - self.reset_ns:
                last = None  # the clock was reset: nothing to compare with
                self._frozen.pop(source, None)
            elif stamp < last_stamp:
                return JointStateCheck(None, None)  # out of order: the newer one stands
        if last is not None:
            # after a jump, time stops counting: commands stopped, so the arm held still, and a
            # wrong reading that persists must not become plausible by waiting
            until = min(stamp, self._frozen.get(source, stamp))
            dt_s = (until - last[0]) * 1e-9
            bound = vmax * (dt_s + self.cfg.measured_overshoot_s) + self.cfg.measured_noise
            jump = np.abs(pos - last[1])
            if (jump > bound).any():
                j = int(np.argmax(jump - bound))
                self._frozen.setdefault(source, stamp)
                return JointStateCheck(
                    None,
                    f"{source}: {joints[j]} moved {jump[j]:.3f} in {dt_s * 1e3:.0f} ms since the "
                    f"last plausible state (the arm can move at most {bound[j]:.3f})",
                )
        self._last[source] = (stamp, pos)
        self._frozen.pop(source, None)
        return JointStateCheck(pos, None)


class Watchdog:
    """Newest stamp of each watched input; says which are older than ``max_age_s``.

    ``expected``: names that count as stale (age inf) until first touched."""

    def __init__(self, max_age_s: float, expected: Sequence[str] = ()):
        if not (isinstance(max_age_s, (int, float)) and math.isfinite(max_age_s) and max_age_s > 0):
            raise ValueError(f"max_age_s: needs a finite number > 0 (seconds), got {max_age_s!r}")
        self.max_age_s = float(max_age_s)
        self.expected = [str(n) for n in expected]
        self._stamps: dict[str, int] = {}

    def touch(self, name: str, stamp_ns: int) -> None:
        """Record that input ``name`` delivered data stamped ``stamp_ns`` (older stamps than
        the newest seen are ignored)."""
        stamp = _stamp("stamp_ns", stamp_ns)
        if stamp > self._stamps.get(name, stamp - 1):
            self._stamps[name] = stamp

    def stale(self, now_ns: int) -> list[tuple[str, float]]:
        """(name, age_s) of every input older than max_age_s at ``now_ns``, oldest first;
        expected inputs never touched have age inf."""
        now = _stamp("now_ns", now_ns)
        out = [(n, math.inf) for n in self.expected if n not in self._stamps]
        for name, stamp in self._stamps.items():
            age = (now - stamp) * 1e-9
            if age > self.max_age_s:
                out.append((name, age))
        return sorted(out, key=lambda x: -x[1])

    @property
    def stamps(self) -> dict[str, int | None]:
        """name -> newest stamp (None for expected inputs never touched): the filter's
        ``input_stamps``."""
        out: dict[str, int | None] = {n: None for n in self.expected}
        out.update(self._stamps)
        return out

    def reset(self) -> None:
        """Forget every stamp (time jumped backwards, or a new episode)."""
        self._stamps.clear()


def _short(text: str, n: int = 40) -> str:
    """``text`` cut to ``n`` characters for a log line (names can come from any publisher)."""
    return text if len(text) <= n else f"{text[: n - 3]}..."


def _is_real(a: np.ndarray) -> bool:
    return np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)


def _stamp(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name}: needs an integer time in ns, got {value!r}")
    return int(value)
