"""The training loop of `clamp pretrain` and `clamp finetune`.

One loop for both: pretraining optimises the CLAMP contrastive objectives and the diffusion loss
together (the policy sees the encoders' outputs detached, so the encoders learn only from the
contrastive terms); fine-tuning starts from a pretraining checkpoint and optimises the diffusion
loss on a few demos, with the encoders frozen or not; ``from_scratch`` trains everything end to
end from random weights as the comparison. Multi-GPU / multi-node through ``torchrun`` (DDP);
``gloo`` on CPU. Checkpoints are written atomically and runs resume from ``last.pt``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from ..fileio import atomic_open
from ..models.clamp import ClampModel
from ..models.config import ModelConfig
from ..perception.config import ConfigError, PerceptionConfig
from ..policy.normalize import MinMax
from ..policy.schedule import NoiseSchedule
from .config import TrainConfig, merge_overrides
from .data import (
    WindowDataset,
    attach_rgb,
    attach_views,
    camera_names_of,
    compute_norm_stats,
    load_episodes,
    perception_for_episodes,
)

CHECKPOINT_FORMAT = "clamp-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or does not fit the configuration."""


# --------------------------------------------------------------------------------- distributed
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' requested but torch sees no CUDA device")
    return torch.device(name)


# --------------------------------------------------------------------------------- checkpoints
def atomic_torch_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as f:
        torch.save(obj, f)


def resolve_checkpoint(path: str | Path) -> Path:
    """A run folder (-> checkpoints/last.pt) or a .pt file."""
    p = Path(path)
    if p.is_dir():
        p = p / "checkpoints" / "last.pt"
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist (give a run folder or a .pt file)")
    return p


def load_checkpoint(path: str | Path) -> dict:
    p = resolve_checkpoint(path)
    try:
        # tensors and plain containers only: a checkpoint from elsewhere runs no code when read
        ck = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for corrupt files
        raise CheckpointError(f"checkpoint {p} is unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {p} is not a {CHECKPOINT_FORMAT} file")
    ck["path"] = str(p)
    return ck


RUN_STATE_KEYS = ("optimizer", "rng")
"""What only resuming a run needs; an init file for ``clamp finetune --init`` leaves it out."""


def export_init(run: str | Path, out: str | Path) -> dict:
    """Write the checkpoint of ``run`` (a run folder or .pt) without the state only resuming
    needs (optimizer moments, RNG): the file to share and ship for ``clamp finetune --init``
    (about a third of the size; fine-tuning from it is the same as from the run). Atomic.
    Returns what it wrote: ``out``, ``step``, ``tasks``, ``weights_sha1``, ``size_mb``."""
    ck = load_checkpoint(run)
    src = ck.pop("path")
    init = {k: v for k, v in ck.items() if k not in RUN_STATE_KEYS}
    init["exported_from"] = {"path": str(src), "step": ck["step"]}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(init, out)
    return {
        "out": str(out),
        "step": int(ck["step"]),
        "tasks": list(ck.get("tasks") or []),
        "weights_sha1": state_digest(ck["model"]),
        "size_mb": out.stat().st_size / 1e6,
    }


def state_digest(state: dict[str, torch.Tensor], prefix: str = "") -> str:
    """SHA-1 over the tensors whose names start with ``prefix`` (order-independent)."""
    h = hashlib.sha1()
    for k in sorted(state):
        if k.startswith(prefix):
            h.update(k.encode())
            h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------------- helpers
def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _split_episodes(episodes, val_fraction: float, seed: int):
    """Deterministic per-task split; a task with one episode keeps it for training."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    by_task: dict[str, list] = {}
    for e in episodes:
        by_task.setdefault(e.task, []).append(e)
    for task in sorted(by_task):
        eps = by_task[task]
        n_val = 0 if len(eps) < 2 or val_fraction <= 0 else max(1, round(val_fraction * len(eps)))
        order = rng.permutation(len(eps))
        val += [eps[i] for i in order[:n_val]]
        train += [eps[i] for i in order[n_val:]]
    return train, val


def _limit_per_task(episodes, n: int):
    if n <= 0:
        return episodes
    seen: dict[str, int] = {}
    out = []
    for e in episodes:
        if seen.get(e.task, 0) < n:
            out.append(e)
            seen[e.task] = seen.get(e.task, 0) + 1
    return out


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: torch.as_tensor(v).to(device, non_blocking=True) for k, v in batch.items()}


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / max(warmup, 1)
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


class _Infinite:
    """Endless iteration over a DataLoader, reshuffling each pass (set_epoch for DDP)."""

    def __init__(self, loader, sampler=None):
        self.loader, self.sampler, self.epoch = loader, sampler, 0
        self._it = None

    def __next__(self):
        while True:
            if self._it is None:
                if self.sampler is not None:
                    self.sampler.set_epoch(self.epoch)
                self._it = iter(self.loader)
            try:
                return next(self._it)
            except StopIteration:
                self._it = None
                self.epoch += 1


# --------------------------------------------------------------------------------- the run
@dataclass
class RunData:
    train: WindowDataset
    val: WindowDataset | None
    norm: dict[str, MinMax]
    perception: PerceptionConfig
    tasks: list[str]
    instruction: str
    joint_names: list[str]
    cameras: list[str]


def prepare_data(cfg: TrainConfig, model_cfg: ModelConfig, norm=None, progress=True) -> RunData:
    from ..data.episode import EpisodeReader

    episodes = load_episodes(cfg.data)
    episodes = _limit_per_task(episodes, cfg.max_episodes)
    cams = camera_names_of([e.path for e in episodes])
    with EpisodeReader(episodes[0].path) as r:
        joint_names = list(r.meta.joint_names)
    rgb = model_cfg.rgb
    rgb_cams = list(rgb.cameras) if rgb.enabled else []
    missing = [c for c in rgb_cams if c not in cams]
    if missing:
        raise ConfigError(f"model.rgb.cameras: {missing} are not cameras of the episodes {cams}")
    perception = perception_for_episodes(cams, model_cfg.view_size, color_cameras=rgb_cams)
    if model_cfg.num_views != len(perception.views):
        raise ConfigError(
            f"model expects {model_cfg.num_views} views, perception renders {len(perception.views)}"
        )
    attach_views(episodes, perception, cfg.frame_stride, cfg.resolved_cache_dir(), progress)
    if rgb_cams:
        attach_rgb(
            episodes,
            rgb_cams,
            (rgb.width, rgb.height),
            cfg.frame_stride,
            cfg.resolved_cache_dir(),
            progress,
        )
    train_eps, val_eps = _split_episodes(episodes, cfg.val_fraction, cfg.seed)
    norm = norm or compute_norm_stats(train_eps)
    tasks = sorted({e.task for e in episodes})
    kw = dict(
        norm=norm,
        history=model_cfg.action.history,
        history_stride=model_cfg.action.history_stride,
        horizon=model_cfg.action_horizon,
        stride=cfg.frame_stride,
        text_cfg=model_cfg.text,
        tasks=tasks,
    )
    train = WindowDataset(train_eps, **kw)
    val = WindowDataset(val_eps, **kw) if val_eps else None
    instructions = sorted({e.instruction for e in episodes})
    return RunData(
        train,
        val,
        norm,
        perception,
        tasks,
        instructions[0] if len(instructions) == 1 else "",
        joint_names,
        cams,
    )


@torch.no_grad()
def evaluate(
    model: ClampModel,
    data: WindowDataset,
    alphas,
    device,
    batch_size=32,
    max_batches=8,
    seed=0,
    prediction_type: str = "epsilon",
) -> dict[str, float]:
    """Held-out retrieval (top-1 image -> action and image -> text among ``batch_size``
    candidates; chance = 1 / batch) and diffusion loss."""
    if len(data) < 2:
        return {}
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(data), generator=g).tolist()
    sums: dict[str, float] = {}
    n = 0
    was_training = model.training
    model.eval()
    for b in range(max_batches):
        idx = order[b * batch_size : (b + 1) * batch_size]
        if len(idx) < 2:
            break
        items = [data[i] for i in idx]
        batch = _to_device({k: np.stack([it[k] for it in items]) for k in items[0]}, device)
        out = model.losses(
            batch, alphas, contrastive=data.features is None, prediction_type=prediction_type
        )
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        sums["chance"] = sums.get("chance", 0.0) + 1.0 / len(idx)
        n += 1
    model.train(was_training)
    return {f"val/{k}": v / n for k, v in sums.items()} if n else {}


def train(cfg: TrainConfig, progress: bool = True, resume: bool = True) -> Path:
    """Run (or resume) one training run; returns the final checkpoint path."""
    from torch.utils.data import DataLoader

    device = pick_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    dist_info = init_distributed(device)
    out = Path(cfg.out)
    ckpt_dir = out / "checkpoints"
    _seed_all(cfg.seed + dist_info.rank)

    init = None
    if cfg.init_from:
        init = load_checkpoint(cfg.init_from)
        model_cfg = finetune_model_config(init["model_config"], cfg.model)
        norm = {k: MinMax.from_dict(v) for k, v in init["norm"].items()}
        sched_cfg = _schedule_of(init, cfg.schedule)
    else:
        model_cfg, norm = cfg.model_config(), None
        sched_cfg = cfg.schedule_config()
    schedule = NoiseSchedule(sched_cfg)
    alphas = torch.tensor(schedule.alphas_cumprod, dtype=torch.float32, device=device)

    data = prepare_data(cfg, model_cfg, norm, progress=progress and dist_info.main)
    model = ClampModel(model_cfg).to(device)
    init_info = {}
    if init is not None:
        fresh = load_pretrained(model, init["model"])
        init_info = {
            "path": init["path"],
            "step": init["step"],
            "weights_sha1": state_digest(init["model"]),
        }
        if fresh:
            init_info["reinitialised"] = fresh
    elif cfg.from_scratch:
        init_info = {"scratch": True}

    finetune = init is not None
    if finetune and cfg.freeze_encoders:
        for m in model.encoder_modules():
            m.requires_grad_(False)
    train_encoders_with_policy = cfg.from_scratch or (finetune and not cfg.freeze_encoders)
    contrastive = (
        cfg.contrastive and not cfg.from_scratch and not (finetune and cfg.freeze_encoders)
    )
    data.train.history_dropout = cfg.history_dropout  # validation keeps the true history
    if finetune and cfg.freeze_encoders and cfg.cache_features:
        # frozen encoders make their outputs constants of each window: compute them once (an
        # RGB branch is part of the policy: its images stay inputs of every batch)
        for name in ("train", "val"):
            ds = getattr(data, name)
            if ds is not None:
                setattr(data, name, encoded_windows(model, ds, device, progress and dist_info.main))
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    step = 0
    last = ckpt_dir / "last.pt"
    if resume and last.is_file():
        ck = load_checkpoint(last)
        model.load_state_dict(ck["model"])
        optim.load_state_dict(ck["optimizer"])
        step = int(ck["step"])
        torch.set_rng_state(ck["rng"])
        init_info = ck.get("init", init_info)

    ddp_model: nn.Module = model
    sampler = None
    if dist_info.world > 1:
        from torch.nn.parallel import DistributedDataParallel
        from torch.utils.data.distributed import DistributedSampler

        ddp_model = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True,
        )
        sampler = DistributedSampler(data.train, dist_info.world, dist_info.rank, seed=cfg.seed)
    loader = DataLoader(
        data.train,
        batch_size=cfg.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=cfg.num_workers,
        drop_last=len(data.train) >= cfg.batch_size * dist_info.world,
        persistent_workers=cfg.num_workers > 0,
    )
    batches = _Infinite(loader, sampler)

    meta = {
        "tasks": data.tasks,
        "instruction": data.instruction,
        "joint_names": data.joint_names,
        "cameras": data.cameras,
        "perception": data.perception.to_dict(),
        "norm": {k: v.to_dict() for k, v in data.norm.items()},
        "schedule": sched_cfg.to_dict(),
        "model_config": model_cfg.to_dict(),
        "train_config": cfg.to_dict(),
        "init": init_info,
    }
    writer = None
    if dist_info.main:
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "config.yaml", "w") as f:
            yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out / "tensorboard"))
        except ImportError:
            writer = None

    def save(tag: str) -> Path:
        ck = {
            "format": CHECKPOINT_FORMAT,
            "step": step,
            "model": model.state_dict(),
            "optimizer": optim.state_dict(),
            "rng": torch.get_rng_state(),
            **meta,
        }
        atomic_torch_save(ck, ckpt_dir / "last.pt")
        if tag:
            atomic_torch_save(ck, ckpt_dir / f"{tag}.pt")
        return ckpt_dir / "last.pt"

    from tqdm import tqdm

    bar = tqdm(
        total=cfg.steps,
        initial=step,
        desc=f"train {out.name}",
        unit="step",
        disable=not (progress and dist_info.main),
        dynamic_ncols=True,
    )
    metrics_path = out / "metrics.jsonl"
    model.train()
    pred = sched_cfg.prediction_type
    t_last = time.perf_counter()
    while step < cfg.steps:
        for g in optim.param_groups:
            g["lr"] = cfg.lr * _lr_factor(step, cfg.warmup_steps, cfg.steps)
        batch = _to_device(next(batches), device)
        losses = _losses(
            ddp_model, model, batch, alphas, train_encoders_with_policy, contrastive, cfg, pred
        )
        optim.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optim.step()
        step += 1
        bar.update(1)
        if dist_info.main and (step % cfg.log_every == 0 or step == cfg.steps):
            now = time.perf_counter()
            row = {k: float(v.detach()) for k, v in losses.items()}
            row.update(
                step=step,
                lr=optim.param_groups[0]["lr"],
                steps_per_s=cfg.log_every / max(now - t_last, 1e-9),
            )
            t_last = now
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            _log(writer, metrics_path, row, step, "train/")
        if (
            dist_info.main
            and data.val is not None
            and (step % cfg.eval_every == 0 or step == cfg.steps)
        ):
            ev = evaluate(
                model,
                data.val,
                alphas,
                device,
                seed=cfg.seed,
                prediction_type=sched_cfg.prediction_type,
            )
            ev["step"] = step
            _log(writer, metrics_path, ev, step, "")
        if dist_info.main and (step % cfg.ckpt_every == 0 or step == cfg.steps):
            save(f"step_{step:06d}")
    bar.close()
    final = ckpt_dir / "last.pt"
    if dist_info.main and not final.is_file():
        save("")
    if dist_info.world > 1:
        import torch.distributed as dist

        (out / "ranks").mkdir(parents=True, exist_ok=True)
        with open(out / "ranks" / f"rank{dist_info.rank}.json", "w") as f:
            json.dump(
                {
                    "rank": dist_info.rank,
                    "world": dist_info.world,
                    "step": step,
                    "weights_sha1": state_digest(model.state_dict()),
                },
                f,
            )
        dist.barrier()
        dist.destroy_process_group()
    if writer is not None:
        writer.close()
    return final


def _losses(ddp_model, model, batch, alphas, train_encoders_with_policy, contrastive, cfg, pred):
    args = (batch, alphas, train_encoders_with_policy, contrastive, cfg.text, cfg.policy, pred)
    if ddp_model is model:
        return model.losses(*args)
    # DDP hooks run on forward(): route the loss computation through it
    return ddp_model(*args)


def _schedule_of(ck: dict, overrides: dict | None = None):
    from ..policy.schedule import ScheduleConfig

    d = dict(ck["schedule"])
    merge_overrides(d, overrides, "schedule")
    return ScheduleConfig.from_dict(d)


POLICY_FIELDS = ("view_tokens", "denoiser", "rgb")
"""Model fields fine-tuning may change: they shape only the policy (the RGB branch is trained by
the policy loss), not the CLAMP encoders."""


def finetune_model_config(pretrained: dict, overrides: dict) -> ModelConfig:
    """The pretrained model's config with ``overrides`` of policy-only fields (view_tokens,
    denoiser.*, rgb.*); an override that would change the encoders is an error naming it."""
    base = ModelConfig.from_dict(pretrained).to_dict()
    d = copy.deepcopy(base)
    merge_overrides(d, overrides, "model")
    for k in d:
        if d[k] != base[k] and k not in POLICY_FIELDS:
            raise ConfigError(
                f"model.{k}: fine-tuning keeps the pretrained encoders, so only "
                f"{', '.join(POLICY_FIELDS)} may change ({base[k]!r} -> {d[k]!r})"
            )
    return ModelConfig.from_dict(d)


def load_pretrained(model: ClampModel, state: dict[str, torch.Tensor]) -> list[str]:
    """Load a pretrained state into ``model``; policy weights whose shape the fine-tuning config
    changed start fresh. Returns the names of those (sorted)."""
    own = model.state_dict()
    policy = tuple(n + "." for n, m in model.named_children() if m in model.policy_modules())
    fresh = sorted(k for k in own if k not in state or state[k].shape != own[k].shape)
    bad = [k for k in fresh if not k.startswith(policy)] + sorted(set(state) - set(own))
    if bad:
        raise CheckpointError(
            f"pretrained weights do not fit this model outside the policy: {bad[:5]}"
        )
    model.load_state_dict({k: v for k, v in state.items() if k not in fresh}, strict=False)
    return fresh


@torch.no_grad()
def encoded_windows(model: ClampModel, data: WindowDataset, device, progress: bool = True):
    """Every window's encoder outputs (cls, per-view tokens, action embedding), computed once:
    fine-tuning with frozen encoders then trains the policy on these instead of the views."""
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    out: dict[str, list[np.ndarray]] = {"cls": [], "per_view": [], "act": []}
    if data.history_dropout > 0:  # also the start-of-episode history's embedding, to swap in
        out["act_start"] = []
    batch = 64
    for s in tqdm(range(0, len(data), batch), desc="encode windows", disable=not progress):
        idx = range(s, min(s + batch, len(data)))
        items = [data.item_inputs(i) for i in idx]
        views = torch.from_numpy(np.stack([it[0] for it in items])).to(device)
        hist = torch.from_numpy(np.stack([it[1] for it in items])).to(device)
        cls, per_view, act = model.encode(views, hist)
        for k, v in zip(("cls", "per_view", "act"), (cls, per_view, act), strict=True):
            out[k].append(v.float().cpu().numpy())
        if "act_start" in out:
            start = torch.from_numpy(np.stack([data.start_history(i) for i in idx])).to(device)
            out["act_start"].append(model.action(start).float().cpu().numpy())
    model.train(was_training)
    return data.with_features({k: np.concatenate(v) for k, v in out.items()})


def _log(writer, path: Path, row: dict, step: int, prefix: str) -> None:
    with open(path, "a") as f:
        f.write(json.dumps({k: v for k, v in row.items()}) + "\n")
    if writer is not None:
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)):
                writer.add_scalar(prefix + k, v, step)
