"""The `clamp` command: benchmarks and offline tools (ROS-free). ROS commands such as `clamp demo`
are added by ``clamp_ros.cli``, which is the installed entry point."""

from __future__ import annotations

import argparse
import json
import sys


def build_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    parser = argparse.ArgumentParser(prog="clamp", description=__doc__.split("\n")[0])
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


def cmd_data_check(args) -> int:
    from .data.check import check_dataset, format_report

    summary, problems = check_dataset(args.dir)
    if args.json:
        summary["problems"] = [p.as_dict() for p in problems]
        summary["ok"] = not problems
        print(json.dumps(summary))
    else:
        print(format_report(summary, problems))
    return 1 if problems else 0


def main(argv=None, parser=None) -> int:
    if parser is None:
        parser, _ = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
