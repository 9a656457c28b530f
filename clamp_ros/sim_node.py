"""Simulation node: one ``clamp_core.sim`` task in MuJoCo, presented as a real ALOHA would be.

Physics, rendering and the task live in ``clamp_core.sim``; this node only schedules steps,
executes joint trajectories and converts to and from messages.

Parameters (read-only): task, seed, width, height, camera_rate_hz, control_rate_hz,
real_time_factor, publish_clock, leader_source, follow_leader, leader_gripper_range (see
``ros2 param describe sim <name>``).

Teleoperation (ALOHA's: the follower tracks the leader arms): with ``follow_leader`` the follower
arms track ``leader_{left,right}/joint_states`` (joint for joint, the leader gripper's angle
mapped linearly onto the normalised follower gripper by ``leader_gripper_range``) and
trajectories are ignored. With ``leader_source: expert`` this node also plays the leader arms:
the task's scripted expert, started by ``~/start_demo``, publishes them as an operator's leader
arms would, and they reach the follower only over those topics.

Time: with ``publish_clock`` (default) the node publishes the simulation time on ``/clock`` and
stamps everything with it (it never jumps back, not even on ``~/reset``); run the other nodes
with ``use_sim_time:=true``. Without it, stamps follow the node's ROS clock, one control period
(divided by the real-time factor) apart.

Publishes
  follower_{left,right}/joint_states   sensor_msgs/JointState at the control rate: waist shoulder
                                       elbow forearm_roll wrist_angle wrist_rotate (rad) and
                                       gripper (normalised, 0 closed .. 1 open)
  <cam>/color/image_raw (rgb8), <cam>/depth/image_raw (16UC1 mm, 0 = no return),
  <cam>/color/camera_info, <cam>/depth/camera_info   per camera, at the camera rate; frame_id
                                       ``<cam>_color_optical_frame`` (depth is registered)
  /tf        every arm body ``vx300s_{side}/<link>`` as frame ``vx300s_{side}_<link>`` ('/' ->
             '_'), child of ``world``, and the wrist cameras' optical frames (child of
             ``world``), every control step; a camera step's tf goes out before its images
  /tf_static the fixed cameras' optical frames (child of ``world``)
  /clock     rosgraph_msgs/Clock, every control step (when publish_clock)
  leader_{left,right}/joint_states   (leader_source expert) the leader arms, every control step:
             the six arm joints (rad) and the leader gripper's angle (rad)
Subscribes
  {left,right}_arm_controller/joint_trajectory   trajectory_msgs/JointTrajectory, executed like
             ros2_control's JointTrajectoryController with linear interpolation (velocities and
             accelerations are ignored): joint names from the seven above (all six arm joints
             required, the gripper optional), start at header.stamp (zero: now), the arm moves
             from its current command to the first point, holds the last. A valid trajectory
             replaces the current one; an empty one (no points) stops the arm where it is, as
             JointTrajectoryController does; an invalid one is rejected with a logged reason
             and the arm carries on with what it was doing. Ignored with follow_leader.
  leader_{left,right}/joint_states   (follow_leader) sensor_msgs/JointState of the leader arms
Services
  ~/reset    std_srvs/Trigger: reset the task with the next seed (seed + 1)
  ~/success  std_srvs/Trigger: success = the task's detector has held for 0.2 s in a row this
             episode (never after the simulation diverged); message has the progress
  ~/start_demo  std_srvs/Trigger (leader_source expert): the expert starts moving the leader
             arms; until then (and after every reset) they hold the follower's pose
"""

from __future__ import annotations

import math
import re
import time

import numpy as np
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock as ClockMsg
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Header
from std_srvs.srv import Trigger
from tf2_msgs.msg import TFMessage
from trajectory_msgs.msg import JointTrajectory

from clamp_core.aloha import ARM_JOINT_NAMES, SIDES
from clamp_core.geometry.image import encode_depth_mm
from clamp_core.geometry.transforms import Transform
from clamp_core.policy.trajectory import ArmTrajectory, TrajectoryError, parse_trajectory
from clamp_core.sim.aloha import CONTROL_DT
from clamp_core.sim.tasks import make_task
from clamp_core.sim.tasks.base import SuccessMonitor
from clamp_core.sim.teleop import ExpertLeader
from clamp_core.teleop import GripperMap, TeleopError, follower_command

from .conversions import image_msg, info_from_camera, ns_to_stamp, stamp_to_ns, transform_msg
from .params import declare
from .perception_node import TF_QOS, TF_STATIC_QOS
from .util import KeyedThrottle, run_node

BASE_FRAME = "world"
MAX_CATCH_UP_S = 0.25
"""Behind real time by more than this, the node gives up catching up (sim time falls behind)."""


def optical_frame(camera: str) -> str:
    return f"{camera}_color_optical_frame"


def link_frame(body: str) -> str:
    return body.replace("/", "_")


class SimNode(Node):
    def __init__(self, node_name: str = "sim", **kwargs):
        super().__init__(node_name, **kwargs)
        task_name = declare(self, "task", "transfer_cube", "Simulated task (clamp_core.sim.tasks).")
        self.seed = declare(self, "seed", 0, "Seed of the first episode; ~/reset adds 1.")
        width = declare(self, "width", 640, "Image width of every camera (px).")
        height = declare(self, "height", 480, "Image height of every camera (px).")
        camera_rate = declare(
            self,
            "camera_rate_hz",
            10.0,
            "Camera frame rate: cameras render and publish every k-th control step, "
            "k = round(control_rate_hz / camera_rate_hz).",
        )
        control_rate = declare(
            self,
            "control_rate_hz",
            50.0,
            "Rate of trajectory sampling, physics steps and joint_states; its period must be a "
            "whole number of 20 ms physics steps (50, 25, 10, ... Hz).",
        )
        self.rtf = declare(
            self,
            "real_time_factor",
            1.0,
            "Simulated seconds per wall-clock second (0: as fast as possible).",
        )
        self.publish_clock = declare(
            self,
            "publish_clock",
            True,
            "Publish the simulation time on /clock and stamp every message with it (else "
            "stamps follow this node's ROS clock).",
        )
        leader_source = declare(
            self,
            "leader_source",
            "",
            "'expert': this node plays the leader arms with the task's scripted expert on "
            "leader_{left,right}/joint_states ('' = none).",
        )
        self.follow_leader = declare(
            self,
            "follow_leader",
            False,
            "Teleoperation: the follower arms track leader_{left,right}/joint_states; "
            "trajectories are ignored.",
        )
        gripper_range = declare(
            self,
            "leader_gripper_range",
            [GripperMap().closed_rad, GripperMap().open_rad],
            "Leader gripper angles (rad) [closed, open] that map to the follower's normalised "
            "gripper 0 and 1.",
        )
        if leader_source not in ("", "expert"):
            raise ValueError(f"leader_source must be '' or 'expert', got {leader_source!r}")
        self.gripper_map = GripperMap.from_range(gripper_range)
        if width <= 0 or height <= 0:
            raise ValueError(f"width and height must be positive, got {width}x{height}")
        if self.seed < 0:
            raise ValueError(f"seed must be non-negative, got {self.seed}")
        if not control_rate > 0 or not camera_rate > 0:
            raise ValueError(
                f"control_rate_hz ({control_rate}) and camera_rate_hz ({camera_rate}) must be "
                f"positive"
            )
        if camera_rate > control_rate:
            raise ValueError(
                f"camera_rate_hz ({camera_rate}) must not exceed control_rate_hz ({control_rate})"
            )
        if not (self.rtf >= 0 and math.isfinite(self.rtf)):
            raise ValueError(f"real_time_factor must be >= 0, got {self.rtf}")
        substeps = 1.0 / (control_rate * CONTROL_DT)
        if abs(substeps - round(substeps)) > 1e-6 or round(substeps) < 1:
            raise ValueError(
                f"control_rate_hz {control_rate}: the control period must be a whole number of "
                f"{CONTROL_DT * 1e3:.0f} ms physics steps (50, 25, 10, ... Hz)"
            )
        self.substeps = int(round(substeps))
        self.tick_ns = int(round(self.substeps * CONTROL_DT * 1e9))
        self.camera_every = max(1, int(round(control_rate / camera_rate)))

        self.task = make_task(task_name)  # SimError (a ValueError) names the known tasks
        t0 = time.perf_counter()
        self.sim = self.task.make_sim(width=width, height=height, render=True)
        self.task.reset(self.sim, self.seed)
        self.monitor = SuccessMonitor(self.task)
        self.sim.observe()  # create the renderers now: the first frame would overrun the clock
        lo, hi = self.sim.joint_low, self.sim.joint_high  # 12 arm joints; grippers are 0..1
        self.low = {s: np.append(lo[6 * i : 6 * i + 6], 0.0) for i, s in enumerate(SIDES)}
        self.high = {s: np.append(hi[6 * i : 6 * i + 6], 1.0) for i, s in enumerate(SIDES)}
        self.command = self._measured_command()
        self.trajectories: dict[str, ArmTrajectory | None] = {s: None for s in SIDES}
        self.fixed_cameras = [c.name for c in self.sim.cameras if not c.body]
        self.moving_cameras = [c.name for c in self.sim.cameras if c.body]
        self.links = [
            self.sim.model.body(i).name
            for i in range(self.sim.model.nbody)
            if self.sim.model.body(i).name.startswith(("vx300s_left", "vx300s_right"))
        ]

        self.error = KeyedThrottle(self.get_logger().error, 1.0)
        self.warn = KeyedThrottle(self.get_logger().warning, 5.0)
        image_qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        self.camera_pubs = {}
        for cam in self.sim.cameras:
            n = cam.name
            self.camera_pubs[n] = (
                self.create_publisher(Image, f"{n}/color/image_raw", image_qos),
                self.create_publisher(Image, f"{n}/depth/image_raw", image_qos),
                self.create_publisher(CameraInfo, f"{n}/color/camera_info", image_qos),
                self.create_publisher(CameraInfo, f"{n}/depth/camera_info", image_qos),
            )
        self.joint_pubs = {
            s: self.create_publisher(JointState, f"follower_{s}/joint_states", 10) for s in SIDES
        }
        self.tf_pub = self.create_publisher(TFMessage, "/tf", TF_QOS)
        self.tf_static_pub = self.create_publisher(TFMessage, "/tf_static", TF_STATIC_QOS)
        self.clock_pub = (
            self.create_publisher(ClockMsg, "/clock", 10) if self.publish_clock else None
        )
        for s in SIDES:
            self.create_subscription(
                JointTrajectory,
                f"{s}_arm_controller/joint_trajectory",
                lambda m, s=s: self.on_trajectory(s, m),
                10,
            )
        self.create_service(Trigger, "~/reset", self.on_reset)
        self.create_service(Trigger, "~/success", self.on_success)
        self.leader = None
        if leader_source == "expert":
            self.leader = ExpertLeader(self.task, self.sim, self.gripper_map)
            self.leader.reset(self.seed)
            self.leader_pubs = {
                s: self.create_publisher(JointState, f"leader_{s}/joint_states", 10) for s in SIDES
            }
            self.create_service(Trigger, "~/start_demo", self.on_start_demo)
        if self.follow_leader:
            for s in SIDES:
                self.create_subscription(
                    JointState,
                    f"leader_{s}/joint_states",
                    lambda m, s=s: self.on_leader(s, m),
                    10,
                )
        self.tf_static_pub.publish(
            TFMessage(
                transforms=[
                    transform_msg(
                        BASE_FRAME,
                        optical_frame(n),
                        0,
                        Transform.from_matrix(self.sim.camera_pose(n)),
                    )
                    for n in self.fixed_cameras
                ]
            )
        )

        # time: sim_ns counts physics; stamp_ns is the stamp of the current state
        self.ticks = 0
        self.sim_ns = 0
        self._anchor_wall = time.monotonic()
        self._anchor_ticks = 0
        self._anchor_stamp = 0 if self.publish_clock else self._ros_now_ns()
        self.stamp_ns = self._anchor_stamp
        self.reset_stamp_ns = -1
        self.skipped_frames = 0
        self.skipped_steps = 0
        self.frames = 0
        period = self.tick_ns * 1e-9 / self.rtf if self.rtf > 0 else 0.0
        # a steady clock: with use_sim_time the ROS clock would wait for our own /clock
        self.create_timer(period, self.on_timer, clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.get_logger().info(
            f"sim '{task_name}' seed {self.seed} ready in {time.perf_counter() - t0:.1f}s: "
            f"control {1e9 / self.tick_ns:g} Hz, cameras {self.sim_camera_rate():g} Hz at "
            f"{width}x{height}, real_time_factor {self.rtf:g}, "
            f"{'sim time on /clock' if self.publish_clock else 'ROS clock stamps'}; "
            f"task: {self.task.instruction}"
        )

    def sim_camera_rate(self) -> float:
        return 1e9 / (self.tick_ns * self.camera_every)

    # ------------------------------------------------------------------ time
    def _ros_now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _stamp_of(self, ticks: int) -> int:
        if self.publish_clock:
            return ticks * self.tick_ns
        if self.rtf > 0:
            return self._anchor_stamp + int(
                round((ticks - self._anchor_ticks) * self.tick_ns / self.rtf)
            )
        return max(self.stamp_ns + 1, self._ros_now_ns())

    def _measured_command(self) -> np.ndarray:
        q = self.sim.qpos14()
        return {
            s: np.clip(q[7 * i : 7 * i + 7], self.low[s], self.high[s]) for i, s in enumerate(SIDES)
        }

    # ------------------------------------------------------------------ stepping
    def on_timer(self) -> None:
        due = 1
        if self.rtf > 0:
            elapsed = time.monotonic() - self._anchor_wall
            due = int(elapsed * self.rtf * 1e9 / self.tick_ns) - (self.ticks - self._anchor_ticks)
            if due <= 0:
                return
            limit = max(1, int(MAX_CATCH_UP_S * self.rtf * 1e9 / self.tick_ns))
            if due > limit:  # physics alone cannot keep up: let sim time fall behind
                self.skipped_steps += due - limit
                self.warn(
                    "behind",
                    f"{(due - limit) * self.tick_ns * 1e-9 / self.rtf:.2f}s behind real time: "
                    f"simulation slower than real_time_factor {self.rtf:g} "
                    f"({self.skipped_steps} control steps not simulated so far)",
                )
                due = limit
                lag_ns = int(round(limit * self.tick_ns / self.rtf))
                self._anchor_wall = time.monotonic() - lag_ns * 1e-9
                self._anchor_ticks = self.ticks
                if not self.publish_clock:
                    self._anchor_stamp = max(self.stamp_ns, self._ros_now_ns() - lag_ns)
        # render only the last camera step of a catch-up batch: skip frames, never fall behind
        camera_steps = [k for k in range(1, due + 1) if (self.ticks + k) % self.camera_every == 0]
        if len(camera_steps) > 1:
            self.skipped_frames += len(camera_steps) - 1
            self.warn(
                "frames",
                f"rendering slower than {self.sim_camera_rate():g} Hz: skipped "
                f"{len(camera_steps) - 1} camera frame(s) to keep up ({self.skipped_frames} so "
                f"far, {self.frames} published)",
            )
        render_at = camera_steps[-1] if camera_steps else None
        for k in range(1, due + 1):
            self.step(render=k == render_at)

    def step(self, render: bool) -> None:
        """One control period: sample the trajectories, step physics, publish the new state."""
        for s in SIDES:
            traj = self.trajectories[s]
            if traj is not None:
                self.command[s] = traj.sample(self.stamp_ns)
        action = np.concatenate([self.command[s] for s in SIDES])
        for _ in range(self.substeps):
            self.sim.step(action)
        self.ticks += 1
        self.sim_ns += self.tick_ns
        was_diverged = self.monitor.diverged
        self.monitor.update(self.sim)
        if self.monitor.diverged and not was_diverged:
            self.get_logger().error(
                f"simulation diverged (MuJoCo reset the state) in episode seed {self.seed}: "
                "this episode cannot succeed any more; call ~/reset"
            )
        self.stamp_ns = self._stamp_of(self.ticks)
        stamp = ns_to_stamp(self.stamp_ns)
        if self.clock_pub is not None:
            self.clock_pub.publish(ClockMsg(clock=stamp))
        # a depth-only graph (the shipped model's) skips the lit colour pass and its copy
        color = render and any(p[0].get_subscription_count() for p in self.camera_pubs.values())
        frame = self.sim.observe(render=render, color=color)
        for i, s in enumerate(SIDES):
            sl = slice(7 * i, 7 * i + 7)
            pos = frame.qpos[sl].copy()
            pos[6] = min(max(pos[6], 0.0), 1.0)
            self.joint_pubs[s].publish(
                JointState(
                    header=Header(stamp=stamp),
                    name=list(ARM_JOINT_NAMES),
                    position=pos.tolist(),
                    velocity=frame.qvel[sl].tolist(),
                    effort=frame.effort[sl].tolist(),
                )
            )
        transforms = [
            transform_msg(
                BASE_FRAME,
                link_frame(b),
                self.stamp_ns,
                Transform.from_matrix(self.sim.body_pose(b)),
            )
            for b in self.links
        ]
        transforms += [
            transform_msg(
                BASE_FRAME,
                optical_frame(n),
                self.stamp_ns,
                Transform.from_matrix(self.sim.camera_pose(n)),
            )
            for n in self.moving_cameras
        ]
        self.tf_pub.publish(TFMessage(transforms=transforms))  # before the images it poses
        if render:
            self.publish_cameras(frame, stamp)
        if self.leader is not None:
            hold = np.concatenate([self.command[s] for s in SIDES])
            for s, q in self.leader.step(hold).items():
                self.leader_pubs[s].publish(
                    JointState(
                        header=Header(stamp=stamp), name=list(ARM_JOINT_NAMES), position=q.tolist()
                    )
                )

    def publish_cameras(self, frame, stamp) -> None:
        for name, depth in frame.depth_m.items():
            header = Header(stamp=stamp, frame_id=optical_frame(name))
            color_pub, depth_pub, info_pub, depth_info_pub = self.camera_pubs[name]
            info = info_from_camera(self.sim.intrinsics[name], header)
            info_pub.publish(info)
            depth_info_pub.publish(info)
            rgb = frame.images.get(name)
            if rgb is not None:
                color_pub.publish(image_msg(rgb, "rgb8", header))
            depth_pub.publish(image_msg(encode_depth_mm(depth), "16UC1", header))
        self.frames += 1

    # ------------------------------------------------------------------ commands
    def on_leader(self, side: str, msg: JointState) -> None:
        try:
            if stamp_to_ns(msg.header.stamp) <= self.reset_stamp_ns:
                return  # sent before the last reset: the arms were teleported since
            self.command[side] = follower_command(
                msg.name, msg.position, self.gripper_map, self.low[side], self.high[side]
            )
        except (TeleopError, ValueError) as e:
            self.error(
                ("leader", side, str(e)[:40]),
                f"leader_{side}/joint_states rejected: {e}; the {side} follower keeps its command",
            )
            return
        self.trajectories[side] = None

    def on_start_demo(self, request, response):
        if self.leader.started:
            response.success = False
            response.message = f"the demo of seed {self.seed} is already running; ~/reset first"
            return response
        self.leader.start()
        response.success = True
        response.message = f"expert demo of '{self.task.name}' seed {self.seed} started"
        self.get_logger().info(response.message)
        return response

    def on_trajectory(self, side: str, msg: JointTrajectory) -> None:
        if self.follow_leader:
            self.warn(
                ("trajectory", side),
                f"{side} arm: following the leader arms (follow_leader): trajectory ignored",
            )
            return
        if not msg.points:  # as JointTrajectoryController: stop and hold where the arm is
            self.trajectories[side] = None
            self.command[side] = self._measured_command()[side]
            self.get_logger().info(f"{side} arm: empty trajectory, stopped and holding")
            return
        points = [
            (
                list(p.positions),
                int(p.time_from_start.sec) * 1_000_000_000 + p.time_from_start.nanosec,
            )
            for p in msg.points
        ]
        try:
            try:
                stamp_ns = stamp_to_ns(msg.header.stamp)
            except ValueError as e:
                raise TrajectoryError(str(e)) from None
            traj = parse_trajectory(
                msg.joint_names,
                points,
                stamp_ns,
                self.stamp_ns,
                self.command[side],
                self.low[side],
                self.high[side],
            )
        except TrajectoryError as e:
            self.error(
                (side, re.sub(r"[-+]?\d[\d.]*", "#", str(e))),
                f"{side} arm: trajectory rejected: {e}; the arm keeps its current command",
            )
            return
        self.trajectories[side] = traj
        self.get_logger().debug(
            f"{side} arm: trajectory of {len(points)} points accepted, "
            f"{(traj.end_ns - self.stamp_ns) * 1e-9:.2f}s to go"
        )

    def on_reset(self, request, response):
        self.seed += 1
        try:
            self.task.reset(self.sim, self.seed)
            self.monitor.reset()
        except Exception as e:  # never let a service call kill the simulation
            response.success = False
            response.message = f"reset with seed {self.seed} failed: {e}"
            self.get_logger().error(response.message)
            return response
        self.trajectories = {s: None for s in SIDES}
        self.command = self._measured_command()
        self.reset_stamp_ns = self.stamp_ns
        if self.leader is not None:
            self.leader.reset(self.seed)
        response.success = True
        response.message = f"reset '{self.task.name}' with seed {self.seed}"
        self.get_logger().info(response.message)
        return response

    def on_success(self, request, response):
        m = self.monitor
        response.success = m.done
        state = "success" if m.done else "diverged" if m.diverged else "not done"
        response.message = (
            f"task '{self.task.name}' seed {self.seed}: progress {m.progress}, {state}"
        )
        return response

    def destroy_node(self) -> None:
        self.sim.close()  # free the GL contexts while the display is still up
        super().destroy_node()


def main(args=None) -> None:
    run_node(SimNode, args, "sim")


if __name__ == "__main__":
    main()
