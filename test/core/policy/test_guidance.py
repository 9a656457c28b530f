"""Seam-aware sampling: the guided DDIM loop keeps a fixed prefix, changes nothing at weight 0,
runs the same in ONNX Runtime as a torch implementation of the loop, and chunk selection keeps
the candidate closest to the plan."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from clamp_core.policy import NoiseSchedule, OnnxPolicy, ScheduleConfig, ddim_sample
from clamp_core.policy.guidance import coherence_scores, prefix_profile
from test.core.policy.test_runtime import model_dir_fixture, norm, unnorm
from test.core.policy.tiny_models import TinySpec

PREFIX_TOLERANCE_RAD = 1e-5
"""How exactly a prefix of weight 1 comes back: the sampler ends on it in float32 (normalised)
and the normaliser is float32 too, so a few float32 ulps of the raw value."""

SPEC = TinySpec(horizon=12)


def make_obs(spec: TinySpec, seed: int = 0):
    from test.core.policy.test_runtime import make_obs as runtime_obs

    return runtime_obs(spec, seed)


model_dir = model_dir_fixture(SPEC, "tiny_guided")


@pytest.fixture(scope="module")
def policy(model_dir):
    return OnnxPolicy(model_dir, threads=1)


def raw_bounds(policy):
    n = policy.metadata.normalization["action"]
    return np.asarray(n["min"]), np.asarray(n["max"])


# ------------------------------------------------------------------------------ weights
def test_profile_is_one_to_the_switch_then_decays_to_zero_where_the_plan_ends():
    w = prefix_profile(50, delay_steps=3, overlap_steps=23)
    assert w.shape == (50,)
    assert (w[:4] == 1.0).all()
    assert (np.diff(w[3:23]) < 0).all() and 0 < w[22] < 0.1
    assert (w[23:] == 0).all()
    # the decay's shape at its midpoint: c (e^c - 1) / (e - 1) with c = 1/2
    mid = prefix_profile(21, delay_steps=0, overlap_steps=20)[10]
    assert mid == pytest.approx(0.5 * (math.exp(0.5) - 1) / (math.e - 1))
    assert (prefix_profile(10, 5, 0) == 0).all()
    assert (prefix_profile(10, 8, 4) == [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]).all()


# ------------------------------------------------------------------------------ sampler
@pytest.mark.parametrize("prediction", ["epsilon", "sample"])
def test_weight_zero_is_plain_ddim_bit_for_bit(prediction):
    cfg = ScheduleConfig(prediction_type=prediction, inference_steps=7)
    rng = np.random.default_rng(1)
    W = rng.normal(size=(6, 6)).astype(np.float32)

    def eps_fn(x, t):  # mixes actions over time, as a transformer does
        return np.tanh(np.einsum("fg,bga->bfa", W, x) * (1 + t[:, None, None] / 100))

    x_T = rng.standard_normal((2, 6, 3)).astype(np.float32)
    known = rng.uniform(-1, 1, (1, 6, 3)).astype(np.float32)
    plain = ddim_sample(eps_fn, x_T, cfg)
    guided = ddim_sample(eps_fn, x_T, cfg, known, np.zeros(6))
    assert guided.dtype == plain.dtype and np.array_equal(guided, plain)
    # and the guidance does act when it has weight
    assert not np.allclose(ddim_sample(eps_fn, x_T, cfg, known, np.full(6, 0.5)), plain)


def test_full_weight_prefix_is_reproduced_and_the_rest_follows_the_model():
    cfg = ScheduleConfig(prediction_type="sample", inference_steps=10)
    sched = NoiseSchedule(cfg)
    rng = np.random.default_rng(2)
    target = rng.uniform(-0.8, 0.8, (1, 8, 2))

    def x0_fn(x, t):  # a perfect denoiser of a fixed clean sample
        return np.broadcast_to(target, x.shape)

    known = rng.uniform(-0.8, 0.8, (1, 8, 2))
    w = prefix_profile(8, delay_steps=2, overlap_steps=5)
    out = ddim_sample(x0_fn, rng.standard_normal((1, 8, 2)), sched, known, w)
    np.testing.assert_allclose(out[0, :3], known[0, :3], atol=1e-12)
    np.testing.assert_allclose(out[0, 5:], target[0, 5:], atol=1e-12)
    inside = (out[0, 3:5] - target[0, 3:5]) / (known[0, 3:5] - target[0, 3:5])
    np.testing.assert_allclose(inside, w[3:5, None] * np.ones((2, 2)), atol=1e-9)


def test_bad_weights_are_refused():
    x = np.zeros((1, 4, 2))
    with pytest.raises(ValueError, match="weights: needs shape"):
        ddim_sample(lambda x, t: x, x, ScheduleConfig(), np.zeros((1, 4, 2)), np.zeros(3))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        ddim_sample(lambda x, t: x, x, ScheduleConfig(), np.zeros((1, 4, 2)), np.full(4, 1.5))


# ------------------------------------------------------------------------------ OnnxPolicy
def guided_obs(policy, seed=0, delay=3, overlap=9, weight=1.0):
    obs = make_obs(SPEC, seed)
    lo, hi = raw_bounds(policy)
    rng = np.random.default_rng(seed + 100)
    obs.prefix = rng.uniform(lo, hi, (SPEC.horizon, SPEC.action_dim))
    obs.prefix_weights = prefix_profile(SPEC.horizon, delay, overlap)
    obs.guidance_weight = weight
    return obs


def test_policy_reproduces_a_fixed_prefix_within_tolerance(policy):
    obs = guided_obs(policy, delay=3, overlap=9)
    noise = np.random.default_rng(5).standard_normal((SPEC.horizon, SPEC.action_dim))
    chunk = policy.predict(obs, noise=noise)
    err = np.abs(chunk.actions[:4] - obs.prefix[:4])
    assert err.max() <= PREFIX_TOLERANCE_RAD
    free = policy.predict(dataclasses.replace(obs, prefix=None, prefix_weights=None), noise=noise)
    assert np.abs(free.actions[:4] - obs.prefix[:4]).max() > 100 * PREFIX_TOLERANCE_RAD


def test_policy_with_weight_zero_equals_the_unguided_policy_bit_for_bit(policy):
    obs = guided_obs(policy, weight=0.0)
    noise = np.random.default_rng(6).standard_normal((SPEC.horizon, SPEC.action_dim))
    plain = policy.predict(dataclasses.replace(obs, prefix=None, prefix_weights=None), noise=noise)
    assert np.array_equal(policy.predict(obs, noise=noise).actions, plain.actions)


def test_candidates_are_batched_and_the_most_coherent_is_kept(policy):
    obs = guided_obs(policy, delay=0, overlap=12, weight=0.0)  # selection only
    K = 5
    noise = np.random.default_rng(7).standard_normal((K, SPEC.horizon, SPEC.action_dim))
    singles = [policy.predict(obs, noise=n).actions for n in noise]
    chosen = policy.predict(obs, noise=noise)
    scores = [float(np.sum(obs.prefix_weights[:, None] * (c - obs.prefix) ** 2)) for c in singles]
    best = int(np.argmin(scores))
    assert policy.last_selection["chosen"] == best and len(set(scores)) == K
    np.testing.assert_allclose(chosen.actions, singles[best], atol=1e-5)
    np.testing.assert_allclose(policy.last_selection["scores"], scores, rtol=1e-4)
    # no prefix: nothing to be coherent with, the first noise alone runs
    free = dataclasses.replace(obs, prefix=None, prefix_weights=None)
    np.testing.assert_array_equal(
        policy.predict(free, noise=noise).actions, policy.predict(free, noise=noise[0]).actions
    )
    assert policy.last_selection is None


def test_coherence_scores():
    prefix = np.zeros((3, 2))
    cands = np.array([np.ones((3, 2)), np.zeros((3, 2)), 2 * np.ones((3, 2))])
    cands[1, 2] = 10.0  # far off only where the weight is 0
    s = coherence_scores(cands, prefix, np.array([1.0, 0.5, 0.0]))
    np.testing.assert_allclose(s, [3.0, 0.0, 12.0])


def test_bad_guidance_inputs_are_refused(policy):
    from clamp_core.policy import PolicyInputError

    obs = guided_obs(policy)
    with pytest.raises(PolicyInputError, match="prefix_weights"):
        policy.predict(dataclasses.replace(obs, prefix_weights=None))
    with pytest.raises(PolicyInputError, match="guidance_weight"):
        policy.predict(dataclasses.replace(obs, guidance_weight=2.0))
    with pytest.raises(PolicyInputError, match="prefix: needs shape"):
        policy.predict(dataclasses.replace(obs, prefix=obs.prefix[:3]))


# ------------------------------------------------------------------------------ torch parity
def torch_guided_sample(model, obs, meta, noise, w):
    """The reference: the guided DDIM loop written in torch (float64 step, the exported
    modules in eager mode), with the normalisation from its definition."""
    import torch

    from clamp_core.models.clamp import EncodersGraph

    n = meta.normalization
    f32 = torch.float32
    sched = meta.schedule_config()
    ab = torch.tensor(NoiseSchedule(sched).alphas_cumprod, dtype=torch.float64)
    T, steps = sched.num_train_steps, sched.inference_steps
    with torch.no_grad():
        cond = EncodersGraph(model)(
            torch.tensor(obs.views[None], dtype=f32),
            torch.tensor(norm(obs.qpos, n["qpos"])[None], dtype=f32),
            torch.tensor(norm(obs.action_history, n["action"])[None], dtype=f32),
        )
        known = torch.tensor(norm(obs.prefix, n["action"])[None], dtype=torch.float64)
        wt = torch.tensor(w, dtype=torch.float64)[None, :, None]
        x = torch.tensor(noise[None], dtype=f32)
        for t in reversed(range(0, steps * (T // steps), T // steps)):
            out = model.denoiser(x, torch.tensor([t]), cond).double()
            x64 = x.double()
            a, a_prev = ab[t], (ab[t - T // steps] if t - T // steps >= 0 else torch.tensor(1.0))
            if sched.prediction_type == "sample":
                x0 = out
            else:
                x0 = (x64 - (1 - a).sqrt() * out) / a.sqrt()
            if sched.clip_sample:
                x0 = x0.clamp(-sched.clip_range, sched.clip_range)
            eps = (x64 - a.sqrt() * x0) / (1 - a).sqrt()
            x0 = (1 - wt) * x0 + wt * known
            x = (a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps).float()
    return unnorm(x[0].double().numpy(), n["action"])


@pytest.mark.parametrize("prediction", ["epsilon", "sample"])
def test_guided_loop_in_onnx_runtime_matches_torch(tmp_path, prediction):
    torch = pytest.importorskip("torch")
    from clamp_core.models.clamp import ClampModel
    from clamp_core.models.config import ModelConfig
    from clamp_core.training.export import (
        build_metadata,
        export_graphs,
        untrained_checkpoint_meta,
    )
    from test.core.training.conftest import tiny_train_overrides

    cfg = ModelConfig.from_dict(tiny_train_overrides())
    torch.manual_seed(3)
    model = ClampModel(cfg).eval()
    export_graphs(model, tmp_path)
    ck = untrained_checkpoint_meta(cfg)
    ck["schedule"] = dataclasses.asdict(ScheduleConfig(prediction_type=prediction))
    build_metadata(ck, cfg, "tiny", None).save(tmp_path / "metadata.json")
    policy = OnnxPolicy(tmp_path, threads=1)
    meta = policy.metadata
    F, A = meta.action_horizon, meta.action_dim
    rng = np.random.default_rng(4)
    v, h, wd, _ = meta.views_shape
    views = np.zeros((v, h, wd, 4), np.float32)
    views[..., 0] = rng.uniform(0.3, 1.2, (v, h, wd))
    views[..., 1:] = rng.uniform(-0.4, 0.4, (v, h, wd, 3))
    from clamp_core.policy import PolicyObservation

    obs = PolicyObservation(
        1_000,
        views,
        rng.uniform(-1, 1, A),
        rng.uniform(-1, 1, (meta.action_history, A)),
        prefix=rng.uniform(-1.2, 1.2, (F, A)),
        prefix_weights=prefix_profile(F, 3, 23),
        guidance_weight=0.8,
    )
    noise = rng.standard_normal((F, A)).astype(np.float32)
    got = policy.predict(obs, noise=noise).actions
    ref = torch_guided_sample(model, obs, meta, noise, 0.8 * obs.prefix_weights)
    assert np.abs(got - ref).max() <= 1e-4
    # the guidance is what both computed: unguided differs by far more than that
    free = policy.predict(dataclasses.replace(obs, prefix=None, prefix_weights=None), noise=noise)
    assert np.abs(free.actions - ref).max() > 1e-2
