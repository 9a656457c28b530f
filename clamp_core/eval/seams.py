"""Seam and loop metrics of chunked execution: how well consecutive action chunks join.

A *seam* is the moment a new chunk takes over: its jump is the difference, per joint, between
the plan the controller follows and the new chunk at that moment (rad for the arm joints,
normalised units for the grippers). A *loop* is motion that repeats with the inference
period: :func:`detect_loops` finds it in a trajectory from the autocorrelation of the joint
velocity at that lag (thresholds below). It tells two kinds apart by how far the arms get in one
period against how far they go out in it (``progress``): a *returning* loop is the sawtooth after a
missed grasp, each new chunk starting back where the previous one started (the arms end a period
where they began it: progress near 0); a *stepping* one is a motion that goes on in pulses of the
inference period (each chunk moving fast, then slowing before the next takes over: progress near
1). A returning loop goes nowhere; a stepping one is slow but gets on with the task.

Pure numpy: ``clamp eval sim`` and bag replay call the same functions on their traces.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

LOOP_MIN_CORRELATION = 0.5
"""A window loops when the velocity correlates with itself one inference period later at least
this much (Pearson r over every joint, after the slow trend is removed) ..."""
LOOP_MIN_MARGIN = 0.25
"""... and by this much more than half a period later (a slow, smooth motion correlates with
itself at any short lag; a motion that repeats every period does not at half of it) ..."""
LOOP_MIN_SPEED = 0.05
"""... and the periodic part of the motion is not negligible: its RMS speed (the norm over
joints of the detrended velocity) is at least this, rad/s (a held arm's noise is no loop)."""
LOOP_RETURNING_PROGRESS = 0.5
"""A looping window *returns* when the arms end a period less than this fraction of the farthest
they went out in it from where they began it (:func:`period_progress`); at or above it the loop
is *stepping*."""
LOOP_WINDOW_PERIODS = 4
"""Window length of the detector, in inference periods (hop: one period)."""


def gripper_mask(joint_names: Sequence[str]) -> np.ndarray:
    """(A,) bool: the gripper columns (normalised units, not rad)."""
    return np.array(["gripper" in str(n) for n in joint_names], bool)


def summarize_seams(jumps: np.ndarray, joint_names: Sequence[str]) -> dict:
    """Statistics of the seam jumps ``jumps`` (N, A) (new chunk minus executing plan at each
    switch time): ``n``; ``mean_jump_rad``, ``p95_jump_rad``, ``max_jump_rad`` of the largest
    arm-joint |jump| per seam; ``mean_gripper_jump`` the same for the grippers (normalised);
    ``per_joint_mean`` (A,) mean |jump| per joint. Zeros when there was no seam."""
    names = list(joint_names)
    jumps = np.abs(np.asarray(jumps, np.float64).reshape(-1, len(names)))
    grip = gripper_mask(names)
    if len(jumps) == 0:
        return {
            "n": 0,
            "mean_jump_rad": 0.0,
            "p95_jump_rad": 0.0,
            "max_jump_rad": 0.0,
            "mean_gripper_jump": 0.0,
            "per_joint_mean": {n: 0.0 for n in names},
        }
    arm = jumps[:, ~grip].max(axis=1) if (~grip).any() else np.zeros(len(jumps))
    gr = jumps[:, grip].max(axis=1) if grip.any() else np.zeros(len(jumps))
    return {
        "n": int(len(jumps)),
        "mean_jump_rad": float(arm.mean()),
        "p95_jump_rad": float(np.percentile(arm, 95)),
        "max_jump_rad": float(arm.max()),
        "mean_gripper_jump": float(gr.mean()),
        "per_joint_mean": {n: float(v) for n, v in zip(names, jumps.mean(axis=0))},
    }


def inference_period(inference_steps: Sequence[int]) -> int | None:
    """The typical number of control steps between inference requests (the median gap), or
    None with fewer than two requests."""
    s = np.asarray(inference_steps, np.int64)
    if len(s) < 2:
        return None
    return int(np.median(np.diff(s)))


@dataclass
class LoopReport:
    """What :func:`detect_loops` found in one trajectory."""

    period_steps: int | None
    """The lag examined (the inference period), control steps; None: too few inferences."""
    loop: bool
    """Some window repeats its motion with that period."""
    loop_s: float
    """Time covered by looping windows, s."""
    first_loop_s: float | None
    """Start of the first looping window, s."""
    max_correlation: float
    """Largest correlation at the period over windows that move (0 when none moves)."""
    windows: list[tuple[float, float]]
    """(start, end) of each looping window, s, merged where they overlap."""
    speed: float = 0.0
    """Largest RMS speed of the periodic part over the looping windows, rad/s (how big the
    loop is: the sawtooth of a missed grasp measured 3-4 rad/s, a ripple of a few mrad per
    period 0.1-0.5; the norm is over every joint, the grippers' normalised units included)."""
    progress: float | None = None
    """Smallest progress over the looping windows (None: no loop): how far the arms get in one
    period over how far they go out in it; 0 a motion that comes back, 1 one that goes on."""
    returning: bool = False
    """Some looping window returns (progress < ``LOOP_RETURNING_PROGRESS``): the sawtooth."""

    def to_dict(self) -> dict:
        return {
            "speed": round(self.speed, 3),
            "progress": None if self.progress is None else round(self.progress, 3),
            "returning": self.returning,
            "period_steps": self.period_steps,
            "loop": self.loop,
            "loop_s": round(self.loop_s, 3),
            "first_loop_s": None if self.first_loop_s is None else round(self.first_loop_s, 3),
            "max_correlation": round(self.max_correlation, 3),
            "windows": [(round(a, 3), round(b, 3)) for a, b in self.windows],
        }


def _correlation(v: np.ndarray, lag: int) -> float:
    a, b = v[:-lag], v[lag:]
    den = np.sqrt(np.sum(a * a) * np.sum(b * b))
    return float(np.sum(a * b) / den) if den > 0 else 0.0


def period_progress(positions: np.ndarray, period_steps: int) -> float:
    """How far ``positions`` (T, A) get in one period against how far they go out in it:
    mean over t of |q(t + P) - q(t)| over mean over t of max over 0 < k <= P of
    |q(t + k) - q(t)| (norms over joints). 1 for a motion that goes on, 0 for one that comes
    back to where it was every period; 1.0 when nothing moves. (The farthest excursion, not the
    path length: sensor noise does not add up over a period.)"""
    q = np.asarray(positions, np.float64)
    P = int(period_steps)
    if len(q) <= P:
        return 1.0
    n = len(q) - P
    out = np.zeros(n)
    for k in range(1, P + 1):
        np.maximum(out, np.linalg.norm(q[k : k + n] - q[:n], axis=1), out=out)
    net = np.linalg.norm(q[P:] - q[:-P], axis=1)
    total = float(out.mean())
    return float(net.mean() / total) if total > 0 else 1.0


def detect_loops(positions: np.ndarray, period_steps: int | None, dt_s: float) -> LoopReport:
    """Look for the motion of ``positions`` (T, A) (one row per control step, dt_s apart)
    repeating every ``period_steps`` steps.

    The velocity (finite differences) minus its moving average over one period (which keeps a
    motion with that period whole and removes the slow trend of a reach) is cut into windows of
    ``LOOP_WINDOW_PERIODS`` periods, one period apart. A window loops when its correlation r(P)
    with itself P steps later is >= ``LOOP_MIN_CORRELATION``, exceeds r(P/2) by
    ``LOOP_MIN_MARGIN``, and its RMS speed is >= ``LOOP_MIN_SPEED``. Each looping window's
    :func:`period_progress` (on the positions it spans) says whether it returns or steps."""
    pos = np.asarray(positions, np.float64)
    P = None if period_steps is None else int(period_steps)
    none = LoopReport(P, False, 0.0, None, 0.0, [])
    if P is None or P < 2 or pos.ndim != 2:
        return none
    W = LOOP_WINDOW_PERIODS * P
    v = np.diff(pos, axis=0) / dt_s
    if len(v) < W + P:
        return none
    kernel = np.ones(P) / P
    trend = np.stack(
        [np.convolve(v[:, j], kernel, mode="valid") for j in range(v.shape[1])], axis=1
    )
    # centre the length-(T-P+1) average on the samples it averages
    lo = (P - 1) // 2
    vd = v[lo : lo + len(trend)] - trend
    half = max(1, P // 2)
    windows: list[tuple[int, int]] = []
    best = loop_speed = 0.0
    progress: float | None = None
    for i in range(0, len(vd) - W + 1, P):
        w = vd[i : i + W]
        speed = float(np.sqrt(np.mean(np.sum(w * w, axis=1))))
        if speed < LOOP_MIN_SPEED:
            continue
        r = _correlation(w, P)
        best = max(best, r)
        if r >= LOOP_MIN_CORRELATION and r - _correlation(w, half) >= LOOP_MIN_MARGIN:
            loop_speed = max(loop_speed, speed)
            a = i + lo
            pr = period_progress(pos[a : a + W + 1], P)
            progress = pr if progress is None else min(progress, pr)
            if windows and a <= windows[-1][1]:
                windows[-1] = (windows[-1][0], a + W)
            else:
                windows.append((a, a + W))
    spans = [(a * dt_s, b * dt_s) for a, b in windows]
    return LoopReport(
        P,
        bool(spans),
        float(sum(b - a for a, b in spans)),
        spans[0][0] if spans else None,
        best,
        spans,
        loop_speed,
        progress,
        progress is not None and progress < LOOP_RETURNING_PROGRESS,
    )


def clips_by_reason(counts: dict[str, int]) -> dict[str, int]:
    """The safety filter's counts with every reason present (zeros included), sorted: the
    clip reasons first, then suppressions."""
    from ..policy.safety import LEAD_LIMIT, POSITION_LIMIT, VELOCITY_LIMIT

    out = {k: 0 for k in (POSITION_LIMIT, VELOCITY_LIMIT, LEAD_LIMIT)}
    for k in sorted(counts):
        out[k] = out.get(k, 0) + int(counts[k])
    return out
