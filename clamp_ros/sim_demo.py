"""`clamp demo` (the default) and `clamp bench e2e`: the sim node and the policy node as separate
ROS 2 processes (``GRAPHS["sim_demo"]``, the node set of ``launch/sim_demo.launch.py``), run
closed-loop for N episodes; per-episode success from the sim's own detector, and the policy
node's latency figures from its diagnostics.

Between episodes the monitor disables the policy (it holds), resets the sim to the next seed and
enables the policy again (which drops its chunks and action history).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from .graph import GRAPHS, ProcessGroup


def add_arguments(p) -> None:
    p.add_argument("--task", default="drawer_open", help="sim task (clamp generate --list)")
    p.add_argument("--episodes", type=int, default=5, help="closed-loop episodes (seeds)")
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument(
        "--model",
        default="drawer_open",
        help="model directory or the name of a shipped model (models/NAME)",
    )
    p.add_argument(
        "--max-seconds",
        type=float,
        default=20.0,
        help="sim seconds per episode before it counts as a failure",
    )
    p.add_argument("--inference-steps", type=int, default=0, help="DDIM steps (0: the model's own)")
    p.add_argument("--camera-size", default="320x240", type=image_size, help="sim camera WxH")
    p.add_argument("--out", default="demo_out", help="folder for logs and the summary")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def image_size(text: str) -> str:
    """argparse type of WxH image sizes (16..4096 px each side); returns the text."""
    import argparse

    try:
        w, h = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH such as 320x240, got '{text}'") from None
    if not (16 <= w <= 4096 and 16 <= h <= 4096):
        raise argparse.ArgumentTypeError(f"{text}: each side must be 16..4096 px")
    return text


class GraphClient:
    """This process's hands on a running graph: the sim time on /clock, spinning, and service
    calls that wait for their answer."""

    call_timeout_s = 30.0
    """How long a service call may wait for the service and for its answer (s)."""

    def __init__(self, node):
        from rosgraph_msgs.msg import Clock

        self.node = node
        self.sim_ns = 0
        node.create_subscription(Clock, "/clock", self._on_clock, 10)

    def _on_clock(self, msg) -> None:
        self.sim_ns = msg.clock.sec * 1_000_000_000 + msg.clock.nanosec

    def spin(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.node.executor.spin_once(timeout_sec=0.02)

    def wait_sim(self, seconds: float, timeout_s: float = 30.0) -> None:
        """Spin until ``seconds`` of sim time passed (at most ``timeout_s`` of wall time)."""
        start, end = self.sim_ns, time.monotonic() + timeout_s
        while self.sim_ns - start < seconds * 1e9 and time.monotonic() < end:
            self.node.executor.spin_once(timeout_sec=0.02)

    def call(self, client, request, timeout_s: float | None = None, resend_after_s=None):
        """Call and wait for the answer; with ``resend_after_s`` (idempotent requests only) ask
        again whenever no answer came for that long: right after discovery a reply can be lost
        while the service's endpoints are still matching."""
        timeout_s = self.call_timeout_s if timeout_s is None else timeout_s
        if not client.wait_for_service(timeout_sec=timeout_s):
            raise RuntimeError(f"service {client.srv_name} not available")
        end = time.monotonic() + timeout_s
        while True:
            fut = client.call_async(request)
            limit = end if resend_after_s is None else min(end, time.monotonic() + resend_after_s)
            while not fut.done() and time.monotonic() < limit:
                self.node.executor.spin_once(timeout_sec=0.02)
            if fut.done():
                return fut.result()
            if time.monotonic() >= end:
                raise RuntimeError(f"service {client.srv_name} did not answer")


class Monitor(GraphClient):
    """This process's view of the demo graph."""

    def __init__(self, node):
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import JointState
        from std_srvs.srv import SetBool, Trigger
        from trajectory_msgs.msg import JointTrajectory

        super().__init__(node)
        self.commands = 0
        self.diag: dict[str, str] = {}
        self.status = ""
        self.joints: list[np.ndarray] = []
        node.create_subscription(
            JointTrajectory, "/left_arm_controller/joint_trajectory", self._on_traj, 10
        )
        node.create_subscription(
            JointState,
            "/follower_left/joint_states",
            lambda m: self.joints.append(np.array(m.position)),
            10,
        )
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        self.reset = node.create_client(Trigger, "/sim/reset")
        self.success = node.create_client(Trigger, "/sim/success")
        self.enable = node.create_client(SetBool, "/policy/enable")
        self._trigger = Trigger.Request
        self._setbool = SetBool.Request

    def _on_traj(self, msg):
        self.commands += 1

    def _on_diag(self, msg):
        for s in msg.status:
            if s.name.endswith(": policy"):
                self.diag = {kv.key: kv.value for kv in s.values}
                self.status = s.message
        del self.joints[:-10]

    def wait(self, predicate, timeout_s: float, procs) -> bool:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if predicate():
                return True
            if any(p.poll() is not None for _, p in procs):
                return False
            self.node.executor.spin_once(timeout_sec=0.05)
        return bool(predicate())

    def next_episode(self, settle_s: float = 0.2, timeout_s: float = 5.0) -> None:
        """Disable the policy, reset the sim, let ``settle_s`` of sim time pass, enable again.
        The pause matters: enabling makes the policy believe the next joint state afresh, and a
        state from before the reset still queued in its executor would be that one; the
        teleported arm would then look like a jump no arm can make and stay rejected."""
        self.call(self.enable, self._setbool(data=False))
        self.call(self.reset, self._trigger())
        self.wait_sim(settle_s, timeout_s)
        self.call(self.enable, self._setbool(data=True))


def model_color_params(model: str) -> dict:
    """``-p`` overrides that subscribe the policy node to colour on the cameras its model's RGB
    branch needs (a config may subscribe to depth only: colour costs the sim a render and the
    DDS a copy per camera); {} for a model without one, or one the node will report."""
    from clamp_core.policy.metadata import MetadataError, PolicyMetadata

    from .policy_node import resolve_model

    try:
        meta = PolicyMetadata.load(resolve_model(model))
    except (MetadataError, OSError):
        return {}
    return {f"perception.cameras.{c}.use_color": True for c in meta.rgb_cameras}


def run_closed_loop(
    args, extra_policy: dict | None = None, extra_sim: dict | None = None, say=print
) -> dict:
    """Start the graph, run the episodes, return the summary (also written to out/)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from .demo import demo_env

    env = demo_env()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    w, h = (int(x) for x in args.camera_size.lower().split("x"))
    sim_spec, policy_spec = GRAPHS["sim_demo"]
    sim_params = {
        "task": args.task,
        "seed": args.seed,
        "width": w,
        "height": h,
        **(extra_sim or {}),
    }
    policy_params = {
        "model": args.model,
        "inference_steps": args.inference_steps,
        **model_color_params(args.model),
        **(extra_policy or {}),
    }
    say(
        f"demo: sim '{args.task}' + policy '{args.model}' as ROS 2 processes "
        f"(ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']}, logs in {out / 'logs'})"
    )
    episodes = []
    with ProcessGroup(env, log_dir=out / "logs") as group:
        group.start(sim_spec, sim_params)
        group.start(policy_spec, policy_params)
        rclpy.init()
        node = rclpy.create_node("clamp_demo_monitor")
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        mon = Monitor(node)
        try:
            t0 = time.monotonic()
            if not mon.wait(lambda: mon.commands > 0, 180.0, group.procs):
                say("demo: the policy never commanded the arms; node logs follow")
                for name, _ in group.procs:
                    say(f"--- {name}\n" + _tail(out / "logs" / f"{name}.log"))
                raise SystemExit(1)
            say(f"demo: policy commanding after {time.monotonic() - t0:.1f}s")
            for k in range(args.episodes):
                seed = args.seed + k
                if k > 0:
                    mon.next_episode()
                start_ns = mon.sim_ns
                wall0 = time.monotonic()
                done = False

                def elapsed_s(start_ns=start_ns, wall0=wall0) -> float:  # sim, else wall time
                    if mon.sim_ns:
                        return (mon.sim_ns - start_ns) * 1e-9
                    return time.monotonic() - wall0

                while elapsed_s() < args.max_seconds:
                    mon.spin(0.5)
                    if any(p.poll() is not None for _, p in group.procs):
                        raise SystemExit(f"demo: a node exited; see the logs in {out}/logs")
                    if mon.call(mon.success, mon._trigger()).success:
                        done = True
                        break
                sim_s = elapsed_s()
                episodes.append(
                    {
                        "seed": seed,
                        "success": done,
                        "sim_s": round(sim_s, 2),
                        "wall_s": round(time.monotonic() - wall0, 2),
                    }
                )
                say(
                    f"  episode {k + 1}/{args.episodes} seed {seed}: "
                    f"{'SUCCESS' if done else 'failure'} after {sim_s:.1f} s (sim)"
                )
            mon.spin(1.5)  # one more diagnostics message
        finally:
            executor.shutdown()
            node.destroy_node()
            rclpy.shutdown()
    n_ok = sum(e["success"] for e in episodes)
    lat = {
        k: v
        for k, v in mon.diag.items()
        if k.endswith(("p50", "p95")) or "rate_hz" in k and not k.startswith("cam")
    }
    summary = {
        "task": args.task,
        "model": args.model,
        "episodes": episodes,
        "success_rate": n_ok / max(len(episodes), 1),
        "successes": n_ok,
        "policy": lat,
        "clipped": {k: v for k, v in mon.diag.items() if k.startswith("clipped")},
        "suppressed": {k: v for k, v in mon.diag.items() if k.startswith("suppressed")},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def run_demo(args) -> int:
    say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    summary = run_closed_loop(args, say=say)
    if args.json:
        print(json.dumps(summary))
        return 0
    print(
        f"success: {summary['successes']}/{len(summary['episodes'])} episodes of "
        f"'{summary['task']}' with model '{summary['model']}'"
    )
    p = summary["policy"]
    keys = ["stamp_to_command_ms", "sync_ms", "fuse_render_ms", "inference_ms", "publish_ms"]
    print(
        "policy node (sim time, ms): "
        + ", ".join(
            f"{k[:-3]} p50 {p.get(k + ' p50', '-')} / p95 {p.get(k + ' p95', '-')}" for k in keys
        )
    )
    print(f"summary: {Path(args.out) / 'summary.json'}")
    return 0


def _tail(path: Path, n: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def add_bench_e2e(bench_sub) -> None:
    p = bench_sub.add_parser(
        "e2e", help="camera stamp -> JointTrajectory latency in the live DDS graph (sim + policy)"
    )
    add_arguments(p)
    p.set_defaults(func=run_bench_e2e, episodes=2, max_seconds=15.0, out="bench_out")


SYNC_PARTS = ("transport", "wait", "tf")
"""The policy node's ``sync_<part>_ms`` figures that split the sync stage."""


def run_bench_e2e(args) -> int:
    """The demo graph on the ROS (wall) clock, so latencies are real milliseconds: the sim
    stamps its images with the ROS clock, the policy node measures each image's stamp to the
    JointTrajectory it built from it (and the split) and reports them in /diagnostics."""
    import os

    say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    summary = run_closed_loop(
        args,
        extra_policy={"use_sim_time": False},
        extra_sim={"use_sim_time": False, "publish_clock": False},
        say=say,
    )
    p = summary["policy"]

    def num(key):
        try:
            return float(p[key])
        except (KeyError, ValueError):
            return None

    split = {
        k: {"p50": num(f"{k}_ms p50"), "p95": num(f"{k}_ms p95")}
        for k in ("sync", "fuse_render", "inference", "publish")
    }
    for k in SYNC_PARTS:
        split["sync"][k] = {"p50": num(f"sync_{k}_ms p50"), "p95": num(f"sync_{k}_ms p95")}
    result = {
        "metric": (
            f"camera image stamp -> JointTrajectory built from it, policy node with perception "
            f"in-process, sim node ({args.camera_size} x 4 cameras) in another process, model "
            f"'{args.model}', last <= 500 inferences"
        ),
        "unit": "ms",
        "ours": num("stamp_to_command_ms p95"),
        "p50": num("stamp_to_command_ms p50"),
        "baseline": None,
        "baseline_name": None,
        "ratio": None,
        "split": split,
        "config": {
            "task": args.task,
            "episodes": len(summary["episodes"]),
            "successes": summary["successes"],
            "inference_rate_hz": num("inference rate_hz"),
            "inference_steps": args.inference_steps or "the model's",
            "executor": os.environ.get("CLAMP_EXECUTOR") or "events",
            "fastdds_profile": os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE"),
            "cpu_count": os.cpu_count(),
            "split_definition": (
                "sync: image stamp -> synchronised set ready in the node (transport + sync + "
                "tf wait), split into transport (stamp -> the set complete in the node: sim "
                "rendering after the stamp, DDS, callbacks) and wait (-> the worker starts it; "
                "tf: the part of wait spent waiting for the camera poses); "
                "fuse_render: fusion + 5 views; inference: ONNX encoders + DDIM; "
                "publish: chunk execution + safety filter + messages"
            ),
        },
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(result["metric"])
        print(f"  p50 {result['p50']} ms, p95 {result['ours']} ms")
        for k, v in split.items():
            print(f"  {k:12s} p50 {v['p50']} ms, p95 {v['p95']} ms")
            for sub in SYNC_PARTS:
                if sub in v:
                    w = v[sub]
                    print(f"    {sub:10s} p50 {w['p50']} ms, p95 {w['p95']} ms")
    return 0
