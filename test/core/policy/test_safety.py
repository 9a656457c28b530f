"""The safety filter: position and velocity limits that hold for any input, suppression with a
reason for anything unsafe, identity on safe input; the ALOHA limits table; the watchdog."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clamp_core.policy.safety import (
    GRIPPER_MAX_VELOCITY,
    VX300S_JOINT_RANGES,
    VX300S_MAX_VELOCITY,
    MeasuredStateValidator,
    SafetyConfig,
    SafetyFilter,
    Watchdog,
    aloha_defaults,
)

T0 = 1_700_000_000_000_000_000
MS = 1_000_000
CFG = aloha_defaults()
LO, HI = CFG.limits()
VMAX = np.array(CFG.max_velocity)
A = 14


def run(f: SafetyFilter, times, positions, measured, measured_stamp=T0, now=None, **kw):
    kw.setdefault("input_stamps", {"cam_high": T0, "joint_states": T0})
    kw.setdefault("enabled", True)
    now = T0 + 10 * MS if now is None else now
    return f.filter(
        np.asarray(times, np.int64), positions, measured, measured_stamp, now_ns=now, **kw
    )


def random_case(rng: np.random.Generator, scale: float):
    """Random times (K,) after a measured stamp and positions (K, A) that may be far out of the
    limits and jump anywhere; a measured state within the limits."""
    K = int(rng.integers(1, 60))
    first = T0 + int(rng.integers(-30 * MS, 60 * MS))  # before, at or after the measurement
    dts = rng.integers(1, 60 * MS, K - 1)  # 1 ns .. 60 ms
    times = first + np.concatenate([[0], np.cumsum(dts)])
    mid, half = (LO + HI) / 2, (HI - LO) / 2
    positions = mid + half * scale * rng.uniform(-1, 1, (K, A))
    if rng.random() < 0.5:  # sometimes a smooth trajectory that only now and then breaks out
        walk = np.cumsum(rng.normal(0, 0.05, (K, A)), axis=0)
        positions = mid + walk * scale
    measured = rng.uniform(LO, HI)
    return times, positions, measured


def check_limits(out, times, measured, measured_stamp=T0, lo=LO, hi=HI, vmax=VMAX, period=0.02):
    """Independent check: inside the position limits, and no step faster than vmax, the first
    one measured from the measured state over at least one control period."""
    assert out.shape[1] == len(lo)
    assert (out >= lo).all() and (out <= hi).all()
    prev, prev_t = np.asarray(measured, float), None
    for k in range(len(times)):
        if prev_t is None:
            dt = max((int(times[0]) - measured_stamp) / 1e9, period)
        else:
            dt = (int(times[k]) - prev_t) / 1e9
        step = np.abs(out[k] - prev)
        assert (step <= vmax * dt * (1 + 1e-9) + 1e-12).all(), (k, step - vmax * dt)
        prev, prev_t = out[k], int(times[k])


# ------------------------------------------------------------------------------ limits table
def test_aloha_limits_equal_the_gym_aloha_model():
    pytest.importorskip("mujoco")
    pytest.importorskip("gym_aloha")
    from clamp_core.sim.aloha import (
        ARM_JOINTS,
        JOINT_NAMES,
        SIDES,
        AlohaSim,
        finger_to_gripper,
    )

    sim = AlohaSim(render=False)
    try:
        model = sim.model
        assert CFG.joint_names == JOINT_NAMES
        for side in SIDES:
            for joint in ARM_JOINTS:
                lo, hi = model.jnt_range[model.joint(f"vx300s_{side}/{joint}").id]
                assert VX300S_JOINT_RANGES[joint] == (lo, hi), (side, joint)
                i = CFG.joint_names.index(f"{side}_{joint}")
                assert (CFG.position_min[i], CFG.position_max[i]) == (lo, hi)
            # the normalised gripper spans the finger joint's whole range
            lo, hi = model.jnt_range[model.joint(f"vx300s_{side}/left_finger").id]
            i = CFG.joint_names.index(f"{side}_gripper")
            assert finger_to_gripper(lo) == pytest.approx(CFG.position_min[i], abs=1e-12)
            assert finger_to_gripper(hi) == pytest.approx(CFG.position_max[i], abs=1e-12)
            assert i in CFG.gripper_indices
    finally:
        sim.close()


def test_aloha_defaults():
    assert CFG.gripper_indices == (6, 13)
    assert (CFG.gripper_min, CFG.gripper_max) == (0.0, 1.0)
    for i in range(A):
        expected = GRIPPER_MAX_VELOCITY if i in (6, 13) else VX300S_MAX_VELOCITY
        assert CFG.max_velocity[i] == expected
    assert aloha_defaults(max_input_age_s=0.3).max_input_age_s == 0.3


def test_expert_like_motion_passes_the_defaults_unchanged():
    """The scripted experts move a joint at most 0.06 rad per 20 ms step."""
    f = SafetyFilter(CFG)
    start = np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 1.0] * 2)
    steps = np.zeros((20, A))
    steps[:, [0, 1, 3, 5, 7, 8, 10, 12]] = 0.06  # 1.2 rad in all: joints with room for it
    times = T0 + 20 * MS * np.arange(1, 21)
    res = run(f, times, start + np.cumsum(steps, axis=0), start)
    assert res.ok and res.clipped == {"position_limit": 0, "velocity_limit": 0, "lead_limit": 0}


# ------------------------------------------------------------------------------ configuration
def _cfg(**kw):
    fields = dict(
        joint_names=["a", "b", "g"],
        position_min=[-1.0, -2.0, 0.0],
        position_max=[1.0, 2.0, 1.0],
        max_velocity=[1.0, 2.0, 5.0],
        gripper_indices=(2,),
    )
    fields.update(kw)
    return SafetyConfig(**fields)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"joint_names": []}, "joint_names"),
        ({"joint_names": ["a", "a", "g"]}, "unique"),
        ({"position_min": [0.0, 0.0]}, "position_min: needs 3"),
        ({"position_max": [1.0, math.nan, 1.0]}, "position_max: needs 3 finite"),
        ({"max_velocity": [1.0, 0.0, 1.0]}, r"max_velocity: must be > 0.*'b'"),
        ({"position_min": [2.0, -2.0, 0.0]}, r"position_min > position_max for \['a'\]"),
        ({"gripper_indices": (3,)}, "gripper_indices"),
        ({"gripper_indices": (2, 2)}, "gripper_indices"),
        ({"gripper_min": 1.0, "gripper_max": 0.0}, "gripper_min"),
        ({"gripper_min": 2.0, "gripper_max": 3.0}, "overlap"),
        ({"max_input_age_s": 0.0}, "max_input_age_s"),
        ({"max_chunk_age_s": -1.0}, "max_chunk_age_s"),
        ({"control_period_s": math.inf}, "control_period_s"),
        ({"tracking_lag_s": 0.0}, "tracking_lag_s"),
        ({"tracking_lag_s": 0.01}, r"tracking_lag_s \(0.01 s\) < control_period_s"),
    ],
)
def test_config_errors_say_what_to_change(kw, message):
    with pytest.raises(ValueError, match=message):
        _cfg(**kw)


def test_gripper_limits_and_position_limits_both_hold():
    cfg = _cfg(position_min=[-1.0, -2.0, -0.5], position_max=[1.0, 2.0, 0.8])
    lo, hi = cfg.limits()
    np.testing.assert_array_equal(lo, [-1.0, -2.0, 0.0])  # gripper_min 0 is tighter
    np.testing.assert_array_equal(hi, [1.0, 2.0, 0.8])  # position_max 0.8 is tighter


# ------------------------------------------------------------------------------ properties
def test_output_never_leaves_the_position_and_velocity_limits():
    f = SafetyFilter(CFG)
    for seed in range(300):
        rng = np.random.default_rng(seed)
        times, positions, measured = random_case(rng, scale=float(rng.choice([0.5, 1.5, 20.0])))
        res = run(f, times, positions, measured, now=int(times[0]))
        assert res.ok, res.suppressed
        check_limits(res.positions, times, measured)
        outside = (positions < LO) | (positions > HI)
        assert res.clipped["position_limit"] == int(outside.sum())


def test_limits_hold_for_any_configuration():
    for seed in range(300):
        rng = np.random.default_rng(1000 + seed)
        n = int(rng.integers(1, 8))
        lo = rng.uniform(-3, 0, n)
        hi = lo + rng.uniform(0, 3, n)
        vmax = rng.uniform(0.01, 10, n)
        period = float(rng.uniform(0.001, 0.05))
        cfg = SafetyConfig(
            [f"j{i}" for i in range(n)], lo, hi, vmax, gripper_indices=(), control_period_s=period
        )
        K = int(rng.integers(1, 30))
        times = T0 + np.cumsum(rng.integers(1, 50 * MS, K))
        positions = rng.normal(0, 5, (K, n))
        measured = rng.uniform(lo, hi)
        m_stamp = T0 + int(rng.integers(-20 * MS, 20 * MS))
        res = SafetyFilter(cfg).filter(times, positions, measured, m_stamp, {}, T0, True)
        assert res.ok
        check_limits(res.positions, times, measured, m_stamp, lo, hi, vmax, period)


def test_filter_is_the_identity_on_safe_input():
    f = SafetyFilter(CFG)
    for seed in range(300):
        rng = np.random.default_rng(2000 + seed)
        K = int(rng.integers(1, 60))
        dt_ns = int(rng.integers(5 * MS, 40 * MS))
        times = T0 + dt_ns * np.arange(1, K + 1)
        measured = rng.uniform(LO + 0.2 * (HI - LO), HI - 0.2 * (HI - LO))
        steps = rng.uniform(-0.9, 0.9, (K, A)) * VMAX * min(dt_ns / 1e9, 0.02)
        positions = np.clip(measured + np.cumsum(steps, axis=0), LO, HI)
        res = run(f, times, positions, measured, now=T0)
        assert res.ok
        np.testing.assert_array_equal(res.positions, positions)  # bit for bit
        assert res.clipped == {"position_limit": 0, "velocity_limit": 0, "lead_limit": 0}


def test_a_jump_becomes_a_ramp_at_max_velocity():
    f = SafetyFilter(CFG)
    measured = np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 1.0] * 2)
    target = measured.copy()
    target[0] += 1.0  # left waist: 1 rad at once
    target[6] = 0.05  # left gripper: close at once
    times = T0 + 20 * MS * np.arange(1, 31)
    res = run(f, times, np.tile(target, (30, 1)), measured)
    k = np.arange(1, 31)
    np.testing.assert_allclose(res.positions[:, 0], np.minimum(k * math.pi * 0.02, 1.0))
    np.testing.assert_allclose(
        res.positions[:, 6], np.maximum(1.0 - k * 5.0 * 0.02, 0.05), rtol=0, atol=1e-12
    )
    np.testing.assert_array_equal(res.positions[:, 1:6], np.tile(measured[1:6], (30, 1)))
    assert res.clipped["velocity_limit"] == 15 + 9  # steps still limited: waist 15, gripper 9


def test_first_point_moves_over_at_least_one_control_period():
    f = SafetyFilter(CFG)
    measured = np.zeros(A)
    target = np.full((1, A), 0.5) * (HI > 0.5)
    for first in (T0 - 50 * MS, T0, T0 + 1):  # at or before the measurement: one period
        res = run(f, [first], target, measured)
        np.testing.assert_allclose(res.positions[0], np.minimum(target[0], VMAX * 0.02))
    # 0.1 s after the measurement, 0.09 s from now: 0.283 rad allowed
    res = run(f, [T0 + 100 * MS], target, measured)
    np.testing.assert_allclose(res.positions[0], np.minimum(target[0], VMAX * 0.09))
    # an old (but not yet stale) measurement buys no step: the arm has only from now on
    old = T0 - 450 * MS
    inputs = {"cam_high": T0, "joint_states": old}
    for first, span in ((T0 + 10 * MS, 0.02), (T0 + 70 * MS, 0.06)):
        res = run(f, [first], target, measured, measured_stamp=old, input_stamps=inputs)
        np.testing.assert_allclose(res.positions[0], np.minimum(target[0], VMAX * span))


def test_with_a_previous_command_steps_and_lead_stay_bounded():
    """From the command the controller follows: no step faster than vmax (the first over one
    period from it), never further than vmax x (lag + time since the measurement) from the
    measured state; where the two bounds cannot both hold, a stop that names the joint."""
    f = SafetyFilter(CFG)
    lag, period = CFG.tracking_lag_s, CFG.control_period_s
    stops = eased = 0
    for seed in range(300):
        rng = np.random.default_rng(6000 + seed)
        times, positions, measured = random_case(rng, scale=float(rng.choice([0.5, 1.5, 20.0])))
        previous = np.clip(measured + rng.normal(0, float(rng.choice([0.05, 0.5])), A), LO, HI)
        res = run(f, times, positions, measured, now=int(times[0]), previous=previous)
        since = np.maximum((times - T0) / 1e9, 0.0)
        lead = VMAX * (lag + since[:, None])
        if not res.ok:
            stops += 1
            assert res.suppressed.startswith("measured joint state disagrees with the plan")
            far = np.abs(previous - measured) > lead[0] + VMAX * (period + CFG.max_disagreement_s)
            named = res.suppressed.split(": ")[1].split(" ")[0]
            assert far[CFG.joint_names.index(named)]
            continue
        out = res.positions
        assert (out >= LO).all() and (out <= HI).all()
        # the velocity invariant from the plan followed, always
        assert (np.abs(out[0] - previous) <= VMAX * period * (1 + 1e-9) + 1e-12).all()
        for k in range(1, len(times)):
            dt = (int(times[k]) - int(times[k - 1])) / 1e9
            assert (np.abs(out[k] - out[k - 1]) <= VMAX * dt * (1 + 1e-9) + 1e-12).all()
        # within the lead bound, or on the way back to it at the velocity limit
        dist = np.abs(out - measured)
        before = np.vstack([np.abs(previous - measured), dist[:-1]])
        dts = np.concatenate([[period], np.diff(times) / 1e9])[:, None]
        easing = np.isclose(before - dist, VMAX * dts, rtol=1e-9, atol=1e-12)
        assert ((dist <= lead * (1 + 1e-9) + 1e-12) | easing).all()
        eased += int((dist > lead * (1 + 1e-9) + 1e-12).any())
    assert 0 < stops < 300 and eased > 0  # every branch was exercised


def test_an_arm_trailing_its_command_keeps_its_plan():
    """A position-controlled arm lags its command (the experts lead by up to 0.12 rad) and a
    gripper squeezing an object stays open of its command: expert-like plans pass unchanged
    from the previous command, where a limit from the measured state would cut them."""
    f = SafetyFilter(CFG)
    measured = np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.4] * 2)
    previous = measured.copy()
    previous[4] += 0.1  # the wrist trails by 0.1 rad
    previous[6] = 0.0  # the gripper is commanded shut on a handle that holds it at 0.4
    times = T0 + 20 * MS * np.arange(1, 11)
    plan = np.tile(previous, (10, 1))
    plan[:, 4] += 0.04 * np.arange(1, 11)  # 2 rad/s on
    res = run(f, times, plan, measured, previous=previous)
    np.testing.assert_array_equal(res.positions, plan)
    assert res.clipped == {"position_limit": 0, "velocity_limit": 0, "lead_limit": 0}
    # the old rule, from the measured state: the wrist and the squeeze are cut
    res = run(f, times, plan, measured)
    assert res.clipped["velocity_limit"] > 0
    assert res.positions[0, 6] == pytest.approx(0.4 - 5.0 * 0.02)


def test_an_arm_that_stopped_following_is_eased_back_or_stopped_never_jumped():
    f = SafetyFilter(CFG)
    measured = np.zeros(A)
    lead = VMAX[1] * CFG.tracking_lag_s
    step = VMAX[1] * CFG.control_period_s
    # the shoulder's command is a little past the lead bound: it eases back by one step
    previous = np.zeros(A)
    previous[1] = lead + 0.5 * step
    res = run(f, [T0], np.tile(previous, (1, 1)), measured, previous=previous)
    assert res.positions[0, 1] == pytest.approx(lead)
    assert abs(res.positions[0, 1] - previous[1]) <= step
    assert res.clipped == {"position_limit": 0, "velocity_limit": 0, "lead_limit": 1}
    # 0.2 rad beyond that (the arm did not keep up): it eases back at the velocity limit
    previous[1] = lead + step + 0.2
    res = run(f, [T0, T0 + 20 * MS], np.tile(previous, (2, 1)), measured, previous=previous)
    np.testing.assert_allclose(res.positions[:, 1], previous[1] - step * np.array([1, 2]))
    assert res.clipped["lead_limit"] == 2
    # 1 rad ahead (blocked, or the measurement is wrong): pulling it back would be a jump
    # (the old filter commanded 0.69 rad in 20 ms here); it stops instead
    previous[1] = 1.0
    res = run(f, [T0], np.tile(previous, (1, 1)), measured, previous=previous)
    assert res.positions is None
    margin = step + VMAX[1] * CFG.max_disagreement_s
    assert res.suppressed == (
        "measured joint state disagrees with the plan: left_shoulder measured 0.000, "
        f"commanded 1.000 (at most {lead:.3f} + {margin:.3f} apart)"
    )
    np.testing.assert_array_equal(res.hold_position, measured)
    # a non-finite or missing previous command falls back to the measured state
    for prev in (np.full(A, np.nan), None):
        res = run(f, [T0], np.tile(previous, (1, 1)), measured, previous=prev)
        assert res.positions[0, 1] == pytest.approx(step)


def test_a_wrong_measured_state_never_drags_the_command_past_the_velocity_limit():
    """The reported defect: the arm follows its plan at 0, a finite but wrong measurement
    (2.5 rad, 3.3 rad, 1e3 rad) arrives; the old filter clipped the velocity first and the
    lead bound after, around the wrong state, and commanded a 2.1-2.8 rad step."""
    f = SafetyFilter(CFG)
    previous = np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.5] * 2)
    times = T0 + 20 * MS * np.arange(1, 51)
    plan = np.tile(previous, (50, 1))
    for wrong in (2.5, 3.3, 1e3, -1e3):
        measured = previous.copy()
        measured[0] = wrong
        res = run(f, times, plan, measured, previous=previous)
        assert res.positions is None, wrong
        assert "left_waist" in res.suppressed


def test_measured_state_beyond_a_limit_counts_as_at_the_limit():
    f = SafetyFilter(CFG)
    tol = CFG.measured_tolerances()
    for seed in range(100):
        rng = np.random.default_rng(3000 + seed)
        times, positions, _ = random_case(rng, scale=2.0)
        measured = rng.uniform(LO - 0.99 * tol, HI + 0.99 * tol)
        res = run(f, times, positions, measured, now=int(times[0]))
        np.testing.assert_array_equal(res.hold_position, np.clip(measured, LO, HI))
        check_limits(res.positions, times, res.hold_position)


def test_a_measured_state_well_beyond_a_limit_is_implausible_and_suppresses():
    f = SafetyFilter(CFG)
    measured = np.zeros(A)
    for col, value in ((0, 3.3), (1, -1e3), (6, 1.6), (13, -0.6)):
        m = measured.copy()
        m[col] = value
        res = run(f, [T0 + 20 * MS], np.zeros((1, A)), m)
        assert res.positions is None
        assert res.suppressed.startswith(
            f"measured joint state implausible: {CFG.joint_names[col]} at {value:.4g}, outside"
        )
        assert f.input_problem(m, T0, {}, T0) == res.suppressed


# ------------------------------------------------------------------------------ suppression
def test_nan_or_inf_anywhere_in_the_command_suppresses():
    f = SafetyFilter(CFG)
    for seed in range(300):
        rng = np.random.default_rng(4000 + seed)
        times, positions, measured = random_case(rng, scale=1.0)
        n_bad = int(rng.integers(1, positions.size + 1))
        idx = rng.choice(positions.size, n_bad, replace=False)
        positions.flat[idx] = rng.choice([np.nan, np.inf, -np.inf], n_bad)
        res = run(f, times, positions, measured, now=int(times[0]))
        assert res.positions is None
        assert res.suppressed == f"non-finite command ({n_bad} values)"
        assert res.clipped == {"position_limit": 0, "velocity_limit": 0, "lead_limit": 0}
        np.testing.assert_array_equal(res.hold_position, measured)


def test_missing_or_nan_measured_state_suppresses():
    f = SafetyFilter(CFG)
    times, positions = [T0 + 20 * MS], np.zeros((1, A))
    res = run(f, times, positions, None)
    assert res.suppressed == "measured joint state missing" and res.hold_position is None
    res = run(f, times, positions, np.zeros(A), measured_stamp=None)
    assert res.suppressed == "measured joint state missing"
    for seed in range(50):
        rng = np.random.default_rng(5000 + seed)
        measured = rng.uniform(LO, HI)
        bad = rng.choice(A, int(rng.integers(1, A + 1)), replace=False)
        measured[bad] = np.nan
        res = run(f, times, positions, measured)
        assert res.positions is None and res.hold_position is None
        assert res.suppressed.startswith("measured joint state non-finite (")
        assert all(CFG.joint_names[i] in res.suppressed for i in bad)


def test_disabled_always_suppresses_first():
    f = SafetyFilter(CFG)
    for seed in range(100):
        rng = np.random.default_rng(6000 + seed)
        times, positions, measured = random_case(rng, scale=float(rng.choice([0.5, 5.0])))
        if rng.random() < 0.3:
            positions[0, 0] = np.nan
        res = run(f, times, positions, measured, enabled=False, now=T0 + 10**10)
        assert res.positions is None and res.suppressed == "disabled"
        np.testing.assert_array_equal(res.hold_position, measured)


def test_stale_inputs_suppress_naming_the_input_and_its_age():
    f = SafetyFilter(CFG)
    times, positions, measured = [T0 + 900 * MS], np.zeros((1, A)), np.zeros(A)
    stamps = {"cam_high": T0 + 70 * MS, "cam_low": T0 + 850 * MS}
    res = run(
        f,
        times,
        positions,
        measured,
        measured_stamp=T0 + 890 * MS,
        input_stamps=stamps,
        now=T0 + 900 * MS,
    )
    assert res.positions is None
    assert res.suppressed == "stale input 'cam_high' (0.83 s > 0.50 s)"
    stamps["cam_low"] = T0 + 300 * MS
    res = run(
        f,
        times,
        positions,
        measured,
        measured_stamp=T0 + 890 * MS,
        input_stamps=stamps,
        now=T0 + 900 * MS,
    )
    assert res.suppressed == (
        "stale input 'cam_high' (0.83 s > 0.50 s); stale input 'cam_low' (0.60 s > 0.50 s)"
    )
    res = run(
        f,
        times,
        positions,
        measured,
        measured_stamp=T0 + 890 * MS,
        input_stamps={"tf": None},
        now=T0 + 900 * MS,
    )
    assert res.suppressed == "no input 'tf' received"
    res = run(f, times, positions, measured, measured_stamp=T0, input_stamps={}, now=T0 + 600 * MS)
    assert res.suppressed == "stale measured joint state (0.60 s > 0.50 s)"


def test_any_stale_input_always_suppresses():
    f = SafetyFilter(CFG)
    for seed in range(300):
        rng = np.random.default_rng(7000 + seed)
        times, positions, measured = random_case(rng, scale=1.0)
        now = int(times[0])
        names = [f"input{i}" for i in range(int(rng.integers(1, 6)))]
        stamps = {n: now - int(rng.integers(0, 500 * MS)) for n in names}  # all fresh
        stale = rng.choice(names)
        age_ns = int(rng.integers(500 * MS + 1, 10**10))
        stamps[stale] = now - age_ns
        res = run(f, times, positions, measured, measured_stamp=now, input_stamps=stamps, now=now)
        assert res.positions is None
        assert f"stale input '{stale}' ({age_ns / 1e9:.2f} s > 0.50 s)" in res.suppressed


def test_input_problem_is_the_filters_watchdog():
    """The node's watchdog for commands already sent gives the filter's own verdict."""
    f = SafetyFilter(CFG)
    for seed in range(200):
        rng = np.random.default_rng(9000 + seed)
        times, positions, measured = random_case(rng, scale=1.0)
        now = int(times[0])
        stamps = {f"input{i}": now - int(rng.integers(0, 900 * MS)) for i in range(3)}
        if seed % 4 == 0:
            measured = measured.copy()
            measured[int(rng.integers(0, A))] = np.nan
        m_stamp = None if seed % 7 == 0 else now - int(rng.integers(0, 700 * MS))
        res = run(
            f, times, positions, measured, measured_stamp=m_stamp, input_stamps=stamps, now=now
        )
        problem = f.input_problem(measured, m_stamp, stamps, now)
        if problem is not None:
            assert res.positions is None and res.suppressed == problem
        else:
            assert res.suppressed is None or not res.suppressed.startswith(("stale", "measured"))
    assert f.input_problem(None, None, {}, T0) == "measured joint state missing"


def test_inputs_from_before_a_clock_reset_suppress():
    """After the clock jumped back (a sim reset, a bag looping), inputs received before it are
    stamped in the future: their age means nothing, so they count as missing until they come
    again; a little ahead (threads reading the clock in another order) is fine."""
    f = SafetyFilter(CFG)
    q = np.zeros(A)
    later = T0 + 100 * 10**9
    problem = f.input_problem(q, T0, {"cam_high": later, "joint_states": T0}, T0)
    assert problem == "input 'cam_high' 100.00 s in the future"
    problem = f.input_problem(q, later, {"cam_high": T0}, T0)
    assert problem == "measured joint state 100.00 s in the future"
    assert f.input_problem(q, T0 + 5 * MS, {"cam_high": T0 + 5 * MS}, T0) is None
    res = run(f, [T0 + 20 * MS], q[None], q, input_stamps={"cam_high": later}, now=T0)
    assert res.positions is None and "in the future" in res.suppressed


def test_stale_chunk_suppresses():
    f = SafetyFilter(CFG)
    times, positions, measured = [T0 + 20 * MS], np.zeros((1, A)), np.zeros(A)
    res = run(f, times, positions, measured, chunk_stamp_ns=T0 - 1200 * MS, now=T0)
    assert res.suppressed == "stale chunk (1.20 s > 1.00 s)"
    assert run(f, times, positions, measured, chunk_stamp_ns=T0 - 900 * MS, now=T0).ok


def test_empty_or_unordered_trajectories_suppress():
    f = SafetyFilter(CFG)
    measured = np.zeros(A)
    res = run(f, np.zeros(0, np.int64), np.zeros((0, A)), measured)
    assert res.suppressed == "empty trajectory"
    res = run(f, [T0 + 40 * MS, T0 + 20 * MS], np.zeros((2, A)), measured)
    assert res.suppressed == "command times not strictly increasing"


def test_wrong_shapes_raise():
    f = SafetyFilter(CFG)
    with pytest.raises(ValueError, match="positions"):
        run(f, [T0], np.zeros((1, 13)), np.zeros(A))
    with pytest.raises(ValueError, match="positions"):
        run(f, [T0, T0 + 1], np.zeros((1, A)), np.zeros(A))
    with pytest.raises(ValueError, match="measured_qpos"):
        run(f, [T0], np.zeros((1, A)), np.zeros(7))
    with pytest.raises(ValueError, match="times_ns"):
        f.filter(np.array([0.5]), np.zeros((1, A)), np.zeros(A), T0, {}, T0, True)
    with pytest.raises(ValueError, match="now_ns"):
        f.filter(np.array([T0]), np.zeros((1, A)), np.zeros(A), T0, {}, 1.5, True)


# ------------------------------------------------------------------------------ watchdog
def test_watchdog_reports_stale_inputs_oldest_first():
    wd = Watchdog(0.5, expected=["cam_high", "joint_states", "tf"])
    wd.touch("cam_high", T0)
    wd.touch("joint_states", T0 + 400 * MS)
    wd.touch("joint_states", T0 + 100 * MS)  # late message: the newest stamp stays
    assert wd.stale(T0 + 300 * MS) == [("tf", math.inf)]
    stale = wd.stale(T0 + 850 * MS)
    assert [n for n, _ in stale] == ["tf", "cam_high"]
    assert stale[1][1] == pytest.approx(0.85)
    assert wd.stamps == {"cam_high": T0, "joint_states": T0 + 400 * MS, "tf": None}
    f = SafetyFilter(CFG)
    res = run(
        f,
        [T0 + 860 * MS],
        np.zeros((1, A)),
        np.zeros(A),
        measured_stamp=T0 + 840 * MS,
        input_stamps=wd.stamps,
        now=T0 + 850 * MS,
    )
    assert res.suppressed == "no input 'tf' received; stale input 'cam_high' (0.85 s > 0.50 s)"
    wd.reset()
    assert wd.stamps == {"cam_high": None, "joint_states": None, "tf": None}
    with pytest.raises(ValueError, match="max_age_s"):
        Watchdog(0.0)


# ------------------------------------------------------------------------------ measured state
ARM_JOINTS = [
    "waist",
    "shoulder",
    "elbow",
    "forearm_roll",
    "wrist_angle",
    "wrist_rotate",
    "gripper",
]
SOURCES = {
    arm: [(j, 7 * i + k) for k, j in enumerate(ARM_JOINTS)]
    for i, arm in enumerate(("left", "right"))
}
REST = np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.5])


def _validator(**kw):
    return MeasuredStateValidator(aloha_defaults(**kw), SOURCES)


def test_plausible_joint_states_are_believed_in_their_joint_order():
    v = _validator()
    names = list(reversed(ARM_JOINTS)) + ["extra_joint"]
    pos = list(reversed(REST.tolist())) + [123.0]  # joints a source does not need are ignored
    r = v.check("left", names, pos, T0)
    assert r.problem is None
    np.testing.assert_array_equal(r.positions, REST)
    # moving at the arm's speed is plausible
    r = v.check("left", ARM_JOINTS, REST + VMAX[:7] * 0.02, T0 + 20 * MS)
    assert r.problem is None and r.positions is not None


@pytest.mark.parametrize(
    "names, positions, problem",
    [
        (ARM_JOINTS, REST[:6], "left: 7 names but 6 positions"),
        (["waist", *ARM_JOINTS], [2.5, *REST], "left: joint 'waist' appears 2 times"),
        (ARM_JOINTS[1:], REST[1:], "left: missing joints ['waist']"),
        (ARM_JOINTS, [np.nan, *REST[1:]], "left: waist position is nan"),
        (ARM_JOINTS, [1e3, *REST[1:]], "left: waist at 1000, outside its limits [-3.142, 3.142]"),
        (ARM_JOINTS, [3.3, *REST[1:]], "left: waist at 3.3, outside its limits [-3.142, 3.142]"),
        (ARM_JOINTS, [*REST[:6], 1.7], "left: gripper at 1.7, outside its limits [0.000, 1.000]"),
        (["x" * 100_000], [0.0], "left: a joint name of 100000 characters (at most 256)"),
        # a plausible pose behind a hostile table is refused too: the node cannot tell it from
        # the arm's own, and would plan from it
        (["x" * 300, *ARM_JOINTS], [0.0, *REST], "left: a joint name of 300 characters"),
        (
            [f"j{i}" for i in range(1000)] + list(ARM_JOINTS),
            [0.0] * 1000 + REST.tolist(),
            "left: 1007 joint names (one arm's state has at most 64)",
        ),
    ],
)
def test_implausible_joint_states_are_rejected_with_a_short_named_reason(names, positions, problem):
    r = _validator().check("left", names, positions, T0)
    assert r.positions is None
    assert r.problem.startswith(problem)
    assert len(r.problem) < 300  # whatever the message holds


def test_a_jump_faster_than_the_arm_is_rejected_until_plausible_states_return():
    v = _validator()
    assert v.check("left", ARM_JOINTS, REST, T0).problem is None
    jumped = REST.copy()
    jumped[0] = 2.5
    r = v.check("left", ARM_JOINTS, jumped, T0 + 20 * MS)
    assert r.positions is None
    assert r.problem.startswith("left: waist moved 2.500 in 20 ms since the last plausible state")
    # the bogus message does not become the reference: the true state is believed again
    assert v.check("left", ARM_JOINTS, REST, T0 + 40 * MS).problem is None
    # a second jump from the true state is caught again
    assert v.check("left", ARM_JOINTS, jumped, T0 + 60 * MS).problem is not None
    # arms are checked independently
    assert v.check("right", ARM_JOINTS, jumped, T0 + 60 * MS).problem is None
    # a wrong reading that persists never becomes plausible by waiting: the arm held still
    for t in (1, 2, 10):
        r = v.check("left", ARM_JOINTS, jumped, T0 + t * 10**9)
        assert r.problem.startswith("left: waist moved 2.500 in 20 ms"), r.problem
    # until the readings come back, or the operator re-enables (reset)
    assert v.check("left", ARM_JOINTS, REST, T0 + 11 * 10**9).problem is None
    assert v.check("left", ARM_JOINTS, jumped, T0 + 11 * 10**9 + 20 * MS).problem is not None
    v.reset()
    assert v.check("left", ARM_JOINTS, jumped, T0 + 12 * 10**9).problem is None


def test_out_of_order_states_are_ignored_and_a_clock_reset_forgets_the_reference():
    v = _validator()
    assert v.check("left", ARM_JOINTS, REST, T0).problem is None
    r = v.check("left", ARM_JOINTS, REST, T0 - 10 * MS)
    assert r.positions is None and r.problem is None
    far = REST.copy()
    far[0] = 2.0
    r = v.check("left", ARM_JOINTS, far, T0 - 5 * 10**9)  # time went back 5 s: a new start
    assert r.problem is None
    np.testing.assert_array_equal(r.positions, far)


def test_property_no_command_breaks_the_invariants_whatever_the_measured_states():
    """The node's loop in pure logic: random joint state messages (plausible, duplicated names,
    jumps, out of limits, huge, NaN) through the validator, random chunks through the filter,
    commands following the last one sent. Every point sent is within the position limits and
    within max_velocity x dt of the point before it on the plan the controller follows (the
    last command, or the measured state when nothing was commanded); otherwise it is a stop."""
    cfg = aloha_defaults()
    f = SafetyFilter(cfg)
    sent = stops = rejected = 0
    for seed in range(60):
        rng = np.random.default_rng(9000 + seed)
        v = MeasuredStateValidator(cfg, SOURCES)
        true_q = np.tile(REST, 2)
        believed: np.ndarray | None = None
        believed_stamp = None
        last_plan = None  # (times, positions) the controller follows
        for step in range(60):
            now = T0 + step * 20 * MS
            true_q = np.clip(true_q + rng.normal(0, 0.01, A), LO, HI)
            for i, arm in enumerate(("left", "right")):
                q = true_q[7 * i : 7 * i + 7].copy()
                names = list(ARM_JOINTS)
                kind = rng.choice(["ok"] * 6 + ["dup", "jump", "beyond", "huge", "nan"])
                if kind == "dup":
                    names = [names[0], *names]
                    q = np.concatenate([[rng.uniform(-3, 3)], q])
                elif kind == "jump":
                    q[int(rng.integers(7))] += rng.choice([-1, 1]) * rng.uniform(0.3, 3)
                elif kind == "beyond":
                    q[0] = rng.choice([-1, 1]) * rng.uniform(3.2, 4.0)
                elif kind == "huge":
                    q[int(rng.integers(7))] = rng.choice([-1, 1]) * 1e3
                elif kind == "nan":
                    q[int(rng.integers(7))] = np.nan
                r = v.check(arm, names, q, now)
                if r.problem is not None:
                    rejected += 1
                    believed = None  # the node stops commanding until plausible again
                elif r.positions is not None:
                    if believed is None:
                        believed = np.full(A, np.nan)
                    believed[7 * i : 7 * i + 7] = r.positions
                    believed_stamp = now
            chunk_t = now + 20 * MS * np.arange(1, int(rng.integers(2, 50)))
            chunk = true_q + rng.normal(0, float(rng.choice([0.01, 0.3, 5.0])), (len(chunk_t), A))
            previous = None
            if last_plan is not None:
                lt, lp = last_plan
                i = min(int(np.searchsorted(lt, chunk_t[0], side="right")), len(lt) - 1)
                previous = lp[i]
            res = f.filter(
                chunk_t,
                chunk,
                believed,
                believed_stamp,
                {},
                now,
                True,
                previous=previous,
            )
            if not res.ok:
                stops += 1
                last_plan = None
                continue
            out = res.positions
            assert (out >= LO).all() and (out <= HI).all()
            start = previous if previous is not None else np.clip(believed, LO, HI)
            dt0 = (
                cfg.control_period_s
                if previous is not None
                else max((int(chunk_t[0]) - max(believed_stamp, now)) / 1e9, cfg.control_period_s)
            )
            steps = np.abs(np.diff(np.vstack([start, out]), axis=0))
            dts = np.concatenate([[dt0], np.diff(chunk_t) / 1e9])
            assert (steps <= VMAX * dts[:, None] * (1 + 1e-9) + 1e-12).all()
            # the plan never strays from the believed state beyond the lead bound plus the
            # margin where it stops
            since = np.maximum((chunk_t - believed_stamp) / 1e9, 0)[:, None]
            bound = VMAX * (0.1 + since + cfg.control_period_s + cfg.max_disagreement_s)
            assert (np.abs(out - np.clip(believed, LO, HI)) <= bound + 1e-9).all()
            last_plan = (chunk_t, out)
            sent += 1
    assert sent > 500 and stops > 50 and rejected > 500
