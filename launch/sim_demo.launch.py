"""The closed-loop demo: the simulated ALOHA (MuJoCo sim node) driven by the policy node with the
shipped model, over ROS 2.

    ros2 launch clamp_ros sim_demo.launch.py [task:=drawer_open] [seed:=0] [model:=NAME|PATH]

Node set: clamp_ros.graph.GRAPHS["sim_demo"] (`clamp demo` starts the same executables with the
same parameter file where `ros2 launch` is not installed); simulated time from the sim's /clock.
"""

from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from clamp_ros.graph import GRAPHS, share_dir
from launch import LaunchDescription


def generate_launch_description():
    overrides = {
        "sim_node": {"task": LaunchConfiguration("task"), "seed": LaunchConfiguration("seed")},
        "policy_node": {"model": LaunchConfiguration("model")},
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
        for spec in GRAPHS["sim_demo"]
    ]
    return LaunchDescription(
        [
            DeclareLaunchArgument("task", default_value="drawer_open"),
            DeclareLaunchArgument("seed", default_value="0"),
            DeclareLaunchArgument("model", default_value="drawer_open"),
            DeclareLaunchArgument("namespace", default_value=""),
            *nodes,
        ]
    )
