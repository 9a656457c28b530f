"""`clamp play BAG`: publish a rosbag2 bag (MCAP or sqlite3) into the ROS 2 graph with its
original timing and its time on /clock, for machines without `ros2 bag play` (a pip install).
Messages go out as the bytes the bag holds: nothing is decoded or re-encoded on the way."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from .graph import share_dir
from .util import message_class


def add_play_parser(sub) -> None:
    p = sub.add_parser(
        "play",
        help="publish a rosbag2 bag into the ROS 2 graph with its timing and /clock",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("bag", help="bag directory (metadata.yaml + .mcap/.db3 files)")
    p.add_argument("--rate", type=float, default=1.0, help="bag seconds per wall second")
    p.add_argument("--loop", action="store_true", help="start again at the end (until Ctrl-C)")
    p.add_argument("--topics", nargs="+", metavar="TOPIC", help="only these topics")
    p.add_argument(
        "--no-clock", action="store_true", help="do not publish the bag's time on /clock"
    )
    p.add_argument(
        "--delay",
        type=float,
        default=1.0,
        help="wall seconds between creating the publishers and the first message (discovery)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=cmd_play)


def _qos(connection):
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    latched = connection.topic == "/tf_static" or "transient_local" in str(
        getattr(getattr(connection, "ext", None), "offered_qos_profiles", "")
    )
    if latched:  # late joiners still get what was sent (static transforms, metadata)
        return QoSProfile(
            depth=100,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
    return QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)


def cmd_play(args) -> int:
    import json

    from rosbags.highlevel import AnyReader
    from tqdm import tqdm

    bag = Path(args.bag)
    if not (args.rate > 0 and args.rate < 1e6):
        raise SystemExit(f"clamp play: --rate must be a positive number, got {args.rate}")
    if not bag.exists():
        raise SystemExit(f"clamp play: {bag}: no such bag")
    os.environ.setdefault(
        "FASTDDS_DEFAULT_PROFILES_FILE", str(share_dir() / "config" / "fastdds.xml")
    )
    try:
        reader = AnyReader([bag])
        reader.open()
    except Exception as e:  # rosbags raises its own error types for every unreadable bag
        raise SystemExit(f"clamp play: {bag}: cannot open the bag: {e}") from e

    import rclpy
    import rclpy.duration
    from rosgraph_msgs.msg import Clock

    conns = [c for c in reader.connections if not args.topics or c.topic in args.topics]
    if args.topics:
        missing = sorted(set(args.topics) - {c.topic for c in conns})
        if missing:
            raise SystemExit(f"clamp play: {bag} has no topic(s) {missing}")
    rclpy.init()
    node = rclpy.create_node("clamp_play")
    pubs, skipped = {}, {}
    for c in conns:
        cls = message_class(c.msgtype)
        if cls is None:
            skipped[c.topic] = c.msgtype
            continue
        key = (c.topic, c.msgtype)
        if key not in pubs:
            pubs[key] = node.create_publisher(cls, c.topic, _qos(c))
    for topic, msgtype in skipped.items():
        print(
            f"clamp play: {topic}: type {msgtype} is not installed here; not played",
            file=sys.stderr,
        )
    clock_pub = None if args.no_clock else node.create_publisher(Clock, "/clock", 10)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    time.sleep(max(args.delay, 0.0))

    played, passes, error, last_ns = 0, 0, None, None
    wanted = [c for c in conns if (c.topic, c.msgtype) in pubs]
    span_s = (reader.end_time - reader.start_time) * 1e-9 if wanted else 0.0
    t_wall0 = time.monotonic()
    try:
        while not stop["now"]:
            passes += 1
            wall0, bag0 = time.monotonic(), None
            bar = tqdm(
                total=round(span_s, 1), unit="s", desc="play", disable=args.json, leave=False
            )
            try:
                for c, t_ns, raw in reader.messages(connections=wanted):
                    if stop["now"]:
                        break
                    bag0 = t_ns if bag0 is None else bag0
                    delay = wall0 + (t_ns - bag0) * 1e-9 / args.rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    if clock_pub is not None and (last_ns is None or t_ns != last_ns):
                        msg = Clock()
                        msg.clock.sec, msg.clock.nanosec = divmod(int(t_ns), 1_000_000_000)
                        clock_pub.publish(msg)
                    pubs[(c.topic, c.msgtype)].publish(bytes(raw))
                    played, last_ns = played + 1, t_ns
                    bar.n = round((t_ns - bag0) * 1e-9, 1)
                    bar.refresh()
            except Exception as e:  # a truncated or corrupt bag: keep what was played
                error = f"the bag is unreadable after {played} messages: {e}"
                break
            finally:
                bar.close()
            if not args.loop:
                break
    except KeyboardInterrupt:
        pass
    finally:
        reader.close()
        for pub in pubs.values():  # reliable subscribers get the last messages before we go
            pub.wait_for_all_acked(rclpy.duration.Duration(seconds=2.0))
        node.destroy_node()
        rclpy.try_shutdown()
    summary = {
        "bag": str(bag),
        "messages": played,
        "topics": sorted({k[0] for k in pubs}),
        "skipped_topics": skipped,
        "passes": passes,
        "bag_seconds": round(span_s, 3),
        "wall_seconds": round(time.monotonic() - t_wall0, 3),
        "rate": args.rate,
        "error": error,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"played {played} messages on {len(summary['topics'])} topics "
            f"({span_s:.1f} s of bag time, {passes} pass(es)) in {summary['wall_seconds']:.1f} s"
        )
        if error:
            print(f"clamp play: {bag}: {error}", file=sys.stderr)
    return 1 if error else 0
