"""Pictures of a `clamp eval sim` run: how far each seed got, and one episode's joints.

Top: one bar per seed, its highest task stage (the task's ``progress``), green where the
episode succeeded. Below: for one episode (by default the first failure), each of the 14 joints
over time: what the policy planned, what was commanded after the safety filter and where the
joint was, with the inference requests marked and the windows where the motion loops with the
inference period shaded red; at the bottom the jump at each seam of that episode. That is where
tracking lag, clipping, seams, loops, chattering grippers or a policy that stops moving show at
a glance. The title has the run's mean seam jump, its loops and the safety filter's clips by
reason (``clamp_core.eval.seams``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..aloha import ALOHA_JOINT_NAMES
from ..fileio import atomic_open
from .seams import gripper_mask


def pick_episode(result: dict, seed: int | None = None) -> dict | None:
    """The episode to draw: ``seed``'s, else the first failure, else the first episode; only
    episodes with a ``trace``. None when there is none."""
    traced = [e for e in result["episodes"] if "trace" in e]
    if seed is not None:
        traced = [e for e in traced if e["seed"] == seed]
        if not traced:
            raise ValueError(f"seed {seed} was not evaluated with a trace")
    failed = [e for e in traced if not e["success"]]
    return (failed or traced or [None])[0]


def _seam_line(result: dict) -> str:
    """One line on seams, loops and clips (empty for results without them)."""
    parts = []
    seams = result.get("seams")
    if seams:
        parts.append(f"mean seam jump {seams['mean_jump_rad']:.3f} rad ({seams['n']} seams)")
    loops = result.get("loops")
    if loops:
        parts.append(
            f"loops in {loops['failed_episodes']}/{loops['failures']} failures "
            f"({loops.get('failed_returning', 0)} returning)"
        )
    clipped = {k: v for k, v in result.get("clipped", {}).items() if v}
    if clipped:
        parts.append("clips: " + ", ".join(f"{k} {v}" for k, v in clipped.items()))
    return "; ".join(parts)


def plot_eval(result: dict, path, seed: int | None = None) -> Path:
    """Write the picture of an ``evaluate(..., trace=True)`` result as a PNG (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps = result["episodes"]
    episode = pick_episode(result, seed)
    rows = 9 if episode is not None else 1
    fig = plt.figure(figsize=(13, 2.4 + 1.6 * (rows - 1)), dpi=80)
    grid = fig.add_gridspec(rows, 2, height_ratios=[1.4] + [1.0] * (rows - 1))
    ax = fig.add_subplot(grid[0, :])
    seeds = [e["seed"] for e in eps]
    colours = ["tab:green" if e["success"] else "tab:red" for e in eps]
    ax.bar(range(len(eps)), [e["max_progress"] for e in eps], color=colours)
    ax.set_xticks(range(len(eps)), [str(s) for s in seeds], fontsize=7)
    ax.set_xlabel("seed (green: success)")
    ax.set_ylabel("task stage reached")
    mode = result.get("execution", {}).get("mode", "?")
    ax.set_title(
        f"{result['task']}: {result['successes']}/{len(eps)} successes; model "
        f"{Path(str(result['model'])).name}, {mode}, settle {result.get('settle_steps')} steps, "
        f"latency {result.get('latency_steps')} steps\n{_seam_line(result)}",
        fontsize=10,
    )
    if episode is not None:
        tr = episode["trace"]
        t = tr["t_s"]
        infer_t = t[tr["inference_steps"]] if len(t) else np.zeros(0)
        for j, name in enumerate(ALOHA_JOINT_NAMES):
            a = fig.add_subplot(grid[1 + j % 7, j // 7])
            a.plot(t, tr["measured"][:, j], color="black", lw=1.2, label="measured")
            a.plot(t, tr["command"][:, j], color="tab:blue", lw=1.0, ls="--", label="commanded")
            a.plot(t, tr["policy"][:, j], color="tab:orange", lw=0.8, ls=":", label="policy")
            for x in infer_t:
                a.axvline(x, color="grey", lw=0.5, alpha=0.35)
            for x0, x1 in episode.get("loops", {}).get("windows", []):
                a.axvspan(x0, x1, color="tab:red", alpha=0.08, lw=0)
            a.set_ylabel(name.split("_", 1)[1], fontsize=8)
            a.tick_params(labelsize=7)
            if j % 7 == 0:
                outcome = "success" if episode["success"] else "failure"
                side = name.split("_", 1)[0]
                a.set_title(f"{side} arm, seed {episode['seed']} ({outcome})", fontsize=9)
            if j % 7 == 6:
                a.set_xlabel("time (s); grey lines: inference requests", fontsize=8)
        fig.axes[1].legend(fontsize=7, loc="upper right")
        a = fig.add_subplot(grid[8, :])
        steps = tr.get("seam_steps", np.zeros(0, np.int64))
        if len(steps):
            jumps = np.abs(tr["seam_jumps"])
            arm = ~gripper_mask(ALOHA_JOINT_NAMES)
            a.stem(t[np.minimum(steps, len(t) - 1)], jumps[:, arm].max(axis=1), basefmt=" ")
        a.set_ylabel("seam jump\n(rad, arms)", fontsize=8)
        a.set_xlabel("time (s); largest arm-joint jump per seam (new chunk - plan)", fontsize=8)
        a.tick_params(labelsize=7)
    fig.tight_layout()
    path = Path(path)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return path
