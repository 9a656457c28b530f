"""The policy engine: the node's per-observation and per-tick logic, driven by a given clock.
Action history, the measured state at an observation's stamp, restarts, deterministic
inference, plans through the safety filter from the plan followed, stops."""

from __future__ import annotations

import numpy as np
import pytest

from clamp_core.aloha import ALOHA_JOINT_NAMES
from clamp_core.policy.engine import (
    EngineConfig,
    PolicyEngine,
    action_history,
    observation_noise,
)
from clamp_core.policy.execution import ExecutionConfig
from clamp_core.policy.runtime import ActionChunk, OnnxPolicy
from clamp_core.policy.safety import aloha_defaults
from test.core.policy.tiny_models import JOINTS, TinySpec, write_model

MS = 1_000_000
T0 = 1_700_000_000_000_000_000
ARM = ["waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "gripper"]
SOURCES = {
    arm: [(j, 7 * i + k) for k, j in enumerate(ARM)] for i, arm in enumerate(("left", "right"))
}
REST = np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.5] * 2)
SAFETY = aloha_defaults()
INPUTS = {}


def make_engine(**exec_kw) -> PolicyEngine:
    return PolicyEngine(
        list(ALOHA_JOINT_NAMES),
        SOURCES,
        SAFETY,
        ExecutionConfig(**{"mode": "async", **exec_kw}),
        EngineConfig(seed=3),
    )


def feed_state(engine: PolicyEngine, q: np.ndarray, stamp: int, rx: int | None = None):
    for i, arm in enumerate(("left", "right")):
        check = engine.joint_state(
            arm, ARM, q[7 * i : 7 * i + 7], stamp, stamp if rx is None else rx
        )
        assert check.problem is None, check.problem


def chunk(stamp: int, actions: np.ndarray) -> ActionChunk:
    return ActionChunk(stamp, 0.02, actions, list(ALOHA_JOINT_NAMES))


# ------------------------------------------------------------------------------ history
def test_action_history_is_the_commands_in_force_before_the_stamp():
    dt = 20 * MS
    T, A = 30, 14
    actions = np.arange(T * A, dtype=float).reshape(T, A)
    times = np.arange(T, dtype=np.int64) * dt
    qpos = np.full(A, -1.0)
    for t in (0, 3, 10, 29):
        got = action_history(times, actions, t * dt, 5, dt, qpos)
        for k in range(5):
            src = t - 5 + k
            np.testing.assert_array_equal(got[k], actions[src] if src >= 0 else qpos)
    # between control times: the newest command at or before each history time
    got = action_history(times, actions, 10 * dt + 7 * MS, 2, dt, qpos)
    np.testing.assert_array_equal(got, actions[[8, 9]])
    assert action_history(times, actions, 5 * dt, 0, dt, qpos).shape == (0, A)


def test_observation_noise_is_a_function_of_the_seed_and_the_stamp():
    a = observation_noise(1, T0, (50, 14))
    np.testing.assert_array_equal(a, observation_noise(1, T0, (50, 14)))
    assert not np.array_equal(a, observation_noise(1, T0 + 1, (50, 14)))
    assert not np.array_equal(a, observation_noise(2, T0, (50, 14)))
    assert a.dtype == np.float32 and abs(float(a.mean())) < 0.1


# ------------------------------------------------------------------------------ states
def test_the_policy_gets_the_state_measured_with_its_images():
    e = make_engine()
    assert e.measured_at(T0) is None
    for k in range(5):
        feed_state(e, REST + 0.01 * k, T0 + k * 20 * MS)
    np.testing.assert_allclose(e.measured_at(T0 + 45 * MS), REST + 0.02)
    np.testing.assert_allclose(e.measured_at(T0 - 1), REST)  # older than all: the oldest kept
    np.testing.assert_allclose(e.measured()[0], REST + 0.04)


def test_a_rejected_state_names_itself_and_blocks_observations_until_plausible():
    e = make_engine()
    feed_state(e, REST, T0)
    bad = e.joint_state("left", ["waist", *ARM], [2.5, *REST[:7]], T0 + 20 * MS, T0 + 20 * MS)
    assert bad.problem == "left: joint 'waist' appears 2 times"
    assert e.measured() == (None, None)
    assert e.observation(T0 + 20 * MS, np.zeros((1, 2, 2, 4)), 3) is None
    assert (
        e.no_state_reason() == "measured joint state rejected (left: joint 'waist' appears 2 times)"
    )
    feed_state(e, REST, T0 + 40 * MS)
    assert e.measured_problem is None and e.measured()[0] is not None


# ------------------------------------------------------------------------------ observations
def test_a_clock_reset_restarts_and_older_observations_never_plan():
    e = make_engine()
    feed_state(e, REST, T0)
    assert e.wants(T0, T0) == (True, None)
    assert e.deliver(chunk(T0, np.tile(REST, (50, 1))), T0 + 20 * MS)
    e.tick(T0 + 20 * MS)
    assert len(e.history) == 1
    wants, warning = e.wants(T0 - 5 * 10**9, T0 - 5 * 10**9)
    assert wants and warning.startswith("observation time jumped backwards")
    assert len(e.history) == 0 and e.executor.num_chunks == 0
    e.restart(T0 + 10**9)
    assert e.wants(T0 + 10**9 - 1, T0 + 10**9) == (False, None)
    assert not e.deliver(chunk(T0 + 10**9 - 1, np.tile(REST, (50, 1))), T0 + 10**9)


def test_history_and_observation_follow_what_was_commanded(tmp_path):
    e = make_engine()
    feed_state(e, REST, T0)
    actions = REST + 0.001 * np.arange(50)[:, None]
    assert e.deliver(chunk(T0, actions), T0)
    for k in range(10):
        e.tick(T0 + k * 20 * MS)
    obs = e.observation(T0 + 10 * 20 * MS, np.zeros((1, 2, 2, 4)), 4)
    np.testing.assert_allclose(obs.action_history, actions[6:10])
    np.testing.assert_allclose(obs.qpos, REST)
    # a history of chunks: 3 samples 3 control periods apart (t-9, t-6, t-3), before the first
    # command the measured position
    obs = e.observation(T0 + 10 * 20 * MS, np.zeros((1, 2, 2, 4)), 4, history_stride=3)
    np.testing.assert_allclose(obs.action_history, np.stack([REST, *actions[[1, 4, 7]]]))


# ------------------------------------------------------------------------------ plans
def test_plans_follow_the_plan_sent_and_a_stop_restarts_from_the_arm():
    e = make_engine()
    now = T0 + 10 * MS
    feed_state(e, REST, now)
    target = REST.copy()
    target[0] += 1.0  # a jump the filter turns into a ramp
    assert e.deliver(chunk(now, np.tile(target, (50, 1))), now)
    p = e.plan(now, INPUTS, enabled=True)
    assert p.ok and p.clipped["velocity_limit"] > 0
    assert abs(p.positions[0, 0] - REST[0]) <= np.pi * 0.02 + 1e-12
    e.sent(p)
    # the next plan continues from the one sent, one period on
    later = now + 20 * MS
    p2 = e.plan(later, INPUTS, enabled=True)
    np.testing.assert_allclose(e.previous_command(later), p.positions[1])
    assert abs(p2.positions[0, 0] - p.positions[1, 0]) <= np.pi * 0.02 + 1e-12
    # disabled: a stop with the reason; after a stop the plan starts from the measured state
    assert e.plan(later, INPUTS, enabled=False).stop == "disabled"
    e.stopped()
    assert e.previous_command(later) is None


def test_watchdog_names_rejected_or_stale_states():
    e = make_engine()
    assert e.watchdog(T0, {}) == "measured joint state missing"
    feed_state(e, REST, T0)
    assert e.watchdog(T0 + 10 * MS, {}) is None
    assert e.watchdog(T0 + 10 * MS, {"cam_high": T0 - 10**9}).startswith("stale input 'cam_high'")
    e.joint_state("right", ARM, [np.nan, *REST[8:]], T0 + 20 * MS, T0 + 20 * MS)
    assert (
        e.watchdog(T0 + 30 * MS, {})
        == "measured joint state rejected (right: waist position is nan)"
    )


# ------------------------------------------------------------------------------ determinism
def test_the_same_inputs_give_the_same_chunk_in_any_engine(tmp_path):
    spec = TinySpec(views=2, height=8, width=10, horizon=6, history=3)
    write_model(tmp_path / "m", spec)

    def run(seed: int, policy_seed: int) -> np.ndarray:
        policy = OnnxPolicy(tmp_path / "m", seed=policy_seed)
        e = PolicyEngine(
            JOINTS,
            {"all": [(j, i) for i, j in enumerate(JOINTS)]},
            aloha_defaults(joint_names=JOINTS),
            ExecutionConfig(mode="async"),
            EngineConfig(seed=seed),
        )
        q = np.full(14, 0.3)
        assert e.joint_state("all", JOINTS, q, T0, T0).problem is None
        obs = e.observation(T0, np.ones((2, 8, 10, 4), np.float32), spec.history)
        return policy.predict(obs, noise=e.noise(T0, (spec.horizon, 14))).actions

    a = run(seed=5, policy_seed=0)
    np.testing.assert_array_equal(a, run(seed=5, policy_seed=99))  # the policy's own rng unused
    assert not np.array_equal(a, run(seed=6, policy_seed=0))


@pytest.mark.parametrize(
    "field, value", [("control_rate_hz", 0), ("time_reset_s", -1), ("seed", 1.5)]
)
def test_engine_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        EngineConfig(**{field: value})


# ------------------------------------------------------------------------------ seams
def send_plan(engine: PolicyEngine, now: int) -> None:
    plan = engine.plan(now, INPUTS, enabled=True)
    assert plan is not None and plan.ok, plan
    engine.sent(plan)


def ramp_chunk(stamp: int, start: np.ndarray, slope: float, F: int = 50) -> ActionChunk:
    """Every joint moving at ``slope`` per step from ``start``."""
    return chunk(stamp, start + slope * np.arange(F)[:, None] * np.ones(14))


def test_a_seam_is_the_new_chunk_minus_the_plan_followed_at_its_arrival():
    engine = make_engine()
    feed_state(engine, REST, T0)
    assert engine.deliver(ramp_chunk(T0, REST, 0.002), T0)
    assert engine.last_seam is None  # nothing was followed yet
    send_plan(engine, T0)
    # a chunk from an observation 10 steps later lands 3 steps after it, offset by 0.05
    stamp, now = T0 + 200 * MS, T0 + 260 * MS
    feed_state(engine, REST + 0.02, stamp)
    assert engine.deliver(ramp_chunk(stamp, REST + 0.02 + 0.05, 0.002), now)
    seam = engine.last_seam
    assert seam.t_ns == now
    # plan followed at 13 steps: REST + 0.026; new chunk at its 3rd step: REST + 0.076
    np.testing.assert_allclose(seam.jump, np.full(14, 0.05), atol=1e-9)
    assert not engine.deliver(ramp_chunk(stamp, REST, 0.0), now)  # not newer: refused
    assert engine.last_seam is None


def test_guidance_is_the_plan_followed_at_the_new_chunks_times_with_the_latency_profile():
    engine = make_engine(mode="seam_guided", guidance_weight=0.7, replan_remaining_steps=20)
    feed_state(engine, REST, T0)
    assert engine.guidance(T0) is None  # no plan yet
    engine.deliver(ramp_chunk(T0, REST, 0.002), T0 + 60 * MS)  # latency: 3 steps
    send_plan(engine, T0 + 60 * MS)
    stamp = T0 + 30 * 20 * MS  # 30 steps in: the plan has 19 more steps (to step 49)
    prefix, weights = engine.guidance(stamp)
    k = np.arange(50)
    expected = REST + 0.002 * np.minimum(30 + k, 49)[:, None]
    np.testing.assert_allclose(prefix[:20], expected[:20], atol=1e-9)
    assert (weights[:4] == 1.0).all() and 0 < weights[10] < 1 and (weights[20:] == 0).all()
    feed_state(engine, REST + 0.06, stamp)
    views = np.zeros((5, 8, 8, 4), np.float32)
    obs = engine.observation(stamp, views, 4)
    np.testing.assert_array_equal(obs.prefix, prefix)
    assert obs.guidance_weight == 0.7
    # async observations carry no prefix; candidates only in seam_guided
    other = make_engine(candidates=3)
    feed_state(other, REST, T0)
    assert other.observation(T0, views, 4).prefix is None
    assert other.noise(T0, (50, 14)).shape == (50, 14)


def test_candidate_noise_starts_with_the_single_noise():
    engine = make_engine(mode="seam_guided", candidates=3)
    many = engine.noise(T0, (50, 14))
    assert many.shape == (3, 50, 14)
    np.testing.assert_array_equal(many[0], observation_noise(3, T0, (50, 14)))
    assert not np.array_equal(many[1], many[0])
