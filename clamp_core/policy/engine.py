"""The policy engine: everything the policy node decides per observation and per control tick,
without ROS and without a clock of its own (ros2_control's ``update(time, period)`` pattern).

Drivers hand it time and inputs; the live node (messages, timers, a worker thread), closed-loop
evaluation in the simulator and bag replay are the drivers, so all three compute the same thing
from the same inputs:

- joint states are validated (:class:`MeasuredStateValidator`) before they are believed; the
  policy gets the state measured with its images (the newest sample at or before the
  observation stamp), commands are checked against the newest;
- observations: a stamp far behind the previous one is a clock reset (chunks and history go),
  observations from before the last (re)start never become plans, inference runs when the
  chunk executor wants a chunk;
- inference is deterministic: the diffusion noise of an observation is drawn from a generator
  seeded by (run seed, observation stamp), so the same inputs give the same chunk anywhere;
- the action history the model sees is what was commanded at the control rate before the
  stamp (:func:`action_history`, the one implementation training windows use too);
- plans: the executor's trajectory from now, through the safety filter from the plan the
  controller follows; a stop forgets that plan, so the next one starts from the arm;
- seams: each chunk that takes over is compared with the plan followed at that moment
  (``last_seam``); in ``seam_guided`` execution the observation carries that plan at the new
  chunk's action times so the sampler continues it (:meth:`PolicyEngine.guidance`).

Not thread-safe: a driver with threads calls it under one lock, except for ``policy.predict``
(see :meth:`PolicyEngine.observation` / :meth:`PolicyEngine.deliver`).
"""

from __future__ import annotations

import bisect
import collections
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .execution import ChunkExecutor, ExecutionConfig
from .guidance import prefix_profile
from .runtime import ActionChunk, PolicyObservation
from .safety import JointStateCheck, MeasuredStateValidator, SafetyConfig, SafetyFilter
from .trajectory import sample_linear


def action_history(
    times_ns: np.ndarray, commands: np.ndarray, stamp_ns: int, n: int, dt_ns: int, qpos
) -> np.ndarray:
    """(n, A) the commands in force at ``stamp - n*dt .. stamp - dt`` (oldest first): for each
    of those times the newest command at or before it; ``qpos`` (A,) where none was commanded
    yet (the start of an episode, as training pads it). ``times_ns`` (K,) increasing,
    ``commands`` (K, A). An episode's actions at its own rate are such a series, so training
    windows and the node build the history with this one function."""
    qpos = np.asarray(qpos, np.float64)
    out = np.tile(qpos, (n, 1))
    if n == 0 or len(times_ns) == 0:
        return out
    want = stamp_ns - (n - np.arange(n, dtype=np.int64)) * int(dt_ns)
    idx = np.searchsorted(np.asarray(times_ns), want, side="right") - 1
    have = idx >= 0
    out[have] = np.asarray(commands)[idx[have]]
    return out


def observation_noise(seed: int, stamp_ns: int, shape: tuple[int, ...]) -> np.ndarray:
    """The initial diffusion noise for the observation at ``stamp_ns`` in a run seeded ``seed``:
    the same anywhere (node, sim evaluation, replay)."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(stamp_ns) & (2**63 - 1)])
    return rng.standard_normal(shape, dtype=np.float32)


@dataclass
class EngineConfig:
    """The engine's own settings; one field per ROS parameter of the policy node."""

    control_rate_hz: float = 50.0
    """Command streaming / action history rate, Hz."""
    time_reset_s: float = 1.0
    """An observation this far behind the previous one means the clock was reset (a sim
    restart, a bag loop): chunks and history are dropped, s."""
    seed: int = 0
    """Run seed of the diffusion noise (with each observation's stamp)."""
    max_points: int = 10_000
    """Longest trajectory sent (points)."""

    def __post_init__(self):
        if not (isinstance(self.control_rate_hz, (int, float)) and self.control_rate_hz > 0):
            raise ValueError(f"control_rate_hz: needs a number > 0, got {self.control_rate_hz!r}")
        if not (isinstance(self.time_reset_s, (int, float)) and self.time_reset_s > 0):
            raise ValueError(f"time_reset_s: needs a number > 0 (s), got {self.time_reset_s!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise ValueError(f"seed: needs an integer, got {self.seed!r}")

    @property
    def dt_ns(self) -> int:
        return int(round(1e9 / self.control_rate_hz))


def _interp_rows(times_ns: np.ndarray, rows: np.ndarray, q_ns: np.ndarray) -> np.ndarray:
    """(Q, A): ``rows`` (K, A) at times ``times_ns`` (K,) increasing, linear in time between
    them, the first / last row before / after them; at times ``q_ns`` (Q,)."""
    t = np.asarray(times_ns, np.float64)
    q = np.asarray(q_ns, np.float64)
    rows = np.asarray(rows, np.float64)
    return np.stack([np.interp(q, t, rows[:, j]) for j in range(rows.shape[1])], axis=1)


@dataclass
class Seam:
    """A chunk took over: where it disagreed with the plan the controller was following."""

    t_ns: int
    """Switch time (the chunk's arrival)."""
    jump: np.ndarray
    """(A,) the new chunk minus the plan followed, at ``t_ns`` (rad; grippers normalised)."""


@dataclass
class Plan:
    """What to send: ``times_ns`` (K,) and ``positions`` (K, A), safe; or a stop."""

    times_ns: np.ndarray | None
    positions: np.ndarray | None
    stop: str | None
    """Why nothing may be commanded (the controller must hold); None when there is a plan."""
    clipped: dict[str, int]

    @property
    def ok(self) -> bool:
        return self.positions is not None


class PolicyEngine:
    """The per-observation and per-tick logic of the policy node.

    ``joint_names``: the A action columns; ``sources``: arm -> (joint name in its messages,
    column) per joint; ``predict``: ``(PolicyObservation, noise (F, A)) -> ActionChunk`` (an
    ``OnnxPolicy.predict``), with ``horizon`` F and ``history`` H steps of action history."""

    def __init__(
        self,
        joint_names: Sequence[str],
        sources: Mapping[str, Sequence[tuple[str, int]]],
        safety_cfg: SafetyConfig,
        exec_cfg: ExecutionConfig,
        cfg: EngineConfig | None = None,
    ):
        self.cfg = cfg or EngineConfig()
        self.joint_names = list(joint_names)
        self.sources = {k: list(v) for k, v in sources.items()}
        self.safety_cfg = safety_cfg
        self.safety = SafetyFilter(safety_cfg)
        self.executor = ChunkExecutor(exec_cfg, self.joint_names)
        self.validator = MeasuredStateValidator(
            safety_cfg, self.sources, time_reset_s=self.cfg.time_reset_s
        )
        A = len(self.joint_names)
        self.qpos = np.full(A, np.nan)
        self.qpos_stamp: dict[str, int | None] = {s: None for s in self.sources}
        self.qpos_rx: dict[str, int | None] = {s: None for s in self.sources}
        self.qpos_problem: dict[str, str | None] = {s: None for s in self.sources}
        # each arm's recent believed states (stamp, positions): the policy gets those taken
        # with its images, as in training, not whatever arrived since
        self.qpos_recent = {s: collections.deque(maxlen=256) for s in self.sources}
        # commands at the control rate (time, (A,)): the action history (bounded)
        self.history: collections.deque = collections.deque(maxlen=500)
        self.last_obs_stamp: int | None = None
        self.plan_after_ns = 0
        self.last_plan: tuple[np.ndarray, np.ndarray] | None = None
        self.last_seam: Seam | None = None
        """Set by each :meth:`deliver`: the seam of that chunk (None: refused, or nothing
        was being followed)."""
        self._horizon: int | None = None  # actions per chunk, from the chunks delivered

    # ------------------------------------------------------------------ lifecycle
    def restart(self, since_ns: int) -> None:
        """Forget every chunk, the history and the plan followed; observations stamped before
        ``since_ns`` (and inferences running on them) never become plans."""
        self.executor.reset()
        self.history.clear()
        self.plan_after_ns = int(since_ns)
        self.last_plan = None

    def vouch(self) -> None:
        """The operator enabled commanding: judge joint states afresh."""
        self.validator.reset()

    def stopped(self) -> None:
        """The controller was told to hold: the next plan starts from the measured state."""
        self.last_plan = None

    # ------------------------------------------------------------------ joint states
    def joint_state(
        self, source: str, names, positions, stamp_ns: int, rx_ns: int
    ) -> JointStateCheck:
        """One joint state message of ``source`` (an arm), stamped ``stamp_ns`` and received
        at ``rx_ns`` (the driver's clock). Returns the validator's verdict; a rejected state
        stops commands until a plausible one comes."""
        check = self.validator.check(source, names, positions, stamp_ns)
        if check.problem is not None:
            self.qpos_stamp[source] = None
            self.qpos_problem[source] = check.problem
            return check
        if check.positions is None:
            return check
        cols = [c for _, c in self.sources[source]]
        self.qpos_problem[source] = None
        self.qpos[cols] = check.positions
        self.qpos_stamp[source] = int(stamp_ns)
        self.qpos_rx[source] = int(rx_ns)
        recent = self.qpos_recent[source]
        if recent and stamp_ns < recent[-1][0]:
            recent.clear()  # the clock went backwards (sim reset, bag loop)
        recent.append((int(stamp_ns), check.positions))
        return check

    def reject_joint_state(self, source: str, problem: str) -> None:
        """A message of ``source`` the driver could not even read (e.g. a malformed stamp)."""
        self.qpos_stamp[source] = None
        self.qpos_problem[source] = problem

    @property
    def measured_problem(self) -> str | None:
        """Why some arm's newest state was rejected (None: every arm's was believed)."""
        return "; ".join(p for p in self.qpos_problem.values() if p) or None

    def measured(self) -> tuple[np.ndarray | None, int | None]:
        """(newest believed state (A,), the oldest arm's receive time), or (None, None) while
        an arm has none."""
        if any(v is None for v in self.qpos_stamp.values()):
            return None, None
        return self.qpos.copy(), min(self.qpos_rx.values())

    def measured_at(self, stamp_ns: int) -> np.ndarray | None:
        """The state at an observation's stamp: per arm the newest sample at or before it (the
        oldest kept if all are newer); None while an arm has no believed state."""
        if any(v is None for v in self.qpos_stamp.values()):
            return None
        q = self.qpos.copy()
        for source, recent in self.qpos_recent.items():
            if not recent:
                continue
            i = bisect.bisect_right([r[0] for r in recent], stamp_ns) - 1
            q[[c for _, c in self.sources[source]]] = recent[max(i, 0)][1]
        return q

    def no_state_reason(self) -> str:
        problem = self.measured_problem
        if problem:
            return f"measured joint state rejected ({problem})"
        return "no valid joint states from every arm yet"

    # ------------------------------------------------------------------ observations
    def wants(self, stamp_ns: int, now_ns: int) -> tuple[bool, str | None]:
        """Whether an observation stamped ``stamp_ns`` should be inferred on at ``now_ns``, and
        a warning when it revealed a clock reset (chunks and history dropped)."""
        warning = None
        if self.last_obs_stamp is not None and (
            self.last_obs_stamp - stamp_ns > self.cfg.time_reset_s * 1e9
        ):
            warning = "observation time jumped backwards: dropping chunks and history"
            self.restart(stamp_ns)
        self.last_obs_stamp = stamp_ns
        if stamp_ns < self.plan_after_ns:
            return False, warning
        return self.executor.needs_inference(now_ns), warning

    def observation(
        self, stamp_ns: int, views: np.ndarray, history: int, rgb=None, history_stride: int = 1
    ) -> PolicyObservation | None:
        """The model's input for views (V, H, W, 4) at ``stamp_ns``: ``history`` past commands
        ``history_stride`` control periods apart; None while there is no believed joint state
        (``no_state_reason`` says why)."""
        qpos = self.measured_at(stamp_ns)
        if qpos is None:
            return None
        hist = list(self.history)
        times = np.array([h[0] for h in hist], np.int64)
        cmds = np.array([h[1] for h in hist]) if hist else np.zeros((0, len(qpos)))
        obs = PolicyObservation(
            stamp_ns=int(stamp_ns),
            views=views,
            qpos=qpos,
            action_history=action_history(
                times, cmds, stamp_ns, history, self.cfg.dt_ns * int(history_stride), qpos
            ),
            rgb=rgb,
        )
        if self.executor.cfg.mode == "seam_guided":
            guide = self.guidance(stamp_ns)
            if guide is not None:
                obs.prefix, obs.prefix_weights = guide
                obs.guidance_weight = float(self.executor.cfg.guidance_weight)
        return obs

    def guidance(self, stamp_ns: int) -> tuple[np.ndarray, np.ndarray] | None:
        """For a chunk computed from the observation at ``stamp_ns``: the plan the controller
        follows at that chunk's action times, (F, A), and how much each action should keep
        to it, (F,) (``prefix_profile``: fully up to the step where the chunk takes over, by
        the latency estimate, then decaying to 0 where the plan ends). None while no plan is
        followed or no chunk has arrived yet (F and dt unknown)."""
        dt_s = self.executor.dt_s
        if self.last_plan is None or self._horizon is None or dt_s is None:
            return None
        F = self._horizon
        times = int(stamp_ns) + np.round(np.arange(F) * dt_s * 1e9).astype(np.int64)
        plan_t, plan_q = self.last_plan
        overlap = int(np.count_nonzero(times <= plan_t[-1]))
        if overlap == 0:
            return None
        delay = int(math.ceil(self.executor.latency_s / dt_s - 1e-6))
        return _interp_rows(plan_t, plan_q, times), prefix_profile(F, delay, overlap)

    def noise(self, stamp_ns: int, shape: tuple[int, ...]) -> np.ndarray:
        """The observation's initial noise ``shape`` (F, A); (K, F, A) when the execution mode
        samples K candidates (the first of them is the noise of K = 1)."""
        cfg = self.executor.cfg
        k = cfg.candidates if cfg.mode == "seam_guided" else 1
        return observation_noise(self.cfg.seed, stamp_ns, shape if k == 1 else (k, *shape))

    def deliver(self, chunk: ActionChunk, now_ns: int) -> bool:
        """A chunk computed from an observation arrives at ``now_ns``; False (dropped) when
        the engine (re)started since that observation, or the executor refuses it. Sets
        ``last_seam``."""
        self.last_seam = None
        if chunk.stamp_ns < self.plan_after_ns:
            return False
        executing = self.previous_command(now_ns)
        if executing is None:
            executing = self.executor.command_at(now_ns)
        if not self.executor.add_chunk(chunk, now_ns=now_ns):
            return False
        self._horizon = int(np.shape(chunk.actions)[0])
        if executing is not None:
            new = _interp_rows(chunk.times_ns, chunk.actions, np.array([now_ns]))[0]
            self.last_seam = Seam(int(now_ns), new - np.asarray(executing, np.float64))
        return True

    # ------------------------------------------------------------------ control
    def tick(self, now_ns: int) -> np.ndarray | None:
        """The control tick at ``now_ns``: the executor's command then (None: no plan), which
        becomes part of the action history."""
        cmd = self.executor.command_at(now_ns)
        if cmd is not None:
            self.history.append((int(now_ns), cmd))
        return cmd

    def previous_command(self, t_ns: int) -> np.ndarray | None:
        """The plan the controller follows, at ``t_ns`` (linear between its points, as JTC runs
        it; its last point once it has ended); None when there is none, or it ended over
        max_input_age_s ago (the arm may have been moved since)."""
        plan = self.last_plan
        if plan is None:
            return None
        times, pos = plan
        if t_ns - int(times[-1]) > self.safety_cfg.max_input_age_s * 1e9:
            return None
        return sample_linear(times, pos, t_ns)

    def safe(
        self, times: np.ndarray, positions: np.ndarray, now_ns: int, inputs, enabled: bool
    ) -> Plan:
        """Pass a planned trajectory through the safety filter, from the plan followed."""
        qpos, q_ns = self.measured()
        measured = qpos if qpos is not None else np.full(len(self.joint_names), np.nan)
        res = self.safety.filter(
            times,
            positions,
            measured,
            q_ns if q_ns is not None else 0,
            inputs,
            now_ns,
            enabled=enabled,
            # the point before the new plan's first on the plan followed: one period earlier
            # (the same time would let the seam add a step to the old plan's own)
            previous=self.previous_command(int(times[0]) - self.cfg.dt_ns),
            measured_problem=self.measured_problem,
        )
        if not res.ok:
            return Plan(None, None, res.suppressed, res.clipped)
        return Plan(np.asarray(times, np.int64), res.positions, None, res.clipped)

    def plan(self, now_ns: int, inputs, enabled: bool) -> Plan | None:
        """The trajectory to send at ``now_ns`` (None: nothing planned to send)."""
        times, positions = self.executor.trajectory(now_ns, self.cfg.max_points)
        if len(times) == 0:
            return None
        return self.safe(times, positions, now_ns, inputs, enabled)

    def sent(self, plan: Plan) -> None:
        """The driver handed ``plan`` to the controller: it is the plan followed from now."""
        self.last_plan = (np.asarray(plan.times_ns, np.int64), np.asarray(plan.positions))

    def watchdog(self, now_ns: int, inputs) -> str | None:
        """Why a trajectory already handed to the controller must be cut now, else None."""
        qpos, q_ns = self.measured()
        return self.safety.input_problem(qpos, q_ns, inputs, now_ns, self.measured_problem)
