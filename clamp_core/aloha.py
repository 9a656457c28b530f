"""The bimanual ALOHA's joint layout: two vx300s arms (6 joints) with a normalised gripper each.

Pure Python and dependency-free, so that the episode format, the safety filter, the simulator
and the ROS nodes share one definition of the 14-D action order.
"""

SIDES = ("left", "right")
ARM_JOINTS = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate")
"""The six arm joints of one vx300s, base to wrist."""
ARM_JOINT_NAMES = (*ARM_JOINTS, "gripper")
"""One arm's seven action dimensions, as named in its JointState/JointTrajectory messages."""
ALOHA_JOINT_NAMES = [f"{side}_{joint}" for side in SIDES for joint in ARM_JOINT_NAMES]
"""The 14-D ALOHA order: left 6 joints, left gripper, right 6 joints, right gripper."""
NUM_JOINTS = len(ALOHA_JOINT_NAMES)
GRIPPER_INDICES = (6, 13)
"""Columns of qpos / action that hold the (normalised, 0 closed .. 1 open) gripper positions."""

NODE_EXECUTION = {"mode": "seam_guided", "replan_remaining_steps": 30}
"""The chunk execution settings of config/aloha_bimanual.yaml and config/sim_demo.yaml (a test
keeps them equal): `clamp eval sim` and `clamp eval replay` run the policy as the node does
unless told otherwise."""
