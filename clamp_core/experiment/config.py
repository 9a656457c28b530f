"""Configuration of `clamp experiment few-shot` (issue 16): one dataclass, one field per setting,
loaded from YAML; every invariant is checked when it is built, with a message that says what to
change."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..perception.config import ConfigError

ARMS = ("clamp", "scratch", "dp_only")
"""clamp: contrastive + DP pretraining, then fine-tuned; scratch: the same architecture trained
on the few demos only; dp_only: DP pretraining without the contrastive losses (encoders trained
by the policy loss), then fine-tuned."""
ENCODER_MODES = ("frozen", "unfrozen")
PRETRAINED_ARMS = ("clamp", "dp_only")
MIN_EVAL_EPISODES = 20
MIN_TRAINING_SEEDS = 3


class ExperimentConfigError(ConfigError):
    """A study configuration that cannot run as written."""


@dataclass
class FewShotConfig:
    """The few-shot study: pretrain on ``pretrain_tasks``, fine-tune on few demos of each
    ``held_out_tasks`` task in every arm, evaluate every saved checkpoint in closed loop."""

    name: str = "few_shot"
    """Study name (titles of the table and figures)."""
    out: str = "experiments_out/few_shot"
    """Working folder: generated data, training runs, evaluations, one folder per cell (large;
    keep it out of git)."""
    results_dir: str = ""
    """Where results.json, results.md and the figures go ('' = <out>/results)."""
    pretrain_tasks: list[str] = field(default_factory=list)
    """Tasks whose expert demos the pretraining runs see (ids of `clamp generate --list`)."""
    held_out_tasks: list[str] = field(default_factory=list)
    """Tasks never seen in pretraining; each is fine-tuned on and evaluated."""
    pretrain_episodes: int = 50
    """Expert seeds run per pretraining task (an unsuccessful expert run leaves no file)."""
    demo_counts: list[int] = field(default_factory=lambda: [5, 10, 25])
    """Few-shot demo counts; the first N demos (seed order) of one pool, so the sets nest."""
    headline_demos: int = 0
    """The demo count of the study's headline comparison (issue target: 10): its runs from
    scratch, the costly ones, come first, every training seed, before the other counts'
    (0 = demo_counts order, seed by seed). Only the order changes, never a cell."""
    fewshot_pool: int = 0
    """Expert seeds run per held-out task for the few-shot pool (0 = max(demo_counts) + 5)."""
    pretrain_seed: int = 100_000
    """First generation seed of the pretraining demos (seeds pretrain_seed + 0 .. N-1)."""
    fewshot_seed: int = 200_000
    """First generation seed of the few-shot demo pool."""
    eval_seed: int = 300_000
    """First evaluation seed (unseen: disjoint from every demo seed)."""
    eval_episodes: int = 20
    """Closed-loop evaluation episodes (seeds) per checkpoint; at least 20."""
    arms: list[str] = field(default_factory=lambda: list(ARMS))
    """Arms to compare: clamp, scratch, dp_only."""
    encoders: list[str] = field(default_factory=lambda: ["frozen"])
    """Encoder handling when fine-tuning the pretrained arms: frozen and/or unfrozen."""
    training_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Training seeds: every fine-tuning cell is run once per seed (at least 3)."""
    pretrain_per_seed: bool = True
    """Each training seed has its own pretraining run (False: one run with the first seed is
    shared by all fine-tuning seeds; cheaper, but the spread then omits pretraining noise)."""
    preset: str = "cpu-small"
    """Model preset (cpu-small or paper) of every run."""
    model: dict[str, Any] = field(default_factory=dict)
    """ModelConfig overrides of every run (the same architecture in every arm)."""
    schedule: dict[str, Any] = field(default_factory=dict)
    """Noise schedule overrides of every run (e.g. prediction_type: sample)."""
    pretrain_steps: int = 3000
    """Optimiser steps of each pretraining run."""
    pretrain_batch_size: int = 32
    """Batch size of pretraining (per process under torchrun)."""
    pretrain_options: dict[str, Any] = field(default_factory=dict)
    """Further TrainConfig fields of the pretraining runs (lr, frame_stride, ...)."""
    pretrain_nproc_per_node: int = 1
    """Processes (GPUs) per pretraining run: > 1 starts it under torchrun (DDP)."""
    finetune_steps: int = 2000
    """Optimiser steps of each fine-tuning run."""
    finetune_batch_size: int = 32
    """Batch size of fine-tuning."""
    eval_every: int = 500
    """Fine-tuning steps between evaluated checkpoints (must divide finetune_steps)."""
    eval_pretrained: bool = True
    """Also evaluate each pretraining run's own policy on the held-out tasks, before any
    fine-tuning (step 0 of the pretrained arms' curves: what pretraining alone does there)."""
    finetune_options: dict[str, Any] = field(default_factory=dict)
    """Further TrainConfig fields of the fine-tuning runs (lr, history_dropout, ...)."""
    width: int = 320
    """Camera image width (px) for generation and evaluation."""
    height: int = 240
    """Camera image height (px)."""
    rest_steps: int = 25
    """Generation: control steps the arms rest at a (jittered) start pose before recording."""
    start_jitter: float = 0.05
    """Generation: uniform +-rad on every arm joint's start pose (needs rest_steps)."""
    settle_steps: int = 5
    """Evaluation: control steps the arms rest after a reset before the first observation."""
    execution: dict[str, Any] = field(default_factory=lambda: {"mode": "async"})
    """Evaluation: ExecutionConfig fields (chunk execution as on the robot)."""
    safety: bool = True
    """Evaluation: run the policy node's safety filter on every command."""
    inference_steps: int = 0
    """Evaluation: DDIM steps (0 = the model's own)."""
    export_verify: bool = True
    """Check ONNX Runtime against torch when exporting each evaluated checkpoint."""
    keep_models: bool = False
    """Keep the exported ONNX model of every evaluated checkpoint (False: only its results)."""
    keep_checkpoints: bool = True
    """Keep each evaluated step checkpoint (False: deleted once its evaluation is done)."""
    gen_workers: int = 2
    """Worker processes for data generation."""
    gen_block: int = 50
    """Seeds per generation cell (the unit a shard takes)."""
    device: str = "auto"
    """Training device: auto, cpu, cuda[:n]."""
    cache_dir: str = ""
    """Rendered-view cache ('' = <out>/view_cache)."""
    smoke_test: bool = False
    """A plumbing check, not a study: allows fewer than 20 eval episodes and fewer than 3
    training seeds (results are marked as such)."""

    def __post_init__(self) -> None:
        from ..models.config import PRESETS
        from ..sim.tasks import TASKS

        def fail(msg: str):
            raise ExperimentConfigError(msg)

        for name in ("pretrain_tasks", "held_out_tasks", "demo_counts", "arms", "encoders"):
            v = getattr(self, name)
            if not isinstance(v, list) or not v:
                fail(f"{name}: needs a non-empty list, got {v!r}")
            if len(set(map(str, v))) != len(v):
                fail(f"{name}: has duplicates {v}; list each entry once")
        if not isinstance(self.training_seeds, list) or not self.training_seeds:
            fail(f"training_seeds: needs a non-empty list, got {self.training_seeds!r}")
        if len(set(self.training_seeds)) != len(self.training_seeds):
            fail(f"training_seeds: has duplicates {self.training_seeds}")
        for t in self.pretrain_tasks + self.held_out_tasks:
            if t not in TASKS:
                fail(f"task '{t}' unknown; `clamp generate --list` offers {sorted(TASKS)}")
        both = sorted(set(self.pretrain_tasks) & set(self.held_out_tasks))
        if both:
            fail(f"{both} are both pretraining and held-out tasks; remove them from one list")
        for a in self.arms:
            if a not in ARMS:
                fail(f"arms: '{a}' unknown; choose from {list(ARMS)}")
        for m in self.encoders:
            if m not in ENCODER_MODES:
                fail(f"encoders: '{m}' unknown; choose from {list(ENCODER_MODES)}")
        for name in (
            "pretrain_episodes",
            "pretrain_steps",
            "pretrain_batch_size",
            "pretrain_nproc_per_node",
            "finetune_steps",
            "finetune_batch_size",
            "eval_every",
            "eval_episodes",
            "width",
            "height",
            "gen_workers",
            "gen_block",
        ):
            _int_at_least(name, getattr(self, name), 1)
        for name in (
            "fewshot_pool",
            "headline_demos",
            "pretrain_seed",
            "fewshot_seed",
            "eval_seed",
            "rest_steps",
            "settle_steps",
            "inference_steps",
        ):
            _int_at_least(name, getattr(self, name), 0)
        for n in self.demo_counts:
            _int_at_least("demo_counts entries", n, 1)
        for s in self.training_seeds:
            _int_at_least("training_seeds entries", s, 0)
        if self.demo_counts != sorted(self.demo_counts):
            fail(f"demo_counts: list them in increasing order, got {self.demo_counts}")
        if self.headline_demos and self.headline_demos not in self.demo_counts:
            fail(
                f"headline_demos {self.headline_demos} is not one of demo_counts "
                f"{self.demo_counts}; pick one of them (or 0)"
            )
        if self.fewshot_pool == 0:
            self.fewshot_pool = max(self.demo_counts) + 5
        if self.fewshot_pool < max(self.demo_counts):
            fail(
                f"fewshot_pool {self.fewshot_pool} < the largest demo count "
                f"{max(self.demo_counts)}; raise it (or set 0 for max + 5)"
            )
        if self.finetune_steps % self.eval_every:
            fail(
                f"eval_every {self.eval_every} must divide finetune_steps {self.finetune_steps} "
                "(the last checkpoint is evaluated too)"
            )
        if self.start_jitter < 0 or (self.start_jitter > 0 and self.rest_steps == 0):
            fail("start_jitter must be >= 0 and needs rest_steps > 0 (the arms move there)")
        if self.preset not in PRESETS:
            fail(f"preset '{self.preset}' unknown; choose from {list(PRESETS)}")
        if not self.smoke_test:
            if self.eval_episodes < MIN_EVAL_EPISODES:
                fail(
                    f"eval_episodes {self.eval_episodes}: a success rate needs at least "
                    f"{MIN_EVAL_EPISODES} episodes per checkpoint (smoke_test: true for a "
                    "plumbing check)"
                )
            if len(self.training_seeds) < MIN_TRAINING_SEEDS:
                fail(
                    f"training_seeds {self.training_seeds}: give at least {MIN_TRAINING_SEEDS} "
                    "(smoke_test: true for a plumbing check)"
                )
        if not any(a in PRETRAINED_ARMS for a in self.arms) and self.encoders != ["frozen"]:
            fail("encoders: only the pretrained arms (clamp, dp_only) use it; leave it [frozen]")
        ranges = self.seed_ranges()
        names = sorted(ranges)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                (a0, a1), (b0, b1) = ranges[a], ranges[b]
                if a0 < b1 and b0 < a1:
                    fail(
                        f"seed ranges overlap: {a} {a0}..{a1 - 1} and {b} {b0}..{b1 - 1}; move "
                        "pretrain_seed / fewshot_seed / eval_seed apart"
                    )
        for key in ("model", "schedule", "pretrain_options", "finetune_options", "execution"):
            if not isinstance(getattr(self, key), dict):
                fail(f"{key}: needs a mapping, got {getattr(self, key)!r}")
        reserved = {
            "data",
            "out",
            "preset",
            "model",
            "schedule",
            "steps",
            "batch_size",
            "seed",
            "init_from",
            "from_scratch",
            "freeze_encoders",
            "contrastive",
            "max_episodes",
            "ckpt_every",
            "cache_dir",
            "device",
        }
        for key in ("pretrain_options", "finetune_options"):
            clash = sorted(set(getattr(self, key)) & reserved)
            if clash:
                fail(f"{key}: {clash} are set by the study itself (use its own fields)")
        from ..training.config import TrainConfig

        try:
            model = TrainConfig(preset=self.preset, model=dict(self.model)).model_config()
        except (ConfigError, TypeError) as e:
            fail(f"model: {e}")
        if model.rgb.enabled:
            fail(
                "model.rgb.enabled: the training data (WindowDataset) carries no colour images, "
                "so a model with the RGB branch cannot train; set model: {rgb: {enabled: false}}"
            )
        from ..policy.execution import ExecutionConfig

        try:
            ExecutionConfig(**self.execution)
        except (TypeError, ValueError) as e:
            fail(f"execution: {e}")

    # ------------------------------------------------------------------------------ derived
    def seed_ranges(self) -> dict[str, tuple[int, int]]:
        """Half-open seed range per role: pretraining demos, few-shot demos, evaluation."""
        return {
            "pretraining demos": (self.pretrain_seed, self.pretrain_seed + self.pretrain_episodes),
            "few-shot demos": (self.fewshot_seed, self.fewshot_seed + self.fewshot_pool),
            "evaluation": (self.eval_seed, self.eval_seed + self.eval_episodes),
        }

    def eval_steps(self) -> list[int]:
        return list(range(self.eval_every, self.finetune_steps + 1, self.eval_every))

    def variants(self) -> list[str]:
        """Fine-tuning variants: '<arm>-<encoders>' for the pretrained arms, 'scratch'."""
        out = []
        for a in self.arms:
            if a in PRETRAINED_ARMS:
                out += [f"{a}-{m}" for m in self.encoders]
            else:
                out.append(a)
        return out

    def pretrain_arms(self) -> list[str]:
        return [a for a in self.arms if a in PRETRAINED_ARMS]

    def pretrain_seeds(self) -> list[int]:
        return list(self.training_seeds) if self.pretrain_per_seed else [self.training_seeds[0]]

    def pretrain_seed_for(self, training_seed: int) -> int:
        return training_seed if self.pretrain_per_seed else self.training_seeds[0]

    def resolved_results_dir(self) -> Path:
        return Path(self.results_dir) if self.results_dir else Path(self.out) / "results"

    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else Path(self.out) / "view_cache"

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(dataclasses.asdict(self))

    @staticmethod
    def from_dict(d: dict[str, Any]) -> FewShotConfig:
        if not isinstance(d, dict):
            raise ExperimentConfigError(f"expected a mapping of study settings, got {type(d)}")
        known = {f.name for f in dataclasses.fields(FewShotConfig)}
        unknown = set(d) - known
        if unknown:
            raise ExperimentConfigError(
                f"unknown settings {sorted(unknown)}; known: {sorted(known)}"
            )
        return FewShotConfig(**d)

    @staticmethod
    def from_yaml(path: str | Path) -> FewShotConfig:
        with open(path) as f:
            d = yaml.safe_load(f) or {}
        try:
            return FewShotConfig.from_dict(d)
        except ExperimentConfigError as e:
            raise ExperimentConfigError(f"{path}: {e}") from None


def _int_at_least(name: str, v, lo: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ExperimentConfigError(f"{name}: needs an integer >= {lo}, got {v!r}")
