"""`clamp play`: a bag written with rosbags, published into the graph by the command's own
process, received here over DDS: the same bytes, in order, with the bag's time on /clock and
the static transforms latched for late subscribers."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import JointState
from tf2_msgs.msg import TFMessage

from clamp_ros.conversions import stamp_to_ns
from test.ros.conftest import (
    child_env,
    log_tail,
    rclpy_session,
    spin_until,
    start_process,
    stop_process,
)

pytestmark = pytest.mark.ros

N = 100
DT_NS = 20_000_000
T0_NS = 1_700_000_000 * 1_000_000_000


def _write_bag(path):
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_JAZZY)
    Time = ts.types["builtin_interfaces/msg/Time"]
    Header = ts.types["std_msgs/msg/Header"]
    JS = ts.types["sensor_msgs/msg/JointState"]
    TFM = ts.types["tf2_msgs/msg/TFMessage"]
    TS = ts.types["geometry_msgs/msg/TransformStamped"]
    Tr = ts.types["geometry_msgs/msg/Transform"]
    V3 = ts.types["geometry_msgs/msg/Vector3"]
    Q = ts.types["geometry_msgs/msg/Quaternion"]

    def header(t_ns, frame=""):
        return Header(stamp=Time(sec=t_ns // 10**9, nanosec=t_ns % 10**9), frame_id=frame)

    positions = np.random.default_rng(0).uniform(-1, 1, (N, 7))
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        c_js = w.add_connection("/follower_left/joint_states", JS.__msgtype__, typestore=ts)
        c_tf = w.add_connection("/tf_static", TFM.__msgtype__, typestore=ts)
        static = TFM(
            transforms=[
                TS(
                    header=header(T0_NS, "world"),
                    child_frame_id="cam_high_color_optical_frame",
                    transform=Tr(
                        translation=V3(x=0.1, y=0.2, z=0.9), rotation=Q(x=0.0, y=0.0, z=0.0, w=1.0)
                    ),
                )
            ]
        )
        w.write(c_tf, T0_NS, ts.serialize_cdr(static, TFM.__msgtype__))
        for k in range(N):
            t = T0_NS + (k + 1) * DT_NS
            msg = JS(
                header=header(t),
                name=[
                    "waist",
                    "shoulder",
                    "elbow",
                    "forearm_roll",
                    "wrist_angle",
                    "wrist_rotate",
                    "gripper",
                ],
                position=positions[k],
                velocity=np.zeros(0),
                effort=np.zeros(0),
            )
            w.write(c_js, t, ts.serialize_cdr(msg, JS.__msgtype__))
    return positions


def test_play_publishes_the_bag_in_order_with_its_clock(ros_domain_id, tmp_path):
    positions = _write_bag(tmp_path / "bag")
    env = child_env(ros_domain_id, tmp_path / "ros_log", FASTDDS_BUILTIN_TRANSPORTS="LARGE_DATA")
    with rclpy_session(env, "play_checker") as node:
        got, clock, static = [], [], {}
        node.create_subscription(JointState, "/follower_left/joint_states", got.append, 200)
        node.create_subscription(Clock, "/clock", lambda m: clock.append(stamp_to_ns(m.clock)), 200)
        cmd = [
            sys.executable,
            "-m",
            "clamp_ros.cli",
            "play",
            str(tmp_path / "bag"),
            "--delay",
            "6",
            "--json",
        ]
        proc = start_process(cmd, env, tmp_path / "play.log")
        try:
            spin_until(node, lambda: len(got) >= 5, 120.0, "the first joint states")
            # subscribed only now: the static transform sent at the start is still delivered
            latched = QoSProfile(
                depth=10,
                reliability=ReliabilityPolicy.RELIABLE,
                durability=DurabilityPolicy.TRANSIENT_LOCAL,
            )
            node.create_subscription(
                TFMessage,
                "/tf_static",
                lambda m: static.update({t.child_frame_id: t for t in m.transforms}),
                latched,
            )
            spin_until(node, lambda: proc.poll() is not None, 120.0, "clamp play to finish")
            spin_until(
                node, lambda: "cam_high_color_optical_frame" in static, 30.0, "the latched tf"
            )
        finally:
            stop_process(proc)
        assert proc.returncode == 0, log_tail(tmp_path / "play.log")
    t = static["cam_high_color_optical_frame"].transform.translation
    assert (t.x, t.y, t.z) == (0.1, 0.2, 0.9)
    # every message arrived once, in order, with its content (a slow discovery costs the first)
    stamps = np.array([stamp_to_ns(m.header.stamp) for m in got])
    k0 = (stamps[0] - T0_NS) // DT_NS - 1
    assert k0 <= N // 2 and len(got) == N - k0
    np.testing.assert_array_equal(stamps, T0_NS + (np.arange(k0, N) + 1) * DT_NS)
    np.testing.assert_array_equal(np.array([m.position for m in got]), positions[k0:])
    # /clock carried the bag's time, never going back
    assert clock and np.all(np.diff(clock) > 0)
    assert set(clock) <= {T0_NS + k * DT_NS for k in range(N + 1)}
    assert clock[-1] == T0_NS + N * DT_NS
    summary = json.loads(log_tail(tmp_path / "play.log", 1))
    assert summary["messages"] == N + 1 and summary["error"] is None
    assert summary["topics"] == ["/follower_left/joint_states", "/tf_static"]


def test_play_refuses_a_missing_bag_topic_or_bad_rate(tmp_path):
    _write_bag(tmp_path / "bag")
    base = [sys.executable, "-m", "clamp_ros.cli", "play"]
    for extra, needle in [
        ([str(tmp_path / "nope")], "no such bag"),
        ([str(tmp_path / "bag"), "--topics", "/nope"], "has no topic(s) ['/nope']"),
        ([str(tmp_path / "bag"), "--rate", "0"], "--rate must be a positive number"),
    ]:
        r = subprocess.run(base + extra, capture_output=True, text=True, timeout=120)
        assert r.returncode != 0 and needle in r.stderr, r.stderr
