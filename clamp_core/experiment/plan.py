"""The study as a DAG of cells.

A cell is one unit of work with its own folder ``<out>/cells/<cell id>/`` and a ``done.json``
marker written atomically when, and only when, its work is complete. Cells: ``generate`` (a block
of expert seeds of one task, pretraining or few-shot pool), ``pretrain`` (per pretrained arm and
training seed), ``finetune`` (per held-out task x variant x demo count x training seed),
``evaluate`` (per saved fine-tuning checkpoint, and per pretraining run on each held-out task:
step 0) and ``aggregate`` (the results, once every
evaluation is done). The order puts each training seed's pretraining right before its
fine-tuning runs, and each fine-tuning run right before its evaluations, so that partial results
cover every arm early; the fine-tuning runs from scratch come after every pretrained one (on a
CPU one scratch run costs about twenty frozen-encoder runs, and the pretrained arms' curves are
complete hours sooner), those at ``headline_demos`` first.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from .config import FewShotConfig

STAGES = ("generate", "pretrain", "finetune", "evaluate", "aggregate")


@dataclass(frozen=True)
class Cell:
    id: str
    """Unique, path-like: also the cell's folder under <out>/cells/."""
    stage: str
    deps: tuple[str, ...] = ()
    params: dict = field(default_factory=dict, hash=False, compare=False)

    def dir(self, cfg: FewShotConfig) -> Path:
        return Path(cfg.out) / "cells" / self.id

    def shard(self, n: int) -> int:
        """Stable across machines and Python runs (not ``hash()``, which is salted)."""
        return int.from_bytes(hashlib.sha1(self.id.encode()).digest()[:8], "big") % n


def _blocks(first: int, count: int, block: int) -> list[list[int]]:
    seeds = list(range(first, first + count))
    return [seeds[i : i + block] for i in range(0, count, block)]


def build_plan(cfg: FewShotConfig) -> list[Cell]:
    """Every cell of the study, each after the cells it depends on."""
    cells: list[Cell] = []
    gen_pre: list[str] = []
    for task in cfg.pretrain_tasks:
        for k, seeds in enumerate(_blocks(cfg.pretrain_seed, cfg.pretrain_episodes, cfg.gen_block)):
            cid = f"generate/pretrain/{task}/{k:03d}"
            gen_pre.append(cid)
            cells.append(Cell(cid, "generate", (), {"task": task, "seeds": seeds}))
    gen_few: dict[str, list[str]] = {}
    for task in cfg.held_out_tasks:
        for k, seeds in enumerate(_blocks(cfg.fewshot_seed, cfg.fewshot_pool, cfg.gen_block)):
            cid = f"generate/fewshot/{task}/{k:03d}"
            gen_few.setdefault(task, []).append(cid)
            cells.append(Cell(cid, "generate", (), {"task": task, "seeds": seeds}))

    evals: list[str] = []

    def add_finetune(seed: int, n: int, task: str, variant: str) -> None:
        pseed = cfg.pretrain_seed_for(seed)
        arm = variant.split("-")[0]
        deps = list(gen_few[task])
        if arm != "scratch":
            deps.append(pretrain_id(arm, pseed))
        fid = f"finetune/{task}/{variant}/n{n:03d}/seed{seed}"
        p = {
            "task": task,
            "variant": variant,
            "arm": arm,
            "demos": n,
            "seed": seed,
            "pretrain": pretrain_id(arm, pseed) if arm != "scratch" else "",
            "unfrozen": variant.endswith("-unfrozen"),
        }
        cells.append(Cell(fid, "finetune", tuple(deps), p))
        for step in cfg.eval_steps():
            eid = f"evaluate/{task}/{variant}/n{n:03d}/seed{seed}/step{step:06d}"
            evals.append(eid)
            cells.append(Cell(eid, "evaluate", (fid,), {**p, "step": step}))

    def runs(seed: int, scratch: bool, counts: list[int]):
        for n in counts:
            for task in cfg.held_out_tasks:
                for variant in cfg.variants():
                    if (variant.split("-")[0] == "scratch") == scratch:
                        yield seed, n, task, variant

    planned_pre: set[str] = set()
    for seed in cfg.training_seeds:
        pseed = cfg.pretrain_seed_for(seed)
        for arm in cfg.pretrain_arms():
            cid = pretrain_id(arm, pseed)
            if cid not in planned_pre:
                planned_pre.add(cid)
                cells.append(Cell(cid, "pretrain", tuple(gen_pre), {"arm": arm, "seed": pseed}))
                for task in cfg.held_out_tasks if cfg.eval_pretrained else ():
                    eid = f"evaluate/{task}/{arm}/pretrained/seed{pseed}"
                    evals.append(eid)
                    p = {"task": task, "arm": arm, "seed": pseed, "step": 0, "pretrain": cid}
                    cells.append(Cell(eid, "evaluate", (cid,), p))
        for run in runs(seed, scratch=False, counts=cfg.demo_counts):
            add_finetune(*run)
    # from scratch: the costly runs, last; the headline demo count's first, every seed
    head = [cfg.headline_demos] if cfg.headline_demos else []
    groups = [head, [n for n in cfg.demo_counts if n not in head]] if head else [cfg.demo_counts]
    for counts in groups:
        for seed in cfg.training_seeds:
            for run in runs(seed, scratch=True, counts=counts):
                add_finetune(*run)
    cells.append(Cell("aggregate", "aggregate", tuple(evals), {}))
    ids = [c.id for c in cells]
    assert len(ids) == len(set(ids)), "cell ids must be unique"
    return cells


def pretrain_id(arm: str, seed: int) -> str:
    return f"pretrain/{arm}/seed{seed}"


def parse_shard(text: str | None) -> tuple[int, int]:
    """'i/n' -> (i, n) with 0 <= i < n; None -> (0, 1)."""
    if text is None:
        return 0, 1
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: expected i/n, e.g. 0/4") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"--shard {text!r}: need n >= 1 and 0 <= i < n")
    return i, n


def summarize_plan(cfg: FewShotConfig, cells: list[Cell], shard=(0, 1)) -> dict:
    """Counts per stage (all and this shard's), the seed ranges and the training budget."""
    i, n = shard
    by_stage = {s: [c for c in cells if c.stage == s] for s in STAGES}
    mine = {
        s: sum(1 for c in v if s == "aggregate" or c.shard(n) == i) for s, v in by_stage.items()
    }
    ft = by_stage["finetune"]
    return {
        "cells": {s: len(v) for s, v in by_stage.items()},
        "this_shard": mine,
        "shard": f"{i}/{n}",
        "seed_ranges": {k: [a, b - 1] for k, (a, b) in cfg.seed_ranges().items()},
        "episodes_to_generate": len(cfg.pretrain_tasks) * cfg.pretrain_episodes
        + len(cfg.held_out_tasks) * cfg.fewshot_pool,
        "pretrain_runs": len(by_stage["pretrain"]),
        "pretrain_steps_total": len(by_stage["pretrain"]) * cfg.pretrain_steps,
        "finetune_runs": len(ft),
        "finetune_steps_total": len(ft) * cfg.finetune_steps,
        "eval_episodes_total": len(by_stage["evaluate"]) * cfg.eval_episodes,
        "variants": cfg.variants(),
        "eval_steps": cfg.eval_steps(),
    }
