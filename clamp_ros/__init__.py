"""clamp_ros: rclpy nodes, thin adapters around clamp_core (msg <-> numpy, parameters, QoS)."""
