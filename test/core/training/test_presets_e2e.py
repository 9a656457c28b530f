"""Every model preset as shipped (and the plain ModelConfig defaults) works end to end: built,
pretrained (contrastive + policy) and fine-tuned for a few steps on an episode made by the real
simulator, exported, and run by ONNX Runtime to the same action chunk as torch computes."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("mujoco")
pytest.importorskip("gym_aloha")

from clamp_core.data.episode import EpisodeReader, episode_path  # noqa: E402
from clamp_core.models.clamp import ClampModel  # noqa: E402
from clamp_core.models.config import PRESETS, ModelConfig, preset  # noqa: E402
from clamp_core.policy.normalize import MinMax  # noqa: E402
from clamp_core.policy.rgb import rgb_inputs  # noqa: E402
from clamp_core.policy.runtime import OnnxPolicy, PolicyObservation  # noqa: E402
from clamp_core.policy.schedule import NoiseSchedule, ScheduleConfig  # noqa: E402
from clamp_core.sim.generate import Job, generate  # noqa: E402
from clamp_core.training.config import TrainConfig  # noqa: E402
from clamp_core.training.data import EpisodeRenderer  # noqa: E402
from clamp_core.training.export import export  # noqa: E402
from clamp_core.training.train import load_checkpoint, train  # noqa: E402

TASK, SEED = "drawer_open", 0
"""The shortest expert episode the simulator has (about 120 frames, ~4 s to generate)."""
CAMERA_SIZE = (256, 192)
"""4:3 like the paper preset's 224x168 RGB input, and larger, so its colour is downscaled as a
real camera's would be."""
PARITY_TOL = 1e-4
"""Of ``export``'s torch-vs-ORT check, as in the other export tests."""
FRAME_STRIDE = 24
"""Training windows every 24 frames (5 from the episode): the view cache and the frozen-encoder
features of fine-tuning scale with the number of windows; the presets do not care."""

CASES = ["defaults", *PRESETS]
SLOW = {"defaults", "paper"}
"""Cases that take 25-70 s on 2 busy cores (224 px views; paper: ResNet-18 RGB branch, 73 M
parameters); cpu-small takes 2-5 s."""


@pytest.fixture(scope="module")
def sim_data(tmp_path_factory):
    """One expert episode from ``clamp generate``'s own code path."""
    out = tmp_path_factory.mktemp("sim_episodes")
    (result,) = generate([Job(TASK, SEED, str(out), *CAMERA_SIZE)], progress=False)
    assert result.status == "written", result
    return out


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("preset_view_cache")


def model_of(case: str) -> tuple[str, dict]:
    """(TrainConfig.preset, model overrides): a preset as shipped, or every field set to the
    ModelConfig defaults (TrainConfig always starts from a named preset)."""
    if case == "defaults":
        return "cpu-small", ModelConfig().to_dict()
    return case, {}


def run_cfg(data, out, cache, **kw) -> TrainConfig:
    # Only the run is made cheap (steps, batch, stride, no checkpoints between): nothing of
    # the network. One episode: no validation split.
    d = dict(
        data=[str(data)],
        out=str(out),
        cache_dir=str(cache),
        frame_stride=FRAME_STRIDE,
        batch_size=2,
        warmup_steps=1,
        log_every=1,
        eval_every=1000,
        ckpt_every=1000,
        val_fraction=0.0,
        device="cpu",
    )
    d.update(kw)
    return TrainConfig.from_dict(d)


def torch_policy(run):
    """The reference: the checkpoint's torch model and a DDIM loop written out here in torch
    (float64 between denoiser calls). Returns chunk(obs, noise (F, A)) -> (F, A) raw units."""
    ck = load_checkpoint(run)
    cfg = ModelConfig.from_dict(ck["model_config"])
    model = ClampModel(cfg)
    model.load_state_dict(ck["model"])
    model.eval()
    norm = {k: MinMax.from_dict(v) for k, v in ck["norm"].items()}
    sc = ScheduleConfig.from_dict(ck["schedule"])
    alpha_bar = NoiseSchedule(sc).alphas_cumprod
    step = sc.num_train_steps // sc.inference_steps
    f32 = np.float32

    @torch.no_grad()
    def chunk(obs: PolicyObservation, noise: np.ndarray) -> np.ndarray:
        rgb = None
        if cfg.rgb.enabled:
            rgb = torch.from_numpy(np.stack([obs.rgb[c] for c in cfg.rgb.cameras])[None])
        cls, per_view, act = model.encode(
            torch.from_numpy(obs.views.astype(f32)[None]),
            torch.from_numpy(norm["action"].normalize(obs.action_history.astype(f32))[None]),
        )
        qpos = torch.from_numpy(norm["qpos"].normalize(obs.qpos.astype(f32))[None])
        cond = model.condition(cls, per_view, act, qpos, rgb)
        x = torch.from_numpy(noise[None]).double()
        for t in range(step * (sc.inference_steps - 1), -1, -step):
            out = model.denoiser(x.float(), torch.tensor([t]), cond).double()
            a_t = float(alpha_bar[t])
            a_prev = float(alpha_bar[t - step]) if t - step >= 0 else 1.0
            if sc.prediction_type == "sample":
                x0 = out
            else:
                x0 = (x - math.sqrt(1 - a_t) * out) / math.sqrt(a_t)
            if sc.clip_sample:
                x0 = x0.clamp(-sc.clip_range, sc.clip_range)
            eps = out
            if sc.prediction_type == "sample" or sc.clip_sample:
                eps = (x - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
            x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps
        return norm["action"].unnormalize(x[0].float().numpy()).astype(np.float64)

    return chunk


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW else c for c in CASES]
)
def test_preset_trains_exports_and_runs_like_torch(case, sim_data, cache_dir, tmp_path):
    name, overrides = model_of(case)
    want = preset(name) if case != "defaults" else ModelConfig()
    # pretraining: contrastive (image-action, image-text) + diffusion policy
    pre = tmp_path / "pre"
    train(run_cfg(sim_data, pre, cache_dir, preset=name, model=overrides, steps=2), False)
    rows = [json.loads(r) for r in (pre / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("loss_image_action", "loss_image_text", "loss_diffusion", "loss"):
        assert all(np.isfinite(r[key]) for r in rows), key
    # fine-tuning from it: frozen encoders, their features cached, the policy (+ RGB) trained
    ft = tmp_path / "ft"
    train(run_cfg(sim_data, ft, cache_dir, preset=name, init_from=str(pre), steps=1), False)
    ck = load_checkpoint(ft)
    assert ModelConfig.from_dict(ck["model_config"]) == want  # the network as shipped

    meta = export(ft, tmp_path / "model", tolerance=PARITY_TOL)
    assert meta.parity_max_abs_diff is not None and meta.parity_max_abs_diff <= PARITY_TOL
    assert meta.views_shape == (want.num_views, want.view_size, want.view_size, 4)
    assert meta.rgb_cameras == (list(want.rgb.cameras) if want.rgb.enabled else [])

    # a real observation of the generated episode, as the policy node would assemble it
    policy = OnnxPolicy(tmp_path / "model", providers=["CPUExecutionProvider"])
    renderer = EpisodeRenderer(meta.perception_config())
    t = 60
    hist_idx = t - meta.action_history_stride * np.arange(meta.action_history, 0, -1)
    with EpisodeReader(episode_path(sim_data, TASK, SEED)) as r:
        views = renderer.render(r, t).images
        low = r.lowdim()
        images = (
            r.frame(t, cameras=meta.rgb_cameras, depth=False)["images"] if want.rgb.enabled else {}
        )
    assert np.count_nonzero(views[..., 0]) > 0.05 * views[..., 0].size  # the scene is in view
    obs = PolicyObservation(
        int(low["stamp_ns"][t]),
        views,
        low["qpos"][t],
        low["action"][hist_idx],
        rgb=rgb_inputs(images, meta.rgb_cameras, meta.rgb_size) or None,
    )
    noise = np.random.default_rng(7).standard_normal(
        (meta.action_horizon, meta.action_dim), dtype=np.float32
    )
    got = policy.predict(obs, noise=noise).actions
    reference = torch_policy(ft)
    # paper checkpoints are 0.7-0.9 GB each (weights + AdamW state), two per run: not kept
    shutil.rmtree(pre)
    shutil.rmtree(ft / "checkpoints")
    ref = reference(obs, noise)
    span = meta.action_normalizer().hi - meta.action_normalizer().lo
    # PARITY_TOL in the normalised space [-1, 1], times each joint's half range in raw units
    tol = PARITY_TOL * np.maximum(span / 2, 1.0)
    assert got.shape == (meta.action_horizon, meta.action_dim)
    assert np.all(np.abs(got - ref) <= tol), np.abs(got - ref).max()
    # barely trained, most of the chunk sits at the x0 clip bounds: the comparison is still
    # sensitive to every input (another frame's qpos; the colour, for RGB models)
    other = dataclasses.replace(obs, qpos=low["qpos"][t + 30])
    assert np.abs(reference(other, noise) - got).max() > 10 * tol.max()
    if obs.rgb:
        other = dataclasses.replace(obs, rgb={c: 255 - v for c, v in obs.rgb.items()})
        assert np.abs(reference(other, noise) - got).max() > 10 * tol.max()
