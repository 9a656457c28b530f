"""Seam and loop metrics on scripted trajectories: known seams give their jumps back, a motion
repeated every inference period is a loop, and reaches, holds, slow waves and motions with
another period are not."""

from __future__ import annotations

import numpy as np
import pytest

from clamp_core.aloha import ALOHA_JOINT_NAMES
from clamp_core.eval.seams import (
    LOOP_MIN_SPEED,
    LOOP_RETURNING_PROGRESS,
    clips_by_reason,
    detect_loops,
    inference_period,
    period_progress,
    summarize_seams,
)

DT = 0.02
A = 14
P = 25  # inference period, control steps (0.5 s)


def sawtooth(T: int, period: int, amplitude: float, phase: int = 0) -> np.ndarray:
    """(T,) the sawtooth the issue describes: a ramp over each period, then back to its start."""
    k = (np.arange(T) + phase) % period
    return amplitude * k / period


def looping_arms(T: int, period: int, rng, noise: float = 0.002) -> np.ndarray:
    """(T, 14): waist, elbow and wrist of both arms in a sawtooth, grippers cycling 0.2-0.55."""
    q = np.zeros((T, A))
    for j, amp in [(0, 0.15), (2, 0.2), (4, -0.25), (7, -0.1), (9, 0.18), (11, 0.3)]:
        q[:, j] = 0.3 + sawtooth(T, period, amp, phase=j)
    for g in (6, 13):
        q[:, g] = 0.2 + 0.35 * (sawtooth(T, period, 1.0) > 0.5)
    return q + rng.normal(0, noise, q.shape)


def min_jerk(q0, q1, n):
    s = np.linspace(0, 1, n)[:, None]
    return q0 + (q1 - q0) * (10 * s**3 - 15 * s**4 + 6 * s**5)


def reaches(T: int, rng) -> np.ndarray:
    """(T, 14): a task-like sequence of min-jerk reaches of random lengths and targets."""
    out, q = [], rng.uniform(-0.5, 0.5, A)
    while sum(len(o) for o in out) < T:
        n = int(rng.integers(15, 90))
        q1 = q + rng.uniform(-0.6, 0.6, A)
        out.append(min_jerk(q, q1, n))
        q = q1
    return np.concatenate(out)[:T] + rng.normal(0, 0.001, (T, A))


# ------------------------------------------------------------------------------ seams
def test_seam_statistics_from_known_jumps():
    jumps = np.zeros((4, A))
    jumps[0, 2] = 0.1  # arm joints: largest |jump| per seam
    jumps[1, 9] = -0.3
    jumps[1, 0] = 0.2
    jumps[2, 6] = 0.5  # a gripper only: arm jump 0 at this seam
    jumps[3, 4] = 0.05
    s = summarize_seams(jumps, ALOHA_JOINT_NAMES)
    assert s["n"] == 4
    assert s["mean_jump_rad"] == pytest.approx((0.1 + 0.3 + 0.0 + 0.05) / 4)
    assert s["max_jump_rad"] == pytest.approx(0.3)
    assert s["mean_gripper_jump"] == pytest.approx(0.5 / 4)
    assert s["per_joint_mean"]["right_elbow"] == pytest.approx(0.3 / 4)
    assert s["per_joint_mean"]["left_gripper"] == pytest.approx(0.5 / 4)
    empty = summarize_seams(np.zeros((0, A)), ALOHA_JOINT_NAMES)
    assert empty["n"] == 0 and empty["mean_jump_rad"] == 0.0


def test_inference_period_is_the_median_gap():
    assert inference_period([0, 25, 50, 80, 105]) == 25
    assert inference_period([10]) is None


def test_clips_by_reason_lists_every_clip_reason():
    out = clips_by_reason({"velocity_limit": 3, "suppressed stale input": 1})
    assert out == {
        "position_limit": 0,
        "velocity_limit": 3,
        "lead_limit": 0,
        "suppressed stale input": 1,
    }


# ------------------------------------------------------------------------------ loops
@pytest.mark.parametrize("seed", range(5))
def test_a_sawtooth_with_the_inference_period_is_a_loop(seed):
    rng = np.random.default_rng(seed)
    r = detect_loops(looping_arms(400, P, rng), P, DT)
    assert r.loop and r.period_steps == P
    assert r.loop_s >= 0.8 * 400 * DT and r.max_correlation >= 0.9


def staircase(T: int, period: int, rng, noise: float = 0.0005) -> np.ndarray:
    """(T, 14): the same joints going on in pulses of the period: a min-jerk step over the
    first half of each period, then a hold (each chunk moving, then slowing, never back)."""
    q = np.zeros((T, A))
    k = np.arange(T) % period
    half = period // 2
    s = np.minimum(k / half, 1.0)
    pulse = 10 * s**3 - 15 * s**4 + 6 * s**5
    n = np.arange(T) // period
    for j, amp in [(0, 0.03), (2, -0.04), (4, 0.05), (7, 0.02), (9, -0.03), (11, 0.04)]:
        q[:, j] = 0.3 + amp * (n + pulse)
    return q + rng.normal(0, noise, q.shape)


@pytest.mark.parametrize("seed", range(3))
def test_a_sawtooth_returns_and_a_staircase_steps(seed):
    """Both repeat their motion every period (loops); the sawtooth ends each period where it
    began it (progress ~0: returning), the staircase goes on (progress ~1: stepping)."""
    rng = np.random.default_rng(seed)
    saw = detect_loops(looping_arms(400, P, rng), P, DT)
    assert saw.loop and saw.returning and saw.progress < 0.1
    steps = detect_loops(staircase(400, P, rng), P, DT)
    assert steps.loop and not steps.returning and steps.progress > 0.8, steps
    assert steps.to_dict()["returning"] is False and saw.to_dict()["progress"] < 0.1
    assert saw.progress < LOOP_RETURNING_PROGRESS < steps.progress


def test_a_staircase_then_a_sawtooth_returns_and_the_progress_is_the_sawtooths():
    """The smallest progress over the looping windows: one returning stretch after a
    stepping one makes the trajectory returning."""
    rng = np.random.default_rng(4)
    steps = staircase(300, P, rng)
    saw = looping_arms(300, P, rng, noise=0.0005) * 0.3
    q = np.concatenate([steps, saw - saw[0] + steps[-1]])
    r = detect_loops(q, P, DT)
    first = detect_loops(steps, P, DT)
    assert r.loop and r.returning and r.progress < 0.2
    assert first.loop and not first.returning
    assert r.windows[-1][1] > 300 * DT  # the loop goes on into the sawtooth


def test_period_progress_of_known_motions():
    t = np.arange(101, dtype=np.float64)[:, None]
    assert period_progress(np.hstack([t, 2 * t]) * 0.01, 10) == pytest.approx(1.0)
    # out and back within each period: zero net motion over one period
    tri = np.abs((t % 10) - 5) * 0.01
    assert period_progress(tri, 10) == pytest.approx(0.0, abs=1e-12)
    assert period_progress(np.zeros((50, 3)), 10) == 1.0  # nothing moves
    # sensor noise does not add up: a straight motion with noise still goes on
    noisy = np.hstack([t, 2 * t]) * 0.01 + np.random.default_rng(0).normal(0, 0.002, (101, 2))
    assert period_progress(noisy, 10) > 0.85
    no_loop = detect_loops(reaches(500, np.random.default_rng(0)), P, DT)
    assert no_loop.progress is None and not no_loop.returning


def test_a_loop_after_a_reach_is_found_where_it_starts():
    rng = np.random.default_rng(7)
    q = reaches(300, rng)
    loop = looping_arms(300, P, rng) - looping_arms(1, P, rng)[0] + q[-1]
    r = detect_loops(np.concatenate([q, loop]), P, DT)
    assert r.loop
    assert 300 * DT - 2 * P * DT <= r.first_loop_s <= 300 * DT + P * DT
    assert r.loop_s == pytest.approx(300 * DT, abs=3 * P * DT)


@pytest.mark.parametrize("seed", range(5))
def test_task_like_reaches_are_no_loop(seed):
    r = detect_loops(reaches(500, np.random.default_rng(seed)), P, DT)
    assert not r.loop, r


def test_a_held_arm_is_no_loop_with_or_without_sensor_noise():
    rng = np.random.default_rng(0)
    still = np.full((500, A), 0.3) + rng.normal(0, 1e-5, (500, A))
    r = detect_loops(still, P, DT)
    assert not r.loop and r.max_correlation == 0.0  # below the speed floor everywhere
    assert LOOP_MIN_SPEED > 0
    noisy = np.full((500, A), 0.3) + rng.normal(0, 0.0005, (500, A))
    assert not detect_loops(noisy, P, DT).loop  # moving (noise), but not periodic


@pytest.mark.parametrize("factor", [1.6, 2.5, 6.0, 12.0])
def test_a_periodic_motion_with_another_period_is_no_loop(factor):
    """Waving with a period that is not the inference period (slower ones included: a slow
    wave correlates with itself at short lags, the half-period margin tells it apart)."""
    t = np.arange(600) * DT
    period_s = factor * P * DT
    q = np.zeros((600, A))
    q[:, :6] = 0.4 * np.sin(2 * np.pi * t / period_s)[:, None]
    q += np.random.default_rng(1).normal(0, 0.001, q.shape)
    assert not detect_loops(q, P, DT).loop


def test_the_same_sawtooth_at_another_inference_period_is_no_loop():
    rng = np.random.default_rng(3)
    q = looping_arms(500, 37, rng)
    assert detect_loops(q, 37, DT).loop
    assert not detect_loops(q, P, DT).loop


def test_too_short_or_no_period():
    rng = np.random.default_rng(0)
    assert not detect_loops(looping_arms(80, P, rng), P, DT).loop  # under 4 periods
    assert not detect_loops(looping_arms(400, P, rng), None, DT).loop
    assert detect_loops(looping_arms(400, P, rng), None, DT).to_dict()["period_steps"] is None


# ------------------------------------------------------------------------------ in the sim
def test_eval_sim_reports_seams_loops_and_clips_and_guided_seams_are_closed(tmp_path):
    """`clamp eval sim` with an untrained model (wild chunks): async seams jump, seam_guided
    ones land on the plan followed; both results carry the metrics and plot them."""
    import cv2

    from clamp_core.eval.plots import plot_eval
    from clamp_core.eval.sim_eval import evaluate
    from clamp_core.models.config import ModelConfig, preset
    from clamp_core.policy.execution import ExecutionConfig
    from clamp_core.training.export import export_untrained

    d = preset("cpu-small").to_dict()
    d["view_size"] = 32
    d["image"].update(patch_size=8, dim=48, layers=1, heads=2)
    d["denoiser"].update(dim=32, layers=1, cond_layers=1, heads=2)
    export_untrained(ModelConfig.from_dict(d), tmp_path / "m", verify=False)
    out = {}
    for mode in ("async", "seam_guided"):
        out[mode] = evaluate(
            tmp_path / "m",
            "transfer_cube",
            [3],
            64,
            48,
            execution=ExecutionConfig(mode=mode, candidates=2 if mode == "seam_guided" else 1),
            progress=False,
            threads=1,
            inference_steps=2,
            latency_steps=3,
            camera_every=5,
            trace=True,
        )
    for mode, r in out.items():
        (ep,) = r["episodes"]
        tr = ep["trace"]
        assert r["seams"]["n"] == ep["seams"]["n"] == len(tr["seam_steps"]) >= 2, mode
        assert set(tr["seam_steps"]) <= set(tr["inference_steps"] + 3)  # arrivals
        assert set(r["clipped"]) >= {"position_limit", "velocity_limit", "lead_limit"}
        assert {"loop", "loop_s", "period_steps", "progress", "returning"} <= set(ep["loops"])
        assert {"failed_returning", "failed_mean_progress"} <= set(r["loops"])
        png = plot_eval(r, tmp_path / f"{mode}.png")
        assert cv2.imread(str(png)).shape[0] > 700
    assert out["async"]["seams"]["mean_jump_rad"] > 0.05
    assert out["seam_guided"]["seams"]["mean_jump_rad"] < 1e-3
