"""The Interbotix/Trossen arm command messages (interbotix_xs_msgs) over DDS between processes.

In a pip venv ``make setup`` generates a minimal ``interbotix_xs_msgs`` (JointGroupCommand and
JointSingleCommand only, tools/msgs/interbotix_xs_msgs); on a real robot the package comes from
interbotix_ros_core. Both must agree on the wire: the type hashes below are those of the
Interbotix definitions (RIHS01 covers field names and types, not comments), so a node in this
venv can command an arm driven by the real xs_sdk.

A publisher process (its own interpreter, like a policy node) sends both messages on the topics
xs_sdk listens on, for both follower arms; this process subscribes and checks the values and the
type hash each endpoint announces.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from interbotix_xs_msgs.msg import JointGroupCommand, JointSingleCommand

from test.ros.conftest import (
    VENV,
    log_tail,
    rclpy_session,
    spin_until,
    start_process,
    stop_process,
    wait_for_log,
)

pytestmark = pytest.mark.ros

TYPE_HASHES = {
    "interbotix_xs_msgs/msg/JointGroupCommand": (
        "RIHS01_c43821d89bd439eeca1db1f2b48778277e465bde9daad1b0839077bcfbdb3e3b"
    ),
    "interbotix_xs_msgs/msg/JointSingleCommand": (
        "RIHS01_ed9575e22584aa1f25c9e13a546641d38066caa37454ced810f165d66d842e4d"
    ),
}
"""Computed by rosidl from the Interbotix definitions (the same with their comments or ours)."""

SIDES = ("left", "right")
KINDS = {"joint_group": JointGroupCommand, "joint_single": JointSingleCommand}
"""The topics xs_sdk subscribes to under each robot's namespace (commands/<kind>)."""
# exactly representable in float32, so they compare equal after the round trip
ARM_CMD = {
    "left": [0.0, -0.5, 0.25, 1.5, -1.25, 0.125],
    "right": [0.0625, 0.5, -0.25, -1.5, 1.25, -3.0],
}
GRIPPER_CMD = {"left": 0.75, "right": -0.375}
TIMEOUT_S = 120.0

PUBLISHER = """
import json
import sys

import rclpy
from rclpy.executors import ExternalShutdownException
from interbotix_xs_msgs.msg import JointGroupCommand, JointSingleCommand

arm, gripper = json.loads(sys.argv[1]), json.loads(sys.argv[2])
rclpy.init()
node = rclpy.create_node("interbotix_cmd_publisher")
pubs = {
    side: (
        node.create_publisher(JointGroupCommand, f"/follower_{side}/commands/joint_group", 10),
        node.create_publisher(JointSingleCommand, f"/follower_{side}/commands/joint_single", 10),
    )
    for side in arm
}

def tick():
    for side, (group, single) in pubs.items():
        group.publish(JointGroupCommand(name="arm", cmd=arm[side]))
        single.publish(JointSingleCommand(name="gripper", cmd=gripper[side]))

node.create_timer(0.05, tick)
print("publishing from", JointGroupCommand.__module__, flush=True)
try:
    rclpy.spin(node)
except (KeyboardInterrupt, ExternalShutdownException):
    pass
finally:
    node.destroy_node()
    rclpy.try_shutdown()
"""


def test_definitions_and_generated_hashes(monkeypatch):
    """The fields are the Interbotix ones, and rosidl's type descriptions carry the hashes."""
    assert JointGroupCommand.get_fields_and_field_types() == {
        "name": "string",
        "cmd": "sequence<float>",
    }
    assert JointSingleCommand.get_fields_and_field_types() == {"name": "string", "cmd": "float"}
    msg = JointGroupCommand(name="arm", cmd=[0.5, -1.0])
    assert msg.name == "arm" and list(msg.cmd) == [0.5, -1.0]
    assert JointSingleCommand(name="gripper", cmd=0.25).cmd == 0.25

    from ament_index_python.packages import get_package_share_directory

    if not os.environ.get("AMENT_PREFIX_PATH"):
        monkeypatch.setenv("AMENT_PREFIX_PATH", str(VENV))
    share = Path(get_package_share_directory("interbotix_xs_msgs"))
    for type_name, expected in TYPE_HASHES.items():
        path = share / "msg" / f"{type_name.rsplit('/', 1)[1]}.json"
        description = json.loads(path.read_text())
        hashes = {h["type_name"]: h["hash_string"] for h in description["type_hashes"]}
        assert hashes[type_name] == expected


@pytest.fixture
def publisher(ros_env, tmp_path):
    proc = start_process(
        [sys.executable, "-c", PUBLISHER, json.dumps(ARM_CMD), json.dumps(GRIPPER_CMD)],
        ros_env,
        tmp_path / "publisher.log",
    )
    try:
        wait_for_log(proc, r"publishing from interbotix_xs_msgs\.msg", TIMEOUT_S)
        yield proc
    finally:
        code = stop_process(proc)
        assert code == 0, f"publisher exited with {code}:\n{log_tail(proc)}"


def test_commands_cross_processes(publisher, ros_env):
    received: dict[str, object] = {}
    with rclpy_session(ros_env, "interbotix_cmd_subscriber") as node:
        topics = {}
        for side in SIDES:
            for kind, cls in KINDS.items():
                topic = f"/follower_{side}/commands/{kind}"
                topics[topic] = cls
                node.create_subscription(
                    cls, topic, lambda m, t=topic: received.__setitem__(t, m), 10
                )
        spin_until(
            node,
            lambda: len(received) == len(topics),
            TIMEOUT_S,
            "both commands for both arms",
        )
        # what each side of the connection announces: the publisher's C type support and ours
        # (a remote endpoint's node name arrives separately, on ros_discovery_info: wait for it)
        for topic in topics:
            pubs = spin_until(
                node,
                lambda t=topic: [
                    p
                    for p in node.get_publishers_info_by_topic(t)
                    if p.node_name == "interbotix_cmd_publisher"
                ],
                TIMEOUT_S,
                f"the publisher process's node on {topic}",
            )
            assert node.count_publishers(topic) == 1, topic
            for info in (*pubs, *node.get_subscriptions_info_by_topic(topic)):
                assert str(info.topic_type_hash) == TYPE_HASHES[info.topic_type], (topic, info)
        assert publisher.poll() is None, log_tail(publisher)

    for side in SIDES:
        group = received[f"/follower_{side}/commands/joint_group"]
        single = received[f"/follower_{side}/commands/joint_single"]
        assert isinstance(group, JointGroupCommand) and isinstance(single, JointSingleCommand)
        assert group.name == "arm"
        assert list(group.cmd) == ARM_CMD[side]
        assert single.name == "gripper"
        assert single.cmd == GRIPPER_CMD[side]
