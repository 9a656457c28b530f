"""The policy stack on a real ALOHA-style robot: the policy node (perception in-process) on the
real cameras, tf and follower joint states, commanding the arm controllers.

    ros2 launch clamp_ros aloha_bimanual.launch.py model:=/path/to/models/NAME \
        [config:=/path/params.yaml] [namespace:=...] [use_sim_time:=false] [enable:=false] \
        [autostart:=true]

Node set: clamp_ros.graph.GRAPHS["aloha_bimanual"]. Commands stay off until enabled: start with
enable:=false (the default) and switch them on with
`ros2 service call /policy/enable std_srvs/srv/SetBool "{data: true}"` when the arms are clear.
"""

from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from clamp_ros.graph import GRAPHS, share_dir
from launch import LaunchDescription


def generate_launch_description():
    (spec,) = GRAPHS["aloha_bimanual"]
    arg = LaunchConfiguration
    return LaunchDescription(
        [
            DeclareLaunchArgument("model", description="model directory (clamp export output)"),
            DeclareLaunchArgument(
                "config",
                default_value=str(share_dir() / spec.params[0]),
                description="ROS 2 parameters file (see config/aloha_bimanual.yaml)",
            ),
            DeclareLaunchArgument("namespace", default_value=""),
            DeclareLaunchArgument("use_sim_time", default_value="false"),
            DeclareLaunchArgument("enable", default_value="false",
                                  description="send commands from the start (else ~/enable)"),
            DeclareLaunchArgument("autostart", default_value="true",
                                  description="configure + activate the lifecycle node"),
            Node(
                package="clamp_ros",
                executable=spec.executable,
                name=spec.name,
                namespace=arg("namespace"),
                parameters=[
                    arg("config"),
                    {
                        "model": arg("model"),
                        "use_sim_time": ParameterValue(arg("use_sim_time"), value_type=bool),
                        "enable": ParameterValue(arg("enable"), value_type=bool),
                        "autostart": ParameterValue(arg("autostart"), value_type=bool),
                    },
                ],
                output="screen",
            ),
        ]
    )
