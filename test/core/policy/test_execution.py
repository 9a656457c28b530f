"""Chunk execution: receding horizon, ACT temporal ensembling and async blending, by timestamp."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clamp_core.policy.execution import ChunkExecutor, ExecutionConfig
from clamp_core.policy.runtime import ActionChunk

NAMES = ["a", "b", "c"]
DT = 0.02
DT_NS = 20_000_000
T0 = 1_700_000_000_000_000_000  # wall-clock-sized stamps: int64 arithmetic must stay exact


def chunk(stamp_ns: int, actions, dt_s: float = DT, names=NAMES) -> ActionChunk:
    return ActionChunk(stamp_ns, dt_s, np.asarray(actions, dtype=np.float64), list(names))


def ramp(F: int = 50, start=0.0, slope=0.01, A: int = 3) -> np.ndarray:
    """(F, A): joint j moves by slope * (j + 1) per step from ``start``."""
    k = np.arange(F)[:, None]
    return start + slope * k * np.arange(1, A + 1)[None, :]


def executor(mode: str, **kw) -> ChunkExecutor:
    return ChunkExecutor(ExecutionConfig(mode=mode, **kw), NAMES)


# ------------------------------------------------------------------------------ configuration
@pytest.mark.parametrize(
    "kw, field",
    [
        ({"mode": "ensemble"}, "mode"),
        ({"execute_steps": 0}, "execute_steps"),
        ({"execute_steps": 2.5}, "execute_steps"),
        ({"inference_every_steps": 0}, "inference_every_steps"),
        ({"ensemble_decay": -0.1}, "ensemble_decay"),
        ({"ensemble_decay": math.nan}, "ensemble_decay"),
        ({"blend_steps": -1}, "blend_steps"),
        ({"blend_steps": 10, "replan_remaining_steps": 5}, "replan_remaining_steps"),
        ({"replan_remaining_steps": 0, "blend_steps": 0}, "replan_remaining_steps"),
        ({"expected_latency_s": -1.0}, "expected_latency_s"),
        ({"latency_window": 0}, "latency_window"),
        ({"max_chunk_age_s": 0.0}, "max_chunk_age_s"),
        ({"guidance_weight": 1.5}, "guidance_weight"),
        ({"guidance_weight": -0.1}, "guidance_weight"),
        ({"candidates": 0}, "candidates"),
    ],
)
def test_config_errors_name_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        ExecutionConfig(**kw)


def test_config_defaults_are_valid_for_every_mode():
    for mode in ("receding_horizon", "temporal_ensembling", "async", "seam_guided"):
        assert ExecutionConfig(mode=mode).mode == mode


def test_seam_guided_executes_chunks_as_async_does():
    """The guidance acts in the sampler; executing the chunks is async's timing and crossfade."""
    rng = np.random.default_rng(0)
    a, g = executor("async"), executor("seam_guided", candidates=3, guidance_weight=0.5)
    stamp = T0
    for _ in range(6):
        c = chunk(
            stamp, ramp(start=float(rng.uniform(-1, 1)), slope=float(rng.uniform(-0.02, 0.02)))
        )
        arrival = stamp + int(rng.integers(0, 8)) * DT_NS
        assert a.add_chunk(c, now_ns=arrival) == g.add_chunk(c, now_ns=arrival)
        t = arrival
        while not a.needs_inference(t):
            assert not g.needs_inference(t)
            np.testing.assert_array_equal(a.command_at(t), g.command_at(t))
            t += DT_NS
        assert g.needs_inference(t)
        ta, pa = a.trajectory(t, 100)
        tg, pg = g.trajectory(t, 100)
        np.testing.assert_array_equal(ta, tg)
        np.testing.assert_array_equal(pa, pg)
        stamp = t


# ------------------------------------------------------------------------------ chunk checks
@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: chunk(T0, np.zeros((50, 4)), names=NAMES + ["d"]), "joint_names"),
        (lambda: chunk(T0, np.zeros((50, 4))), r"actions: needs shape \(F >= 1, 3\)"),
        (lambda: chunk(T0, np.zeros(3)), "actions: needs shape"),
        (lambda: chunk(T0, np.zeros((0, 3))), "actions: needs shape"),
        (lambda: chunk(T0, np.zeros((5, 3)), names=["a", "c", "b"]), "column 1 is 'c'"),
        (lambda: chunk(T0, np.full((5, 3), np.nan)), "15 non-finite values"),
        (
            lambda: chunk(T0, np.where(np.eye(5, 3) > 0, np.inf, 0.0)),
            r"non-finite.*step 0, joint 'a'",
        ),
        (lambda: chunk(T0, np.zeros((5, 3)), dt_s=0.0), "dt_s"),
        (lambda: chunk(T0, np.zeros((5, 3)), dt_s=math.nan), "dt_s"),
        (lambda: chunk(T0, np.zeros((5, 3)), dt_s=1e-10), "strictly increasing"),
        (lambda: chunk(float(T0), np.zeros((5, 3))), "stamp_ns"),
    ],
)
def test_malformed_chunks_raise_naming_the_problem(make, message):
    ex = executor("receding_horizon")
    with pytest.raises(ValueError, match=message):
        ex.add_chunk(make())
    assert ex.num_chunks == 0


def test_chunks_must_share_one_period_until_reset():
    ex = executor("receding_horizon")
    ex.add_chunk(chunk(T0, ramp()))
    with pytest.raises(ValueError, match="dt_s.*differs"):
        ex.add_chunk(chunk(T0 + DT_NS, ramp(), dt_s=0.04))
    ex.reset()
    assert ex.add_chunk(chunk(T0 + DT_NS, ramp(), dt_s=0.04))
    assert ex.dt_s == 0.04


def test_executor_copies_the_actions():
    ex = executor("receding_horizon")
    actions = ramp()
    ex.add_chunk(chunk(T0, actions))
    actions[:] = 99.0  # the node reuses its buffers
    np.testing.assert_array_equal(ex.command_at(T0 + DT_NS), ramp()[1])


# ------------------------------------------------------------------------------ receding horizon
def test_receding_horizon_runs_exactly_the_first_n_actions_at_their_times():
    n = 8
    ex = executor("receding_horizon", execute_steps=n)
    assert ex.needs_inference(T0) and ex.command_at(T0) is None
    c = chunk(T0, ramp(start=0.3))
    assert ex.add_chunk(c, now_ns=T0)
    times = c.times_ns
    for k in range(n):
        np.testing.assert_array_equal(ex.command_at(int(times[k])), c.actions[k])
        assert not ex.needs_inference(int(times[k]))
    assert ex.needs_inference(int(times[n - 1]) + 1)  # n actions done: next observation
    assert ex.needs_inference(int(times[n]))
    assert ex.command_at(int(times[n])) is None  # action n is not run, and not extrapolated


def test_receding_horizon_trajectory_is_the_executed_window():
    ex = executor("receding_horizon", execute_steps=8)
    c = chunk(T0, np.random.default_rng(0).normal(size=(50, 3)))
    ex.add_chunk(c)
    times, pos = ex.trajectory(T0, max_points=50)
    np.testing.assert_array_equal(times, c.times_ns[:8])
    np.testing.assert_array_equal(pos, c.actions[:8])
    times, pos = ex.trajectory(T0 + 3 * DT_NS, max_points=2)
    np.testing.assert_array_equal(pos, c.actions[3:5])


def test_receding_horizon_interpolates_linearly_between_action_times():
    rng = np.random.default_rng(1)
    ex = executor("receding_horizon", execute_steps=50)
    c = chunk(T0, rng.normal(size=(50, 3)))
    ex.add_chunk(c)
    for _ in range(50):
        t = T0 + int(rng.integers(0, 49 * DT_NS + 1))
        expected = [np.interp(t - T0, c.times_ns - T0, c.actions[:, j]) for j in range(3)]
        np.testing.assert_allclose(ex.command_at(t), expected, rtol=0, atol=1e-12)
    assert ex.command_at(T0 - 1) is None
    assert ex.command_at(int(c.times_ns[-1]) + 1) is None


def test_receding_horizon_newer_chunk_takes_over_at_its_stamp():
    ex = executor("receding_horizon", execute_steps=10)
    first, second = chunk(T0, ramp()), chunk(T0 + 10 * DT_NS, ramp(start=1.0))
    ex.add_chunk(first)
    ex.add_chunk(second)
    np.testing.assert_array_equal(ex.command_at(T0 + 9 * DT_NS), first.actions[9])
    np.testing.assert_array_equal(ex.command_at(T0 + 10 * DT_NS), second.actions[0])


@pytest.mark.parametrize("mode", ["receding_horizon", "temporal_ensembling", "async"])
def test_chunks_that_can_no_longer_matter_are_dropped(mode):
    ex = executor(mode, max_chunk_age_s=0.2)
    for k in range(100):  # a chunk every tick for 2 s
        t = T0 + k * DT_NS
        ex.add_chunk(chunk(t, ramp(start=k)), now_ns=t)
        assert ex.command_at(t) is not None
        assert ex.num_chunks <= 2 * 0.2 / DT + 1


def test_execute_steps_beyond_the_horizon_runs_the_whole_chunk():
    ex = executor("receding_horizon", execute_steps=100)
    c = chunk(T0, ramp(F=10))
    ex.add_chunk(c)
    times, pos = ex.trajectory(T0, 100)
    np.testing.assert_array_equal(pos, c.actions)
    assert not ex.needs_inference(int(c.times_ns[-1]))
    assert ex.needs_inference(int(c.times_ns[-1]) + DT_NS)


# ------------------------------------------------------------------------------ ensembling
def test_temporal_ensembling_is_acts_weighted_average_oldest_first():
    m = 0.5
    ex = executor("temporal_ensembling", ensemble_decay=m)
    rng = np.random.default_rng(2)
    chunks = [chunk(T0 + i * DT_NS, rng.normal(size=(5, 3))) for i in range(3)]
    for c in chunks:
        ex.add_chunk(c)
    w = [1.0, math.exp(-m), math.exp(-2 * m)]  # oldest prediction weighs most
    # t = 2 dt: chunk 0 action 2, chunk 1 action 1, chunk 2 action 0
    a = [chunks[0].actions[2], chunks[1].actions[1], chunks[2].actions[0]]
    expected = (w[0] * a[0] + w[1] * a[1] + w[2] * a[2]) / sum(w)
    np.testing.assert_allclose(ex.command_at(T0 + 2 * DT_NS), expected, rtol=1e-12)
    # t = 5 dt: chunk 0 has ended; chunk 1 is now the oldest (i = 0)
    a = [chunks[1].actions[4], chunks[2].actions[3]]
    expected = (w[0] * a[0] + w[1] * a[1]) / (w[0] + w[1])
    np.testing.assert_allclose(ex.command_at(T0 + 5 * DT_NS), expected, rtol=1e-12)
    np.testing.assert_array_equal(ex.command_at(T0 + 6 * DT_NS), chunks[2].actions[4])
    assert ex.command_at(T0 + 7 * DT_NS) is None


def test_temporal_ensembling_between_ticks_and_trajectory_agree_with_command_at():
    ex = executor("temporal_ensembling", ensemble_decay=0.3)
    rng = np.random.default_rng(3)
    for i in range(4):
        ex.add_chunk(chunk(T0 + i * DT_NS + 3_000_000, rng.normal(size=(10, 3))))
    t = T0 + 4 * DT_NS + 7_000_000
    times, pos = ex.trajectory(t, max_points=20)
    end = T0 + 3 * DT_NS + 3_000_000 + 9 * DT_NS  # the newest chunk's last action
    assert len(times) == (end - t) // DT_NS + 1 and times[-1] <= end < times[-1] + DT_NS
    for k in range(len(times)):
        np.testing.assert_allclose(ex.command_at(int(times[k])), pos[k], rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", ["receding_horizon", "temporal_ensembling", "async"])
def test_trajectory_with_a_huge_point_budget_is_the_whole_plan(mode):
    """The node asks for up to 10 000 points: it gets exactly the plan (every point equal to
    command_at, nothing after the plan ends), however the chunks overlap."""
    ex = executor(mode)
    rng = np.random.default_rng(5)
    for i in range(3):
        ex.add_chunk(chunk(T0 + i * 7 * DT_NS + 1_000_000, rng.normal(size=(50, 3))))
    for t in (T0 + 15 * DT_NS + 3_000_000, T0 + 40 * DT_NS, T0 + 200 * DT_NS):
        times, pos = ex.trajectory(t, max_points=10_000)
        for k in range(len(times)):
            np.testing.assert_allclose(ex.command_at(int(times[k])), pos[k], rtol=0, atol=1e-12)
        if len(times):
            assert ex.command_at(int(times[-1]) + DT_NS) is None
        else:
            assert ex.command_at(t) is None
        small, _ = ex.trajectory(t, max_points=3)
        np.testing.assert_array_equal(small, times[:3])


def test_temporal_ensembling_asks_for_inference_every_k_ticks():
    ex = executor("temporal_ensembling", inference_every_steps=3)
    assert ex.needs_inference(T0)
    ex.add_chunk(chunk(T0, ramp()))
    assert not ex.needs_inference(T0 + 2 * DT_NS)
    assert ex.needs_inference(T0 + 3 * DT_NS)


# ------------------------------------------------------------------------------ async
def _async_pair(blend_steps: int, latency_steps: int = 5, offset: float = 0.2):
    """A running chunk and one computed at step 10 that lands ``latency_steps`` later."""
    ex = executor("async", blend_steps=blend_steps, replan_remaining_steps=max(blend_steps, 1))
    old = chunk(T0, ramp(slope=0.01))
    new = chunk(T0 + 10 * DT_NS, ramp(start=0.1 + offset, slope=0.012))
    ex.add_chunk(old, now_ns=T0)
    arrival = T0 + (10 + latency_steps) * DT_NS
    assert ex.add_chunk(new, now_ns=arrival)
    return ex, old, new, arrival


def test_async_aligns_by_timestamp_and_crossfades_linearly():
    B = 5
    ex, old, new, arrival = _async_pair(B)
    # the new chunk's actions before its arrival are never used: the old plan stays
    for k in range(10, 16):
        np.testing.assert_array_equal(ex.command_at(T0 + k * DT_NS), old.actions[k])
    for j in range(B + 1):  # new action index 5 + j is meant for arrival + j dt
        alpha = j / B
        expected = (1 - alpha) * old.actions[15 + j] + alpha * new.actions[5 + j]
        np.testing.assert_allclose(ex.command_at(arrival + j * DT_NS), expected, atol=1e-12)
    for k in range(5 + B, 50):
        np.testing.assert_allclose(
            ex.command_at(int(new.times_ns[k])), new.actions[k], rtol=0, atol=0
        )


def test_async_seam_has_no_jump_beyond_the_trajectories_own_steps():
    """With a linear crossfade each step is a mix of the two trajectories' own steps plus
    1/blend_steps of the gap between them, so the largest step at the seam is bounded by
    max(own steps) + gap / blend_steps; without blending it is the whole gap."""
    B = 10
    for seed in range(100):
        rng = np.random.default_rng(seed)
        lat = int(rng.integers(1, 8))
        ex = executor("async", blend_steps=B, replan_remaining_steps=B)
        old_a = np.cumsum(rng.normal(0, 0.02, (50, 3)), axis=0)
        ex.add_chunk(chunk(T0, old_a), now_ns=T0)
        s = int(rng.integers(5, 30))
        new_a = old_a[s] + rng.normal(0, 0.05, 3) + np.cumsum(rng.normal(0, 0.02, (50, 3)), 0)
        arrival = T0 + (s + lat) * DT_NS + int(rng.integers(0, DT_NS))  # between ticks too
        ex.add_chunk(chunk(T0 + s * DT_NS, new_a), now_ns=arrival)
        t0 = arrival - 2 * DT_NS
        times, plan = ex.trajectory(t0, max_points=B + 6)
        assert len(times) == B + 6
        old_p = _interp(T0, old_a, times)
        new_p = _interp(T0 + s * DT_NS, new_a, times)
        own = np.maximum(np.abs(np.diff(old_p, axis=0)), np.abs(np.diff(new_p, axis=0)))
        gap = np.abs(new_p - old_p).max(axis=0)
        jumps = np.abs(np.diff(plan, axis=0))
        assert (jumps <= own + gap / B + 1e-12).all()
        # and the plan really goes from the old trajectory into the new one
        np.testing.assert_allclose(plan[:3], old_p[:3], atol=1e-12)
        np.testing.assert_allclose(plan[-3:], new_p[-3:], atol=1e-12)

    ex, old, new, arrival = _async_pair(blend_steps=0, offset=0.5)
    jump = np.abs(ex.command_at(arrival) - ex.command_at(arrival - DT_NS))
    ex_b, *_ = _async_pair(blend_steps=10, offset=0.5)
    times, plan = ex_b.trajectory(arrival - DT_NS, max_points=15)
    assert np.abs(np.diff(plan, axis=0)).max() < jump.max() / 5


def _interp(stamp_ns: int, actions: np.ndarray, times: np.ndarray) -> np.ndarray:
    t = stamp_ns + np.round(np.arange(len(actions)) * DT * 1e9).astype(np.int64)
    return np.stack([np.interp(times - t[0], t - t[0], actions[:, j]) for j in range(3)], 1)


def test_async_never_extrapolates_beyond_the_newest_chunk():
    ex, old, new, arrival = _async_pair(5)
    end = int(new.times_ns[-1])
    np.testing.assert_array_equal(ex.command_at(end), new.actions[-1])
    assert ex.command_at(end + 1) is None
    times, _ = ex.trajectory(arrival, max_points=500)
    assert times[-1] <= end
    # a new chunk landing after the old one ended starts without a blend partner
    ex = executor("async", blend_steps=5, replan_remaining_steps=5)
    ex.add_chunk(chunk(T0, ramp(F=10)), now_ns=T0)
    assert ex.command_at(T0 + 10 * DT_NS) is None
    late = chunk(T0 + 8 * DT_NS, ramp(F=10, start=1.0))
    ex.add_chunk(late, now_ns=T0 + 12 * DT_NS)
    np.testing.assert_allclose(ex.command_at(T0 + 12 * DT_NS), late.actions[4], atol=1e-12)


def test_async_requests_inference_from_remaining_horizon_and_measured_latency():
    R = 20
    ex = executor("async", blend_steps=5, replan_remaining_steps=R, expected_latency_s=0.0)
    assert ex.needs_inference(T0)
    c = chunk(T0, ramp())  # last action at 49 dt
    ex.add_chunk(c, now_ns=T0 + 5 * DT_NS)  # took 5 steps from observation to arrival
    assert ex.latency_s == pytest.approx(5 * DT)
    # ask when fewer than R steps would be left once a chunk requested now lands
    boundary = T0 + (49 - R - 5) * DT_NS
    assert not ex.needs_inference(boundary)
    assert ex.needs_inference(boundary + 1)


def test_latency_estimate_is_the_largest_recent_measurement():
    ex = executor("async", latency_window=3, expected_latency_s=0.25)
    assert ex.latency_s == 0.25
    for i, lat_ms in enumerate([30, 90, 40, 50, 60]):
        stamp = T0 + i * DT_NS * 10
        ex.add_chunk(chunk(stamp, ramp()), now_ns=stamp + lat_ms * 1_000_000)
    assert ex.latency_s == pytest.approx(0.060)  # 90 ms has left the window of 3


def test_async_random_streams_stay_within_the_chunks_and_never_extrapolate():
    for seed in range(40):
        rng = np.random.default_rng(100 + seed)
        ex = executor("async", blend_steps=int(rng.integers(0, 8)), replan_remaining_steps=10)
        t, newest_end = T0, None
        for _ in range(150):
            if ex.needs_inference(t) and rng.random() < 0.5:
                lat = int(rng.integers(0, 8 * DT_NS))
                c = chunk(t, rng.uniform(-1, 1, (20, 3)))  # 0.38 s: never stale (1 s)
                assert ex.add_chunk(c, now_ns=t + lat)
                newest_end = int(c.times_ns[-1])
                t += lat
            cmd = ex.command_at(t)
            # a plan exactly while the newest chunk lasts; mixes of chunks stay in their range
            assert (cmd is None) == (newest_end is None or t > newest_end)
            if cmd is not None:
                assert np.isfinite(cmd).all() and (np.abs(cmd) <= 1.0 + 1e-12).all()
            t += DT_NS


# ------------------------------------------------------------------------------ all modes
@pytest.mark.parametrize("mode", ["receding_horizon", "temporal_ensembling", "async"])
def test_stale_chunks_are_ignored(mode):
    ex = executor(mode, max_chunk_age_s=0.1, execute_steps=50)
    c = chunk(T0, ramp())
    ex.add_chunk(c)
    np.testing.assert_array_equal(ex.command_at(T0 + 5 * DT_NS), c.actions[5])
    assert ex.command_at(T0 + 6 * DT_NS) is None  # 0.12 s after its observation
    assert ex.needs_inference(T0 + 6 * DT_NS)
    times, _ = ex.trajectory(T0 + 2 * DT_NS, max_points=50)
    assert times[-1] == T0 + 5 * DT_NS
    assert not ex.add_chunk(chunk(T0 + DT_NS, ramp()), now_ns=T0 + 10 * DT_NS)  # late on arrival


@pytest.mark.parametrize("mode", ["receding_horizon", "temporal_ensembling", "async"])
def test_reset_clears_everything(mode):
    ex = executor(mode)
    ex.add_chunk(chunk(T0 + 10 * DT_NS, ramp()), now_ns=T0 + 12 * DT_NS)
    assert ex.command_at(T0 + 12 * DT_NS) is not None
    ex.reset()
    assert ex.num_chunks == 0 and ex.dt_s is None
    # after a jump backwards in time, older stamps are accepted again
    assert ex.add_chunk(chunk(T0, ramp(), dt_s=0.04), now_ns=T0)
    np.testing.assert_array_equal(ex.command_at(T0), ramp()[0])
    ex.reset()
    assert ex.command_at(T0) is None
    assert ex.needs_inference(T0)
    times, pos = ex.trajectory(T0, 10)
    assert times.shape == (0,) and pos.shape == (0, 3)


@pytest.mark.parametrize("mode", ["receding_horizon", "temporal_ensembling", "async"])
def test_chunks_not_newer_than_the_newest_are_refused(mode):
    ex = executor(mode)
    assert ex.add_chunk(chunk(T0 + DT_NS, ramp()))
    assert not ex.add_chunk(chunk(T0 + DT_NS, ramp(start=5.0)))
    assert not ex.add_chunk(chunk(T0, ramp(start=5.0)))
    np.testing.assert_array_equal(ex.command_at(T0 + DT_NS), ramp()[0])


@pytest.mark.parametrize("mode", ["receding_horizon", "temporal_ensembling", "async"])
def test_single_action_chunks_cover_only_their_stamp(mode):
    ex = executor(mode)
    ex.add_chunk(chunk(T0, [[1.0, 2.0, 3.0]]))
    np.testing.assert_array_equal(ex.command_at(T0), [1.0, 2.0, 3.0])
    assert ex.command_at(T0 + 1) is None


def test_time_arguments_must_be_integer_ns():
    ex = executor("async")
    with pytest.raises(ValueError, match="t_ns"):
        ex.command_at(1.5)
    with pytest.raises(ValueError, match="now_ns"):
        ex.add_chunk(chunk(T0, ramp()), now_ns=1.0)
    with pytest.raises(ValueError, match="max_points"):
        ex.trajectory(T0, 0)
