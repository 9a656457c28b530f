"""Synthetic RGB-D cameras + the perception node (no robot needed).

    ros2 launch clamp_ros synthetic_demo.launch.py [namespace:=...] [use_sim_time:=false]

The node set comes from clamp_ros.graph.GRAPHS["synthetic_demo"], shared with `clamp demo`.
"""

from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from clamp_ros.graph import GRAPHS, share_dir
from launch import LaunchDescription


def generate_launch_description():
    namespace = LaunchConfiguration("namespace")
    use_sim_time = LaunchConfiguration("use_sim_time")
    nodes = [
        Node(
            package="clamp_ros",
            executable=spec.executable,
            name=spec.name,
            namespace=namespace,
            parameters=[str(share_dir() / p) for p in spec.params]
            + [spec.overrides, {"use_sim_time": use_sim_time}],
            output="screen",
        )
        for spec in GRAPHS["synthetic_demo"]
    ]
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "namespace", default_value="", description="Namespace of all nodes"
            ),
            DeclareLaunchArgument("use_sim_time", default_value="false"),
            *nodes,
        ]
    )
