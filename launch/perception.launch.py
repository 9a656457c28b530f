"""The perception node on real cameras (RealSense-style topics, tf from the robot).

    ros2 launch clamp_ros perception.launch.py [config:=/path/params.yaml] [namespace:=...]

Node set: clamp_ros.graph.GRAPHS["aloha_perception"]; `config` replaces its parameter file.
"""

from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from clamp_ros.graph import GRAPHS, share_dir
from launch import LaunchDescription


def generate_launch_description():
    (spec,) = GRAPHS["aloha_perception"]
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "config",
                default_value=str(share_dir() / spec.params[0]),
                description="ROS 2 parameters file (see config/aloha_bimanual.yaml)",
            ),
            DeclareLaunchArgument("namespace", default_value=""),
            DeclareLaunchArgument("use_sim_time", default_value="false"),
            Node(
                package="clamp_ros",
                executable=spec.executable,
                name=spec.name,
                namespace=LaunchConfiguration("namespace"),
                parameters=[
                    LaunchConfiguration("config"),
                    {"use_sim_time": LaunchConfiguration("use_sim_time")},
                ],
                output="screen",
            ),
        ]
    )
