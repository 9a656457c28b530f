"""Entry point of the `clamp` command: clamp_core's commands plus the ones that need ROS 2."""

from __future__ import annotations

import sys

from clamp_core import cli as core_cli


def main(argv=None) -> int:
    parser, sub = core_cli.build_parser()
    from .demo import add_demo_parser  # ROS itself is imported only when a ROS command runs

    add_demo_parser(sub)
    from .play import add_play_parser

    add_play_parser(sub)
    from .sim_demo import add_bench_e2e

    add_bench_e2e(parser.bench_sub)
    from .soak import add_bench_soak

    add_bench_soak(parser.bench_sub)
    from .record_bench import add_bench_record

    add_bench_record(parser.bench_sub)
    return core_cli.main(argv, parser)


if __name__ == "__main__":
    sys.exit(main())
