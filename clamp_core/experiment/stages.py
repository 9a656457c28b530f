"""What each kind of cell does, through the same functions as the CLI commands: `clamp generate`
(``sim.generate.generate``), `clamp pretrain` / `clamp finetune` (``training.train.train``),
`clamp export` (``training.export.export``) and `clamp eval sim` (``eval.sim_eval.evaluate``).

Every action returns a JSON-able result that the runner stores in the cell's ``done.json``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import yaml

from ..fileio import atomic_open
from .config import FewShotConfig
from .plan import Cell


class HeldOutLeakError(RuntimeError):
    """Pretraining data that contains a held-out task: the study would not be few-shot."""


class StudyDataError(RuntimeError):
    """Generated data that cannot serve the study (too few demos, wrong task, errors)."""


# ------------------------------------------------------------------------------ data checks
def episode_tasks(dirs) -> dict[str, list[str]]:
    """task attribute -> episode files, read from every *.hdf5 file under ``dirs`` (all files,
    successful or not: a file is evidence of what the data holds)."""
    from ..data.episode import EpisodeReader, find_episodes

    out: dict[str, list[str]] = {}
    for d in dirs:
        if not Path(d).exists():
            continue
        for p in find_episodes(d):
            with EpisodeReader(p) as r:
                out.setdefault(str(r.meta.task), []).append(str(p))
    return out


def check_pretraining_data(dirs, held_out) -> dict[str, int]:
    """Refuse pretraining data in which any episode's task is held out; returns episodes per
    task. Checked from the files' task attributes, not from the configuration."""
    found = episode_tasks(dirs)
    leak = {t: files for t, files in found.items() if t in set(held_out)}
    if leak:
        lines = [f"{t}: {len(f)} episode(s), e.g. {f[0]}" for t, f in sorted(leak.items())]
        raise HeldOutLeakError(
            "the pretraining data contains held-out task(s); the study refuses to run:\n  "
            + "\n  ".join(lines)
            + "\nremove those files (or the task from held_out_tasks) and run again"
        )
    if not found:
        raise StudyDataError(f"no pretraining episodes under {list(map(str, dirs))}")
    return {t: len(f) for t, f in sorted(found.items())}


def check_fewshot_data(dirs, task: str, need: int) -> int:
    """The few-shot pool of ``task``: only that task, at least ``need`` successful demos."""
    from ..data.episode import EpisodeReader

    found = episode_tasks(dirs)
    other = sorted(t for t in found if t != task)
    if other:
        raise StudyDataError(f"few-shot pool of {task} holds episodes of {other}: {dirs}")
    ok = 0
    for p in found.get(task, []):
        with EpisodeReader(p) as r:
            ok += bool(r.success)
    if ok < need:
        raise StudyDataError(
            f"few-shot pool of {task} has {ok} successful demos, {need} needed; raise "
            "fewshot_pool (failed expert runs leave no file)"
        )
    return ok


# ------------------------------------------------------------------------------ train configs
def _train_common(cfg: FewShotConfig) -> dict:
    return {
        "preset": cfg.preset,
        "model": dict(cfg.model),
        "schedule": dict(cfg.schedule),
        "device": cfg.device,
        "cache_dir": str(cfg.resolved_cache_dir()),
    }


def pretrain_config(cfg: FewShotConfig, cell: Cell, data_dirs: list[str]):
    """TrainConfig of a pretraining cell: clamp = contrastive + DP (the encoders learn only from
    the contrastive terms); dp_only = DP alone, the encoders trained by the policy loss."""
    from ..training.config import TrainConfig

    d = {
        "eval_every": max(cfg.pretrain_steps // 4, 1),
        "log_every": 50,
        **cfg.pretrain_options,
        **_train_common(cfg),
        "data": list(data_dirs),
        "out": str(cell.dir(cfg)),
        "steps": cfg.pretrain_steps,
        "batch_size": cfg.pretrain_batch_size,
        "seed": cell.params["seed"],
        "ckpt_every": max(cfg.pretrain_steps // 4, 1),
    }
    if cell.params["arm"] == "clamp":
        d.update(contrastive=True, from_scratch=False)
    else:  # dp_only: policy pretraining without the contrastive losses
        d.update(contrastive=False, from_scratch=True)
    return TrainConfig.from_dict(d)


def finetune_config(cfg: FewShotConfig, cell: Cell, data_dirs: list[str], init: str):
    """TrainConfig of a fine-tuning cell. Every demo trains (no validation split); checkpoints
    at every ``eval_every`` steps are the ones evaluated."""
    from ..training.config import TrainConfig

    p = cell.params
    d = {
        "log_every": 50,
        **cfg.finetune_options,
        **_train_common(cfg),
        "data": list(data_dirs),
        "out": str(cell.dir(cfg)),
        "steps": cfg.finetune_steps,
        "batch_size": cfg.finetune_batch_size,
        "seed": p["seed"],
        "max_episodes": p["demos"],
        "val_fraction": 0.0,
        "ckpt_every": cfg.eval_every,
        "eval_every": cfg.finetune_steps,
        "contrastive": False,
    }
    if p["arm"] == "scratch":
        d.update(from_scratch=True)
    else:
        d.update(init_from=init, freeze_encoders=not p["unfrozen"])
    return TrainConfig.from_dict(d)


# ------------------------------------------------------------------------------ actions
def run_generate(cfg: FewShotConfig, cell: Cell, cells: dict[str, Cell]) -> dict:
    from ..sim.generate import Job, generate

    out = cell.dir(cfg)
    jobs = [
        Job(
            cell.params["task"],
            s,
            str(out),
            cfg.width,
            cfg.height,
            rest_steps=cfg.rest_steps,
            start_jitter=cfg.start_jitter,
        )
        for s in cell.params["seeds"]
    ]
    counts: Counter = Counter()
    errors, seconds = [], 0.0
    for r in generate(jobs, cfg.gen_workers, progress=False):
        counts[r.status] += 1
        seconds += r.seconds
        if r.status == "error":
            errors.append(f"seed {r.seed}: {r.message}")
    if errors:
        raise StudyDataError(f"{cell.id}: generation errors: {errors[:5]}")
    return {
        "task": cell.params["task"],
        "seeds": [cell.params["seeds"][0], cell.params["seeds"][-1]],
        **{k: counts.get(k, 0) for k in ("written", "skipped", "failed")},
        "worker_seconds": round(seconds, 1),
    }


def run_pretrain(cfg: FewShotConfig, cell: Cell, cells: dict[str, Cell]) -> dict:
    data = [str(cells[d].dir(cfg)) for d in cell.deps]
    tasks = check_pretraining_data(data, cfg.held_out_tasks)
    tc = pretrain_config(cfg, cell, data)
    ckpt = _train(tc, cfg.pretrain_nproc_per_node, "pretrain")
    return {
        "arm": cell.params["arm"],
        "checkpoint": str(ckpt),
        "data_tasks": tasks,
        **_train_stats(tc),
    }


def run_finetune(cfg: FewShotConfig, cell: Cell, cells: dict[str, Cell]) -> dict:
    p = cell.params
    data = [str(cells[d].dir(cfg)) for d in cell.deps if d.startswith("generate/")]
    pool = check_fewshot_data(data, p["task"], p["demos"])
    init = ""
    if p["pretrain"]:
        init = str(cells[p["pretrain"]].dir(cfg) / "checkpoints" / "last.pt")
        _check_checkpoint_tasks(init, cfg.held_out_tasks)
    tc = finetune_config(cfg, cell, data, init)
    ckpt = _train(tc, 1, "finetune")
    return {"checkpoint": str(ckpt), "pool_demos": pool, **_train_stats(tc)}


def run_evaluate(cfg: FewShotConfig, cell: Cell, cells: dict[str, Cell]) -> dict:
    from ..eval.sim_eval import evaluate
    from ..policy.execution import ExecutionConfig
    from ..training.export import export

    p = cell.params
    out = cell.dir(cfg)
    run = cells[cell.deps[0]].dir(cfg)
    if p["step"] == 0:  # the pretraining run's own policy, before any fine-tuning
        ckpt = run / "checkpoints" / "last.pt"
    else:
        ckpt = run / "checkpoints" / f"step_{p['step']:06d}.pt"
    seeds = list(range(cfg.eval_seed, cfg.eval_seed + cfg.eval_episodes))
    result_path = out / "eval.json"
    r = _read_json(result_path)
    timings = {}
    if r is None or [e["seed"] for e in r.get("episodes", [])] != seeds:
        # (an eval.json left by a run killed before done.json is reused, not redone)
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        export(ckpt, out / "model", verify=cfg.export_verify)
        timings["export_s"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        r = evaluate(
            out / "model",
            p["task"],
            seeds,
            cfg.width,
            cfg.height,
            ExecutionConfig(**cfg.execution),
            progress=False,
            inference_steps=cfg.inference_steps or None,
            safety=cfg.safety,
            settle_steps=cfg.settle_steps,
        )
        timings["eval_s"] = round(time.perf_counter() - t0, 1)
        r["checkpoint"] = str(ckpt)
        _write_json(result_path, r)
    if not cfg.keep_models:
        shutil.rmtree(out / "model", ignore_errors=True)
    if not cfg.keep_checkpoints and p["step"] > 0:
        ckpt.unlink(missing_ok=True)
    who = (
        {"arm": p["arm"], "pretrain_seed": p["seed"]}
        if p["step"] == 0
        else {"variant": p["variant"], "demos": p["demos"], "seed": p["seed"]}
    )
    return {
        "task": p["task"],
        **who,
        "step": p["step"],
        "successes": int(r["successes"]),
        "episodes": len(r["episodes"]),
        "eval_seeds": [seeds[0], seeds[-1]],
        **timings,
    }


ACTIONS = {
    "generate": run_generate,
    "pretrain": run_pretrain,
    "finetune": run_finetune,
    "evaluate": run_evaluate,
}


# ------------------------------------------------------------------------------ helpers
def _check_checkpoint_tasks(path: str, held_out) -> None:
    """The pretraining checkpoint's task list (written from its data) has no held-out task."""
    from ..training.train import load_checkpoint

    tasks = load_checkpoint(path).get("tasks", [])
    leak = sorted(set(tasks) & set(held_out))
    if leak:
        raise HeldOutLeakError(f"{path} was pretrained on held-out task(s) {leak}")


def _train(tc, nproc: int, mode: str) -> Path:
    if nproc <= 1:
        from ..training.train import train

        return train(tc, progress=False, resume=True)
    # several GPUs: the same `clamp pretrain` under torchrun (DDP), one process per GPU
    out = Path(tc.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / "study_train_config.yaml"
    with atomic_open(cfg_path, "w") as f:
        yaml.safe_dump(tc.to_dict(), f, sort_keys=False)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        "-m",
        "clamp_core.cli",
        mode,
        "--config",
        str(cfg_path),
        "--json",
    ]
    subprocess.run(cmd, check=True, env=dict(os.environ))
    return out / "checkpoints" / "last.pt"


def _train_stats(tc) -> dict:
    rows = []
    path = Path(tc.out) / "metrics.jsonl"
    if path.is_file():
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    train_rows = [r for r in rows if "steps_per_s" in r]
    out = {"steps": tc.steps}
    if train_rows:
        rates = [r["steps_per_s"] for r in train_rows[1:] or train_rows]
        out["steps_per_s"] = round(sorted(rates)[len(rates) // 2], 2)
        out["final_loss"] = round(float(train_rows[-1].get("loss", float("nan"))), 5)
    return out


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=1, default=_jsonable)


def _jsonable(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")
