"""`clamp bench record`: the recorder node's sustained throughput over DDS.

A publisher process (``python -m clamp_ros.record_bench``) sends N RGB-D cameras (rgb8 colour,
16UC1 depth, camera_info) at R Hz, follower and leader joint states and /tf at 50 Hz and the
static transforms once; the recorder node runs in another process and records one episode per
rate. Reported per rate: frames (colour images) written per second, MB/s, drops in the
recorder's queue and messages that never arrived; the baseline is the raw throughput of the same
MCAP writer on the same messages, in the same run. The publisher is also the test fixture of
test/ros/test_recorder_node.py (small images, a camera that can be stopped).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CAMERAS = ["cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist"]
ARMS = ["left", "right"]
JOINTS = ["waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "gripper"]


# ---------------------------------------------------------------------------------- publisher
def _stamp(buf: bytearray, ns: int) -> bytes:
    """Write ``ns`` into the header stamp of a serialised message (CDR: 4-byte encapsulation
    header, then the stamp's int32 sec and uint32 nanosec) and return the bytes."""
    struct.pack_into("<iI", buf, 4, ns // 10**9, ns % 10**9)
    return bytes(buf)


def publisher_main(argv=None) -> int:
    """Publish the bench / test streams until SIGINT; print per-topic counts as JSON at exit.
    Control: std_msgs/String on /record_bench/control: 'stop <camera>' silences a camera."""
    p = argparse.ArgumentParser(prog="python -m clamp_ros.record_bench")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--rate", type=float, default=15.0, help="camera rate (Hz)")
    p.add_argument("--joint-rate", type=float, default=50.0, help="joint states and /tf (Hz)")
    p.add_argument("--cameras", default=",".join(CAMERAS))
    p.add_argument("--no-leader", action="store_true", help="do not publish the leader arms")
    p.add_argument("--frames", type=int, default=4, help="distinct images per camera, cycled")
    args = p.parse_args(argv)

    import rclpy
    from geometry_msgs.msg import TransformStamped
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import CameraInfo, Image, JointState
    from std_msgs.msg import String
    from tf2_msgs.msg import TFMessage

    from .util import make_executor, spin

    rclpy.init()
    node = rclpy.create_node("record_bench_publisher")
    reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    cameras = [c for c in args.cameras.split(",") if c]
    w, h = args.width, args.height
    rng = np.random.default_rng(0)
    counts: dict[str, int] = {}
    streams = []  # (publisher, topic, [bytearray templates])
    for cam in cameras:
        color, depth = [], []
        for _ in range(args.frames):
            img = Image(height=h, width=w, encoding="rgb8", step=3 * w)
            img.header.frame_id = f"{cam}_color_optical_frame"
            img.data = rng.integers(0, 255, h * w * 3, dtype=np.uint8).tobytes()
            color.append(bytearray(serialize_message(img)))
            d = Image(height=h, width=w, encoding="16UC1", step=2 * w)
            d.header.frame_id = img.header.frame_id
            d.data = rng.integers(300, 2000, h * w, dtype=np.uint16).tobytes()
            depth.append(bytearray(serialize_message(d)))
        info = CameraInfo(height=h, width=w, distortion_model="plumb_bob")
        info.header.frame_id = f"{cam}_color_optical_frame"
        f = 0.5 * h / np.tan(np.radians(29.0))
        info.k = [f, 0.0, (w - 1) / 2, 0.0, f, (h - 1) / 2, 0.0, 0.0, 1.0]
        for suffix, msgs, cls in (
            ("color/image_raw", color, Image),
            ("depth/image_raw", depth, Image),
            ("color/camera_info", [bytearray(serialize_message(info))], CameraInfo),
        ):
            topic = f"/{cam}/{suffix}"
            streams.append((cam, node.create_publisher(cls, topic, reliable), topic, msgs))
    arms = [f"follower_{a}" for a in ARMS] + (
        [] if args.no_leader else [f"leader_{a}" for a in ARMS]
    )
    joint_pubs = []
    for arm in arms:
        js = JointState(name=list(JOINTS), position=[0.0] * 7, velocity=[0.0] * 7)
        topic = f"/{arm}/joint_states"
        joint_pubs.append(
            (
                node.create_publisher(JointState, topic, reliable),
                topic,
                bytearray(serialize_message(js)),
            )
        )
    tf_pub = node.create_publisher(TFMessage, "/tf", reliable)
    static_qos = QoSProfile(
        depth=10,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL,
    )
    static_pub = node.create_publisher(TFMessage, "/tf_static", static_qos)
    statics = []
    for cam in cameras:
        t = TransformStamped(child_frame_id=f"{cam}_color_optical_frame")
        t.header.frame_id = "world"
        t.header.stamp = node.get_clock().now().to_msg()
        t.transform.rotation.w = 1.0
        statics.append(t)
    static_pub.publish(TFMessage(transforms=statics))  # once: later subscribers get it latched
    counts["/tf_static"] = 1
    stopped: set[str] = set()

    def on_control(msg: String) -> None:
        cmd, _, arg = msg.data.partition(" ")
        if cmd == "stop":
            stopped.add(arg)
            node.get_logger().info(f"camera {arg} stopped")
        elif cmd == "mark":  # the bench's episode start / stop: counts so far
            print("mark: " + json.dumps(counts), flush=True)

    node.create_subscription(String, "/record_bench/control", on_control, 10)
    tick = {"cam": 0}

    def publish_cameras() -> None:
        now = node.get_clock().now().nanoseconds
        i = tick["cam"]
        tick["cam"] += 1
        for cam, pub, topic, msgs in streams:
            if cam in stopped:
                continue
            pub.publish(_stamp(msgs[i % len(msgs)], now))
            counts[topic] = counts.get(topic, 0) + 1

    def publish_joints() -> None:
        now = node.get_clock().now().nanoseconds
        for pub, topic, buf in joint_pubs:
            pub.publish(_stamp(buf, now))
            counts[topic] = counts.get(topic, 0) + 1
        t = TransformStamped(child_frame_id="left_wrist_link")
        t.header.frame_id = "world"
        t.header.stamp = node.get_clock().now().to_msg()
        t.transform.rotation.w = 1.0
        tf_pub.publish(TFMessage(transforms=[t]))
        counts["/tf"] = counts.get("/tf", 0) + 1

    node.create_timer(1.0 / args.rate, publish_cameras)
    node.create_timer(1.0 / args.joint_rate, publish_joints)
    node.get_logger().info(
        f"publishing {len(cameras)} cameras {w}x{h} at {args.rate:g} Hz, {arms} at "
        f"{args.joint_rate:g} Hz"
    )
    executor = make_executor()
    executor.add_node(node)
    try:
        spin(executor)
    except (KeyboardInterrupt, Exception):
        pass
    finally:
        print("published: " + json.dumps(counts), flush=True)
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


# ---------------------------------------------------------------------------------- bench
def add_bench_record(bench_sub) -> None:
    p = bench_sub.add_parser(
        "record",
        help="recorder node over DDS: frames and MB written per second, drops, vs raw MCAP writes",
    )
    p.add_argument("--rates", default="10,15,20,30", help="camera rates to sweep (Hz)")
    p.add_argument("--seconds", type=float, default=10.0, help="episode length per rate (s)")
    p.add_argument("--cameras", type=int, default=4, help="RGB-D cameras (1..4)")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--out", default=None, help="folder for bags and logs (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the bags")
    p.add_argument("--json", action="store_true", help="print one JSON object only")
    p.set_defaults(func=run_bench_record)


def baseline_throughput(out: Path, cameras: list[str], w: int, h: int, sets: int) -> dict:
    """The same MCAP writer (clamp_core's EpisodeBagWriter, same settings) fed directly with the
    publisher's messages, no DDS: the ceiling of the recorder."""
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import Image

    from clamp_core.data.recording import EpisodeBagWriter, RecorderConfig, TopicSpec

    rng = np.random.default_rng(1)
    msgs = []
    for cam in cameras:
        img = Image(height=h, width=w, encoding="rgb8", step=3 * w)
        img.data = rng.integers(0, 255, h * w * 3, dtype=np.uint8).tobytes()
        d = Image(height=h, width=w, encoding="16UC1", step=2 * w)
        d.data = rng.integers(300, 2000, h * w, dtype=np.uint16).tobytes()
        msgs.append((f"/{cam}/color/image_raw", bytes(serialize_message(img))))
        msgs.append((f"/{cam}/depth/image_raw", bytes(serialize_message(d))))
    specs = [TopicSpec(t, "sensor_msgs/msg/Image") for t, _ in msgs]
    config = RecorderConfig(output_dir=str(out), min_free_gb=0.5, queue_max_messages=64)
    writer = EpisodeBagWriter(config, "baseline", specs, {"task": "bench"})
    writer.start()
    t0 = time.perf_counter()
    nbytes = 0
    for _ in range(sets):
        for topic, data in msgs:
            while not writer.push(topic, time.time_ns(), data):
                time.sleep(0.001)  # the queue is full: wait for the writer (no drops here)
            nbytes += len(data)
    result = writer.stop(success=True)
    wall = time.perf_counter() - t0
    shutil.rmtree(result.path, ignore_errors=True)
    return {
        "frames_per_s": round(sets * len(cameras) / wall, 1),
        "frame_sets_per_s": round(sets / wall, 1),
        "mb_per_s": round(nbytes / 1e6 / wall, 1),
        "sets": sets,
    }


def run_bench_record(args) -> int:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from std_srvs.srv import SetBool, Trigger

    from clamp_core.data.recording import read_episode_metadata

    from .demo import demo_env
    from .graph import GRAPHS, ProcessGroup

    say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    if not rates or min(rates) <= 0 or not 1 <= args.cameras <= 4 or args.seconds <= 0:
        raise SystemExit("clamp bench record: --rates > 0, --cameras 1..4, --seconds > 0")
    cameras = CAMERAS[: args.cameras]
    out = Path(args.out or tempfile.mkdtemp(prefix="clamp_bench_record_"))
    out.mkdir(parents=True, exist_ok=True)
    bags = out / "bags"
    env = demo_env()
    say(f"bench record: baseline (same MCAP writer, no DDS) in {out}")
    baseline = baseline_throughput(out, cameras, args.width, args.height, sets=60)
    (spec,) = GRAPHS["aloha_record"]
    params = {
        "recorder.output_dir": str(bags),
        "recorder.min_free_gb": 1.0,
        "perception.camera_names": cameras,
        "recorder.camera_min_rate_hz": 0.0,
        "recorder.joint_states_min_rate_hz": 0.0,
        "task": "bench",
    }
    runs = []
    rclpy.init()
    node = rclpy.create_node("clamp_bench_record")
    executor = SingleThreadedExecutor()
    executor.add_node(node)

    def call(client, request, timeout_s=120.0):
        future = client.call_async(request)
        executor.spin_until_future_complete(future, timeout_sec=timeout_s)
        if not future.done():
            raise SystemExit(f"bench record: no answer from {client.srv_name}; see {out}/logs")
        return future.result()

    from std_msgs.msg import String

    control = node.create_publisher(String, "/record_bench/control", 10)
    start = node.create_client(Trigger, "/recorder/start")
    stop = node.create_client(SetBool, "/recorder/stop")
    try:
        with ProcessGroup(env, log_dir=out / "logs") as group:
            group.start(spec, params)
            if not start.wait_for_service(timeout_sec=120.0):
                raise SystemExit(f"bench record: the recorder did not come up; see {out}/logs")
            for rate in rates:
                log = open(out / "logs" / f"publisher_{rate:g}.log", "w")  # noqa: SIM115
                pub = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "clamp_ros.record_bench",
                        "--rate",
                        str(rate),
                        "--width",
                        str(args.width),
                        "--height",
                        str(args.height),
                        "--cameras",
                        ",".join(cameras),
                    ],
                    env={**os.environ, **env},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
                try:
                    answer = None
                    deadline = time.monotonic() + 60.0
                    while time.monotonic() < deadline:  # until every required topic is live
                        answer = call(start, Trigger.Request())
                        if answer.success:
                            break
                        executor.spin_once(timeout_sec=0.5)
                    if answer is None or not answer.success:
                        raise SystemExit(
                            f"bench record: start refused: {answer and answer.message}"
                        )
                    t0 = time.monotonic()
                    while control.get_subscription_count() == 0 and time.monotonic() - t0 < 30:
                        executor.spin_once(timeout_sec=0.05)
                    control.publish(String(data="mark"))
                    t_mark = time.monotonic()
                    while time.monotonic() - t_mark < args.seconds:
                        executor.spin_once(timeout_sec=0.1)
                    control.publish(String(data="mark"))
                    t_stop = time.monotonic()
                    answer = call(stop, SetBool.Request(data=True))
                    episode_s = time.monotonic() - t0
                finally:
                    pub.send_signal(2)
                    pub.wait(timeout=30)
                    log.close()
                bag = max(bags.iterdir(), key=lambda p: p.stat().st_mtime)
                meta = read_episode_metadata(bag)
                dur_s = max(t_stop - t0, 1e-6)  # start answered .. stop called
                msgs = meta["messages"]
                colour = sum(msgs.get(f"/{c}/color/image_raw", 0) for c in cameras)
                size = sum(f.stat().st_size for f in bag.iterdir())
                marks = [
                    json.loads(line.split(":", 1)[1])
                    for line in (out / "logs" / f"publisher_{rate:g}.log").read_text().splitlines()
                    if line.startswith("mark: ")
                ]
                sent = (
                    {t: marks[1].get(t, 0) - marks[0].get(t, 0) for t in marks[1]}
                    if len(marks) == 2
                    else {}
                )
                # messages published during the episode that are not in the bag (lost in
                # transport or never taken by the recorder; the window edges give a few)
                missing = {
                    t: sent[t] - msgs.get(t, 0)
                    for t in sorted(sent)
                    if "/image_raw" in t and sent[t] - msgs.get(t, 0) > 0
                }
                window_s = max(t_stop - t_mark, 1e-6)
                published_hz = (
                    sum(sent.get(f"/{c}/color/image_raw", 0) for c in cameras)
                    / len(cameras)
                    / window_s
                )
                run = {
                    "rate_hz": rate,
                    "episode_s": round(dur_s, 2),
                    "frames_per_s": round(colour / dur_s, 1),
                    "mb_per_s": round(size / 1e6 / dur_s, 1),
                    "drops": meta["drops"],
                    "dropped": sum(meta["drops"].values()),
                    "published_hz": round(published_hz, 1),
                    "missing": missing,
                    "missing_total": sum(missing.values()),
                    "ok": answer.success,
                    "message": answer.message,
                    "call_s": round(episode_s, 2),
                }
                runs.append(run)
                say(
                    f"  {rate:g} Hz (published {published_hz:.1f} Hz): {run['frames_per_s']} "
                    f"frames/s, {run['mb_per_s']} MB/s, {run['dropped']} dropped in the queue, "
                    f"{run['missing_total']} images missing"
                )
                if not args.keep:
                    shutil.rmtree(bag, ignore_errors=True)
            group.stop()
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown()
    # zero drops: none in the queue and every image published in the episode is in the bag
    # (up to 1 per topic for the window edges), at a rate the publisher really reached
    clean = [
        r["rate_hz"]
        for r in runs
        if r["ok"]
        and r["dropped"] == 0
        and max(r["missing"].values(), default=0) <= 1
        and r["published_hz"] >= 0.9 * r["rate_hz"]
    ]
    best = max(clean, default=None)
    result = {
        "metric": "highest camera rate the recorder writes with zero drops",
        "unit": "Hz",
        "ours": best,
        "baseline": baseline["frame_sets_per_s"],
        "baseline_name": "the same MCAP writer on the same messages, no DDS (frame sets/s)",
        "target": "zero drops at 15 Hz (4 x 640x480 RGB-D)",
        "runs": runs,
        "baseline_detail": baseline,
        "config": {
            "cameras": len(cameras),
            "width": args.width,
            "height": args.height,
            "seconds": args.seconds,
            "cpus": os.cpu_count(),
            "load_avg_1min": round(os.getloadavg()[0], 2),
        },
    }
    (out / "record.json").write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps(result))
    else:
        print(f"highest rate with zero drops: {best} Hz (baseline {baseline})")
        print(f"result: {out / 'record.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(publisher_main())
