"""`clamp bench soak`: the closed-loop demo graph (sim node + policy node, separate ROS 2
processes) running for N minutes, optionally under a hostile stream (``clamp_ros.fuzz``), with
each node's resident memory sampled throughout: start (after a warm-up), end, the least-squares
slope and the growth; the policy node's drops and suppressions from its /diagnostics; whether
every node stayed alive. Episodes restart every ``--episode-seconds`` (disable, reset, enable),
as in the demo, so the graph keeps doing real work.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .graph import GRAPHS, ProcessGroup
from .sim_demo import image_size


def add_bench_soak(bench_sub) -> None:
    p = bench_sub.add_parser(
        "soak",
        help="the demo graph for N minutes: each node's memory at start and end, slope, drops",
    )
    p.add_argument("--minutes", type=float, default=10.0, help="how long to run (wall minutes)")
    p.add_argument(
        "--warmup-s", type=float, default=60.0, help="seconds of commanding before the start RSS"
    )
    p.add_argument(
        "--hostile-rate",
        type=float,
        default=0.0,
        help="hostile messages per second from clamp_ros.fuzz during the run (0: none)",
    )
    p.add_argument("--episode-seconds", type=float, default=30.0, help="sim s per episode")
    p.add_argument("--sample-s", type=float, default=10.0, help="memory sampling period (s)")
    p.add_argument("--model", default="drawer_open", help="model directory or shipped name")
    p.add_argument("--camera-size", default="320x240", type=image_size, help="sim camera WxH")
    p.add_argument("--out", default="soak_out", help="folder for logs and the result")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run_bench_soak)


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process and its children (MB), from /proc; None once it exited."""
    total = 0.0
    try:
        pids = [pid] + _children(pid)
        for p in pids:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) / 1024.0
    except (FileNotFoundError, ProcessLookupError):
        return None
    return total


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(x) for x in f.read().split()]
    except OSError:
        return []
    return kids + [g for k in kids for g in _children(k)]


def memory_summary(samples: list[tuple[float, float]], start_s: float) -> dict:
    """``samples`` (t_s, rss_mb); the figures from the first sample at or after ``start_s``."""
    pts = [(t, m) for t, m in samples if t >= start_s and m is not None]
    if len(pts) < 2:
        return {"samples": len(pts)}
    t = np.array([p[0] for p in pts])
    m = np.array([p[1] for p in pts])
    slope = float(np.polyfit(t, m, 1)[0]) * 3600.0
    return {
        "start_mb": round(float(m[0]), 1),
        "end_mb": round(float(m[-1]), 1),
        "max_mb": round(float(m.max()), 1),
        "growth_pct": round(100.0 * float(m[-1] - m[0]) / float(m[0]), 2),
        "slope_mb_per_h": round(slope, 2),
        "samples": len(pts),
    }


def run_bench_soak(args) -> int:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from .demo import demo_env
    from .sim_demo import Monitor

    if not args.minutes > 0 or args.warmup_s < 0 or not args.sample_s > 0:
        raise SystemExit("clamp bench soak: --minutes and --sample-s need numbers > 0")
    say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    env = demo_env()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    w, h = (int(x) for x in args.camera_size.lower().split("x"))
    sim_spec, policy_spec = GRAPHS["sim_demo"]
    samples: dict[str, list] = {"sim": [], "policy": []}
    fuzz = None
    with ProcessGroup(env, log_dir=out / "logs") as group:
        procs = {
            "sim": group.start(sim_spec, {"width": w, "height": h}),
            "policy": group.start(policy_spec, {"model": args.model}),
        }
        rclpy.init()
        node = rclpy.create_node("clamp_soak_monitor")
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        mon = Monitor(node)
        try:
            if not mon.wait(lambda: mon.commands > 0, 180.0, group.procs):
                raise SystemExit(f"soak: the policy never commanded the arms; see {out}/logs")
            t0 = time.monotonic()
            say(f"soak: commanding; warm-up {args.warmup_s:.0f} s, then {args.minutes} min")
            if args.hostile_rate > 0:
                fuzz_log = open(out / "logs" / "fuzz.log", "w")  # noqa: SIM115 (closed below)
                fuzz = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "clamp_ros.fuzz",
                        "--seconds",
                        str(args.warmup_s + args.minutes * 60.0),
                        "--rate",
                        str(args.hostile_rate),
                        "--use-sim-time",
                    ],
                    env=group.env,
                    stdout=fuzz_log,
                    stderr=subprocess.STDOUT,
                )
            end = t0 + args.warmup_s + args.minutes * 60.0
            next_sample, episode_ns, episodes = 0.0, mon.sim_ns, 1
            from tqdm import tqdm

            bar = tqdm(total=int(end - t0), unit="s", disable=args.json, desc="soak", leave=False)
            while time.monotonic() < end:
                mon.spin(0.5)
                bar.n = int(time.monotonic() - t0)
                bar.refresh()
                now = time.monotonic() - t0
                if now >= next_sample:
                    for name, p in procs.items():
                        samples[name].append((now, rss_mb(p.pid)))
                    next_sample = now + args.sample_s
                    # what a run cut short leaves behind
                    (out / "rss_samples.json").write_text(json.dumps(samples))
                dead = [n for n, p in procs.items() if p.poll() is not None]
                if dead:
                    say(f"soak: {dead} exited after {now:.0f} s; see {out}/logs")
                    break
                if mon.sim_ns - episode_ns > args.episode_seconds * 1e9:
                    mon.next_episode()
                    episode_ns, episodes = mon.sim_ns, episodes + 1
            bar.close()
            mon.spin(1.5)  # one more diagnostics message
            wall = time.monotonic() - t0
        finally:
            if fuzz is not None:
                fuzz.terminate()
                fuzz.wait(timeout=10)
            executor.shutdown()
            node.destroy_node()
            rclpy.shutdown()
        alive = {n: p.poll() is None for n, p in procs.items()}
    memory = {n: memory_summary(s, args.warmup_s) for n, s in samples.items()}
    result = {
        "metric": "resident memory growth of each node over the run, after the warm-up",
        "unit": "%",
        "target": "<= 5 % over 60 minutes",
        "minutes": round((wall - args.warmup_s) / 60.0, 2),
        "hostile_rate_hz": args.hostile_rate,
        "episodes": episodes,
        "alive": alive,
        "memory": memory,
        "policy_commands": mon.commands,
        "policy_drops": {k: v for k, v in mon.diag.items() if k.startswith("dropped")},
        "policy_suppressed": {k: v for k, v in mon.diag.items() if k.startswith("suppressed")},
        "policy_status": mon.status,
        "rss_samples": {n: [(round(t, 1), m) for t, m in s] for n, s in samples.items()},
    }
    (out / "soak.json").write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps(result))
    else:
        for n, m in memory.items():
            if "start_mb" in m:
                print(
                    f"{n}: {m['start_mb']} -> {m['end_mb']} MB ({m['growth_pct']:+.2f} %, "
                    f"{m['slope_mb_per_h']:+.1f} MB/h) over {result['minutes']} min"
                )
        print(f"alive: {alive}; policy commands: {mon.commands}; episodes: {episodes}")
        print(f"result: {out / 'soak.json'}")
    return 0 if all(alive.values()) else 1
