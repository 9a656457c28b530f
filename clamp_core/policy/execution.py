"""Chunk execution: turns the stream of timestamped action chunks from the policy into the command
for each control tick and the planned trajectory ahead of it.

The policy predicts F actions (e.g. 50 at 50 Hz) from one observation; how many of them run, and
how consecutive chunks are joined, is the execution mode. Time is explicit everywhere: a chunk's
action k is meant for ``chunk.stamp_ns + k * dt_s`` and every query names its control time in ns
(ROS time, sim or wall). Between a chunk's action times the plan is linear in time, as a
JointTrajectoryController interpolates it; beyond a chunk's last action there is no plan (never
extrapolated): ``command_at`` returns None and the caller holds position.

When to use which mode
----------------------
``receding_horizon``
    Runs the first ``execute_steps`` actions of each chunk and asks for a new inference once
    the last of them is past (as in Diffusion Policy). Lowest compute and the simplest behaviour
    to reason about; the robot stands still while the next chunk is computed, and actions whose
    time has passed when a chunk arrives are skipped, so ``execute_steps`` should be well above
    the inference latency in steps. Good for slow inference on small machines and debugging.
``temporal_ensembling``
    ACT's scheme: the command for time t is the weighted average of every stored chunk's action
    for t, weights ``exp(-ensemble_decay * i)`` with i = 0 for the oldest prediction. Smooth and
    reactive, but needs an inference every ``inference_every_steps`` ticks (every tick in ACT),
    i.e. inference faster than the control rate.
``async``
    The next chunk is computed while the current one runs. Inference is requested when the
    current chunk would have fewer than ``replan_remaining_steps`` steps left by the time a new
    chunk arrives (measured latency included); the new chunk, whose first actions are already in
    the past, takes over by timestamp and is crossfaded in over ``blend_steps`` steps so the
    command does not jump at the seam (each step there is at most the larger of the two
    trajectories' own steps plus their gap / ``blend_steps``; the safety filter's velocity limit
    bounds the rest). Continuous motion with inference slower than the control rate: the choice
    for a live robot once latency is measured.
``seam_guided``
    ``async``'s timing and crossfade, with chunks that continue the plan: the engine hands the
    sampler the plan the controller follows at the new chunk's action times, and the DDIM loop
    is guided towards it, fully up to the step where the chunk will take over (the measured
    latency) and decaying to nothing where the plan ends (``clamp_core.policy.guidance``).
    Optionally ``candidates`` chunks are sampled in one batched call and the one closest to the
    plan is kept. A new chunk then neither jumps at the seam nor starts the motion over (the
    periodic loops of ``async`` after a missed grasp). Needs a model run by ``OnnxPolicy``.

The executor is not thread-safe; the node calls it from one executor thread (or under a lock).
Time must go forward: after a jump backwards (sim reset, bag loop) call ``reset()``. Chunks that
cannot matter from ``max_chunk_age_s`` before the latest time seen on are dropped.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .runtime import ActionChunk

MODES = ("receding_horizon", "temporal_ensembling", "async", "seam_guided")
ASYNC_MODES = ("async", "seam_guided")
"""The modes that compute the next chunk while the current one runs (async timing + crossfade)."""


@dataclass
class ExecutionConfig:
    """How action chunks become commands; one field per ROS parameter of the policy node."""

    mode: str = "receding_horizon"
    """One of receding_horizon, temporal_ensembling, async, seam_guided (see the module
    docstring)."""
    execute_steps: int = 25
    """receding_horizon: actions run from each chunk before the next inference (capped at F).
    Half a 50-step chunk: committing longer matters more than replanning often (a Drawer Open
    model in `clamp eval sim`: 6 of 20 seeds at 10, 12 to 14 at 25-50)."""
    inference_every_steps: int = 1
    """temporal_ensembling: control steps between inferences (ACT: 1, every tick)."""
    ensemble_decay: float = 0.01
    """temporal_ensembling: m in w_i = exp(-m * i), i = 0 for the oldest prediction (ACT: 0.01)."""
    blend_steps: int = 5
    """async, seam_guided: control steps of the linear crossfade from the running plan into a
    new chunk."""
    replan_remaining_steps: int = 20
    """async, seam_guided: ask for inference when fewer steps than this would be left when the
    chunk lands."""
    expected_latency_s: float = 0.1
    """async, seam_guided: inference latency (observation stamp to chunk arrival) assumed until
    measured, s."""
    latency_window: int = 20
    """async, seam_guided: latency measurements kept; the estimate is the largest of them
    (conservative)."""
    guidance_weight: float = 1.0
    """seam_guided: how hard the sampler holds a new chunk to the plan followed, 0..1 (1: the
    actions up to the switch are the plan's; 0: plain DDIM, as async)."""
    candidates: int = 1
    """seam_guided: chunks sampled per inference in one batched call; the one closest to the
    plan followed is kept (1: no selection; cost grows with it, see `clamp bench policy`)."""
    max_chunk_age_s: float = 1.0
    """A chunk is not executed once its observation is older than this, s (>= F * dt_s to run
    whole chunks)."""

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode: '{self.mode}' is not a mode; set it to one of {list(MODES)}")
        for name in ("execute_steps", "inference_every_steps", "latency_window"):
            _check_int(name, getattr(self, name), minimum=1)
        for name in ("blend_steps", "replan_remaining_steps"):
            _check_int(name, getattr(self, name), minimum=0)
        if self.replan_remaining_steps < max(1, self.blend_steps):
            raise ValueError(
                f"replan_remaining_steps: {self.replan_remaining_steps} leaves no room for the "
                f"crossfade; set it to at least blend_steps ({self.blend_steps}) and at least 1, "
                "or lower blend_steps"
            )
        _check_int("candidates", self.candidates, minimum=1)
        _check_float("guidance_weight", self.guidance_weight, minimum=0.0)
        if self.guidance_weight > 1.0:
            raise ValueError(
                f"guidance_weight: needs a number in [0, 1], got {self.guidance_weight!r}"
            )
        _check_float("ensemble_decay", self.ensemble_decay, minimum=0.0)
        _check_float("expected_latency_s", self.expected_latency_s, minimum=0.0)
        _check_float("max_chunk_age_s", self.max_chunk_age_s, minimum=0.0, inclusive=False)


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}: needs an integer >= {minimum}, got {value!r}")


def _check_float(name: str, value, minimum: float, inclusive: bool = True) -> None:
    ok = (
        not isinstance(value, bool)
        and isinstance(value, (int, float, np.integer, np.floating))
        and math.isfinite(value)
        and (value >= minimum if inclusive else value > minimum)
    )
    if not ok:
        rel = ">=" if inclusive else ">"
        raise ValueError(f"{name}: needs a finite number {rel} {minimum}, got {value!r}")


@dataclass
class _Stored:
    """A validated chunk as the executor keeps it."""

    stamp_ns: int
    times_ns: np.ndarray
    """(F,) int64, strictly increasing."""
    actions: np.ndarray
    """(F, A) float64, a private copy."""
    end_ns: int
    """Time of the last action this mode runs from the chunk."""
    blend_start_ns: int
    """async: where the crossfade into this chunk starts (its arrival, not before action 0)."""


class ChunkExecutor:
    """Turns timestamped ``ActionChunk``s into the command for any control time.

    ``joint_names``: the action columns every chunk must carry, in order (A = their number)."""

    def __init__(self, cfg: ExecutionConfig, joint_names: Sequence[str]):
        if isinstance(joint_names, str) or len(joint_names) == 0:
            raise ValueError(f"joint_names: needs a non-empty list of names, got {joint_names!r}")
        self.cfg = cfg
        self.joint_names = [str(n) for n in joint_names]
        self._latencies_ns: deque[int] = deque(maxlen=cfg.latency_window)
        self.reset()

    # ------------------------------------------------------------------------------ state
    def reset(self) -> None:
        """Drop every chunk and forget the time (deactivate, or time jumped backwards). The
        latency measurements stay: they describe the inference machine, not the episode."""
        self._chunks: list[_Stored] = []
        self._newest_stamp_ns: int | None = None
        self._now_ns: int | None = None
        self._dt_s: float | None = None

    @property
    def dt_s(self) -> float | None:
        """Control period: the chunks' dt_s (None before the first chunk)."""
        return self._dt_s

    @property
    def latency_s(self) -> float:
        """Inference latency estimate: the largest of the recent measurements, else
        ``expected_latency_s``."""
        if not self._latencies_ns:
            return float(self.cfg.expected_latency_s)
        return max(self._latencies_ns) * 1e-9

    @property
    def num_chunks(self) -> int:
        """Chunks held (the ones that can still contribute to a command)."""
        return len(self._chunks)

    # ------------------------------------------------------------------------------ input
    def add_chunk(self, chunk: ActionChunk, now_ns: int | None = None) -> bool:
        """Store a new chunk. ``now_ns``: the control clock when it arrived; it measures the
        inference latency and starts the async crossfade there (without it the crossfade starts
        at the chunk's first action). Returns False, storing nothing, for a chunk that is not
        newer than the newest one already received, or that is older than ``max_chunk_age_s``
        or has run out of actions at the latest time seen (``now_ns`` or a query). Raises
        ValueError naming the problem for a malformed chunk."""
        stamp, times, actions = self._validated(chunk)
        if now_ns is not None:
            now_ns = _check_stamp("now_ns", now_ns)
            self._latencies_ns.append(max(0, now_ns - stamp))
            self._advance(now_ns)
        if self._newest_stamp_ns is not None and stamp <= self._newest_stamp_ns:
            return False
        F = len(times)
        end = int(times[min(self.cfg.execute_steps, F) - 1] if self._receding else times[-1])
        now = self._now_ns
        if now is not None and (now - stamp > self._max_age_ns or end < now):
            return False
        if self._dt_s is None:
            self._dt_s = float(chunk.dt_s)
        self._newest_stamp_ns = stamp
        start = int(times[0]) if now_ns is None else max(int(times[0]), now_ns)
        self._chunks.append(_Stored(stamp, times, actions, end, start))
        self._prune()
        return True

    def _validated(self, chunk) -> tuple[int, np.ndarray, np.ndarray]:
        stamp = _check_stamp("chunk.stamp_ns", getattr(chunk, "stamp_ns", None))
        dt = getattr(chunk, "dt_s", None)
        if (
            isinstance(dt, bool)
            or not isinstance(dt, (int, float, np.floating))
            or not (math.isfinite(dt) and dt > 0)
        ):
            raise ValueError(f"chunk.dt_s: needs a finite period > 0 s, got {dt!r}")
        if self._dt_s is not None and abs(dt - self._dt_s) > 1e-9 * self._dt_s:
            raise ValueError(
                f"chunk.dt_s: {dt} s differs from the earlier chunks' {self._dt_s} s; all "
                "chunks must come from one model (reset() before switching models)"
            )
        names = list(getattr(chunk, "joint_names", None) or [])
        if names != self.joint_names:
            diff = next(
                (
                    f"column {i} is '{a}', expected '{b}'"
                    for i, (a, b) in enumerate(zip(names, self.joint_names))
                    if a != b
                ),
                f"{len(names)} names, expected {len(self.joint_names)}",
            )
            raise ValueError(
                f"chunk.joint_names: {diff}; the model's joint order must match the executor's"
            )
        try:
            actions = np.array(chunk.actions, dtype=np.float64)  # a private copy
        except (TypeError, ValueError) as e:
            raise ValueError(f"chunk.actions: not a numeric array ({e})") from None
        A = len(self.joint_names)
        if actions.ndim != 2 or actions.shape[0] < 1 or actions.shape[1] != A:
            raise ValueError(
                f"chunk.actions: needs shape (F >= 1, {A}) for {A} joints, got {actions.shape}"
            )
        bad = ~np.isfinite(actions)
        if bad.any():
            k, j = (int(x) for x in np.argwhere(bad)[0])
            raise ValueError(
                f"chunk.actions: {int(bad.sum())} non-finite values (first: step {k}, joint "
                f"'{self.joint_names[j]}')"
            )
        times = np.asarray(chunk.times_ns, dtype=np.int64)
        if times.shape != (actions.shape[0],) or (np.diff(times) <= 0).any():
            raise ValueError(
                f"chunk.times_ns: must be {actions.shape[0]} strictly increasing stamps; got "
                f"shape {times.shape} with dt_s {dt} s (at least 1 ns between actions)"
            )
        return stamp, times, actions

    # ------------------------------------------------------------------------------ output
    def command_at(self, t_ns: int) -> np.ndarray | None:
        """(A,) float64 command for control time ``t_ns``, or None when no valid plan covers it
        (nothing received, every chunk stale, or t beyond the last action)."""
        t = self._advance(_check_stamp("t_ns", t_ns))
        values, valid = self._evaluate(np.array([t], dtype=np.int64))
        return values[0] if valid[0] else None

    def trajectory(self, t_ns: int, max_points: int) -> tuple[np.ndarray, np.ndarray]:
        """The plan from ``t_ns`` on at the control rate: times (K,) int64 = t + round(k * dt),
        positions (K, A) float64, K <= max_points, ending before the first time without a plan
        (K = 0 when there is none at t). What a JointTrajectory message carries."""
        t = self._advance(_check_stamp("t_ns", t_ns))
        _check_int("max_points", max_points, minimum=1)
        A = len(self.joint_names)
        chunks = self._live(t) if self._dt_s is not None else []
        if not chunks:
            return np.zeros(0, np.int64), np.zeros((0, A))
        # no point past the last chunk's end can be valid: evaluate only up to there
        last = max(s.end_ns for s in chunks)
        max_points = max(0, min(max_points, int((last - t) // (self._dt_s * 1e9)) + 2))
        k = np.arange(max_points, dtype=np.float64)
        times = t + np.round(k * self._dt_s * 1e9).astype(np.int64)
        values, valid = self._evaluate(times, chunks)
        n = int(np.argmin(valid)) if not valid.all() else max_points
        return times[:n], values[:n]

    def needs_inference(self, t_ns: int) -> bool:
        """Whether a new chunk is wanted at control time ``t_ns``. Pure: the caller runs at most
        one inference at a time and asks again once it has delivered its chunk."""
        t = self._advance(_check_stamp("t_ns", t_ns))
        if not self._chunks:
            return True
        s = self._chunks[-1]
        if t - s.stamp_ns > self._max_age_ns or t > s.end_ns:
            return True  # receding_horizon: its execute_steps actions are done
        dt_ns = self._dt_s * 1e9
        mode = self.cfg.mode
        if mode == "receding_horizon":
            return False
        if mode == "temporal_ensembling":
            return t >= s.stamp_ns + round(self.cfg.inference_every_steps * dt_ns)
        # async, seam_guided: the steps the current chunk would have left when a chunk
        # requested now lands
        remaining_ns = s.times_ns[-1] - t - self.latency_s * 1e9
        return bool(remaining_ns < self.cfg.replan_remaining_steps * dt_ns)

    # ------------------------------------------------------------------------------ internals
    @property
    def _receding(self) -> bool:
        return self.cfg.mode == "receding_horizon"

    @property
    def _max_age_ns(self) -> int:
        return round(self.cfg.max_chunk_age_s * 1e9)

    def _advance(self, t: int) -> int:
        """Move the executor's notion of now (the latest time seen) forward to ``t``."""
        if self._now_ns is None or t > self._now_ns:
            self._now_ns = t
            self._prune()
        return t

    def _prune(self) -> None:
        """Drop the chunks that cannot matter at any time from ``max_chunk_age_s`` before now
        on, so answers for those times do not depend on the order of the queries."""
        if self._now_ns is not None:
            self._chunks = self._live(self._now_ns - self._max_age_ns)

    def _live(self, t_min: int) -> list[_Stored]:
        """The chunks that can contribute to the plan at some time >= ``t_min``."""
        if not self._chunks:
            return []
        max_age = self._max_age_ns
        keep = [s for s in self._chunks if s.end_ns >= t_min and t_min - s.stamp_ns <= max_age]
        # a chunk that has fully taken over makes every older one irrelevant from then on
        if self.cfg.mode == "receding_horizon":
            took_over = [i for i, s in enumerate(keep) if s.times_ns[0] <= t_min]
        elif self.cfg.mode in ASYNC_MODES:
            blend_ns = round(self.cfg.blend_steps * self._dt_s * 1e9)
            took_over = [i for i, s in enumerate(keep) if s.blend_start_ns + blend_ns <= t_min]
        else:
            took_over = []
        return keep[took_over[-1] :] if took_over else keep

    def _sample(self, chunks: list[_Stored], q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every chunk at times q (K,), all at once: values (C, K, A), linear in time between
        actions and exact at action times; valid (C, K) where q lies within [first action,
        end_ns] and the chunk is not stale at q."""
        C, A = len(chunks), len(self.joint_names)
        F = max(2, max(len(s.times_ns) for s in chunks))
        times = np.empty((C, F), np.int64)
        acts = np.empty((C, F, A))
        for c, s in enumerate(chunks):
            n = len(s.times_ns)
            times[c, :n], acts[c, :n] = s.times_ns, s.actions
            if n < F:  # padded past the end, where the chunk is never valid: one array shape
                times[c, n:] = s.times_ns[-1] + 1 + np.arange(F - n)
                acts[c, n:] = s.actions[-1]
        qq = q[None, :]
        t0 = times[:, :1]
        # action times are stamp + round(k * dt), so this guess is off by at most one
        i = np.floor((qq - t0) / (self._dt_s * 1e9)).astype(np.int64)
        i = np.minimum(np.maximum(i, 0), F - 2)
        rows = np.arange(C)[:, None]
        i = np.where((times[rows, i + 1] <= qq) & (i < F - 2), i + 1, i)
        i = np.where((times[rows, i] > qq) & (i > 0), i - 1, i)
        lo, hi = times[rows, i], times[rows, i + 1]
        frac = np.minimum(np.maximum((qq - lo) / (hi - lo), 0.0), 1.0)[..., None]
        values = (1.0 - frac) * acts[rows, i] + frac * acts[rows, i + 1]
        ends = np.array([s.end_ns for s in chunks], np.int64)[:, None]
        stamps = np.array([s.stamp_ns for s in chunks], np.int64)[:, None]
        valid = (qq >= t0) & (qq <= ends) & (qq - stamps <= self._max_age_ns)
        return values, valid

    def _evaluate(
        self, q: np.ndarray, chunks: list[_Stored] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The plan at times q (K,) int64: values (K, A), valid (K,) bool. ``chunks``: the live
        chunks at q.min() when the caller has them already."""
        K, A = len(q), len(self.joint_names)
        out = np.zeros((K, A))
        valid = np.zeros(K, bool)
        if chunks is None and K:
            chunks = self._live(int(q.min()))
        if not K or not chunks:
            return out, valid
        values, covers = self._sample(chunks, q)  # oldest chunk first
        mode = self.cfg.mode
        if mode == "temporal_ensembling":
            rank = np.cumsum(covers, axis=0) - 1  # i = 0 for the oldest chunk covering q
            w = np.where(covers, np.exp(-self.cfg.ensemble_decay * rank), 0.0)
            total = w.sum(axis=0)
            valid = total > 0
            out = np.einsum("ck,cka->ka", w, values) / np.where(valid, total, 1.0)[:, None]
            return out, valid
        if mode == "receding_horizon":
            for s, v, ok in zip(chunks, values, covers):  # the newest chunk that started wins
                started = q >= s.times_ns[0]
                out[started] = v[started]
                valid[started] = ok[started]
            return out, valid
        blend_ns = self.cfg.blend_steps * self._dt_s * 1e9
        for s, v, ok in zip(chunks, values, covers):  # async: each crossfades in over the last
            after = q >= s.blend_start_ns
            if blend_ns > 0:
                alpha = np.minimum(np.maximum((q - s.blend_start_ns) / blend_ns, 0.0), 1.0)
            else:
                alpha = np.ones(K)
            alpha = alpha[:, None]
            mix = after & ok & valid
            take = after & ok & ~valid
            out[mix] = (1.0 - alpha[mix]) * out[mix] + alpha[mix] * v[mix]
            out[take] = v[take]
            valid[after] = ok[after]  # past the new chunk's end there is no plan
        return out, valid


def _check_stamp(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name}: needs an integer time in ns, got {value!r}")
    return int(value)
