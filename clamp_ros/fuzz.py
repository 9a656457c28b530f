"""A hostile publisher: malformed and adversarial messages of every kind the nodes take in.

Runs as its own process next to a running graph (`python -m clamp_ros.fuzz`, used by the fuzz
test and `clamp bench soak --hostile`) and publishes, in a seeded random order, what a broken
driver or an attacker on the network could send on the robot's own topics: joint states with
repeated, missing or huge names and finite but wrong positions, malformed stamps, tf from the
far future or with invented and overlong frame ids, camera_info that no camera has, depth that
is all out of range, images whose sizes, encodings or data disagree. Every message it sends
carries ``header.frame_id`` or a joint name that marks it (``FUZZ_MARK``) where the message has
one and it does not defeat the attack, so observers can tell them from the real ones.

Stamps follow this node's ROS clock (``use_sim_time`` to follow a simulation), so that what
it sends is recent enough to be taken seriously.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

FUZZ_MARK = "fuzz"
"""header.frame_id of every hostile JointState (the nodes ignore it; observers filter on it)."""

ARM_JOINTS = [
    "waist",
    "shoulder",
    "elbow",
    "forearm_roll",
    "wrist_angle",
    "wrist_rotate",
    "gripper",
]
REST = [0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.5]


def _joint_state_attacks(rng: np.random.Generator):
    """(name, names, positions, nanosec override or None) of each joint state attack."""
    q = list(REST)
    return [
        ("repeated_name", ["waist", *ARM_JOINTS], [2.5, *q], None),
        ("huge_position", ARM_JOINTS, [1e3, *q[1:]], None),
        ("just_past_limit", ARM_JOINTS, [3.3, *q[1:]], None),
        ("jump", ARM_JOINTS, [q[0] + float(rng.uniform(1.0, 2.8)), *q[1:]], None),
        ("nan", ARM_JOINTS, [float("nan"), *q[1:]], None),
        ("missing_joint", ARM_JOINTS[1:], q[1:], None),
        ("bad_nanosec", ARM_JOINTS, q, 4_000_000_000),
        ("many_names", [f"j{i}" for i in range(1000)] + ARM_JOINTS, [0.0] * 1000 + q, None),
        ("long_name", ["x" * 100_000, *ARM_JOINTS], [0.0, *q], None),
        ("fewer_positions", ARM_JOINTS, q[:3], None),
    ]


class Fuzzer:
    """Builds and publishes one hostile message per :meth:`tick`. ``node``: an rclpy node;
    ``cameras``: camera names (topics ``<cam>/depth/image_raw``, ``<cam>/color/image_raw``,
    ``<cam>/color/camera_info``); ``moving_link``: a tf child frame the graph updates."""

    def __init__(self, node, cameras, seed: int = 0, moving_link: str = "vx300s_left_gripper_link"):
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image, JointState
        from tf2_msgs.msg import TFMessage

        self.node = node
        self.rng = np.random.default_rng(seed)
        self.cameras = list(cameras)
        self.moving_link = moving_link
        self.counts: dict[str, int] = {}
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(
            depth=10,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
        self.js = {
            arm: node.create_publisher(JointState, f"/follower_{arm}/joint_states", reliable)
            for arm in ("left", "right")
        }
        self.tf = node.create_publisher(TFMessage, "/tf", reliable)
        self.tf_static = node.create_publisher(TFMessage, "/tf_static", latched)
        self.depth = {c: node.create_publisher(Image, f"{c}/depth/image_raw", 5) for c in cameras}
        self.color = {c: node.create_publisher(Image, f"{c}/color/image_raw", 5) for c in cameras}
        self.info = {
            c: node.create_publisher(CameraInfo, f"{c}/color/camera_info", 5) for c in cameras
        }
        self._kinds = [self._joint_state, self._tf, self._camera_info, self._depth, self._color]
        self._frame_serial = 0

    # ------------------------------------------------------------------ helpers
    def _stamp(self, offset_s: float = 0.0):
        from builtin_interfaces.msg import Time

        ns = self.node.get_clock().now().nanoseconds + int(offset_s * 1e9)
        ns = max(ns, 0)
        return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))

    def _count(self, kind: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1

    # ------------------------------------------------------------------ attacks
    def _joint_state(self) -> None:
        from sensor_msgs.msg import JointState

        attacks = _joint_state_attacks(self.rng)
        name, names, positions, nanosec = attacks[int(self.rng.integers(len(attacks)))]
        msg = JointState(name=list(names), position=[float(p) for p in positions])
        msg.header.stamp = self._stamp()
        msg.header.frame_id = FUZZ_MARK
        if nanosec is not None:
            msg.header.stamp.nanosec = nanosec
        arm = "left" if self.rng.random() < 0.5 else "right"
        self.js[arm].publish(msg)
        self._count(f"joint_states/{name}")

    def _tf(self) -> None:
        from geometry_msgs.msg import TransformStamped
        from tf2_msgs.msg import TFMessage

        t = TransformStamped()
        t.header.frame_id = "world"
        t.child_frame_id = self.moving_link
        t.transform.rotation.w = 1.0
        t.transform.translation.x = float(self.rng.uniform(-1, 1))
        kind = self.rng.choice(
            ["far_future", "bad_nanosec", "new_frame", "long_frame", "loop", "nan", "far_past"]
        )
        t.header.stamp = self._stamp()
        if kind == "far_future":
            t.header.stamp.sec = 2147483647
        elif kind == "bad_nanosec":
            t.header.stamp.nanosec = 3_000_000_000
        elif kind == "new_frame":
            self._frame_serial += 1
            t.child_frame_id = f"fuzz_frame_{self._frame_serial}"
        elif kind == "long_frame":
            t.child_frame_id = "f" * 100_000
        elif kind == "loop":
            t.header.frame_id, t.child_frame_id = self.moving_link, "world"
        elif kind == "nan":
            t.transform.translation.x = float("nan")
        elif kind == "far_past":
            t.header.stamp.sec = max(t.header.stamp.sec - 100_000, 1)
        static = kind == "new_frame" and self.rng.random() < 0.5
        (self.tf_static if static else self.tf).publish(TFMessage(transforms=[t]))
        self._count(f"tf/{kind}")

    def _camera_info(self) -> None:
        from sensor_msgs.msg import CameraInfo

        cam = self.cameras[int(self.rng.integers(len(self.cameras)))]
        msg = CameraInfo(width=320, height=240)
        msg.header.stamp = self._stamp()
        msg.header.frame_id = f"{cam}_color_optical_frame"
        msg.k = [200.0, 0.0, 159.5, 0.0, 200.0, 119.5, 0.0, 0.0, 1.0]
        msg.distortion_model = "plumb_bob"
        kind = self.rng.choice(["distortion_length", "zero_focal", "nan_k", "huge_size"])
        if kind == "distortion_length":
            msg.d = [0.1, 0.0, 0.0]
        elif kind == "zero_focal":
            msg.k[0] = 0.0
        elif kind == "nan_k":
            msg.k[2] = float("nan")
        else:
            msg.width, msg.height = 100_000, 100_000
        self.info[cam].publish(msg)
        self._count(f"camera_info/{kind}")

    def _depth(self) -> None:
        from sensor_msgs.msg import Image

        cam = self.cameras[int(self.rng.integers(len(self.cameras)))]
        w, h = 320, 240
        kind = self.rng.choice(
            [
                "all_max_mm",
                "all_huge_m",
                "denormal_m",
                "wrong_size",
                "short_data",
                "bad_encoding",
                "bad_nanosec",
                "long_frame_id",
                "unknown_frame_id",
            ]
        )
        msg = Image(height=h, width=w, encoding="16UC1", is_bigendian=0, step=2 * w)
        msg.header.stamp = self._stamp()
        msg.header.frame_id = f"{cam}_color_optical_frame"
        data = np.full((h, w), 1000, np.uint16)
        if kind == "all_max_mm":
            data[:] = 65535
        elif kind in ("all_huge_m", "denormal_m"):
            msg.encoding, msg.step = "32FC1", 4 * w
            value = 1e30 if kind == "all_huge_m" else 1e-40
            data = np.full((h, w), value, np.float32)
        elif kind == "wrong_size":
            msg.width, msg.step = w + 17, 2 * (w + 17)
            data = np.full((h, w + 17), 1000, np.uint16)
        elif kind == "bad_encoding":
            msg.encoding = "bgr8; DROP TABLE"
        elif kind == "bad_nanosec":
            msg.header.stamp.nanosec = 2_000_000_000
        elif kind == "long_frame_id":
            msg.header.frame_id = "g" * 100_000
        elif kind == "unknown_frame_id":
            self._frame_serial += 1
            msg.header.frame_id = f"fuzz_unknown_{self._frame_serial}"
        raw = data.tobytes()
        msg.data = raw[: len(raw) // 3] if kind == "short_data" else raw
        self.depth[cam].publish(msg)
        self._count(f"depth/{kind}")

    def _color(self) -> None:
        from sensor_msgs.msg import Image

        cam = self.cameras[int(self.rng.integers(len(self.cameras)))]
        kind = self.rng.choice(["short_data", "zero_size", "bad_step"])
        w, h = 320, 240
        msg = Image(height=h, width=w, encoding="rgb8", is_bigendian=0, step=3 * w)
        msg.header.stamp = self._stamp()
        msg.header.frame_id = f"{cam}_color_optical_frame"
        data = bytes(3 * w * h)
        if kind == "short_data":
            data = data[:100]
        elif kind == "zero_size":
            msg.width = msg.height = 0
        else:
            msg.step = 1
        msg.data = data
        self.color[cam].publish(msg)
        self._count(f"color/{kind}")

    def tick(self) -> None:
        """Publish one hostile message of a random kind."""
        self._kinds[int(self.rng.integers(len(self._kinds)))]()


def run(seconds: float, rate_hz: float, cameras, seed: int, use_sim_time: bool) -> dict:
    """Publish hostile messages at ``rate_hz`` for ``seconds`` (wall clock); returns the counts
    per attack."""
    import rclpy
    from rclpy.parameter import Parameter

    rclpy.init()
    node = rclpy.create_node(
        "clamp_fuzz", parameter_overrides=[Parameter("use_sim_time", value=use_sim_time)]
    )
    fuzz = Fuzzer(node, cameras, seed)
    try:
        start = time.monotonic()
        end, period, sent = start + seconds, 1.0 / rate_hz, 0
        while time.monotonic() < end and rclpy.ok():
            fuzz.tick()
            sent += 1
            # on schedule, whatever spinning returned early for (e.g. /clock messages)
            while rclpy.ok() and (wait := start + sent * period - time.monotonic()) > 0:
                rclpy.spin_once(node, timeout_sec=wait)
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return fuzz.counts


def main(argv=None) -> int:
    import json

    p = argparse.ArgumentParser(
        prog="python -m clamp_ros.fuzz",
        description="publish malformed and adversarial messages at a running graph",
    )
    p.add_argument("--seconds", type=float, default=30.0, help="how long to publish (wall s)")
    p.add_argument("--rate", type=float, default=20.0, help="hostile messages per second")
    p.add_argument(
        "--cameras",
        default="cam_high,cam_low,cam_left_wrist,cam_right_wrist",
        help="comma-separated camera names (topic prefixes)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--use-sim-time", action="store_true", help="stamp with the /clock time")
    args = p.parse_args(argv)
    if not args.seconds > 0 or not args.rate > 0:
        p.error("--seconds and --rate: need numbers > 0")
    counts = run(args.seconds, args.rate, args.cameras.split(","), args.seed, args.use_sim_time)
    print(json.dumps({"sent": sum(counts.values()), "by_kind": counts}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
