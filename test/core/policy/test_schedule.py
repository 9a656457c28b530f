"""Noise schedule and DDIM sampler: closed forms, timestep spacing, exact recovery of x0 with
the oracle epsilon, clipping, and configs that cannot work."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clamp_core.perception import ConfigError
from clamp_core.policy import NoiseSchedule, ScheduleConfig, ddim_sample


def oracle_eps(sched: NoiseSchedule, x0: np.ndarray):
    """eps that a perfect denoiser would predict for clean sample ``x0``."""

    def eps_fn(x, t):
        a = sched.alphas_cumprod[t].reshape(-1, *([1] * (x.ndim - 1)))
        return (x - np.sqrt(a) * x0) / np.sqrt(1.0 - a)

    return eps_fn


def test_cosine_betas_match_closed_form():
    T = 100
    sched = NoiseSchedule(ScheduleConfig(num_train_steps=T))

    def alpha_bar(s):
        return math.cos((s / T + 0.008) / 1.008 * math.pi / 2) ** 2

    expected = [min(1 - alpha_bar(i + 1) / alpha_bar(i), 0.999) for i in range(T)]
    assert sched.betas.dtype == np.float64 and sched.betas.shape == (T,)
    np.testing.assert_allclose(sched.betas, expected, rtol=1e-12, atol=0)
    assert sched.betas[-1] == 0.999  # alpha_bar(T) = 0: the cap applies at the end
    # the product telescopes to alpha_bar(t + 1) / alpha_bar(0) wherever the cap did not act
    telescoped = [alpha_bar(t + 1) / alpha_bar(0) for t in range(T - 1)]
    np.testing.assert_allclose(sched.alphas_cumprod[:-1], telescoped, rtol=1e-10)
    assert np.all(np.diff(sched.alphas_cumprod) < 0)


def test_linear_betas_match_closed_form():
    cfg = ScheduleConfig(num_train_steps=50, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    sched = NoiseSchedule(cfg)
    betas = 1e-4 + (0.02 - 1e-4) * np.arange(50) / 49
    np.testing.assert_allclose(sched.betas, betas, rtol=1e-12)
    np.testing.assert_allclose(sched.alphas_cumprod, np.cumprod(1 - betas), rtol=1e-12)


@pytest.mark.parametrize(
    "T, n, expected",
    [
        (100, 10, [90, 80, 70, 60, 50, 40, 30, 20, 10, 0]),
        (100, 30, list(range(87, -1, -3))),  # leading: step = T // n = 3
        (100, 1, [0]),
        (8, 8, [7, 6, 5, 4, 3, 2, 1, 0]),
    ],
)
def test_ddim_timesteps_leading_spacing(T, n, expected):
    ts = NoiseSchedule(ScheduleConfig(num_train_steps=T, inference_steps=n)).ddim_timesteps()
    assert ts.dtype == np.int64
    assert ts.tolist() == expected


@pytest.mark.parametrize(
    "cfg",
    [
        ScheduleConfig(),
        ScheduleConfig(inference_steps=100),
        ScheduleConfig(inference_steps=7),
        ScheduleConfig(beta_schedule="linear", num_train_steps=1000, inference_steps=16),
    ],
)
def test_oracle_eps_recovers_x0_exactly(cfg):
    sched = NoiseSchedule(cfg)
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-0.95, 0.95, size=(3, 6, 14))
    x_T = rng.standard_normal((3, 6, 14))
    out = ddim_sample(oracle_eps(sched, x0), x_T, cfg)
    assert out.shape == x0.shape and out.dtype == np.float64
    np.testing.assert_allclose(out, x0, rtol=0, atol=1e-12)


@pytest.mark.parametrize("clip", [True, False])
def test_sample_prediction_oracle_recovers_x0_and_matches_the_epsilon_path(clip):
    """A denoiser that outputs the true x0 ('sample') lands on x0, and every intermediate x_t
    equals the one an epsilon denoiser outputting the true noise gives (same DDIM trajectory)."""
    rng = np.random.default_rng(7)
    x0 = rng.uniform(-0.95, 0.95, size=(2, 6, 14))
    x_T = rng.standard_normal(x0.shape)
    eps_cfg = ScheduleConfig(clip_sample=clip)
    x0_cfg = ScheduleConfig(prediction_type="sample", clip_sample=clip)
    seen = {"eps": [], "x0": []}

    def x0_fn(x, t):
        seen["x0"].append(x.copy())
        return x0

    eps = oracle_eps(NoiseSchedule(eps_cfg), x0)

    def eps_fn(x, t):
        seen["eps"].append(x.copy())
        return eps(x, t)

    out = ddim_sample(x0_fn, x_T, x0_cfg)
    ref = ddim_sample(eps_fn, x_T, eps_cfg)
    np.testing.assert_allclose(out, x0, atol=1e-12)
    np.testing.assert_allclose(ref, x0, atol=1e-12)
    for a, b in zip(seen["x0"], seen["eps"], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-9)
    # x0 outside the clip range is clipped by the 'sample' path too
    far = ddim_sample(lambda x, t: 3 * x0, x_T, x0_cfg)
    if clip:
        np.testing.assert_allclose(far, np.clip(3 * x0, -1, 1), atol=1e-12)
    else:
        np.testing.assert_allclose(far, 3 * x0, atol=1e-12)


def test_float32_sampling_stays_float32_and_close():
    cfg = ScheduleConfig()
    sched = NoiseSchedule(cfg)
    rng = np.random.default_rng(1)
    x0 = rng.uniform(-0.9, 0.9, size=(1, 6, 14))
    seen = []

    def eps_fn(x, t):
        seen.append((x.dtype, t.dtype, t.shape, int(t[0])))
        return oracle_eps(sched, x0)(x.astype(np.float64), t).astype(np.float32)

    out = ddim_sample(eps_fn, rng.standard_normal((1, 6, 14)).astype(np.float32), sched)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, x0, atol=1e-5)
    assert [s[3] for s in seen] == list(range(90, -1, -10))
    assert all(s[:3] == (np.float32, np.int64, (1,)) for s in seen)


def test_clipping_bounds_x0_and_is_off_when_disabled():
    rng = np.random.default_rng(2)
    x0 = rng.uniform(-3.0, 3.0, size=(2, 5, 4))
    x_T = rng.standard_normal(x0.shape)
    clipped = ScheduleConfig(clip_sample=True, clip_range=1.5)
    free = ScheduleConfig(clip_sample=False)
    out = ddim_sample(oracle_eps(NoiseSchedule(clipped), x0), x_T, clipped)
    np.testing.assert_allclose(out, np.clip(x0, -1.5, 1.5), atol=1e-12)
    out = ddim_sample(oracle_eps(NoiseSchedule(free), x0), x_T, free)
    np.testing.assert_allclose(out, x0, atol=1e-10)


def test_ddim_step_recomputes_eps_from_the_clipped_x0():
    sched = NoiseSchedule(ScheduleConfig())
    x = np.array([[2.0, -0.3]])
    eps = np.array([[-1.0, 0.2]])
    t, t_prev = 50, 40
    a, a_prev = sched.alphas_cumprod[t], sched.alphas_cumprod[t_prev]
    x0 = np.clip((x - np.sqrt(1 - a) * eps) / np.sqrt(a), -1, 1)
    assert x0[0, 0] == 1.0  # the first entry was clipped
    eps_c = (x - np.sqrt(a) * x0) / np.sqrt(1 - a)
    expected = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * eps_c
    np.testing.assert_allclose(sched.ddim_step(x, eps, t, t_prev), expected, rtol=1e-14)
    # the last step goes to alpha_bar = 1: the (clipped) x0 itself
    np.testing.assert_allclose(
        sched.ddim_step(x, eps, 0, -10),
        np.clip(
            (x - np.sqrt(1 - sched.alphas_cumprod[0]) * eps) / np.sqrt(sched.alphas_cumprod[0]),
            -1,
            1,
        ),
        rtol=1e-14,
    )


def test_add_noise_per_batch_timestep():
    sched = NoiseSchedule(ScheduleConfig())
    rng = np.random.default_rng(3)
    x0 = rng.normal(size=(3, 6, 14)).astype(np.float32)
    noise = rng.normal(size=x0.shape).astype(np.float32)
    t = np.array([0, 42, 99])
    xt = sched.add_noise(x0, noise, t)
    assert xt.dtype == np.float32 and xt.shape == x0.shape
    for i, ti in enumerate(t):
        a = sched.alphas_cumprod[ti]
        np.testing.assert_allclose(xt[i], np.sqrt(a) * x0[i] + np.sqrt(1 - a) * noise[i], 1e-6)
    np.testing.assert_allclose(sched.add_noise(x0, noise, 42)[1], xt[1], rtol=1e-6)


def test_eps_fn_with_the_wrong_shape_is_an_error():
    with pytest.raises(ValueError, match="eps_fn returned shape"):
        ddim_sample(lambda x, t: x[:, :1], np.zeros((1, 4, 2)), ScheduleConfig())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(prediction_type="x0"), "prediction_type"),
        (dict(prediction_type="v_prediction"), "epsilon', 'sample"),
        (dict(beta_schedule="scaled_linear"), "beta_schedule"),
        (dict(inference_steps=0), "inference_steps"),
        (dict(inference_steps=101), "inference_steps"),
        (dict(inference_steps=2.5), "inference_steps"),
        (dict(num_train_steps=0), "num_train_steps"),
        (dict(clip_range=0.0), "clip_range"),
        (dict(beta_schedule="linear", beta_start=0.03, beta_end=0.02), "beta_start"),
    ],
)
def test_bad_configs_raise(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ScheduleConfig(**kwargs)


def test_schedule_config_dict_round_trip_and_unknown_keys():
    cfg = ScheduleConfig(beta_schedule="linear", inference_steps=20)
    assert ScheduleConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="eta"):
        ScheduleConfig.from_dict({**cfg.to_dict(), "eta": 0.0})
