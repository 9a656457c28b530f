"""`clamp demo`: start the synthetic demo graph as separate ROS 2 processes, watch its output,
write pictures of the rendered views and print rates and latencies.

The processes are exactly those of ``launch/synthetic_demo.launch.py`` (``GRAPHS``), started from
their console scripts with the same parameter files.
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from clamp_core.perception.config import PerceptionConfig
from clamp_core.perception.visualize import tiled_picture, view_picture, write_png

from .graph import GRAPHS, ProcessGroup, share_dir


def demo_env() -> dict:
    """ROS settings a laptop or a shared CI machine needs; the user's own values win. Fast DDS
    gets the package's profile (config/fastdds.xml: big shared-memory segments, 50 ms
    heartbeats) unless one is set already."""
    profile = os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE") or str(
        share_dir() / "config" / "fastdds.xml"
    )
    env = {
        "FASTDDS_DEFAULT_PROFILES_FILE": profile,
        "ROS_DOMAIN_ID": os.environ.get("ROS_DOMAIN_ID", str(random.randint(1, 100))),
        "ROS_AUTOMATIC_DISCOVERY_RANGE": os.environ.get(
            "ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST"
        ),
        "FASTDDS_BUILTIN_TRANSPORTS": os.environ.get("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA"),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
        "ROS_LOG_DIR": os.environ.get("ROS_LOG_DIR", tempfile.mkdtemp(prefix="clamp_roslog_")),
    }
    os.environ.update(env)  # this process joins the same graph
    return env


def add_demo_parser(sub) -> None:
    from . import sim_demo

    p = sub.add_parser(
        "demo",
        help="closed-loop episodes: the simulated ALOHA driven by the policy node over ROS 2",
    )
    sim_demo.add_arguments(p)
    p.add_argument(
        "--perception-only",
        action="store_true",
        help="instead: synthetic cameras -> perception node, pictures of the views",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=20.0,
        help="--perception-only: seconds to watch the output",
    )
    p.add_argument(
        "--record",
        type=int,
        default=0,
        metavar="N",
        help="instead: record N teleoperated demos (the expert at the leader arms) as rosbag2 "
        "MCAP bags in OUT/bags, through the recorder node's services",
    )
    p.add_argument(
        "--camera-rate",
        type=float,
        default=10.0,
        help="--record: sim camera rate (Hz; a divisor of the 50 Hz control rate)",
    )
    p.add_argument(
        "--real-time-factor",
        type=float,
        default=1.0,
        help="--record: sim seconds per wall second (below 1 gives a busy machine slack)",
    )
    p.set_defaults(func=_demo)


def _demo(args) -> int:
    from . import sim_demo

    if args.record:
        from .record_demo import main_record

        return main_record(args)
    return run_demo(args) if args.perception_only else sim_demo.run_demo(args)


def run_demo(args) -> int:
    env = demo_env()
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.node import Node
    from sensor_msgs.msg import Image

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = PerceptionConfig.from_yaml(share_dir() / "config/synthetic_demo.yaml", "perception")
    names = [v.name for v in config.views]
    say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    say(
        f"demo: starting {[s.name for s in GRAPHS['synthetic_demo']]} "
        f"(ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']}, logs in {out / 'logs'})"
    )

    with ProcessGroup(env, log_dir=out / "logs") as group:
        for spec in GRAPHS["synthetic_demo"]:
            group.start(spec)
        rclpy.init()
        node = Node("clamp_demo_monitor")
        latest: dict[str, Image] = {}
        arrivals: dict[str, list[float]] = {n: [] for n in names}
        latency_ms: list[float] = []
        diag: dict = {}

        def on_view(name, msg):
            now = node.get_clock().now().nanoseconds
            latest[name] = msg
            arrivals[name].append(time.monotonic())
            stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            if name == names[0]:
                latency_ms.append((now - stamp) * 1e-6)

        def on_diag(msg):
            for s in msg.status:
                if s.name.endswith("perception"):
                    diag.update({kv.key: kv.value for kv in s.values}, _message=s.message)

        for n in names:
            node.create_subscription(Image, f"views/{n}", lambda m, n=n: on_view(n, m), 5)
        node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
        try:
            t_start = time.monotonic()
            while time.monotonic() - t_start < 90 and len(latest) < len(names):
                rclpy.spin_once(node, timeout_sec=0.1)
                if any(p.poll() is not None for _, p in group.procs):
                    break
            if len(latest) < len(names):
                say("demo: no rendered views arrived; node logs follow")
                for name, _ in group.procs:
                    say(f"--- {name}\n" + _tail(out / "logs" / f"{name}.log"))
                return 1
            say(
                f"demo: first views after {time.monotonic() - t_start:.1f}s; "
                f"watching for {args.duration:.0f}s"
            )
            for n in names:
                arrivals[n].clear()
            latency_ms.clear()
            t0 = time.monotonic()
            _watch(rclpy, node, args.duration, quiet=args.json)
            elapsed = time.monotonic() - t0
        finally:
            node.destroy_node()
            rclpy.shutdown()

    images = []
    for n in names:
        m = latest[n]
        images.append(np.frombuffer(m.data, np.float32).reshape(m.height, m.width, 4))
    masks = [img[..., 0] > 0 for img in images]
    lo, hi = config.workspace_min, config.workspace_max
    for n, img, m in zip(names, images, masks):
        write_png(out / f"view_{n}.png", view_picture(img, m, np.float32(lo), np.float32(hi)))
    write_png(out / "views.png", tiled_picture(images, masks, names, lo, hi))
    summary = {
        "views_hz": {n: round(len(arrivals[n]) / elapsed, 2) for n in names},
        "stamp_to_receive_ms": _pcts(latency_ms),
        "perception": {
            k: v
            for k, v in diag.items()
            if "ms" in k or "dropped" in k or "rate_hz" in k or k in ("backend", "_message")
        },
        "coverage": {n: round(float(m.mean()), 3) for n, m in zip(names, masks)},
        "pictures": str(out / "views.png"),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        _print_summary(summary)
    return 0


def _watch(rclpy, node, duration: float, quiet: bool) -> None:
    try:
        from tqdm import tqdm
    except ImportError:  # progress is a nicety
        tqdm = None
    bar = (
        tqdm(total=int(duration), unit="s", disable=quiet or tqdm is None, leave=False)
        if tqdm
        else None
    )
    t0 = last = time.monotonic()
    while time.monotonic() - t0 < duration:
        rclpy.spin_once(node, timeout_sec=0.05)
        if bar is not None and time.monotonic() - last >= 1.0:
            bar.update(1)
            last += 1.0
    if bar is not None:
        bar.close()


def _pcts(samples: list[float]) -> dict:
    if not samples:
        return {}
    a = np.asarray(samples)
    return {
        "n": len(a),
        "p50": round(float(np.percentile(a, 50)), 1),
        "p95": round(float(np.percentile(a, 95)), 1),
        "max": round(float(a.max()), 1),
    }


def _print_summary(s: dict) -> None:
    print("rendered views (Hz):  " + "  ".join(f"{k} {v:.1f}" for k, v in s["views_hz"].items()))
    lat = s["stamp_to_receive_ms"]
    if lat:
        print(
            f"camera stamp -> views received: p50 {lat['p50']} ms, p95 {lat['p95']} ms "
            f"(n={lat['n']})"
        )
    p = s["perception"]
    print(
        "perception node:      "
        + ", ".join(f"{k} {v}" for k, v in p.items() if "_ms" in k or k == "backend")
    )
    rates = {k.split(" ")[0]: v for k, v in p.items() if k.endswith("rate_hz")}
    if rates:
        print("input rates (Hz):     " + ", ".join(f"{k} {v}" for k, v in rates.items()))
    drops = {k: v for k, v in p.items() if k.startswith("dropped")}
    if drops:
        print("dropped:              " + ", ".join(f"{k[8:]} {v}" for k, v in drops.items()))
    print("view coverage:        " + ", ".join(f"{k} {v:.0%}" for k, v in s["coverage"].items()))
    print(f"pictures:             {s['pictures']} (and view_<name>.png beside it)")


def _tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"
