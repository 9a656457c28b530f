"""`clamp export`: a training checkpoint -> the model directory the robot runs.

Writes ``encoders.onnx`` (views, qpos, action history [, rgb] -> condition tokens; once per
observation), ``denoiser.onnx`` (noisy chunk, timestep, condition -> noise; once per DDIM step)
and ``metadata.json``. The DDIM loop and the normalisation stay outside the graphs (numpy, in
:mod:`clamp_core.policy`), so the number of inference steps stays a runtime choice. Before the
directory is published, the same DDIM loop runs with torch and with ONNX Runtime from the same
noise; a difference above the tolerance aborts the export and leaves any previous model intact.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from ..models.clamp import ClampModel, DenoiserGraph, EncodersGraph
from ..models.config import ModelConfig
from ..policy.metadata import PolicyMetadata
from ..policy.schedule import NoiseSchedule, ScheduleConfig, ddim_sample
from .train import load_checkpoint, state_digest

OPSET = 17


class ExportError(RuntimeError):
    """The export could not produce a model that matches the checkpoint."""


def example_inputs(cfg: ModelConfig, batch: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """Plausible inputs: views with empty pixels, points inside the workspace."""
    g = torch.Generator().manual_seed(seed)
    s, v = cfg.view_size, cfg.num_views
    lo = torch.tensor(cfg.workspace_min)
    hi = torch.tensor(cfg.workspace_max)
    xyz = lo + (hi - lo) * torch.rand(batch, v, s, s, 3, generator=g)
    depth = 0.2 + 1.2 * torch.rand(batch, v, s, s, 1, generator=g)
    valid = (torch.rand(batch, v, s, s, 1, generator=g) > 0.3).float()
    out = {
        "views": torch.cat([depth, xyz], dim=-1) * valid,
        "qpos": torch.rand(batch, cfg.action_dim, generator=g) * 2 - 1,
        "action_history": torch.rand(batch, cfg.action.history, cfg.action_dim, generator=g) * 2
        - 1,
    }
    if cfg.rgb.enabled:
        out["rgb"] = torch.randint(
            0,
            256,
            (batch, len(cfg.rgb.cameras), cfg.rgb.height, cfg.rgb.width, 3),
            generator=g,
            dtype=torch.uint8,
        )
    return out


def export_graphs(model: ClampModel, out_dir: Path) -> None:
    """Write encoders.onnx and denoiser.onnx (dynamic batch) into ``out_dir``."""
    cfg = model.cfg
    model.eval()
    ex = example_inputs(cfg)
    names = list(ex)
    enc = EncodersGraph(model)
    with torch.no_grad(), _Quiet():
        torch.onnx.export(
            enc,
            tuple(ex[k] for k in names),
            str(out_dir / "encoders.onnx"),
            input_names=names,
            output_names=["cond"],
            dynamic_axes={k: {0: "batch"} for k in [*names, "cond"]},
            opset_version=OPSET,
            dynamo=False,
        )
        cond = enc(*(ex[k] for k in names))
        b = cond.shape[0]
        den_in = (
            torch.randn(b, cfg.action_horizon, cfg.action_dim),
            torch.tensor([3, 71][:b], dtype=torch.int64),
            cond,
        )
        torch.onnx.export(
            DenoiserGraph(model),
            den_in,
            str(out_dir / "denoiser.onnx"),
            input_names=["noisy_actions", "timestep", "cond"],
            output_names=["eps"],
            dynamic_axes={k: {0: "batch"} for k in ["noisy_actions", "timestep", "cond", "eps"]},
            opset_version=OPSET,
            dynamo=False,
        )


class _Quiet:
    """Silence the exporter's tracer warnings (Python control flow on shapes is intended)."""

    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


def torch_sample(
    model: ClampModel, inputs: dict[str, torch.Tensor], noise: np.ndarray, schedule: ScheduleConfig
) -> tuple[np.ndarray, np.ndarray]:
    """The reference: encoders + the numpy DDIM loop with the torch denoiser (eager)."""
    with torch.no_grad():
        cond = EncodersGraph(model)(*inputs.values())

        def eps_fn(x, t):
            return model.denoiser(torch.from_numpy(x), torch.from_numpy(t), cond).numpy()

        return ddim_sample(eps_fn, noise, schedule), cond.numpy()


def ort_sample(
    enc_sess, den_sess, inputs: dict[str, np.ndarray], noise: np.ndarray, schedule: ScheduleConfig
) -> tuple[np.ndarray, np.ndarray]:
    cond = enc_sess.run(["cond"], inputs)[0]

    def eps_fn(x, t):
        return den_sess.run(["eps"], {"noisy_actions": x, "timestep": t, "cond": cond})[0]

    return ddim_sample(eps_fn, noise, schedule), cond


def ort_sessions(model_dir: Path, threads: int = 0):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads > 0:
        opts.intra_op_num_threads = threads
    providers = ["CPUExecutionProvider"]
    return (
        ort.InferenceSession(str(model_dir / "encoders.onnx"), opts, providers=providers),
        ort.InferenceSession(str(model_dir / "denoiser.onnx"), opts, providers=providers),
    )


def parity(
    model: ClampModel, model_dir: Path, schedule: ScheduleConfig, trials: int = 2, seed: int = 0
) -> float:
    """Max |torch - ORT| over full DDIM loops (batch 1 and 2) from identical noise."""
    enc, den = ort_sessions(model_dir)
    cfg = model.cfg
    worst = 0.0
    rng = np.random.default_rng(seed)
    for trial in range(trials):
        b = 1 + trial % 2
        ex = example_inputs(cfg, batch=b, seed=seed + trial)
        noise = rng.standard_normal((b, cfg.action_horizon, cfg.action_dim)).astype(np.float32)
        ref, ref_cond = torch_sample(model, ex, noise, schedule)
        got, got_cond = ort_sample(enc, den, {k: v.numpy() for k, v in ex.items()}, noise, schedule)
        worst = max(worst, float(np.abs(ref - got).max()), float(np.abs(ref_cond - got_cond).max()))
    return worst


def build_metadata(ck: dict, cfg: ModelConfig, name: str, parity_diff: float | None):
    import onnx
    import onnxruntime

    from .. import __name__ as pkg

    tasks = ck.get("tasks", [])
    tc = ck.get("train_config", {})
    return PolicyMetadata(
        name=name,
        preset=str(tc.get("preset", "custom")),
        task=tasks[0] if len(tasks) == 1 else "",
        instruction=ck.get("instruction", ""),
        joint_names=list(ck["joint_names"]),
        action_dim=cfg.action_dim,
        action_horizon=cfg.action_horizon,
        action_history=cfg.action.history,
        action_history_stride=cfg.action.history_stride,
        control_rate_hz=50.0,
        cameras=list(ck["cameras"]),
        rgb_cameras=list(cfg.rgb.cameras) if cfg.rgb.enabled else [],
        rgb_size=[cfg.rgb.width, cfg.rgb.height] if cfg.rgb.enabled else [],
        perception=ck["perception"],
        normalization=ck["norm"],
        schedule=ck["schedule"],
        cond_tokens=cfg.num_cond_tokens,
        cond_dim=cfg.denoiser.dim,
        versions={
            pkg: _version(),
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "opset": str(OPSET),
            "checkpoint_step": str(ck.get("step", "")),
        },
        training=_provenance(ck),
        parity_max_abs_diff=parity_diff,
    )


def _provenance(ck: dict) -> dict:
    """``PolicyMetadata.training`` of a checkpoint (``{}`` for an untrained model)."""
    if "model" not in ck:
        return {}
    init = dict(ck.get("init") or {})
    init.pop("reinitialised", None)
    return {
        "step": int(ck.get("step", 0)),
        "weights_sha1": state_digest(ck["model"]),
        "tasks": list(ck.get("tasks", [])),
        "data": [str(d) for d in ck.get("train_config", {}).get("data", [])],
        "init": init,
    }


def untrained_checkpoint_meta(cfg: ModelConfig, perception: dict | None = None) -> dict:
    """What export needs from a checkpoint, for a model that was never trained (benchmarks and
    plumbing tests): ALOHA joint names, unit normalisation and ``perception`` (default: the
    default cameras, colour (``use_color``) on the RGB branch's, as training writes it)."""
    from ..data.episode import ALOHA_JOINT_NAMES
    from ..perception.config import PerceptionConfig
    from .data import perception_for_episodes

    color = list(cfg.rgb.cameras) if cfg.rgb.enabled else []
    if perception is None:
        cams = [c.name for c in PerceptionConfig().cameras]
        perception = perception_for_episodes(cams, cfg.view_size, color_cameras=color).to_dict()
    cams = list(perception["camera_names"])
    lo, hi = [-1.5] * cfg.action_dim, [1.5] * cfg.action_dim
    return {
        "tasks": [],
        "instruction": "",
        "joint_names": list(ALOHA_JOINT_NAMES),
        "cameras": cams,
        "perception": perception,
        "norm": {"qpos": {"min": lo, "max": hi}, "action": {"min": lo, "max": hi}},
        "schedule": ScheduleConfig().to_dict(),
        "train_config": {"preset": "untrained"},
        "step": 0,
    }


def export_untrained(
    cfg: ModelConfig,
    out_dir: str | Path,
    perception: dict | None = None,
    seed: int = 0,
    verify: bool = True,
) -> PolicyMetadata:
    """Export a randomly initialised model (seeded) with :func:`untrained_checkpoint_meta`."""
    torch.manual_seed(seed)
    model = ClampModel(cfg).eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    export_graphs(model, out)
    diff = parity(model, out, ScheduleConfig(), trials=1) if verify else None
    meta = build_metadata(untrained_checkpoint_meta(cfg, perception), cfg, out.name, diff)
    meta.save(out / "metadata.json")
    return meta


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("clamp_ros")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        return "unknown"


def export(
    run_or_checkpoint: str | Path,
    out_dir: str | Path,
    name: str = "",
    tolerance: float = 1e-4,
    verify: bool = True,
) -> PolicyMetadata:
    """Export a checkpoint to ``out_dir`` (replaced atomically only after the parity check)."""
    ck = load_checkpoint(run_or_checkpoint)
    cfg = ModelConfig.from_dict(ck["model_config"])
    model = ClampModel(cfg)
    model.load_state_dict(ck["model"])
    model.eval()
    out = Path(out_dir)
    name = name or out.name
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.export{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        t0 = time.perf_counter()
        export_graphs(model, tmp)
        diff = None
        if verify:
            diff = parity(model, tmp, ScheduleConfig.from_dict(ck["schedule"]))
            if not diff <= tolerance:
                raise ExportError(
                    f"ONNX Runtime differs from torch by {diff:.3g} over a full DDIM loop "
                    f"(tolerance {tolerance:g}); the model in {out} was not replaced"
                )
        meta = build_metadata(ck, cfg, name, diff)
        meta.save(tmp / "metadata.json")
        # publish: old directory aside, new one in, old one removed
        old = out.parent / f".{out.name}.old{os.getpid()}"
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
        meta.export_seconds = time.perf_counter() - t0  # type: ignore[attr-defined]
        return meta
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


__all__ = ["ExportError", "export", "parity", "NoiseSchedule"]
