"""`clamp bench policy`: full inference (encoders + DDIM loop), batch 1, ONNX Runtime vs torch
eager in the same process, per model preset.

Both sides run the identical numpy DDIM loop and normalisation; only the network calls differ
(``OnnxPolicy.predict`` vs the eager modules), so the ratio is the runtime's speed-up. Weights are
random (seeded): cost does not depend on their values, and no training is needed to measure.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def _stats(ms: list[float]) -> tuple[float, float]:
    return float(np.median(ms)), float(np.percentile(ms, 90))


def _observation(meta, rng):
    from ..policy.runtime import PolicyObservation

    v, h, w, _ = meta.views_shape
    views = np.zeros((v, h, w, 4), np.float32)
    valid = rng.random((v, h, w)) > 0.3
    views[..., 0] = np.where(valid, 0.3 + rng.random((v, h, w)), 0)
    views[..., 1:] = np.where(valid[..., None], rng.uniform(-0.4, 0.4, (v, h, w, 3)), 0)
    rgb = None
    if meta.rgb_cameras:
        rw, rh = meta.rgb_size
        rgb = {c: rng.integers(0, 256, (rh, rw, 3), dtype=np.uint8) for c in meta.rgb_cameras}
    return PolicyObservation(
        stamp_ns=1_000_000_000,
        views=views,
        qpos=rng.uniform(-0.5, 0.5, meta.action_dim),
        action_history=rng.uniform(-0.5, 0.5, (meta.action_history, meta.action_dim)),
        rgb=rgb,
    )


class TorchEagerPolicy:
    """The baseline: the same predict() with eager torch modules instead of ORT sessions."""

    def __init__(self, model, meta, device: str = "cpu"):
        import torch

        from ..models.clamp import EncodersGraph

        self.torch = torch
        self.model = model.to(device).eval()
        self.enc = EncodersGraph(self.model)
        self.meta = meta
        self.device = device
        self.qn = meta.qpos_normalizer()
        self.an = meta.action_normalizer()
        self.schedule = meta.schedule_config()
        self.last_timings_ms: dict[str, float] = {}

    def predict(self, obs, noise: np.ndarray):
        torch = self.torch
        from ..policy.schedule import ddim_sample

        t0 = time.perf_counter()
        with torch.no_grad():
            dev = self.device
            args = [
                torch.from_numpy(obs.views[None]).to(dev),
                torch.from_numpy(self.qn.normalize(obs.qpos.astype(np.float32))[None]).to(dev),
                torch.from_numpy(self.an.normalize(obs.action_history.astype(np.float32))[None]).to(
                    dev
                ),
            ]
            if obs.rgb is not None:
                rgb = np.stack([obs.rgb[c] for c in self.meta.rgb_cameras])[None]
                args.append(torch.from_numpy(rgb).to(dev))
            cond = self.enc(*args)
            t1 = time.perf_counter()

            def eps_fn(x, t):
                return (
                    self.model.denoiser(
                        torch.from_numpy(x).to(dev), torch.from_numpy(t).to(dev), cond
                    )
                    .cpu()
                    .numpy()
                )

            x0 = ddim_sample(eps_fn, noise[None].astype(np.float32), self.schedule)[0]
        actions = self.an.unnormalize(x0).astype(np.float64)
        t2 = time.perf_counter()
        self.last_timings_ms = {
            "encode_ms": (t1 - t0) * 1e3,
            "denoise_ms": (t2 - t1) * 1e3,
            "total_ms": (t2 - t0) * 1e3,
        }
        return actions


VARIANTS = {"rgb": True, "no-rgb": False}
"""``PRESET+rgb`` / ``PRESET+no-rgb``: the preset with its RGB branch turned on / off."""


def preset_variant(name: str):
    """The ModelConfig of a preset name, optionally with a ``+rgb`` / ``+no-rgb`` suffix."""
    import dataclasses

    from ..models.config import preset

    base, plus, variant = name.partition("+")
    cfg = preset(base)
    if plus:
        if variant not in VARIANTS:
            raise ValueError(
                f"preset '{name}': unknown variant '{variant}'; use +{' or +'.join(VARIANTS)}"
            )
        cfg = dataclasses.replace(cfg, rgb=dataclasses.replace(cfg.rgb, enabled=VARIANTS[variant]))
    return cfg


def bench_preset(
    name: str,
    repeats: int = 20,
    threads: int = 0,
    device: str = "cpu",
    progress: bool = True,
    seed: int = 0,
) -> dict:
    import torch
    from tqdm import tqdm

    from ..models.clamp import ClampModel
    from ..policy.runtime import OnnxPolicy
    from ..training.export import build_metadata, export_graphs, parity, untrained_checkpoint_meta

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("bench policy --device cuda: torch sees no CUDA device")
    n_threads = threads or os.cpu_count() or 1
    torch.set_num_threads(n_threads)
    torch.manual_seed(seed)
    cfg = preset_variant(name)
    model = ClampModel(cfg).eval()
    params = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory(prefix="clamp-bench-") as tmp:
        d = Path(tmp)
        t0 = time.perf_counter()
        export_graphs(model, d)
        export_s = time.perf_counter() - t0
        diff = parity(model, d, _sched(), trials=1)
        ck = untrained_checkpoint_meta(cfg)
        meta = build_metadata(ck, cfg, f"bench-{name}", diff)
        meta.save(d / "metadata.json")
        size_mb = sum(p.stat().st_size for p in d.iterdir()) / 1e6
        ours = OnnxPolicy(d, threads=n_threads, seed=seed)
        base = TorchEagerPolicy(model, meta, device)
        rng = np.random.default_rng(seed)
        obs = _observation(meta, rng)
        noise = rng.standard_normal((cfg.action_horizon, cfg.action_dim)).astype(np.float32)
        for _ in range(2):  # warm-up: allocator, ORT arena, lazy init
            ours.predict(obs, noise=noise)
            base.predict(obs, noise)
        ours_ms, base_ms, split_ours, split_base = [], [], [], []
        agree = 0.0
        for _ in tqdm(range(repeats), desc=f"{name}: ORT vs torch", disable=not progress):
            t = time.perf_counter()
            chunk = ours.predict(obs, noise=noise)
            ours_ms.append((time.perf_counter() - t) * 1e3)
            split_ours.append(dict(ours.last_timings_ms))
            t = time.perf_counter()
            ref = base.predict(obs, noise)
            base_ms.append((time.perf_counter() - t) * 1e3)
            split_base.append(dict(base.last_timings_ms))
            agree = max(agree, float(np.abs(chunk.actions - ref).max()))
        providers = ours.providers
    o_med, o_p90 = _stats(ours_ms)
    b_med, b_p90 = _stats(base_ms)
    steps = meta.schedule_config().inference_steps
    return {
        "metric": (
            f"full inference, batch 1: encoders + {steps} DDIM steps ({cfg.num_views} views "
            f"{cfg.view_size}x{cfg.view_size}x4, chunk {cfg.action_horizon}x{cfg.action_dim}), "
            f"median of {repeats}"
        ),
        "unit": "ms",
        "ours": o_med,
        "baseline": b_med,
        "baseline_name": f"torch {torch.__version__} eager ({device})",
        "ratio": b_med / o_med,
        "config": {
            "preset": name,
            "params_m": params / 1e6,
            "model_size_mb": size_mb,
            "ours_p90_ms": o_p90,
            "baseline_p90_ms": b_p90,
            "ours_split_ms": _median_split(split_ours),
            "baseline_split_ms": _median_split(split_base),
            "ort_provider": providers[0] if providers else "?",
            "device": device,
            "threads": n_threads,
            "cpu_count": os.cpu_count(),
            "cpu": platform.processor() or platform.machine(),
            "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
            "inference_steps": steps,
            "parity_max_abs_diff": diff,
            "chunk_max_abs_diff_ort_vs_torch": agree,
            "export_s": export_s,
        },
    }


def _sched():
    from ..policy.schedule import ScheduleConfig

    return ScheduleConfig()


def _median_split(rows: list[dict]) -> dict:
    return {k: float(np.median([r[k] for r in rows])) for k in rows[0]} if rows else {}


def bench_policy(
    presets, repeats: int = 20, threads: int = 0, device: str = "cpu", progress: bool = True
) -> list[dict]:
    out = []
    for name in presets:
        # the paper preset is ~30x the work on CPU: fewer repeats keep the run short
        n = repeats if name != "paper" or device != "cpu" else max(3, repeats // 4)
        out.append(bench_preset(name, n, threads, device, progress))
    return out


def bench_candidates(
    model_dir,
    candidates=(1, 2, 4, 8),
    repeats: int = 20,
    threads: int = 0,
    progress: bool = True,
    seed: int = 0,
) -> dict:
    """The cost of chunk selection: seam-guided inference on ``model_dir`` with K candidates
    (one batched denoiser call per DDIM step) against K = 1, batch of one observation, ORT.
    Median and p90 of ``repeats`` per K, and the ratio of each median to K = 1's."""
    from tqdm import tqdm

    from ..policy.guidance import prefix_profile
    from ..policy.runtime import OnnxPolicy

    n_threads = threads or os.cpu_count() or 1
    policy = OnnxPolicy(model_dir, threads=n_threads, seed=seed)
    meta = policy.metadata
    F, A = meta.action_horizon, meta.action_dim
    rng = np.random.default_rng(seed)
    obs = _observation(meta, rng)
    obs.prefix = policy.action_normalizer.unnormalize(
        rng.uniform(-0.5, 0.5, (F, A)).astype(np.float32)
    ).astype(np.float64)
    obs.prefix_weights = prefix_profile(F, 3, 23)
    rows = {}
    for k in candidates:
        noise = rng.standard_normal((k, F, A)).astype(np.float32)
        for _ in range(2):
            policy.predict(obs, noise=noise)
        ms, den = [], []
        for _ in tqdm(range(repeats), desc=f"K={k}", disable=not progress):
            t = time.perf_counter()
            policy.predict(obs, noise=noise)
            ms.append((time.perf_counter() - t) * 1e3)
            den.append(policy.last_timings_ms["denoise_ms"])
        med, p90 = _stats(ms)
        rows[int(k)] = {"median_ms": med, "p90_ms": p90, "denoise_median_ms": _stats(den)[0]}
    base = rows[min(rows)]["median_ms"]
    for r in rows.values():
        r["ratio_to_k1"] = r["median_ms"] / base
    return {
        "metric": f"seam-guided inference with K candidates ({meta.name}), median of {repeats}",
        "unit": "ms",
        "model": str(model_dir),
        "candidates": rows,
        "threads": n_threads,
        "cpu_count": os.cpu_count(),
        "inference_steps": meta.schedule_config().inference_steps,
    }
