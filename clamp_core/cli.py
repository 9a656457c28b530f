"""The `clamp` command: benchmarks, data, training, export and evaluation tools.

These are ROS-free; ROS commands such as `clamp demo` are added by ``clamp_ros.cli``, which is
the installed entry point."""

from __future__ import annotations

import argparse
import json
import sys
import time


class UsageError(ValueError):
    """Bad input to a command: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse that answers a bad argument in one line (``clamp <command>: <what is wrong>``,
    exit status 2) instead of the usage block; ``-h`` still prints the help."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} -h)\n")


USER_ERRORS = (ValueError, OSError, LookupError)
"""What bad input raises, besides the project's own error types: answered in one line. Anything
else is a bug and keeps its traceback; CLAMP_DEBUG=1 shows tracebacks for everything."""


def build_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    parser = Parser(prog="clamp", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    bench = sub.add_parser("bench", help="performance benchmarks (figures, not pass/fail)")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    perc = bench_sub.add_parser(
        "perception", help="4 RGB-D cameras -> fused cloud -> 5 depth+XYZ views, vs Open3D"
    )
    perc.add_argument("--frames", type=int, default=20, help="frames to time (median reported)")
    perc.add_argument("--width", type=int, default=640)
    perc.add_argument("--height", type=int, default=480)
    perc.add_argument("--backend", default="auto", choices=["auto", "numba", "numpy"])
    perc.add_argument("--no-baseline", action="store_true", help="skip the Open3D equivalent")
    perc.add_argument("--json", action="store_true", help="print one JSON object only")
    perc.set_defaults(func=cmd_bench_perception)

    data = sub.add_parser("data", help="episode datasets (HDF5)")
    data_sub = data.add_subparsers(dest="data", required=True)
    check = data_sub.add_parser(
        "check", help="validate every episode file under DIR; exit 1 if any has a problem"
    )
    check.add_argument("dir", help="dataset directory (searched recursively) or one .hdf5 file")
    check.add_argument("--json", action="store_true", help="print one JSON object only")
    check.set_defaults(func=cmd_data_check)
    rec = data_sub.add_parser(
        "recover",
        help="rebuild a finalised bag from an interrupted recording (truncated MCAP)",
    )
    rec.add_argument("bag", help="the <name>.partial folder, a bag folder or its .mcap file")
    rec.add_argument("--out", default=None, help="bag folder to write (default: <name> beside it)")
    rec.add_argument("--json", action="store_true", help="print one JSON object only")
    rec.set_defaults(func=cmd_data_recover)
    from .data.from_bag import add_command as add_from_bag_command

    add_from_bag_command(data_sub)

    gen = sub.add_parser("generate", help="expert episodes from the MuJoCo tasks (HDF5)")
    which = gen.add_mutually_exclusive_group(required=True)
    which.add_argument("--task", help="task id (see `clamp generate --list`)")
    which.add_argument("--all-tasks", action="store_true", help="every task")
    which.add_argument("--list", action="store_true", help="list the task ids and exit")
    gen.add_argument("--episodes", type=int, default=10, help="episodes (seeds) per task")
    gen.add_argument("--seed", type=int, default=0, help="first seed; seeds are seed..seed+N-1")
    gen.add_argument("--out", default="data", help="output folder (<out>/<task>/episode_*.hdf5)")
    gen.add_argument("--workers", type=int, default=1, help="worker processes")
    gen.add_argument("--width", type=int, default=640)
    gen.add_argument("--height", type=int, default=480)
    gen.add_argument(
        "--rest-steps",
        type=int,
        default=0,
        help="control steps the arms rest at their start pose before the expert starts",
    )
    gen.add_argument(
        "--start-jitter",
        type=float,
        default=0.0,
        help="uniform +-rad on each arm joint's start pose (with --rest-steps)",
    )
    gen.add_argument("--json", action="store_true", help="print the summary as JSON")
    gen.set_defaults(func=cmd_generate)

    sim = bench_sub.add_parser("sim", help="simulation control steps per second per worker")
    sim.add_argument("--task", default="transfer_cube")
    sim.add_argument("--steps", type=int, default=100)
    sim.add_argument("--episodes", type=int, default=6, help="episodes per generation run")
    sim.add_argument("--json", action="store_true")
    sim.set_defaults(func=cmd_bench_sim)

    ev = sub.add_parser("eval", help="evaluate a policy")
    ev_sub = ev.add_subparsers(dest="eval", required=True)
    es = ev_sub.add_parser(
        "sim", help="closed loop with the MuJoCo task in one process (no ROS): the model alone"
    )
    es.add_argument("--model", required=True, help="model directory (clamp export output)")
    es.add_argument("--task", required=True, help="task id (clamp generate --list)")
    es.add_argument("--episodes", type=int, default=20, help="seeds --seed .. --seed+N-1")
    es.add_argument("--seed", type=int, default=0)
    es.add_argument(
        "--mode",
        choices=["receding_horizon", "temporal_ensembling", "async", "seam_guided"],
        default="seam_guided",
        help="chunk execution mode, as the policy node's execution.mode (default: the robot "
        "config's, seam_guided)",
    )
    es.add_argument(
        "--execute-steps", type=int, default=None, help="receding_horizon: actions run per chunk"
    )
    es.add_argument(
        "--replan-remaining-steps",
        type=int,
        default=None,
        help="async, seam_guided: infer when fewer steps than this are left of the chunk "
        "(default: the robot config's, 30)",
    )
    es.add_argument(
        "--blend-steps", type=int, default=None, help="async: crossfade steps into a new chunk"
    )
    es.add_argument(
        "--guidance-weight",
        type=float,
        default=None,
        help="seam_guided: how hard new chunks keep to the plan followed (0..1)",
    )
    es.add_argument(
        "--candidates",
        type=int,
        default=None,
        help="seam_guided: chunks sampled per inference; the most coherent one is kept",
    )
    es.add_argument(
        "--latency-steps",
        type=int,
        default=0,
        help="control steps from an observation to its chunk (the deployment's latency)",
    )
    es.add_argument(
        "--camera-every", type=int, default=1, help="control steps between camera frames"
    )
    es.add_argument("--no-safety", action="store_true", help="skip the policy node's safety filter")
    es.add_argument(
        "--settle-steps",
        type=int,
        default=5,
        help="control steps the arms rest before the first observation (default 5: as in "
        "clamp demo, one camera period after a reset; 0: the exact reset pose the demos "
        "start from)",
    )
    es.add_argument(
        "--inference-steps", type=int, default=None, help="DDIM steps (default: the model's)"
    )
    es.add_argument("--width", type=int, default=320)
    es.add_argument("--height", type=int, default=240)
    es.add_argument(
        "--plot",
        metavar="PNG",
        default=None,
        help="write a picture: each seed's task stage, and one episode's joints (planned, "
        "commanded, measured)",
    )
    es.add_argument(
        "--plot-seed",
        type=int,
        default=None,
        help="the episode to draw (default: the first failure)",
    )
    es.add_argument("--json", action="store_true")
    es.set_defaults(func=cmd_eval_sim)
    from .eval import replay

    replay.add_command(ev_sub)
    replay.add_bench(bench_sub)

    from .training.cli import add_commands  # torch is imported only when a command runs

    add_commands(sub, bench_sub)
    from .experiment.cli import add_commands as add_experiment_commands

    add_experiment_commands(sub)
    parser.bench_sub = bench_sub  # for the ROS commands clamp_ros adds (bench e2e)
    return parser, sub


def cmd_bench_perception(args) -> int:
    from .eval.bench_perception import bench_perception

    result = bench_perception(
        frames=args.frames,
        width=args.width,
        height=args.height,
        backend=args.backend,
        baseline=not args.no_baseline,
        progress=not args.json,
    )
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['metric']}")
    print(f"  ours     {result['ours']:8.2f} {result['unit']}  ({result['config'].get('backend')})")
    if result.get("baseline") is not None:
        print(f"  baseline {result['baseline']:8.2f} {result['unit']}  ({result['baseline_name']})")
        print(f"  ratio    {result['ratio']:8.1f}x  (baseline / ours; > 1 means we are faster)")
    print(json.dumps(result["config"], indent=2))
    return 0


def cmd_data_recover(args) -> int:
    from .data.recording import RecordingError, recover_bag

    try:
        r = recover_bag(args.bag, args.out, progress=not args.json)
    except RecordingError as e:
        raise SystemExit(f"clamp data recover: {e}") from None
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"{r['bag']}: {r['total_messages']} messages recovered from {r['source']}")
    for topic, n in r["messages"].items():
        print(f"  {topic}: {n}")
    if r["truncated"]:
        print(f"  the source ended mid-record ({r['truncated']}); the source is left as it was")
    return 0


def cmd_data_check(args) -> int:
    from pathlib import Path

    from .data.check import check_dataset, format_report

    if not Path(args.dir).exists():
        raise UsageError(f"{args.dir}: does not exist")
    summary, problems = check_dataset(args.dir)
    if args.json:
        summary["problems"] = [p.as_dict() for p in problems]
        summary["ok"] = not problems
        print(json.dumps(summary))
    else:
        print(format_report(summary, problems))
    return 1 if problems else 0


def cmd_generate(args) -> int:
    from .data.episode import EpisodeWriteError
    from .sim.generate import Job, check_output_dir, generate
    from .sim.tasks import TASKS, make_task

    if args.list:
        for name in sorted(TASKS):
            print(f"{name:24s} {TASKS[name].instruction}")
        return 0
    names = sorted(TASKS) if args.all_tasks else [args.task]
    for n in names:
        make_task(n)  # unknown names fail here, before any work
    if args.seed < 0 or args.episodes < 1 or args.workers < 1:
        print("clamp generate: --seed must be >= 0, --episodes and --workers >= 1", file=sys.stderr)
        return 2
    if args.rest_steps < 0 or args.start_jitter < 0 or (args.start_jitter and not args.rest_steps):
        print(
            "clamp generate: --rest-steps and --start-jitter must be >= 0, and --start-jitter "
            "needs --rest-steps (the arms move to the jittered pose while resting)",
            file=sys.stderr,
        )
        return 2
    try:
        check_output_dir(args.out)
    except EpisodeWriteError as e:
        print(f"clamp generate: {e}", file=sys.stderr)
        return 1
    jobs = [
        Job(
            n,
            s,
            args.out,
            args.width,
            args.height,
            rest_steps=args.rest_steps,
            start_jitter=args.start_jitter,
        )
        for n in names
        for s in range(args.seed, args.seed + args.episodes)
    ]
    t0 = time.perf_counter()
    summary: dict = {}
    errors = []
    for r in generate(jobs, args.workers, progress=not args.json):
        row = summary.setdefault(r.task, {"written": 0, "skipped": 0, "failed": 0, "error": 0})
        row[r.status] += 1
        if r.status == "error":
            errors.append(f"{r.task} seed {r.seed}: {r.message}")
    elapsed = time.perf_counter() - t0
    out = {
        "tasks": summary,
        "seconds": round(elapsed, 1),
        "workers": args.workers,
        "out": args.out,
        "errors": errors,
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{'task':24s} {'written':>8s} {'skipped':>8s} {'failed':>7s} {'error':>6s}")
        for n, row in summary.items():
            print(
                f"{n:24s} {row['written']:8d} {row['skipped']:8d} {row['failed']:7d} "
                f"{row['error']:6d}"
            )
        print(f"{elapsed:.1f} s with {args.workers} worker(s); episodes in {args.out}/<task>/")
        for e in errors:
            print(f"error: {e}", file=sys.stderr)
    return 1 if errors else 0


def cmd_bench_sim(args) -> int:
    from .sim.bench import bench_sim

    result = bench_sim(args.task, args.steps, args.episodes, progress=not args.json)
    if args.json:
        print(json.dumps(result))
        return 0
    print(result["metric"])
    print(f"  ours {result['ours']:.1f} {result['unit']}")
    print(json.dumps(result["config"], indent=2))
    return 0


def cmd_eval_sim(args) -> int:
    from .aloha import NODE_EXECUTION
    from .eval.sim_eval import evaluate
    from .policy.execution import ExecutionConfig

    fields = {
        "execute_steps": args.execute_steps,
        "replan_remaining_steps": args.replan_remaining_steps
        if args.replan_remaining_steps is not None
        else NODE_EXECUTION["replan_remaining_steps"],
        "blend_steps": args.blend_steps,
        "guidance_weight": args.guidance_weight,
        "candidates": args.candidates,
    }
    try:
        execution = ExecutionConfig(
            mode=args.mode, **{k: v for k, v in fields.items() if v is not None}
        )
    except ValueError as e:
        print(f"clamp eval sim: {e}", file=sys.stderr)
        return 2
    if args.plot_seed is not None and not (args.seed <= args.plot_seed < args.seed + args.episodes):
        print(f"clamp eval sim: --plot-seed {args.plot_seed} is not evaluated", file=sys.stderr)
        return 2
    r = evaluate(
        args.model,
        args.task,
        range(args.seed, args.seed + args.episodes),
        args.width,
        args.height,
        execution,
        progress=not args.json,
        inference_steps=args.inference_steps,
        safety=not args.no_safety,
        latency_steps=args.latency_steps,
        camera_every=args.camera_every,
        settle_steps=args.settle_steps,
        trace=args.plot is not None,
    )
    if args.plot is not None:
        from .eval.plots import plot_eval

        r["plot"] = str(plot_eval(r, args.plot, seed=args.plot_seed))
        for e in r["episodes"]:
            e.pop("trace", None)
    if args.json:
        print(json.dumps(r))
        return 0
    for e in r["episodes"]:
        print(
            f"  seed {e['seed']}: {'SUCCESS' if e['success'] else 'failure'} "
            f"({e['steps']} steps, task progress reached {e['max_progress']})"
        )
    print(f"success: {r['successes']}/{len(r['episodes'])} ({r['success_rate']:.0%})")
    if "plot" in r:
        print(f"plot: {r['plot']}")
    return 0


def main(argv=None, parser=None) -> int:
    if parser is None:
        parser, _ = build_parser()
    args = parser.parse_args(argv)
    import os

    if os.environ.get("CLAMP_DEBUG"):
        return int(args.func(args) or 0)
    prog = getattr(args, "prog", None) or "clamp " + " ".join(
        str(getattr(args, k))
        for k in ("command", "bench", "data", "eval", "experiment")
        if isinstance(getattr(args, k, None), str)
    )
    try:
        return int(args.func(args) or 0)
    except SystemExit as e:
        if isinstance(e.code, str):  # a command's own one-line refusal
            msg = e.code if e.code.startswith("clamp") else f"{prog}: {e.code}"
            print(msg, file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        ours = type(e).__module__.startswith(("clamp_core", "clamp_ros"))
        if not (ours or isinstance(e, USER_ERRORS)):
            raise  # a bug: keep the traceback
        text = " ".join(str(e).split()) or type(e).__name__
        print(f"{prog}: {text[:2000]}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
