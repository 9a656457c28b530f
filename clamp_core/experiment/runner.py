"""Runs the study's cells in order: finished cells (``done.json``) are skipped, so a stopped or
killed run resumes where it was; ``shard=(i, n)`` runs only the cells whose stable hash of the id
is i mod n, so several machines sharing the output folder split the grid.

A cell is done only when its ``done.json`` exists: it is written atomically after everything
else the cell produces, and holds the wall time of the cell and its result. A cell killed half
way leaves no marker and runs again (training resumes from its last checkpoint, generation skips
its finished episodes). ``running.json`` marks a cell a process is working on; another process on
the same host skips it while that process lives.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections import Counter
from pathlib import Path

from ..fileio import atomic_open
from .config import FewShotConfig
from .plan import Cell, build_plan, summarize_plan
from .results import _hms, aggregate_records, stage_times, write_results

DONE = "done.json"
RUNNING = "running.json"


def read_done(cell_dir: Path) -> dict | None:
    try:
        d = json.loads((cell_dir / DONE).read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) and "wall_s" in d else None


def write_done(cell_dir: Path, record: dict) -> None:
    cell_dir.mkdir(parents=True, exist_ok=True)
    with atomic_open(cell_dir / DONE, "w") as f:
        json.dump(record, f, indent=1)


def _claim(cell_dir: Path) -> str | None:
    """Mark the cell as ours; returns why not when a live process on this host has it, or a
    process on another host (whose liveness we cannot check) does."""
    host = socket.gethostname()
    try:
        other = json.loads((cell_dir / RUNNING).read_text())
    except (OSError, ValueError):
        other = None
    if other and other.get("pid") != os.getpid():
        if other.get("host") != host:
            return (
                f"running on {other.get('host')} (pid {other.get('pid')}); delete "
                f"{cell_dir / RUNNING} if that machine is gone"
            )
        if _alive(int(other.get("pid", -1))):
            return f"running in pid {other['pid']}"
    cell_dir.mkdir(parents=True, exist_ok=True)
    with atomic_open(cell_dir / RUNNING, "w") as f:
        json.dump({"host": host, "pid": os.getpid(), "started_unix": time.time()}, f)
    return None


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


BENIGN_FIELDS = {
    "name",
    "results_dir",
    "gen_workers",
    "keep_models",
    "keep_checkpoints",
    "device",
    "export_verify",
    "headline_demos",  # the order of the cells, never their settings
}
"""Settings that change no finished cell's meaning: free to change between invocations."""
EXTENSIBLE_FIELDS = {
    "held_out_tasks",
    "demo_counts",
    "arms",
    "encoders",
    "training_seeds",
    "eval_pretrained",
}
"""Settings that may grow (more cells; the finished ones stay valid)."""
STUDY_CONFIG = "study_config.json"


class StudyChangedError(ValueError):
    """The configuration differs from the one the study's finished cells were computed with."""


def config_changes(old: dict, new: dict) -> list[str]:
    """Differences that would mix results of different settings in one study."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if a == b or k in BENIGN_FIELDS:
            continue
        if k in EXTENSIBLE_FIELDS:
            if isinstance(a, list) and isinstance(b, list) and set(a) <= set(b):
                continue
            if k == "eval_pretrained" and b:
                continue
        out.append(f"{k}: {a!r} -> {b!r}")
    return out


class Study:
    """One study: its configuration, its plan, and where its cells live."""

    def __init__(self, cfg: FewShotConfig):
        self.cfg = cfg
        self.cells = build_plan(cfg)
        self.by_id = {c.id: c for c in self.cells}

    def done(self, cell: Cell) -> dict | None:
        return read_done(cell.dir(self.cfg))

    def results(self, log=None) -> dict:
        """Write results.json / .md / figures from the evaluations done so far."""
        cfg = self.cfg
        evals = [c for c in self.cells if c.stage == "evaluate"]
        records, done_all = [], []
        for c in self.cells:
            d = self.done(c)
            if d is None:
                continue
            done_all.append(d)
            if c.stage == "evaluate":
                records += self._records(d["result"])
        rows = aggregate_records(records, cfg.training_seeds)
        n_evals = sum(1 for c in evals if self.done(c) is not None)
        pre = [self.done(c) for c in self.cells if c.stage == "pretrain"]
        extra = {
            "status": f"{n_evals} of {len(evals)} evaluations done",
            "complete": n_evals == len(evals),
            "pretraining_data_tasks": {
                c.id: d["result"].get("data_tasks")
                for c, d in zip([c for c in self.cells if c.stage == "pretrain"], pre, strict=True)
                if d
            },
            "plan": summarize_plan(cfg, self.cells),
        }
        paths = write_results(
            cfg.resolved_results_dir(), cfg.to_dict(), rows, stage_times(done_all), extra
        )
        if log:
            log(f"results ({extra['status']}): {paths['md']}")
        return {"rows": rows, "paths": {k: str(v) for k, v in paths.items()}, **extra}

    def _records(self, r: dict) -> list[dict]:
        """Evaluation records by variant / demos / training seed. A pretraining run's own
        evaluation (step 0) is the start of every curve that fine-tunes from it."""
        if r["step"] > 0:
            return [r]
        cfg = self.cfg
        seeds = [
            s
            for s in cfg.training_seeds
            if cfg.pretrain_seed_for(s) == r["pretrain_seed"]
            and (cfg.pretrain_per_seed or s == cfg.training_seeds[0])
        ]  # one pretraining run shared by all seeds counts once, not once per seed
        expected = cfg.training_seeds if cfg.pretrain_per_seed else cfg.training_seeds[:1]
        return [
            {**r, "variant": v, "demos": n, "seed": s, "expected_seeds": expected}
            for v in cfg.variants()
            if v.split("-")[0] == r["arm"]
            for n in cfg.demo_counts
            for s in seeds
        ]

    def check_config(self, record: bool) -> None:
        """Refuse settings that differ from those the study's cells were computed with (stored
        in <out>/study_config.json by the first run; ``record``: store them if absent)."""
        path = Path(self.cfg.out) / STUDY_CONFIG
        now = self.cfg.to_dict()
        try:
            old = json.loads(path.read_text())
        except FileNotFoundError:
            old = None
        except (OSError, ValueError) as e:
            raise StudyChangedError(f"{path} is unreadable ({e}); delete it to go on") from None
        if old is None:
            if record:
                path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_open(path, "w") as f:
                    json.dump(now, f, indent=1)
            return
        changes = config_changes(old, now)
        if changes:
            raise StudyChangedError(
                f"the configuration changed since this study started in {self.cfg.out}: "
                + "; ".join(changes)
                + ". Finished cells used the old settings: give the study a new `out`, or "
                f"delete {path} to accept the change for the cells still to run"
            )
        if now != old and record:  # grown lists / benign changes: the new settings hold now
            with atomic_open(path, "w") as f:
                json.dump(now, f, indent=1)

    def run(self, shard=(0, 1), log=print, wait_s: float = 0.0) -> dict:
        """Run this shard's cells that are not done; returns counts and the results summary.
        ``wait_s`` > 0: when cells wait on other shards' cells, poll every ``wait_s`` seconds
        until they can run (machines sharing the folder); 0: report them and return."""
        i, n = shard
        cfg = self.cfg
        self.check_config(record=True)
        t_start = time.perf_counter()
        mine = [c for c in self.cells if c.stage != "aggregate" and c.shard(n) == i]
        counts: Counter = Counter()
        counts["skipped (done)"] = sum(1 for c in mine if self.done(c) is not None)
        log(
            f"study {cfg.name}: {len(self.cells)} cells, {len(mine)} in shard {i}/{n}; "
            f"output {cfg.out}"
        )
        while True:
            ran_before = counts["ran"]
            blocked = self._pass(mine, shard, counts, log, t_start)
            if not blocked or wait_s <= 0:
                break
            if counts["ran"] == ran_before:  # nothing moved: the other shards are at work
                log(f"{len(blocked)} cells wait for other shards, e.g. {blocked[0]}; polling")
                time.sleep(wait_s)
        for b in blocked[:5]:
            log(f"blocked: {b}")
        agg = self.by_id["aggregate"]
        summary = self.results(log)
        if summary["complete"] and self.done(agg) is None:
            write_done(
                agg.dir(cfg),
                {
                    "cell": agg.id,
                    "stage": "aggregate",
                    "wall_s": 0.0,
                    "finished_unix": time.time(),
                    "host": socket.gethostname(),
                    "result": {"results": summary["paths"]},
                },
            )
            counts["ran aggregate"] += 1
        return {
            "counts": dict(counts),
            "elapsed_s": round(time.perf_counter() - t_start, 1),
            "complete": summary["complete"],
            "status": summary["status"],
            "results": summary["paths"],
            "blocked": blocked,
        }

    def _pass(self, mine, shard, counts: Counter, log, t_start: float) -> list[str]:
        """One sweep over this shard's cells in plan order; returns the blocked ones."""
        from .stages import ACTIONS

        cfg, (i, n) = self.cfg, shard
        blocked: list[str] = []
        for k, cell in enumerate(mine, 1):
            if self.done(cell) is not None:
                continue
            missing = [d for d in cell.deps if self.done(self.by_id[d]) is None]
            if missing:
                blocked.append(f"{cell.id} (waits for {missing[0]})")
                continue
            why = _claim(cell.dir(cfg))
            if why:
                counts["busy"] += 1
                log(f"[{k}/{len(mine)}] {cell.id}: skipped, {why}")
                continue
            log(f"[{k}/{len(mine)}] {cell.id} ...")
            t0, started = time.perf_counter(), time.time()
            try:
                result = ACTIONS[cell.stage](cfg, cell, self.by_id)
            finally:
                (cell.dir(cfg) / RUNNING).unlink(missing_ok=True)
            wall = time.perf_counter() - t0
            write_done(
                cell.dir(cfg),
                {
                    "cell": cell.id,
                    "stage": cell.stage,
                    "wall_s": round(wall, 2),
                    "started_unix": started,
                    "finished_unix": time.time(),
                    "host": socket.gethostname(),
                    "shard": f"{i}/{n}",
                    "result": result,
                },
            )
            counts["ran"] += 1
            counts[f"ran {cell.stage}"] += 1
            log(
                f"[{k}/{len(mine)}] {cell.id} done in {wall:.1f} s "
                f"(elapsed {_hms(time.perf_counter() - t_start)}){_brief(result)}"
            )
            if cell.stage == "evaluate":
                self.results()
        counts["blocked"] = len(blocked)
        return blocked


def _brief(result: dict) -> str:
    keys = ("written", "failed", "steps_per_s", "final_loss", "successes", "episodes")
    parts = [f"{k}={result[k]}" for k in keys if k in result]
    return f": {', '.join(parts)}" if parts else ""


def stderr_log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def stdout_log(msg: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}", flush=True)
