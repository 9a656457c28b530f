"""Entry point of the `clamp` command: clamp_core's commands plus the ones that need ROS 2."""

from __future__ import annotations

import sys

from clamp_core import cli as core_cli


def build_parser():
    """The whole `clamp` command line: clamp_core's commands plus the ROS ones (their modules
    import ROS only when a ROS command runs)."""
    from .demo import add_demo_parser
    from .play import add_play_parser
    from .record_bench import add_bench_record
    from .sim_demo import add_bench_e2e
    from .soak import add_bench_soak

    parser, sub = core_cli.build_parser()
    add_demo_parser(sub)
    add_play_parser(sub)
    add_bench_e2e(parser.bench_sub)
    add_bench_soak(parser.bench_sub)
    add_bench_record(parser.bench_sub)
    return parser


def main(argv=None) -> int:
    return core_cli.main(argv, build_parser())


if __name__ == "__main__":
    sys.exit(main())
