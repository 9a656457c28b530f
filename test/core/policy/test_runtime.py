"""OnnxPolicy on tiny real ONNX models: predictions equal an independent numpy implementation of
the same graphs run through the DDIM loop; model directories and observations that cannot work
fail with errors that name the file or the field."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import pytest

from clamp_core.policy import (
    ActionChunk,
    OnnxPolicy,
    PolicyInputError,
    PolicyLoadError,
    PolicyObservation,
    PolicyOutputError,
    ScheduleConfig,
    ddim_sample,
)
from test.core.policy.tiny_models import (
    TinySpec,
    denoiser_model,
    make_metadata,
    make_weights,
    np_encoders,
    np_eps,
    write_model,
)

SPEC = TinySpec()
RGB_SPEC = TinySpec(rgb_cameras=["cam_low", "cam_high"], rgb_size=[6, 4])


def make_obs(spec: TinySpec, seed: int = 0, stamp_ns: int = 1_700_000_000_123_456_789):
    rng = np.random.default_rng(seed)
    views = rng.uniform(-0.5, 1.5, size=(spec.views, spec.height, spec.width, 4))
    views[:, :2] = 0.0  # empty pixels
    rgb = None
    if spec.rgb_cameras:
        w, h = spec.rgb_size
        # cameras and channels differ in brightness, so swapped inputs would show
        rgb = {
            c: (rng.integers(0, 60, (h, w, 3)) + [40 * i, 80, 160 - 40 * i]).astype(np.uint8)
            for i, c in enumerate(spec.rgb_cameras)
        }
        rgb["cam_unused"] = np.zeros((1, 1, 3), np.uint8)  # extra cameras are ignored
    return PolicyObservation(
        stamp_ns=stamp_ns,
        views=views.astype(np.float32),
        qpos=rng.uniform(-1.5, 1.5, spec.action_dim),
        action_history=rng.uniform(-1.5, 1.5, (spec.history, spec.action_dim)),
        rgb=rgb,
    )


def norm(x, stats):
    """Min-max to [-1, 1], written out from its definition (the oracles' own, not the runtime's)."""
    lo, hi = np.asarray(stats["min"]), np.asarray(stats["max"])
    return (x - (lo + hi) / 2) * 2 / np.maximum(hi - lo, 1e-3)


def unnorm(y, stats):
    lo, hi = np.asarray(stats["min"]), np.asarray(stats["max"])
    return y * np.maximum(hi - lo, 1e-3) / 2 + (lo + hi) / 2


def oracle_chunk(spec, wts, meta, obs, noise, inference_steps=None) -> np.ndarray:
    """The policy in numpy, float64, with the normalisation written out from its definition."""

    n = meta.normalization
    rgb = np.stack([obs.rgb[c] for c in spec.rgb_cameras]) if spec.rgb_cameras else None
    cond = np_encoders(
        spec,
        wts,
        obs.views,
        norm(obs.qpos, n["qpos"]),
        norm(obs.action_history, n["action"]),
        rgb,
    )
    cfg = ScheduleConfig(**meta.schedule)
    if inference_steps:
        cfg = dataclasses.replace(cfg, inference_steps=inference_steps)
    x0 = ddim_sample(lambda x, t: np_eps(spec, wts, x, t, cond), noise[None].astype(float), cfg)
    return unnorm(x0[0], n["action"])


def model_dir_fixture(spec, name: str):
    """A module fixture: a tiny model of ``spec`` written once into a temp folder ``name``."""

    @pytest.fixture(scope="module")
    def model_dir(tmp_path_factory):
        d = tmp_path_factory.mktemp(name)
        write_model(d, spec)
        return d

    return model_dir


model_dir = model_dir_fixture(SPEC, "tiny")


@pytest.fixture(scope="module")
def policy(model_dir):
    return OnnxPolicy(model_dir, threads=1)


@pytest.mark.parametrize("spec", [SPEC, RGB_SPEC], ids=["depth_only", "with_rgb"])
def test_predict_matches_numpy_oracle(tmp_path, spec):
    wts = write_model(tmp_path, spec)
    meta = make_metadata(spec)
    policy = OnnxPolicy(tmp_path, threads=1)
    assert policy.providers == ["CPUExecutionProvider"]
    for seed in (0, 1):
        obs = make_obs(spec, seed)
        noise = np.random.default_rng(10 + seed).standard_normal((spec.horizon, spec.action_dim))
        chunk = policy.predict(obs, noise=noise)
        expected = oracle_chunk(spec, wts, meta, obs, noise)
        assert isinstance(chunk, ActionChunk)
        assert chunk.actions.shape == (spec.horizon, spec.action_dim)
        assert chunk.actions.dtype == np.float64
        np.testing.assert_allclose(chunk.actions, expected, rtol=0, atol=2e-5)
        # the oracle is not trivially satisfied: another observation gives other actions
        other = oracle_chunk(spec, wts, meta, make_obs(spec, 5), noise)
        assert np.abs(other - expected).max() > 1e-2
    assert chunk.joint_names == meta.joint_names
    assert chunk.stamp_ns == obs.stamp_ns


def test_constant_action_dimension_is_reproduced(policy, model_dir):
    meta = policy.metadata
    lo = meta.normalization["action"]["min"][0]
    assert lo == meta.normalization["action"]["max"][0]  # a joint that never moved
    chunk = policy.predict(make_obs(SPEC), noise=np.zeros((SPEC.horizon, SPEC.action_dim)))
    # x0 is clipped to [-1, 1]: a constant dimension stays within eps/2 of its value
    assert np.all(np.abs(chunk.actions[:, 0] - lo) <= 0.5e-3 + 1e-6)


def test_chunk_times_follow_the_control_rate(tmp_path):
    spec = TinySpec(rate_hz=30.0)
    write_model(tmp_path, spec)
    policy = OnnxPolicy(tmp_path)
    stamp = 1_000_000_000_000_000_001
    chunk = policy.predict(make_obs(spec, stamp_ns=stamp))
    assert chunk.dt_s == pytest.approx(1 / 30)
    assert chunk.times_ns.dtype == np.int64
    expected = [stamp + round(k * 1e9 / 30) for k in range(spec.horizon)]
    assert chunk.times_ns.tolist() == expected
    assert chunk.times_ns[1] - chunk.times_ns[0] == 33_333_333


def test_seeded_noise_is_reproducible(model_dir):
    obs = make_obs(SPEC)
    a = OnnxPolicy(model_dir, seed=7)
    b = OnnxPolicy(model_dir, seed=7)
    c = OnnxPolicy(model_dir, seed=8)
    first = a.predict(obs).actions
    np.testing.assert_array_equal(first, b.predict(obs).actions)
    assert not np.allclose(first, c.predict(obs).actions)
    assert not np.allclose(first, a.predict(obs).actions)  # the generator moves on
    # documented: x_T = default_rng(seed).standard_normal((1, F, A), dtype=float32), per call
    noise = np.random.default_rng(7).standard_normal((1, 6, 14), dtype=np.float32)[0]
    wts = make_weights(SPEC)
    np.testing.assert_allclose(
        OnnxPolicy(model_dir, seed=7).predict(obs).actions,
        oracle_chunk(SPEC, wts, a.metadata, obs, noise),
        atol=2e-5,
    )


def test_inference_steps_override(model_dir):
    obs, noise = make_obs(SPEC), np.random.default_rng(3).standard_normal((6, 14))
    p = OnnxPolicy(model_dir, inference_steps=25)
    assert p.schedule.ddim_timesteps().tolist() == list(range(96, -1, -4))
    expected = oracle_chunk(SPEC, make_weights(SPEC), p.metadata, obs, noise, 25)
    np.testing.assert_allclose(p.predict(obs, noise).actions, expected, atol=2e-5)
    with pytest.raises(ValueError, match="inference_steps"):
        OnnxPolicy(model_dir, inference_steps=200)


def test_timings_are_recorded(policy):
    policy.predict(make_obs(SPEC))
    t = policy.last_timings_ms
    assert set(t) == {"encode_ms", "denoise_ms", "total_ms"}
    assert 0 < t["encode_ms"] < t["total_ms"] and 0 < t["denoise_ms"] < t["total_ms"]


def test_warmup_does_not_consume_the_generator(model_dir):
    obs = make_obs(SPEC)
    a, b = OnnxPolicy(model_dir, seed=3), OnnxPolicy(model_dir, seed=3)
    a.warmup()
    np.testing.assert_array_equal(a.predict(obs).actions, b.predict(obs).actions)


def test_unavailable_provider_is_a_load_error(model_dir):
    with pytest.raises(PolicyLoadError, match="NoSuchExecutionProvider.*available"):
        OnnxPolicy(model_dir, providers=["NoSuchExecutionProvider"])


# --------------------------------------------------------------------------- broken models
@pytest.mark.parametrize("name", ["encoders.onnx", "denoiser.onnx", "metadata.json"])
def test_missing_file(tmp_path, name):
    write_model(tmp_path, SPEC)
    (tmp_path / name).unlink()
    with pytest.raises(PolicyLoadError, match=name):
        OnnxPolicy(tmp_path)


@pytest.mark.parametrize("name", ["encoders.onnx", "denoiser.onnx"])
@pytest.mark.parametrize("damage", ["random", "truncated", "empty", "text"])
def test_corrupt_graph_file(tmp_path, name, damage):
    write_model(tmp_path, SPEC)
    path = tmp_path / name
    good = path.read_bytes()
    bad = {
        "random": np.random.default_rng(0).bytes(4000),
        "truncated": good[: len(good) // 2],
        "empty": b"",
        "text": b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n",
    }[damage]
    path.write_bytes(bad)
    with pytest.raises(PolicyLoadError, match=rf"{name}: not a loadable ONNX model"):
        OnnxPolicy(tmp_path)


def test_graph_action_dim_differs_from_metadata(tmp_path):
    write_model(tmp_path, dataclasses.replace(SPEC, action_dim=7), meta=make_metadata(SPEC))
    with pytest.raises(PolicyLoadError) as e:
        OnnxPolicy(tmp_path)
    msg = str(e.value)
    assert "encoders.onnx: the graph does not match metadata.json" in msg
    assert "input 'qpos' has shape ['batch', 7] but metadata.json says [batch, 14]" in msg
    assert "input 'action_history' has shape ['batch', 3, 7]" in msg


def test_denoiser_horizon_differs_from_metadata(tmp_path):
    write_model(tmp_path, SPEC)
    other = dataclasses.replace(SPEC, horizon=8)
    onnx.save(denoiser_model(other, make_weights(other)), tmp_path / "denoiser.onnx")
    with pytest.raises(PolicyLoadError) as e:
        OnnxPolicy(tmp_path)
    msg = str(e.value)
    assert "denoiser.onnx: the graph does not match" in msg
    assert "input 'noisy_actions' has shape ['batch', 8, 14]" in msg
    assert "(action_horizon 6, action_dim 14)" in msg
    assert "output 'eps' has shape ['batch', 8, 14]" in msg


def test_graph_view_count_differs_from_metadata(tmp_path):
    write_model(tmp_path, dataclasses.replace(SPEC, views=3), meta=make_metadata(SPEC))
    with pytest.raises(PolicyLoadError, match=r"input 'views' has shape \['batch', 3, 8, 10, 4\] "):
        OnnxPolicy(tmp_path)


def test_metadata_has_rgb_but_graph_does_not(tmp_path):
    write_model(tmp_path, SPEC, meta=make_metadata(RGB_SPEC))
    with pytest.raises(PolicyLoadError, match=r"missing input 'rgb' \[batch, 2, 4, 6, 3\]"):
        OnnxPolicy(tmp_path)


def test_graph_has_rgb_but_metadata_does_not(tmp_path):
    write_model(tmp_path, RGB_SPEC, meta=make_metadata(SPEC))
    with pytest.raises(PolicyLoadError, match="unexpected input 'rgb'"):
        OnnxPolicy(tmp_path)


def test_unknown_metadata_key_and_format_version(tmp_path):
    write_model(tmp_path, SPEC)
    path = tmp_path / "metadata.json"
    d = json.loads(path.read_text())
    path.write_text(json.dumps(d | {"obs_horizon": 2}))
    with pytest.raises(PolicyLoadError, match=r"metadata.json: unknown keys \['obs_horizon'\]"):
        OnnxPolicy(tmp_path)
    path.write_text(json.dumps(d | {"format_version": 2}))
    with pytest.raises(PolicyLoadError, match="format 2 but this clamp_core reads format 1"):
        OnnxPolicy(tmp_path)


def test_non_finite_model_output_is_not_returned(tmp_path):
    wts = make_weights(SPEC)
    wts.s[2, 3] = np.nan
    write_model(tmp_path, SPEC, weights=wts)
    with pytest.raises(PolicyOutputError, match="non-finite actions"):
        OnnxPolicy(tmp_path).predict(make_obs(SPEC))


# ---------------------------------------------------------------------------- bad observations
def _bad(obs: PolicyObservation, field: str, value) -> PolicyObservation:
    return dataclasses.replace(obs, **{field: value})


def _nan_at(a: np.ndarray, index) -> np.ndarray:
    a = a.copy()
    a[index] = np.nan
    return a


@pytest.mark.parametrize(
    "field, make, match",
    [
        (
            "views",
            lambda o: o.views[:1],
            r"views: needs shape \(2, 8, 10, 4\), got \(1, 8, 10, 4\)",
        ),
        ("views", lambda o: o.views[..., :3], "views: needs shape"),
        ("views", lambda o: _nan_at(o.views, (1, 2, 3, 0)), "views: 1 non-finite"),
        ("qpos", lambda o: o.qpos[:13], r"qpos: needs shape \(14,\)"),
        ("qpos", lambda o: _nan_at(o.qpos, 4), "qpos: 1 non-finite"),
        ("qpos", lambda o: np.full(14, np.inf), "qpos: 14 non-finite"),
        ("qpos", lambda o: o.qpos.astype(str), "qpos: needs real numbers"),
        (
            "action_history",
            lambda o: o.action_history[1:],
            r"action_history: needs shape \(3, 14\)",
        ),
        ("action_history", lambda o: _nan_at(o.action_history, (2, 0)), "action_history: 1 non"),
        ("stamp_ns", lambda o: 1.5e18, "stamp_ns: needs an integer"),
    ],
)
def test_invalid_observation_fields(policy, field, make, match):
    obs = make_obs(SPEC)
    with pytest.raises(PolicyInputError, match=match):
        policy.predict(_bad(obs, field, make(obs)))


def test_invalid_rgb(tmp_path):
    write_model(tmp_path, RGB_SPEC)
    policy = OnnxPolicy(tmp_path)
    obs = make_obs(RGB_SPEC)
    with pytest.raises(PolicyInputError, match=r"rgb: the model needs color images from"):
        policy.predict(_bad(obs, "rgb", None))
    without_high = {k: v for k, v in obs.rgb.items() if k != "cam_high"}
    with pytest.raises(PolicyInputError, match=r"rgb: no image for cameras \['cam_high'\]"):
        policy.predict(_bad(obs, "rgb", without_high))
    wrong_size = obs.rgb | {"cam_low": np.zeros((6, 4, 3), np.uint8)}
    with pytest.raises(PolicyInputError, match=r"rgb\['cam_low'\]: needs shape \(4, 6, 3\)"):
        policy.predict(_bad(obs, "rgb", wrong_size))
    wrong_type = obs.rgb | {"cam_high": obs.rgb["cam_high"].astype(np.float32)}
    with pytest.raises(PolicyInputError, match=r"rgb\['cam_high'\]: needs a uint8 array"):
        policy.predict(_bad(obs, "rgb", wrong_type))


def test_invalid_noise(policy):
    with pytest.raises(PolicyInputError, match=r"noise: needs shape \(6, 14\)"):
        policy.predict(make_obs(SPEC), noise=np.zeros((14, 6)))
    with pytest.raises(PolicyInputError, match="noise: 1 non-finite"):
        policy.predict(make_obs(SPEC), noise=_nan_at(np.zeros((6, 14)), (0, 0)))


def test_rejected_observation_changes_nothing(model_dir):
    """A rejected observation leaves no trace: the next prediction is the one a fresh policy
    would make (buffers and noise generator untouched)."""
    obs = make_obs(SPEC)
    used, fresh = OnnxPolicy(model_dir, seed=4), OnnxPolicy(model_dir, seed=4)
    with pytest.raises(PolicyInputError):
        used.predict(_bad(obs, "qpos", _nan_at(obs.qpos, 0)))
    with pytest.raises(PolicyInputError):
        used.predict(_bad(make_obs(SPEC, 9), "action_history", obs.action_history[:1]))
    np.testing.assert_array_equal(used.predict(obs).actions, fresh.predict(obs).actions)
