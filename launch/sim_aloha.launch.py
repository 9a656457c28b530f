"""The simulated ALOHA (MuJoCo) presented as a real robot, plus the perception node.

    ros2 launch clamp_ros sim_aloha.launch.py [task:=transfer_cube] [seed:=0] [namespace:=...]

Node set: clamp_ros.graph.GRAPHS["sim_aloha"] (shared with the tools that start it without
`ros2 launch`); both nodes use simulated time from the sim node's /clock.
"""

from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from clamp_ros.graph import GRAPHS, share_dir
from launch import LaunchDescription


def generate_launch_description():
    overrides = {
        "sim_node": {"task": LaunchConfiguration("task"), "seed": LaunchConfiguration("seed")},
    }
    nodes = [
        Node(
            package="clamp_ros",
            executable=spec.executable,
            name=spec.name,
            namespace=LaunchConfiguration("namespace"),
            parameters=[str(share_dir() / p) for p in spec.params]
            + [spec.overrides, overrides.get(spec.executable, {})],
            output="screen",
        )
        for spec in GRAPHS["sim_aloha"]
    ]
    return LaunchDescription(
        [
            DeclareLaunchArgument("task", default_value="transfer_cube"),
            DeclareLaunchArgument("seed", default_value="0"),
            DeclareLaunchArgument("namespace", default_value=""),
            *nodes,
        ]
    )
