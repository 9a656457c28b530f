"""Training run configuration (`clamp pretrain`, `clamp finetune`): one dataclass, loadable from
YAML, with the model preset and per-field overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..models.config import PRESETS, ModelConfig, preset
from ..perception.config import ConfigError
from ..policy.schedule import ScheduleConfig


@dataclass
class TrainConfig:
    """One training run. Pretraining: contrastive + diffusion on multi-task data. Fine-tuning:
    ``init_from`` a pretraining run, diffusion loss on a few demos of a new task."""

    data: list[str] = field(default_factory=list)
    """Episode folders or files (searched recursively for *.hdf5)."""
    out: str = "runs/clamp"
    """Run folder: checkpoints/, tensorboard/, config.yaml, metrics.jsonl."""
    preset: str = "cpu-small"
    """Model preset: cpu-small or paper."""
    model: dict[str, Any] = field(default_factory=dict)
    """Overrides of the preset's ModelConfig fields (nested dicts for sub-configs)."""
    schedule: dict[str, Any] = field(default_factory=dict)
    """Overrides of the noise schedule (ScheduleConfig fields)."""
    cache_dir: str = ""
    """Rendered-view cache (default: ~/.cache/clamp_ros/views)."""
    frame_stride: int = 4
    """Train on every k-th frame (views cached at that stride); actions stay at full rate."""
    max_episodes: int = 0
    """Use only the first N successful episodes (seed order) per task; 0 = all (few-shot)."""
    val_fraction: float = 0.1
    """Held-out episodes (at least one per task when a task has >= 2) for retrieval/val loss."""
    steps: int = 2000
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    grad_clip: float = 1.0
    seed: int = 0
    num_workers: int = 0
    """DataLoader worker processes (0 = in the training process)."""
    device: str = "auto"
    """auto (cuda if available), cpu or cuda[:n]."""
    log_every: int = 10
    eval_every: int = 250
    ckpt_every: int = 250
    contrastive: bool = True
    """Train the encoders with image-action (and image-text) InfoNCE."""
    text: bool = True
    """Include the image-text contrastive term."""
    policy: bool = True
    """Train the diffusion policy."""
    init_from: str = ""
    """Fine-tuning: run folder or checkpoint (.pt) whose weights start this run."""
    freeze_encoders: bool = True
    """Fine-tuning: keep the CLAMP encoders fixed (False: train them with the policy loss)."""
    cache_features: bool = True
    """Fine-tuning with frozen encoders: encode every window once and train the policy on the
    stored outputs (same result, several times faster; off: encode every batch)."""
    from_scratch: bool = False
    """Baseline: random init, encoders trained end to end by the diffusion loss only."""
    history_dropout: float = 0.0
    """Probability that a training window's action history is replaced by what the policy node
    has before it has commanded anything (the measured position, repeated): the policy then has
    to decide from the views, not by carrying on with the history (copycat). Training windows
    only; validation keeps the true history."""

    def __post_init__(self) -> None:
        if isinstance(self.data, str):
            self.data = [self.data]
        if self.preset not in PRESETS:
            raise ConfigError(f"preset '{self.preset}' unknown; choose from {PRESETS}")
        for name in (
            "steps",
            "batch_size",
            "frame_stride",
            "log_every",
            "eval_every",
            "ckpt_every",
        ):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.history_dropout <= 1.0:
            raise ConfigError(f"history_dropout must be in [0, 1], got {self.history_dropout}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.from_scratch and self.init_from:
            raise ConfigError("from_scratch and init_from exclude each other")
        if not (self.contrastive or self.policy):
            raise ConfigError("nothing to train: contrastive and policy are both off")
        self.model_config()  # validate overrides now, not at step 0
        self.schedule_config()

    def model_config(self) -> ModelConfig:
        d = preset(self.preset).to_dict()
        merge_overrides(d, self.model, "model")
        return ModelConfig.from_dict(d)

    def schedule_config(self) -> ScheduleConfig:
        d = ScheduleConfig().to_dict()
        merge_overrides(d, self.schedule, "schedule")
        return ScheduleConfig.from_dict(d)

    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir or Path.home() / ".cache" / "clamp_ros" / "views")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown training options {sorted(unknown)}; known: {sorted(known)}")
        return TrainConfig(**d)

    @staticmethod
    def from_yaml(path: str | Path) -> TrainConfig:
        with open(path) as f:
            d = yaml.safe_load(f) or {}
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: expected a mapping of training options")
        return TrainConfig.from_dict(d)


def merge_overrides(base: dict, over: dict | None, where: str) -> None:
    """Write ``over`` into ``base`` (nested dicts merged); a key ``base`` lacks is an error."""
    for k, v in (over or {}).items():
        if k not in base:
            raise ConfigError(f"{where}.{k}: unknown; known: {sorted(base)}")
        if isinstance(base[k], dict) and isinstance(v, dict):
            merge_overrides(base[k], v, f"{where}.{k}")
        else:
            base[k] = v
