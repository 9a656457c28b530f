"""clamp_core: the ROS-free core of clamp_ros (geometry, perception, models, policy, data, sim).

Nothing in this package imports rclpy or ROS message types; ROS nodes live in ``clamp_ros``.
"""

__version__ = "0.1.0"
