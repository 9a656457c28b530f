"""Success counting, confidence intervals, the results table (JSON + Markdown) and the figures.

Per held-out task x variant x demo count x fine-tuning step:

- ``rate``: pooled successes / episodes over the training seeds. Every seed is evaluated on the
  same number of episodes, so this equals the mean of the per-seed success rates.
- ``ci95``: the Wilson score interval (95 %) of the pooled successes. It covers the sampling
  noise of the evaluation episodes, not the variation between training runs;
- ``seed_rates`` / ``seed_std``: the per-seed rates and their standard deviation (the spread over
  training seeds), reported next to it.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from ..fileio import atomic_open

Z95 = 1.959963984540054
"""Two-sided 95 % standard normal quantile."""

CI_METHOD = (
    "rate = pooled successes / episodes over the training seeds (= mean of the per-seed "
    "rates: every seed has the same episodes); ci95 = Wilson score interval (95 %) on the "
    "pooled successes (evaluation-episode noise); seed_std = standard deviation of the "
    "per-seed rates (training-seed spread)"
)


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion; (0, 1) when n == 0."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def aggregate_records(records: list[dict], seeds: list[int] | None = None) -> list[dict]:
    """One row per (task, variant, demos, step) from evaluation records (dicts with task,
    variant, demos, seed, step, successes, episodes). ``seeds``: the planned training seeds
    (a row missing some is marked incomplete; a record's ``expected_seeds`` overrides it)."""
    groups: dict[tuple, dict[int, dict]] = {}
    expected: dict[tuple, list[int] | None] = {}
    for r in records:
        key = (r["task"], r["variant"], int(r["demos"]), int(r["step"]))
        expected[key] = r.get("expected_seeds", seeds)
        per_seed = groups.setdefault(key, {})
        if int(r["seed"]) in per_seed:
            raise ValueError(f"two records for {key} seed {r['seed']}")
        per_seed[int(r["seed"])] = {
            "successes": int(r["successes"]),
            "episodes": int(r["episodes"]),
        }
    rows = []
    for key in sorted(groups):
        per_seed = groups[key]
        k = sum(v["successes"] for v in per_seed.values())
        n = sum(v["episodes"] for v in per_seed.values())
        rates = [v["successes"] / v["episodes"] for v in per_seed.values() if v["episodes"]]
        mean = sum(rates) / len(rates) if rates else float("nan")
        std = (
            math.sqrt(sum((x - mean) ** 2 for x in rates) / (len(rates) - 1))
            if len(rates) > 1
            else 0.0
        )
        lo, hi = wilson_interval(k, n)
        rows.append(
            {
                "task": key[0],
                "variant": key[1],
                "demos": key[2],
                "step": key[3],
                "successes": k,
                "episodes": n,
                "rate": k / n if n else float("nan"),
                "ci95": [lo, hi],
                "seeds": {str(s): v for s, v in sorted(per_seed.items())},
                "seed_rates": rates,
                "seed_mean": mean,
                "seed_std": std,
                "complete": expected[key] is None or set(per_seed) == set(expected[key]),
            }
        )
    return rows


def stage_times(done: list[dict]) -> dict[str, dict]:
    """Wall time per stage from the cells' done.json markers."""
    out: dict[str, dict] = {}
    for d in done:
        s = out.setdefault(d["stage"], {"cells": 0, "total_s": 0.0, "min_s": None, "max_s": 0.0})
        w = float(d["wall_s"])
        s["cells"] += 1
        s["total_s"] += w
        s["min_s"] = w if s["min_s"] is None else min(s["min_s"], w)
        s["max_s"] = max(s["max_s"], w)
    order = ("generate", "pretrain", "finetune", "evaluate", "aggregate")
    out = dict(sorted(out.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 9))
    for s in out.values():
        s["mean_s"] = s["total_s"] / s["cells"]
        for k in ("total_s", "mean_s", "min_s", "max_s"):
            s[k] = round(s[k], 1)
    return out


def write_results(
    out_dir: str | Path,
    study: dict,
    rows: list[dict],
    times: dict,
    extra: dict | None = None,
) -> dict[str, Path]:
    """results.json, results.md and one PNG per held-out task, each written atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "study": study.get("name", ""),
        "written_unix": time.time(),
        "ci_method": CI_METHOD,
        "rows": rows,
        "stage_wall_times": times,
        "config": study,
        **(extra or {}),
    }
    paths = {"json": out / "results.json", "md": out / "results.md"}
    with atomic_open(paths["json"], "w") as f:
        json.dump(doc, f, indent=1)
    with atomic_open(paths["md"], "w") as f:
        f.write(markdown(doc))
    for task in sorted({r["task"] for r in rows}):
        paths[task] = plot_task(rows, task, out / f"{task}.png", study.get("name", ""))
    return paths


def _fmt_rate(r: dict) -> str:
    lo, hi = r["ci95"]
    mark = "" if r["complete"] else "*"
    return f"{r['rate']:.2f} [{lo:.2f}, {hi:.2f}] ({r['successes']}/{r['episodes']}){mark}"


def markdown(doc: dict) -> str:
    rows = doc["rows"]
    cfg = doc.get("config", {})
    lines = [f"# {doc.get('study') or 'few-shot study'}: results", ""]
    status = doc.get("status")
    if status:
        lines += [f"Status: {status}", ""]
    if cfg.get("smoke_test"):
        lines += ["**Smoke test configuration: not a measurement.**", ""]
    lines += [
        f"Pretraining tasks: {', '.join(cfg.get('pretrain_tasks', []))}; held out: "
        f"{', '.join(cfg.get('held_out_tasks', []))}. Training seeds "
        f"{cfg.get('training_seeds')}, {cfg.get('eval_episodes')} evaluation episodes per "
        "checkpoint and seed.",
        "",
        f"Each cell: success rate, 95 % interval, successes/episodes. {doc['ci_method']}. "
        "`*`: not every training seed evaluated yet.",
        "",
    ]
    for task in sorted({r["task"] for r in rows}):
        sub = [r for r in rows if r["task"] == task]
        steps = sorted({r["step"] for r in sub})
        lines += [f"## {task}", ""]
        lines.append(
            "| arm | demos | " + " | ".join(f"step {s}" for s in steps) + " | seed std (last) |"
        )
        lines.append("|---|---|" + "---|" * len(steps) + "---|")
        for variant, demos in sorted({(r["variant"], r["demos"]) for r in sub}, key=_order):
            cells = {r["step"]: r for r in sub if r["variant"] == variant and r["demos"] == demos}
            last = cells[max(cells)]
            lines.append(
                f"| {variant} | {demos} | "
                + " | ".join(_fmt_rate(cells[s]) if s in cells else "" for s in steps)
                + f" | {last['seed_std']:.2f} |"
            )
        lines.append("")
        diff = clamp_vs_scratch(sub)
        for d in diff:
            lines.append(
                f"- {d['variant']} - scratch at {d['demos']} demos, step {d['step']}: "
                f"{100 * d['difference']:+.0f} points"
            )
        if diff:
            lines.append("")
        lines += [f"![{task}]({task}.png)", ""]
    times = doc.get("stage_wall_times", {})
    if times:
        lines += [
            "## Wall time per stage",
            "",
            "| stage | cells | total | mean per cell | min | max |",
            "|---|---|---|---|---|---|",
        ]
        for stage, t in times.items():
            lines.append(
                f"| {stage} | {t['cells']} | {_hms(t['total_s'])} | {t['mean_s']:.0f} s | "
                f"{t['min_s']:.0f} s | {t['max_s']:.0f} s |"
            )
        lines.append("")
    return "\n".join(lines)


def clamp_vs_scratch(rows: list[dict]) -> list[dict]:
    """At the last evaluated step of each demo count: every clamp variant's rate minus
    scratch's."""
    out = []
    for demos in sorted({r["demos"] for r in rows}):
        sub = [r for r in rows if r["demos"] == demos]
        scratch = {r["step"]: r for r in sub if r["variant"] == "scratch"}
        for variant in sorted({r["variant"] for r in sub if r["variant"].startswith("clamp")}):
            mine = {r["step"]: r for r in sub if r["variant"] == variant}
            common = sorted(set(mine) & set(scratch))
            if common:
                s = common[-1]
                out.append(
                    {
                        "variant": variant,
                        "demos": demos,
                        "step": s,
                        "difference": mine[s]["rate"] - scratch[s]["rate"],
                    }
                )
    return out


_ARM_ORDER = ("clamp-frozen", "clamp-unfrozen", "dp_only-frozen", "dp_only-unfrozen", "scratch")
_COLOURS = {
    "clamp-frozen": "#1f5fb4",
    "clamp-unfrozen": "#5aa0e6",
    "dp_only-frozen": "#2a9d4b",
    "dp_only-unfrozen": "#8fd18f",
    "scratch": "#c0392b",
}
_LABELS = {
    "clamp-frozen": "CLAMP pretrained (frozen enc.)",
    "clamp-unfrozen": "CLAMP pretrained (fine-tuned enc.)",
    "dp_only-frozen": "DP pretrained, no contrastive (frozen enc.)",
    "dp_only-unfrozen": "DP pretrained, no contrastive (fine-tuned enc.)",
    "scratch": "From scratch",
}


def _order(key):
    variant, demos = key
    i = _ARM_ORDER.index(variant) if variant in _ARM_ORDER else len(_ARM_ORDER)
    return (i, variant, demos)


def plot_task(rows: list[dict], task: str, path: str | Path, title: str = "") -> Path:
    """Success rate vs fine-tuning steps, one panel per demo count, one line per arm with its
    95 % band (Wilson, pooled over training seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    sub = [r for r in rows if r["task"] == task]
    demos = sorted({r["demos"] for r in sub})
    variants = sorted({r["variant"] for r in sub}, key=lambda v: _order((v, 0)))
    with plt.rc_context(
        {
            "font.family": "serif",
            "font.size": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "grid.linewidth": 0.5,
        }
    ):
        fig, axes = plt.subplots(
            1, len(demos), figsize=(2.6 * len(demos) + 0.6, 2.6), sharey=True, squeeze=False
        )
        for ax, n in zip(axes[0], demos, strict=True):
            for v in variants:
                pts = sorted((r for r in sub if r["variant"] == v and r["demos"] == n), key=_step)
                if not pts:
                    continue
                x = [r["step"] for r in pts]
                y = [r["rate"] for r in pts]
                lo = [r["ci95"][0] for r in pts]
                hi = [r["ci95"][1] for r in pts]
                c = _COLOURS.get(v, "#555555")
                ax.fill_between(x, lo, hi, color=c, alpha=0.15, linewidth=0)
                ax.plot(
                    x, y, color=c, marker="o", markersize=3, linewidth=1.5, label=_LABELS.get(v, v)
                )
            ax.set_title(f"{n} demo{'s' if n != 1 else ''}")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("fine-tuning steps")
            ax.set_ylim(-0.02, 1.02)
        axes[0][0].set_ylabel("success rate")
        handles, labels = legend_entries(axes[0])
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
        name = task.replace("_", " ").title()
        fig.suptitle(f"{name}{' (' + title + ')' if title else ''}: held out from pretraining")
        fig.tight_layout()
        path = Path(path)
        with atomic_open(path, "wb") as f:
            fig.savefig(f, format="png", dpi=150, bbox_inches="tight")
        plt.close(fig)
    return path


def legend_entries(axes) -> tuple[list, list[str]]:
    """Every line labelled in any of ``axes``, once, in order of appearance (an arm may have
    no point in the first panel yet: the scratch runs of one demo count come first)."""
    seen: dict[str, object] = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(lab, h)
    return list(seen.values()), list(seen)


def _hms(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _step(r: dict) -> int:
    return r["step"]
