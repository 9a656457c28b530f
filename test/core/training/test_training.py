"""Training data pipeline, pretraining, fine-tuning, resume, export parity and DDP, on small
toy episodes (real HDF5 files, real perception pipeline, real torch and ONNX Runtime)."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from clamp_core.data.episode import EpisodeReader
from clamp_core.perception.config import ConfigError
from clamp_core.policy.runtime import OnnxPolicy, PolicyObservation
from clamp_core.training.cli import DEFAULT_INIT
from clamp_core.training.config import TrainConfig
from clamp_core.training.data import (
    EpisodeRenderer,
    WindowDataset,
    attach_views,
    cached_views,
    compute_norm_stats,
    load_episodes,
    perception_for_episodes,
)
from clamp_core.training.export import ExportError, export
from clamp_core.training.train import CheckpointError, load_checkpoint, state_digest, train

from .conftest import tiny_train_overrides

REPO = Path(__file__).resolve().parents[3]


def metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def make_cfg(data, out, cache, **kw) -> TrainConfig:
    d = dict(
        data=[str(data)],
        out=str(out),
        cache_dir=str(cache),
        frame_stride=2,
        steps=80,
        batch_size=16,
        lr=1e-3,
        warmup_steps=5,
        log_every=5,
        eval_every=40,
        ckpt_every=40,
        val_fraction=0.25,
        model=tiny_train_overrides(),
    )
    d.update(kw)
    return TrainConfig.from_dict(d)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("view_cache")


@pytest.fixture(scope="module")
def pretrained(toy_data, cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "pre"
    train(make_cfg(toy_data, out, cache_dir), progress=False)
    return out


# ------------------------------------------------------------------------------ data
def test_rendered_views_put_the_cube_where_it_is(toy_data):
    eps = load_episodes(toy_data)
    cfg = perception_for_episodes(["cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist"], 96)
    renderer = EpisodeRenderer(cfg)
    for e in eps[:3]:
        with EpisodeReader(e.path) as r:
            views = renderer.render(r, 5)
        cube = e.lowdim["object_positions"][5, 0]
        top = cube + [0, 0, 0.03]  # centre of the cube's top face
        overhead = views.images[0]
        pts = overhead[views.mask[0]][:, 1:]
        # the overhead view sees the top face: a rendered point within 2 cm of its centre and
        # every point above the table's z = 0 plane is within the cube's footprint
        assert np.linalg.norm(pts - top, axis=1).min() < 0.02  # 64x48 input: ~1 cm pixels
        high = pts[pts[:, 2] > 0.01]
        assert len(high) > 0
        assert np.all(np.abs(high[:, :2] - cube[:2]) < 0.03 + 0.005)


def test_view_cache_is_reused_and_keyed_by_config(toy_data, tmp_path):
    path = load_episodes(toy_data)[0].path
    cfg = perception_for_episodes(["cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist"], 32)
    a = cached_views(path, cfg, 4, tmp_path)
    files = list(tmp_path.glob("*.npy"))
    assert len(files) == 1 and a.shape == (6, 5, 32, 32, 4) and a.dtype == np.float16
    mtime = files[0].stat().st_mtime_ns
    b = cached_views(path, cfg, 4, tmp_path)
    assert files[0].stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(a, b)
    cached_views(path, cfg, 2, tmp_path)  # another stride -> another file
    assert len(list(tmp_path.glob("*.npy"))) == 2
    assert not list(tmp_path.glob("*.tmp*"))


def test_windows_are_normalised_and_aligned(toy_data, cache_dir):
    eps = load_episodes(toy_data)
    cfg = perception_for_episodes(["cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist"], 48)
    attach_views(eps, cfg, 2, cache_dir, progress=False)
    norm = compute_norm_stats(eps)
    # the history input holds measured positions before the first command: the action
    # statistics cover them, so a resting arm's sag stays inside [-1, 1]
    q = np.concatenate([e.lowdim["qpos"] for e in eps])
    a = np.concatenate([e.lowdim["action"] for e in eps])
    np.testing.assert_allclose(norm["action"].lo, np.minimum(q.min(0), a.min(0)), rtol=1e-6)
    np.testing.assert_allclose(norm["action"].hi, np.maximum(q.max(0), a.max(0)), rtol=1e-6)
    ds = WindowDataset(eps, norm, history=4, horizon=10, stride=2)
    assert len(ds) == 12 * 12
    for i in (0, 1, 3, len(ds) - 1):
        item = ds[i]
        ei, k = ds.index[i]
        t = int(k) * 2
        act = eps[ei].lowdim["action"]
        T = len(act)
        # before the start: the measured position at t (what the policy node fills in)
        idx = np.arange(t - 4, t)
        want_hist = np.where((idx < 0)[:, None], eps[ei].lowdim["qpos"][t], act[idx.clip(0)])
        np.testing.assert_allclose(
            norm["action"].unnormalize(item["action_history"]), want_hist, atol=1e-5
        )
        want_fut = act[np.clip(np.arange(t, t + 10), 0, T - 1)]
        np.testing.assert_allclose(norm["action"].unnormalize(item["actions"]), want_fut, atol=1e-5)
        np.testing.assert_array_equal(item["actions_is_pad"], np.arange(t, t + 10) >= T)
        assert np.all(np.abs(item["qpos"]) <= 1 + 1e-6)
        np.testing.assert_array_equal(item["views"], np.asarray(eps[ei].views[k], np.float32))
    # a history of 4 samples 3 frames apart: t-12, t-9, t-6, t-3 (the same function as the node)
    spaced = WindowDataset(eps, norm, history=4, horizon=10, stride=2, history_stride=3)
    for i in (0, 5, len(spaced) - 1):
        ei, k = spaced.index[i]
        t = int(k) * 2
        idx = t - 3 * np.arange(4, 0, -1)
        act = eps[ei].lowdim["action"]
        want = np.where((idx < 0)[:, None], eps[ei].lowdim["qpos"][t], act[idx.clip(0)])
        np.testing.assert_allclose(
            norm["action"].unnormalize(spaced[i]["action_history"]), want, atol=1e-5
        )


# ------------------------------------------------------------------------------ training
def test_pretraining_lowers_losses_and_retrieval_beats_chance(pretrained):
    rows = metrics(pretrained)
    train_rows = [r for r in rows if "loss" in r]
    first, last = train_rows[:3], train_rows[-3:]
    for key in ("loss_image_action", "loss_diffusion"):
        assert np.mean([r[key] for r in last]) < np.mean([r[key] for r in first]), key
    val = [r for r in rows if "val/acc_image_action" in r][-1]
    assert val["val/acc_image_action"] > 1.5 * val["val/chance"]
    assert (pretrained / "checkpoints" / "last.pt").is_file()
    assert list((pretrained / "tensorboard").glob("events.*"))


def test_resume_continues_from_the_last_checkpoint(toy_data, cache_dir, tmp_path):
    out = tmp_path / "run"
    train(make_cfg(toy_data, out, cache_dir, steps=10, ckpt_every=5), progress=False)
    first = load_checkpoint(out)
    assert first["step"] == 10
    train(make_cfg(toy_data, out, cache_dir, steps=15, ckpt_every=5), progress=False)
    steps = [r["step"] for r in metrics(out) if "loss" in r]
    assert steps == [5, 10, 15]  # nothing re-done
    assert load_checkpoint(out)["step"] == 15


def finetune_cfg(data, out, cache, init, steps: int) -> TrainConfig:
    """A frozen-encoder fine-tune of ``steps`` steps on 3 demos from ``init``."""
    return make_cfg(
        data,
        out,
        cache,
        steps=steps,
        init_from=str(init),
        contrastive=False,
        max_episodes=3,
        model={},
    )


def test_finetune_starts_from_the_pretrained_weights(pretrained, toy_data, cache_dir, tmp_path):
    pre = load_checkpoint(pretrained)
    out = tmp_path / "ft"
    train(finetune_cfg(toy_data, out, cache_dir, pretrained, 5), progress=False)
    ft = load_checkpoint(out)
    assert ft["init"]["weights_sha1"] == state_digest(pre["model"])
    assert ft["init"]["path"] == str(pretrained / "checkpoints" / "last.pt")
    # the exported model names the pretraining it was fine-tuned from
    meta = export(out, tmp_path / "model", verify=False)
    assert meta.training["init"]["weights_sha1"] == state_digest(pre["model"])
    assert meta.training["weights_sha1"] == state_digest(ft["model"])
    # frozen encoders: bit-identical; the policy moved
    for prefix in ("image.", "action.", "text."):
        assert state_digest(ft["model"], prefix) == state_digest(pre["model"], prefix), prefix
    assert state_digest(ft["model"], "denoiser.") != state_digest(pre["model"], "denoiser.")
    assert ft["norm"] == pre["norm"]  # the pretrained normalisation is kept


def test_an_exported_init_fine_tunes_exactly_like_its_run(
    pretrained, toy_data, cache_dir, tmp_path, capsys
):
    """`clamp export-init`: the run's checkpoint without the optimizer state and RNG; a
    fine-tune from that file ends with the same weights as one from the run folder."""
    from clamp_core.cli import main

    init = tmp_path / "shared" / "init.pt"
    assert main(["export-init", str(pretrained), "--out", str(init), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    pre = load_checkpoint(pretrained)
    ck = load_checkpoint(init)
    assert "optimizer" not in ck and "rng" not in ck
    assert r["weights_sha1"] == state_digest(pre["model"]) == state_digest(ck["model"])
    assert r["step"] == pre["step"] and r["tasks"] == list(pre["tasks"])
    assert init.stat().st_size < 0.6 * (pretrained / "checkpoints" / "last.pt").stat().st_size
    ends = []
    for name, src in (("run", pretrained), ("file", init)):
        train(finetune_cfg(toy_data, tmp_path / name, cache_dir, src, 3), progress=False)
        ft = load_checkpoint(tmp_path / name)
        assert ft["init"]["weights_sha1"] == r["weights_sha1"]
        ends.append(state_digest(ft["model"]))
    assert ends[0] == ends[1]
    assert main(["export-init", str(tmp_path / "nothing"), "--out", str(init)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_finetune_changes_the_policy_shape_and_objective(pretrained, toy_data, cache_dir, tmp_path):
    """Fine-tuning may pool more view tokens and learn x0 ('sample'): the encoders stay
    bit-identical, the policy weights whose shape changed start fresh (and are listed), the
    exported model runs them, and an override of an encoder field is refused by name."""
    pre = load_checkpoint(pretrained)
    out = tmp_path / "ft"
    cfg = make_cfg(
        toy_data,
        out,
        cache_dir,
        steps=20,
        init_from=str(pretrained),
        contrastive=False,
        model={"view_tokens": 2},
        schedule={"prediction_type": "sample"},
    )
    train(cfg, progress=False)
    ft = load_checkpoint(out)
    assert ft["model_config"]["view_tokens"] == 2
    assert ft["schedule"]["prediction_type"] == "sample"
    assert ft["init"]["reinitialised"] == ["denoiser.cond_type"]
    for prefix in ("image.", "action.", "text."):
        assert state_digest(ft["model"], prefix) == state_digest(pre["model"], prefix), prefix
    rows = [r for r in metrics(out) if "loss_diffusion" in r]
    assert rows[-1]["loss_diffusion"] < rows[0]["loss_diffusion"]
    meta = export(out, tmp_path / "m")
    assert meta.parity_max_abs_diff <= 1e-4
    assert meta.cond_tokens == 1 + 5 * 4 + 2
    assert meta.schedule["prediction_type"] == "sample"
    with pytest.raises(ConfigError, match=r"model.image: fine-tuning keeps the pretrained"):
        train(
            make_cfg(
                toy_data,
                tmp_path / "bad",
                cache_dir,
                steps=1,
                init_from=str(pretrained),
                model={"image": {"layers": 3}},
            ),
            progress=False,
        )


def test_cached_encoder_features_give_the_same_loss(pretrained, toy_data, cache_dir):
    """Frozen fine-tuning trains on stored encoder outputs: the loss of a batch built from them
    equals the loss of the same batch encoded from its views."""
    from clamp_core.models.clamp import ClampModel
    from clamp_core.models.config import ModelConfig
    from clamp_core.training.train import encoded_windows, prepare_data

    ck = load_checkpoint(pretrained)
    model_cfg = ModelConfig.from_dict(ck["model_config"])
    cfg = make_cfg(toy_data, "unused", cache_dir)
    data = prepare_data(cfg, model_cfg, progress=False)
    model = ClampModel(model_cfg)
    model.load_state_dict(ck["model"])
    model.eval()
    feats = encoded_windows(model, data.train, torch.device("cpu"), progress=False)
    assert len(feats) == len(data.train) and "views" not in feats[0]
    idx = [0, 3, len(feats) - 1]
    alphas = torch.linspace(0.99, 0.01, 100)

    def loss(ds):
        items = [ds[i] for i in idx]
        batch = {k: torch.from_numpy(np.stack([it[k] for it in items])) for k in items[0]}
        torch.manual_seed(3)
        with torch.no_grad():
            return float(model.losses(batch, alphas, contrastive=False)["loss_diffusion"])

    assert loss(feats) == pytest.approx(loss(data.train), rel=1e-5)
    # history dropout: the stored start-of-episode embedding gives the same loss as encoding
    # the start-of-episode history itself
    data.train.history_dropout = 1.0
    dropped = encoded_windows(model, data.train, torch.device("cpu"), progress=False)
    assert loss(dropped) == pytest.approx(loss(data.train), rel=1e-5)
    late = len(feats) - 1  # a window whose true history is made of actions
    assert not np.allclose(dropped[late]["act"], feats[late]["act"], atol=1e-4)
    with pytest.raises(ValueError, match="features for"):
        data.train.with_features({"cls": np.zeros((1, 4))})


def test_finetune_unfrozen_and_scratch(pretrained, toy_data, cache_dir, tmp_path):
    pre = load_checkpoint(pretrained)
    cfg = make_cfg(
        toy_data,
        tmp_path / "unfrozen",
        cache_dir,
        steps=3,
        init_from=str(pretrained),
        contrastive=False,
        freeze_encoders=False,
        model={},
    )
    train(cfg, progress=False)
    unf = load_checkpoint(tmp_path / "unfrozen")
    assert state_digest(unf["model"], "image.") != state_digest(pre["model"], "image.")
    cfg = make_cfg(toy_data, tmp_path / "scratch", cache_dir, steps=3, from_scratch=True)
    train(cfg, progress=False)
    scratch = load_checkpoint(tmp_path / "scratch")
    assert scratch["init"] == {"scratch": True}
    rows = [r for r in metrics(tmp_path / "scratch") if "loss" in r]
    assert "loss_image_action" not in rows[0] and "loss_diffusion" in rows[0]


class _Payload:
    """An arbitrary object: unpickling it could run any code."""


def test_bad_checkpoints_and_configs(tmp_path, toy_data, cache_dir):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing")
    evil = tmp_path / "evil.pt"
    torch.save({"format": "clamp-checkpoint-1", "model": {}, "x": _Payload()}, evil)
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(evil)  # only tensors and plain containers are read
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(bad)
    torch.save({"hello": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a clamp-checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="unknown training options"):
        TrainConfig.from_dict({"stepz": 3})
    with pytest.raises(ConfigError, match="model.image.patchsize"):
        TrainConfig.from_dict({"model": {"image": {"patchsize": 3}}})
    with pytest.raises(ConfigError, match="exclude each other"):
        TrainConfig(init_from="x", from_scratch=True)


# ------------------------------------------------------------------------------ export
def test_export_parity_and_runtime(pretrained, tmp_path, toy_data):
    out = tmp_path / "models" / "toy"
    meta = export(pretrained, out)
    assert meta.parity_max_abs_diff is not None and meta.parity_max_abs_diff <= 1e-4
    assert sorted(p.name for p in out.iterdir()) == [
        "denoiser.onnx",
        "encoders.onnx",
        "metadata.json",
    ]
    policy = OnnxPolicy(out)
    assert policy.metadata.joint_names[0] == "left_waist"
    # where the weights come from: this checkpoint, a pretraining (no init)
    pre = load_checkpoint(pretrained)
    assert policy.metadata.training == {
        "step": pre["step"],
        "weights_sha1": state_digest(pre["model"]),
        "tasks": list(pre["tasks"]),
        "data": [str(d) for d in pre["train_config"]["data"]],
        "init": {},
    }
    # a real observation from an episode, rendered like the live node renders it
    eps = load_episodes(toy_data)
    renderer = EpisodeRenderer(policy.metadata.perception_config())
    with EpisodeReader(eps[0].path) as r:
        views = renderer.render(r, 10)
        low = r.lowdim()
    h = policy.metadata.action_history
    obs = PolicyObservation(1_000, views.images, low["qpos"][10], low["action"][10 - h : 10])
    chunk = policy.predict(obs)
    assert chunk.actions.shape == (50, 14) and np.isfinite(chunk.actions).all()
    lo = np.array(policy.metadata.normalization["action"]["min"])
    hi = np.array(policy.metadata.normalization["action"]["max"])
    assert np.all(chunk.actions >= lo - 1e-3) and np.all(chunk.actions <= hi + 1e-3)


def test_failed_parity_keeps_the_previous_model(pretrained, tmp_path):
    out = tmp_path / "m"
    export(pretrained, out)
    before = (out / "metadata.json").read_bytes()
    with pytest.raises(ExportError, match="differs from torch"):
        export(pretrained, out, tolerance=0.0)
    assert (out / "metadata.json").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary leftovers


# ------------------------------------------------------------------------------ DDP + CLI
def _env():
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env.pop("_ROS_WHEELS_BOOTSTRAP_COMPLETE", None)
    return env


def test_ddp_two_processes_keep_identical_weights(toy_data, cache_dir, tmp_path):
    out = tmp_path / "ddp"
    cfg = make_cfg(toy_data, out, cache_dir, steps=4, batch_size=8, log_every=2)
    (tmp_path / "cfg.yaml").write_text(json.dumps(cfg.to_dict()))
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [
        str(torchrun),
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "clamp_core.cli",
        "pretrain",
        "--config",
        str(tmp_path / "cfg.yaml"),
        "--json",
        "--device",
        "cpu",
    ]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["weights_sha1"] == ranks[1]["weights_sha1"]
    assert load_checkpoint(out)["step"] == 4


def test_cli_pretrain_export_and_bench(toy_data, cache_dir, tmp_path):
    clamp = Path(sys.executable).with_name("clamp")
    run = tmp_path / "cli_run"
    sets = []
    for k, v in tiny_train_overrides().items():
        if isinstance(v, dict):
            sets += [f"model.{k}.{kk}={vv}" for kk, vv in v.items()]
        else:
            sets.append(f"model.{k}={v}")
    cmd = [
        str(clamp),
        "pretrain",
        "--data",
        str(toy_data),
        "--out",
        str(run),
        "--steps",
        "3",
        "--batch-size",
        "8",
        "--json",
        "--set",
        f"cache_dir={cache_dir}",
        "--set",
        "frame_stride=2",
    ]
    for s in sets:
        cmd += ["--set", s]
    p = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert summary["train"]["step"] == 3
    p = subprocess.run(
        [str(clamp), "export", str(run), "--out", str(tmp_path / "m"), "--json"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads(p.stdout.strip().splitlines()[-1])["parity_max_abs_diff"] <= 1e-4
    p = subprocess.run(
        [str(clamp), "export", str(tmp_path / "nope"), "--out", str(tmp_path / "m2")],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2 and "does not exist" in p.stderr
    # without --init (or --scratch): from the shipped CLAMP pretraining
    out = tmp_path / "ft_default"
    p = subprocess.run(
        [str(clamp), "finetune", "--data", str(toy_data), "--out", str(out)]
        + ["--steps", "1", "--batch-size", "2", "--json"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "starting from the shipped CLAMP pretraining" in p.stderr
    shipped = load_checkpoint(REPO / DEFAULT_INIT)
    assert load_checkpoint(out)["init"]["weights_sha1"] == state_digest(shipped["model"])


def test_bench_policy_json_shape():
    clamp = Path(sys.executable).with_name("clamp")
    p = subprocess.run(
        [str(clamp), "bench", "policy", "--presets", "cpu-small", "--repeats", "2", "--json"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    (r,) = json.loads(p.stdout)
    assert r["unit"] == "ms" and r["ours"] > 0 and r["baseline"] > 0
    assert r["ratio"] == pytest.approx(r["baseline"] / r["ours"])
    assert r["config"]["preset"] == "cpu-small"
    assert r["config"]["parity_max_abs_diff"] <= 1e-4
    assert r["config"]["chunk_max_abs_diff_ort_vs_torch"] <= 1e-3


def test_eval_sim_runs_a_model_in_closed_loop(tmp_path):
    """An (untrained) exported model driven against the MuJoCo task in one process."""
    import cv2

    from clamp_core.cli import main as cli_main
    from clamp_core.eval.plots import plot_eval
    from clamp_core.eval.sim_eval import evaluate
    from clamp_core.models.config import ModelConfig, preset
    from clamp_core.policy.execution import ExecutionConfig
    from clamp_core.policy.safety import aloha_defaults
    from clamp_core.sim.aloha import START_POSE
    from clamp_core.training.export import export_untrained

    d = preset("cpu-small").to_dict()
    d["view_size"] = 32
    d["image"].update(patch_size=8, dim=48, layers=1, heads=2)
    d["denoiser"].update(dim=32, layers=1, cond_layers=1, heads=2)
    export_untrained(ModelConfig.from_dict(d), tmp_path / "m", verify=False)
    run = functools.partial(
        evaluate, tmp_path / "m", "transfer_cube", [3], 64, 48, progress=False, threads=1
    )
    r = run(execution=ExecutionConfig(mode="receding_horizon", execute_steps=25), inference_steps=2)
    assert r["inference_steps"] == 2  # the override reaches the runtime's schedule
    assert r["execution"]["mode"] == "receding_horizon" and r["execution"]["execute_steps"] == 25
    (ep,) = r["episodes"]
    assert ep["seed"] == 3 and isinstance(ep["success"], bool)
    assert 1 <= ep["steps"] <= 600 and r["successes"] == int(ep["success"])
    assert isinstance(ep["diverged"], bool)

    # the node's executor decides when to infer: every 25 steps here, every F - 30 = 20 in
    # the default seam_guided mode (inference takes no simulated time, so no latency margin);
    # a stop (this untrained model drives the arms past their limits) drops the chunk and asks
    # again, and no observation is taken while the measured state is not believed
    def check_inferences(r, ep, every: int) -> None:
        stops = sum(n for k, n in r["clipped"].items() if k.startswith("suppressed"))
        expected = -(-ep["steps"] // every)
        if stops == 0 and not r["clipped"].get("rejected joint states"):
            assert ep["inferences"] == expected
        else:
            assert 0 < ep["inferences"] <= expected + stops

    check_inferences(r, ep, 25)
    r = run(inference_steps=1, trace=True)
    assert r["execution"]["mode"] == "seam_guided" and r["settle_steps"] == 5
    (ep,) = r["episodes"]
    check_inferences(r, ep, 20)
    # the trace: one row per control step; what was sent obeys the safety filter's limits
    tr = ep["trace"]
    n = ep["steps"]
    assert tr["t_s"].shape == (n,) and np.allclose(np.diff(tr["t_s"]), 0.02)
    for key in ("policy", "command", "measured"):
        assert tr[key].shape == (n, 14) and np.isfinite(tr[key]).all()
    assert len(tr["inference_steps"]) == ep["inferences"] and tr["inference_steps"][0] == 0
    limits = aloha_defaults()
    vmax = np.array(limits.max_velocity)
    lo, hi = limits.limits()
    cmd, meas = tr["command"], np.clip(tr["measured"], lo, hi)  # the filter's hold point
    # every command within max_velocity x (tracking_lag_s + its time since the plan was made)
    # of where the arm was measured then (or easing back to that bound: within the margin where
    # the plan would stop), and each step within max_velocity x dt of the one before, except a
    # stop, which holds where the arm is
    margin = limits.tracking_lag_s + limits.control_period_s + limits.max_disagreement_s
    planned_at = np.searchsorted(tr["inference_steps"], np.arange(n), side="right") - 1
    since = (np.arange(n) - tr["inference_steps"][planned_at]) * 0.02
    lead = np.abs(cmd - meas[tr["inference_steps"][planned_at]]) - vmax * (margin + since[:, None])
    assert lead.max() <= 1e-9, (lead.max(), np.unravel_index(lead.argmax(), lead.shape))
    step_ok = (np.abs(np.diff(cmd, axis=0)) <= vmax * 0.02 + 1e-9).all(axis=1)
    held = tr["held"]  # nothing sent yet, or stopped: the arm holds where it was
    from_arm = (np.abs(cmd[1:] - meas[1:]) <= vmax * 0.02 + 1e-9).all(axis=1)
    assert np.all(step_ok | held[1:] | (held[:-1] & from_arm))
    assert np.all(tr["command"] >= np.array(limits.position_min) - 1e-9)
    assert np.all(tr["command"] <= np.array(limits.position_max) + 1e-9)
    # the arms rested before the first frame: the measured start is off the exact reset pose
    assert 0 < np.abs(tr["measured"][0] - START_POSE).max() < 0.05
    png = plot_eval(r, tmp_path / "eval.png")
    picture = cv2.imread(str(png))
    assert picture is not None and picture.shape[0] > 600 and picture.shape[1] > 800
    assert not list(tmp_path.glob(".eval.png*"))  # written atomically, nothing left behind
    with pytest.raises(ValueError, match="seed 4"):
        plot_eval(r, tmp_path / "x.png", seed=4)
    args = ["eval", "sim", "--model", str(tmp_path / "m"), "--task", "transfer_cube"]
    assert cli_main([*args, "--episodes", "2", "--plot", "p.png", "--plot-seed", "9"]) == 2


def test_history_dropout_swaps_in_the_start_of_episode_history(toy_data, cache_dir):
    """history_dropout=1: every window gets what the policy node feeds before it has commanded
    anything (the measured position at t, repeated), as inputs and as cached features; 0: the
    true history."""
    eps = load_episodes(toy_data)
    cfg = perception_for_episodes(["cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist"], 48)
    attach_views(eps, cfg, 2, cache_dir, progress=False)
    norm = compute_norm_stats(eps)
    ds = WindowDataset(eps, norm, history=4, horizon=10, stride=2)
    i = len(ds) - 1  # late in an episode: the true history is made of actions
    ei, k = ds.index[i]
    t = int(k) * 2
    true = norm["action"].unnormalize(ds[i]["action_history"])
    np.testing.assert_allclose(true, eps[ei].lowdim["action"][t - 4 : t], atol=1e-5)
    ds.history_dropout = 1.0
    start = norm["action"].unnormalize(ds[i]["action_history"])
    np.testing.assert_allclose(start, np.tile(eps[ei].lowdim["qpos"][t], (4, 1)), atol=1e-5)
    assert not np.allclose(start, true, atol=1e-3)
    n = len(ds)
    feats = {
        "cls": np.zeros((n, 3), np.float32),
        "per_view": np.zeros((n, 5, 3), np.float32),
        "act": np.zeros((n, 3), np.float32),
        "act_start": np.ones((n, 3), np.float32),
    }
    cached = ds.with_features(feats)
    item = cached[i]
    assert "act_start" not in item and np.all(item["act"] == 1.0)
    cached.history_dropout = 0.0
    assert np.all(cached[i]["act"] == 0.0)
    with pytest.raises(ConfigError):
        TrainConfig(data=["x"], history_dropout=1.5)
