"""The demo recorder on a real ALOHA-style robot: one rosbag2 bag (MCAP) per teleoperated
episode, from the real cameras, tf, follower and leader arms.

    ros2 launch clamp_ros record.launch.py [config:=/path/params.yaml] [namespace:=...] \
        [output_dir:=~/clamp_bags] [use_sim_time:=false]

Node set: clamp_ros.graph.GRAPHS["aloha_record"]. Episodes are started and stopped with
`ros2 service call /recorder/start std_srvs/srv/Trigger` and
`ros2 service call /recorder/stop std_srvs/srv/SetBool "{data: true}"` (docs/deployment.md).
"""

from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from clamp_ros.graph import GRAPHS, share_dir
from launch import LaunchDescription


def generate_launch_description():
    (spec,) = GRAPHS["aloha_record"]
    arg = LaunchConfiguration
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "config",
                default_value=str(share_dir() / spec.params[0]),
                description="ROS 2 parameters file (see config/aloha_bimanual.yaml)",
            ),
            DeclareLaunchArgument("namespace", default_value=""),
            DeclareLaunchArgument("use_sim_time", default_value="false"),
            DeclareLaunchArgument(
                "output_dir", default_value="~/clamp_bags", description="folder of the bags"
            ),
            Node(
                package="clamp_ros",
                executable=spec.executable,
                name=spec.name,
                namespace=arg("namespace"),
                parameters=[
                    arg("config"),
                    {
                        "use_sim_time": ParameterValue(arg("use_sim_time"), value_type=bool),
                        "recorder.output_dir": arg("output_dir"),
                    },
                ],
                output="screen",
            ),
        ]
    )
