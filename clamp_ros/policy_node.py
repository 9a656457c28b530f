"""Policy node (lifecycle): cameras + tf + joint states -> views -> ONNX policy -> action chunks
-> safety filter -> arm controllers.

The camera side is the perception node's own code (``PerceptionFrontend``), run in-process so a
synchronised set goes straight from fusion into inference in one worker thread, with no image
copies between processes. Model inference, chunk execution and safety are ``clamp_core.policy``
pieces; this node only wires them to ROS.

Lifecycle: ``configure`` loads the model and checks its metadata against this node's parameters
(joint names, cameras, views), ``activate`` starts inference and commanding, ``deactivate`` stops
commanding and stops the arms where they are (an empty trajectory: the controller holds its
position), ``cleanup`` drops the model.

Commands go out only when the node is active AND enabled (``~/enable``, std_srvs/SetBool; the
``enable`` parameter sets the initial state, false on the real robot) AND every input is fresh.

Publishes
  <arm trajectory topics>   trajectory_msgs/JointTrajectory per arm (output ``joint_trajectory``)
  <interbotix topics>       interbotix_xs_msgs JointGroupCommand + JointSingleCommand, streamed at
                            the control rate (output ``interbotix``)
  ~/shadow/<arm>/joint_trajectory   (shadow) instead of the two above: what the policy would
                            command, while the operator drives the arms
  /diagnostics              rates, latencies (sync, fusion + render, inference, publish), the
                            reason for every suppressed command; in shadow mode the error
                            against the leader arms
  ~/chunks, ~/chunk_inputs  (publish_chunks) every computed chunk and the inputs the node's
                            timing chose for it, stamped with its observation
                            (clamp_core.policy.inference_log)
Subscribes   the perception node's camera topics (colour too for the cameras with use_color:
             a model's RGB branch gets theirs, resized by ``clamp_core.policy.rgb``), /tf,
             /tf_static, the follower joint states; in shadow mode the leader arms' joint
             states
Services     ~/enable (std_srvs/SetBool)
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from pathlib import Path

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import LifecycleNode, State, TransitionCallbackReturn
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Header
from std_srvs.srv import SetBool
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from clamp_core.aloha import ALOHA_JOINT_NAMES, ARM_JOINT_NAMES
from clamp_core.eval.seams import gripper_mask
from clamp_core.perception import PerceptionError
from clamp_core.perception.config import ConfigError
from clamp_core.policy.engine import EngineConfig, PolicyEngine
from clamp_core.policy.execution import ExecutionConfig
from clamp_core.policy.inference_log import InferenceRecord
from clamp_core.policy.metadata import MetadataError, check_compatible
from clamp_core.policy.rgb import RgbInputError, rgb_inputs
from clamp_core.policy.runtime import (
    OnnxPolicy,
    PolicyInputError,
    PolicyLoadError,
    PolicyOutputError,
)
from clamp_core.policy.safety import JointStateCheck, SafetyConfig, aloha_defaults
from clamp_core.policy.trajectory import sample_linear
from clamp_core.teleop import GripperMap, ShadowComparison, follower_command

from .conversions import ns_to_stamp, stamp_to_ns, trajectory_msg
from .graph import share_dir
from .params import declare, declare_dataclass, field_docs
from .perception_node import PerceptionFrontend
from .util import KeyedThrottle, LatencyStats, RateMeter, run_node


class _ViewSet:
    """Every view of one stamp, from the perception node's topics."""

    def __init__(self, stamp_ns: int, images: np.ndarray):
        self.stamp_ns = stamp_ns
        self.images = images


def resolve_model(path: str) -> Path:
    """An absolute/relative path, else ``models/<path>`` in the package's share directory."""
    p = Path(path).expanduser()
    if p.exists() or p.is_absolute():
        return p
    shipped = share_dir() / "models" / path
    return shipped if shipped.exists() else p


class PolicyNode(PerceptionFrontend, LifecycleNode):
    stale_consequence = "no commands are sent until it returns"

    def __init__(self, node_name: str = "policy", **kwargs):
        super().__init__(node_name, **kwargs)
        self.error = KeyedThrottle(self.get_logger().error, 2.0)
        self.warn = KeyedThrottle(self.get_logger().warning, 2.0)
        d = lambda name, default, text: declare(self, name, default, text)  # noqa: E731
        self.model_path = d(
            "model",
            "",
            "Model directory (metadata.json + ONNX graphs), or "
            "the name of a model shipped in the package's models/.",
        )
        self.threads = d("inference_threads", 1, "ONNX Runtime threads (0 = all cores).")
        self.inference_steps = d("inference_steps", 0, "DDIM steps (0 = the model's default).")
        self.joint_names = d(
            "joint_names",
            list(ALOHA_JOINT_NAMES),
            "The 14 action dimensions, in the model's order.",
        )
        self.arms = d("arms", ["left", "right"], "Arm names; each has the parameters below.")
        self.arm_cfg = {}
        for arm in self.arms:
            self.arm_cfg[arm] = {
                "joint_states": d(
                    f"{arm}.joint_states_topic",
                    f"/follower_{arm}/joint_states",
                    "sensor_msgs/JointState of this arm.",
                ),
                "joints": d(
                    f"{arm}.joints",
                    list(ARM_JOINT_NAMES),
                    "Joint names of this arm in its messages, in action order.",
                ),
                "trajectory": d(
                    f"{arm}.trajectory_topic",
                    f"/{arm}_arm_controller/joint_trajectory",
                    "JointTrajectoryController command topic (gripper included).",
                ),
                "group": d(
                    f"{arm}.interbotix_group_topic",
                    f"/follower_{arm}/commands/joint_group",
                    "interbotix_xs_msgs/JointGroupCommand topic of the arm joints.",
                ),
                "single": d(
                    f"{arm}.interbotix_single_topic",
                    f"/follower_{arm}/commands/joint_single",
                    "interbotix_xs_msgs/JointSingleCommand topic of the gripper.",
                ),
                "leader": d(
                    f"{arm}.leader_topic",
                    f"/leader_{arm}/joint_states",
                    "Shadow mode: the leader arm's sensor_msgs/JointState (the operator).",
                ),
            }
        self.views_from_topics = d(
            "views_from_topics",
            False,
            "Take the rendered views from a perception node's views/<name> topics instead of "
            "running perception in-process (false: lowest latency). Not for a model with an "
            "RGB branch: those topics carry no color images.",
        )
        self.output = d(
            "output",
            "joint_trajectory",
            "joint_trajectory (ros2_control JTC) or interbotix (streamed commands).",
        )
        self.interbotix_group = d("interbotix_group_name", "arm", "Interbotix joint group name.")
        self.gripper_scale = d(
            "interbotix_gripper_scale",
            [0.0, 1.0],
            "[offset, scale]: gripper command = offset + scale * normalised.",
        )
        self.control_rate_hz = d("control_rate_hz", 50.0, "Command streaming / history rate.")
        self.enabled = d("enable", False, "Initial state of ~/enable (false on a real robot).")
        self.joint_state_max_age_s = d(
            "joint_state_max_age_s", 0.2, "Joint states older than this (vs the image) are stale."
        )
        self.seed = d(
            "seed",
            0,
            "Run seed of the diffusion noise: each observation's noise is drawn from (seed, "
            "its stamp), so replay computes the same chunks.",
        )
        self.publish_chunks = d(
            "publish_chunks",
            False,
            "Publish every computed chunk on ~/chunks and the inputs the node's timing chose "
            "for it on ~/chunk_inputs (clamp_core.policy.inference_log), so `clamp eval replay "
            "--follow-node` can check a recording bit for bit.",
        )
        self.shadow = d(
            "shadow",
            False,
            "Shadow mode: the policy runs live but publishes what it would command on "
            "~/shadow/<arm>/joint_trajectory, never to the arms; its error against the leader "
            "arms (<arm>.leader_topic) goes to /diagnostics.",
        )
        gripper_range = d(
            "leader_gripper_range",
            [GripperMap().closed_rad, GripperMap().open_rad],
            "Shadow mode: leader gripper angles (rad) [closed, open] = the follower's 0 and 1.",
        )
        self.leader_gripper = GripperMap.from_range(gripper_range)
        self.time_reset_s_policy = d(
            "policy_time_reset_s",
            1.0,
            "An observation this far behind the previous one means "
            "the clock was reset: chunks and history are dropped.",
        )
        self.safety_cfg = self._safety_config()
        # one chunk age limit: the executor drops chunks at the age the safety filter refuses them
        self.exec_cfg = ExecutionConfig(
            **declare_dataclass(self, "execution", ExecutionConfig(), skip=("max_chunk_age_s",)),
            max_chunk_age_s=self.safety_cfg.max_chunk_age_s,
        )

        self.policy: OnnxPolicy | None = None
        self.active = False
        self.lock = threading.Lock()
        self.joint_index = self._joint_index()
        # the decision logic (joint state validation, history, restarts, chunk execution,
        # safety) is the engine's, shared with clamp eval sim and replay; this node feeds it
        # messages and its clock, under self.lock
        self.engine = PolicyEngine(
            self.joint_names,
            {
                arm: [(j, self.joint_index[(arm, j)]) for j in self.arm_cfg[arm]["joints"]]
                for arm in self.arms
            },
            self.safety_cfg,
            self.exec_cfg,
            EngineConfig(
                control_rate_hz=self.control_rate_hz,
                time_reset_s=self.time_reset_s_policy,
                seed=self.seed,
            ),
        )
        # monotonic time of the newest complete observation (images + tf poses, or views)
        self.last_view_rx: float | None = None
        self.tf_wait_ms: float | None = None
        self.suppressed: collections.Counter = collections.Counter()
        self.clipped: collections.Counter = collections.Counter()
        self.last_suppression = ""
        self.holding = False
        self.commanded_until_ns = 0
        self.sent_since_stop = False  # a command this node sent may still be running
        self.stats = {
            k: LatencyStats()
            for k in (
                "sync_ms",
                "sync_transport_ms",
                "sync_wait_ms",
                "sync_tf_ms",
                "fuse_render_ms",
                "inference_ms",
                "publish_ms",
                "stamp_to_command_ms",
                "seam_jump_mrad",
            )
        }
        self.command_rate = RateMeter()
        self.inference_rate = RateMeter()
        self.pubs: dict = {}
        self._perception_ready = False
        self.create_service(SetBool, "~/enable", self.on_enable)
        self.cmd_group = MutuallyExclusiveCallbackGroup()

    # ------------------------------------------------------------------ parameters
    def _safety_config(self) -> SafetyConfig:
        base = aloha_defaults()
        docs = field_docs(SafetyConfig)
        values = {}
        for name in (
            "position_min",
            "position_max",
            "max_velocity",
            "gripper_min",
            "gripper_max",
            "max_input_age_s",
            "max_chunk_age_s",
            "tracking_lag_s",
            "max_disagreement_s",
            "measured_tolerance",
            "gripper_measured_tolerance",
            "measured_overshoot_s",
            "measured_noise",
        ):
            v = getattr(base, name)
            v = [float(x) for x in v] if isinstance(v, (list, tuple, np.ndarray)) else v
            values[name] = declare(self, f"safety.{name}", v, docs.get(name, ""))
        return aloha_defaults(
            joint_names=list(self.joint_names),
            control_period_s=1.0 / self.control_rate_hz,
            **values,
        )

    def _joint_index(self) -> dict[tuple[str, str], int]:
        if len(self.joint_names) != 14:
            raise ConfigError(f"joint_names: needs 14 names, got {len(self.joint_names)}")
        index = {}
        i = 0
        for arm in self.arms:
            for j in self.arm_cfg[arm]["joints"]:
                index[(arm, j)] = i
                i += 1
        if i != len(self.joint_names):
            raise ConfigError(
                f"the arms' joints add up to {i}, but joint_names has {len(self.joint_names)}"
            )
        return index

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        try:
            if not self._perception_ready:
                if self.views_from_topics:
                    self._init_view_topics()
                else:
                    self.init_perception()
                self._perception_ready = True
                for arm in self.arms:
                    self.create_subscription(
                        JointState,
                        self.arm_cfg[arm]["joint_states"],
                        lambda m, a=arm: self.on_joint_state(a, m),
                        10,
                    )
                self._make_publishers()
                self.create_timer(
                    1.0 / self.control_rate_hz, self.on_control_tick, callback_group=self.cmd_group
                )
            if not self.model_path:
                raise PolicyLoadError("parameter 'model' is empty: give a model directory")
            path = resolve_model(self.model_path)
            policy = OnnxPolicy(
                path,
                threads=self.threads,
                inference_steps=self.inference_steps or None,
            )
            if self.views_from_topics and policy.metadata.rgb_cameras:
                raise MetadataError(
                    f"model '{policy.metadata.name}' has an RGB branch (rgb_cameras "
                    f"{policy.metadata.rgb_cameras}) but views_from_topics is true: views from "
                    "topics bring no color images; set views_from_topics false (in-process "
                    "perception with use_color on those cameras)"
                )
            check_compatible(
                policy.metadata,
                joint_names=self.joint_names,
                perception=self.config,
                action_dim=len(self.joint_names),
            )
            policy.warmup(1)
        except (PolicyLoadError, MetadataError, ConfigError, PerceptionError, OSError) as e:
            self.get_logger().error(f"configure failed: {e}")
            return TransitionCallbackReturn.FAILURE
        with self.lock:
            self.policy = policy
        self.get_logger().info(
            f"model '{policy.metadata.name}' loaded from {path} "
            f"({', '.join(policy.providers)}); {policy.metadata.action_horizon}x"
            f"{policy.metadata.action_dim} chunks, execution '{self.exec_cfg.mode}', "
            f"output '{self.output}', commands {'enabled' if self.enabled else 'DISABLED'}"
        )
        return TransitionCallbackReturn.SUCCESS

    def _restart(self, since_ns: int) -> None:
        """Forget every chunk and the action history (call with the lock held); observations
        stamped before ``since_ns`` and inferences already running on them are dropped."""
        self.engine.restart(since_ns)

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        with self.lock:
            self._restart(self._now())
            self.engine.vouch()
            self.active = True
            self.holding = False
        self.get_logger().info("active: inference running")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        with self.lock:  # an inference still running is dropped, not published
            self.active = False
            self._restart(self._now())
        self._hold("deactivated")
        self.get_logger().info("inactive: commands stopped, holding position")
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        with self.lock:
            self.policy = None
            self.active = False
            self._restart(self._now())
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        with self.lock:
            self.active = False
        return TransitionCallbackReturn.SUCCESS

    def on_enable(self, request: SetBool.Request, response: SetBool.Response):
        with self.lock:  # a trajectory being published sees either state, never half of it
            was = self.enabled
            self.enabled = bool(request.data)
        if not self.enabled:
            self._hold("disabled")
        else:  # the operator vouches for the arm: joint states are judged afresh
            with self.lock:
                self.engine.vouch()
        if self.enabled and not was:
            with self.lock:  # a fresh start: nothing planned before the pause is replayed
                self._restart(self._now())
                self.holding = False
        response.success = True
        response.message = "commands enabled" if self.enabled else "commands disabled"
        self.get_logger().warning(response.message)
        return response

    # ------------------------------------------------------------------ inputs
    def _make_publishers(self) -> None:
        if self.shadow:  # never the controllers' topics: the operator drives the arms
            self.output = "joint_trajectory"
            self.shadow_score = ShadowComparison()
            for arm in self.arms:
                self.pubs[arm] = self.create_publisher(
                    JointTrajectory, f"~/shadow/{arm}/joint_trajectory", 10
                )
                self.create_subscription(
                    JointState,
                    self.arm_cfg[arm]["leader"],
                    lambda m, a=arm: self.on_leader(a, m),
                    10,
                )
        elif self.output == "joint_trajectory":
            for arm in self.arms:
                self.pubs[arm] = self.create_publisher(
                    JointTrajectory, self.arm_cfg[arm]["trajectory"], 10
                )
        elif self.output == "interbotix":
            from interbotix_xs_msgs.msg import JointGroupCommand, JointSingleCommand

            self._ix = (JointGroupCommand, JointSingleCommand)
            for arm in self.arms:
                self.pubs[arm] = (
                    self.create_publisher(JointGroupCommand, self.arm_cfg[arm]["group"], 10),
                    self.create_publisher(JointSingleCommand, self.arm_cfg[arm]["single"], 10),
                )
        else:
            raise ConfigError(f"output '{self.output}' must be joint_trajectory or interbotix")
        if self.publish_chunks:
            q = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
            self.chunk_pubs = (
                self.create_publisher(JointTrajectory, "~/chunks", q),
                self.create_publisher(JointTrajectory, "~/chunk_inputs", q),
            )

    def on_leader(self, arm: str, msg: JointState) -> None:
        """Shadow mode: score the last plan against the operator's leader arm at its stamp."""
        try:
            stamp = stamp_to_ns(msg.header.stamp) or self._now()
            names = self.arm_cfg[arm]["joints"]
            q = follower_command(
                msg.name, msg.position, self.leader_gripper, np.full(7, -np.inf), np.full(7, np.inf)
            )
        except ValueError as e:
            return self.error((arm, "leader"), f"{arm} leader state ignored: {e}")
        idx = [self.joint_index[(arm, j)] for j in names]
        with self.lock:
            plan = self.engine.last_plan
        planned = None
        if plan is not None and int(plan[0][0]) <= stamp <= int(plan[0][-1]):
            planned = sample_linear(plan[0], plan[1], stamp)[idx]
        self.shadow_score.add(arm, q, planned)

    def on_joint_state(self, arm: str, msg: JointState) -> None:
        now = self._now()
        with self.lock:
            was = self.engine.qpos_problem[arm]
            try:
                stamp = stamp_to_ns(msg.header.stamp) or now
                check = self.engine.joint_state(arm, msg.name, msg.position, stamp, now)
            except ValueError as e:  # a malformed stamp
                check = JointStateCheck(None, f"{arm}: {e}")
                self.engine.reject_joint_state(arm, check.problem)
        if check.problem is not None:
            self.drops["rejected_joint_states"] += 1
            return self.error((arm, "joint_states"), f"joint_states rejected: {check.problem}")
        if check.positions is None:
            self.drops["joint_states_out_of_order"] += 1
        elif was is not None:
            self.get_logger().info(f"{arm} joint_states plausible again")

    def _now(self) -> int:
        return self.get_clock().now().nanoseconds

    def _measured_at(self, stamp: int) -> np.ndarray | None:
        """The joint state at ``stamp`` (an observation's): see PolicyEngine.measured_at."""
        with self.lock:
            return self.engine.measured_at(stamp)

    def _no_joint_states(self) -> None:
        """Suppress a plan for want of a believed joint state, naming why."""
        with self.lock:
            reason = self.engine.no_state_reason()
        key = "rejected_joint_states" if "rejected" in reason else "no_joint_states"
        return self._suppress(key, reason)

    def _measured(self) -> tuple[np.ndarray | None, int | None, str | None]:
        """(newest believed joint state, its oldest arm's receive time, why an arm's newest
        state was rejected (None: believed))."""
        with self.lock:
            return (*self.engine.measured(), self.engine.measured_problem)

    # ------------------------------------------------------------------ inference (worker)
    def handle_posed(self, synced, frames, cam_poses, view_poses, t0: float) -> None:
        start_ns = self._now()
        self.tf_wait_ms = (time.perf_counter() - t0) * 1e3
        with self.lock:
            policy, active = self.policy, self.active
        if policy is None or not active:
            return
        stamp = synced.stamp_ns
        self.last_view_rx = time.monotonic()  # a complete set with its camera poses (tf)
        if not self._wants(stamp, start_ns):
            return
        rgb = None
        meta = policy.metadata
        if meta.rgb_cameras:  # the RGB branch's input: the resize every path shares
            try:
                images = {f.camera: f.color for f in frames}
                rgb = rgb_inputs(images, meta.rgb_cameras, meta.rgb_size)
            except RgbInputError as e:
                return self._suppress("bad_rgb", f"no command from this observation: {e}")
        t1 = time.perf_counter()
        result = self.pipeline.process_posed(frames, cam_poses, view_poses, stamp)
        self._infer(policy, stamp, result.views.images, start_ns, t1, rgb)

    def _wants(self, stamp: int, now: int) -> bool:
        """Whether to infer on the observation at ``stamp`` (the engine's time checks)."""
        with self.lock:
            wants, warning = self.engine.wants(stamp, now)
        if warning:
            self.warn("reset", warning)
        return wants

    def _before_restart(self, stamp: int) -> bool:
        """The observation predates the last (re)start: never plan from it."""
        with self.lock:
            return stamp < self.engine.plan_after_ns

    def _infer(self, policy, stamp, views, start_ns: int, t1: float, rgb=None) -> None:
        """Views (V, H, W, 4) at ``stamp`` (and the RGB branch's images, camera -> (h, w, 3)
        uint8) -> chunk -> executor -> (trajectory) commands."""
        t2 = time.perf_counter()
        meta = policy.metadata
        with self.lock:
            obs = self.engine.observation(
                stamp,
                views,
                meta.action_history,
                rgb=rgb,
                history_stride=meta.action_history_stride,
            )
            noise = self.engine.noise(stamp, (meta.action_horizon, meta.action_dim))
        if obs is None:
            return self._no_joint_states()
        try:
            chunk = policy.predict(obs, noise=noise)
        except (PolicyInputError, PolicyOutputError) as e:
            return self._suppress("bad_inference", f"no command from this observation: {e}")
        t3 = time.perf_counter()
        if self.publish_chunks:
            self._publish_chunk(InferenceRecord.of(obs, chunk))
        with self.lock:
            if not self.engine.deliver(chunk, now_ns=self._now()):
                return  # (re)started while this inference ran, or already outdated
            seam = self.engine.last_seam
        if seam is not None:  # the largest arm-joint disagreement with the plan followed
            arm = ~gripper_mask(self.engine.joint_names)
            self.stats["seam_jump_mrad"].add(float(np.abs(seam.jump[arm]).max()) * 1e3)
        self.inference_rate.tick()
        published = False
        if self.output == "joint_trajectory":
            published = self._publish_trajectory(self._now())
        t4 = time.perf_counter()
        self.stats["sync_ms"].add((start_ns - stamp) * 1e-6)
        # sync = transport (stamp -> the set complete in this node) + wait (-> worker, tf)
        self.stats["sync_transport_ms"].add((self.ready_ns - stamp) * 1e-6)
        self.stats["sync_wait_ms"].add((start_ns - self.ready_ns) * 1e-6)
        if self.tf_wait_ms is not None:  # in-process perception: the part of wait spent on tf
            self.stats["sync_tf_ms"].add(self.tf_wait_ms)
        self.stats["fuse_render_ms"].add((t2 - t1) * 1e3)
        self.stats["inference_ms"].add((t3 - t2) * 1e3)
        if published:
            self.stats["publish_ms"].add((t4 - t3) * 1e3)
            self.stats["stamp_to_command_ms"].add((self._now() - stamp) * 1e-6)

    def _publish_chunk(self, rec: InferenceRecord) -> None:
        chunks, inputs = self.chunk_pubs
        chunks.publish(trajectory_msg(rec.stamp_ns, rec.joint_names, rec.chunk_points()))
        inputs.publish(trajectory_msg(rec.stamp_ns, rec.joint_names, rec.input_points()))

    # ------------------------------------------------------------------ views from topics
    def _init_view_topics(self) -> None:
        """Views from a perception node (split deployment): same config, same worker thread and
        watchdog; a set is complete when every view with one stamp has arrived."""
        from .params import declare_perception_config

        self.config = declare_perception_config(self)
        self.drops = collections.Counter()
        self.rates = {f"views/{v.name}": RateMeter() for v in self.config.views}
        self.split = {}
        self._views: dict[int, dict[str, np.ndarray]] = {}
        qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        for v in self.config.views:
            self.create_subscription(
                Image, f"views/{v.name}", lambda m, n=v.name: self.on_view(n, m), qos
            )
        self.start_worker_and_diagnostics("policy")

    def on_view(self, name: str, msg: Image) -> None:
        cfg = self.config
        if msg.encoding != "32FC4" or (msg.width, msg.height) != (
            cfg.image_width,
            cfg.image_height,
        ):
            self.drops["bad_view"] += 1
            return self.error(
                ("view", name),
                f"view '{name}': expected 32FC4 {cfg.image_width}x{cfg.image_height}, got "
                f"{msg.encoding} {msg.width}x{msg.height}; dropped",
            )
        img = np.frombuffer(bytes(msg.data), np.float32)
        if img.size != msg.height * msg.width * 4:
            self.drops["bad_view"] += 1
            return self.error(("view", name, "size"), f"view '{name}': data size {img.size}")
        self.rates[f"views/{name}"].tick()
        try:
            stamp = stamp_to_ns(msg.header.stamp)
        except ValueError as e:
            self.drops["bad_stamp"] += 1
            return self.error(("view", name, "stamp"), f"view '{name}': {e}; dropped")
        names = [v.name for v in cfg.views]
        with self._cv:
            entry = self._views.setdefault(stamp, {})
            entry[name] = img.reshape(msg.height, msg.width, 4)
            if len(entry) == len(names):
                del self._views[stamp]
                self._pending = _ViewSet(stamp, np.stack([entry[n] for n in names]))
                self._pending_ready_ns = self._now()
                self._cv.notify()
            for old in sorted(self._views)[:-10]:  # incomplete sets: keep the newest few
                self.drops["incomplete_views"] += 1
                del self._views[old]

    def _process(self, synced) -> None:
        if not isinstance(synced, _ViewSet):
            return super()._process(synced)
        start_ns = self._now()
        with self.lock:
            policy, active = self.policy, self.active
        if policy is None or not active:
            return
        self.last_view_rx = time.monotonic()
        if not self._wants(synced.stamp_ns, start_ns):
            return
        self._infer(policy, synced.stamp_ns, synced.images, start_ns, time.perf_counter())

    # ------------------------------------------------------------------ commanding
    def _inputs(self) -> dict[str, int]:
        """Receive time (ROS clock, ns) of each watched input."""
        now_mono = time.monotonic()
        now = self._now()
        out = {}
        for stream, meter in self.rates.items():
            age = meter.age_s(now_mono)
            out[stream] = now - int(1e9 * (age if age is not None else 1e9))
        # images alone are not enough: a set counts once its camera poses (tf) were found too
        last = self.last_view_rx
        out["observation"] = now - int(1e9 * (now_mono - last if last is not None else 1e9))
        with self.lock:
            for arm, rx in self.engine.qpos_rx.items():
                out[f"{arm} joint_states"] = rx if rx is not None else now - int(1e18)
        return out

    def _safe(self, times: np.ndarray, positions: np.ndarray, now: int):
        inputs = self._inputs()
        with self.lock:
            plan = self.engine.safe(times, positions, now, inputs, enabled=self.enabled)
        if not plan.ok:
            self._suppress(plan.stop.split(" ")[0], plan.stop)
            if plan.stop != "disabled":
                self._hold(plan.stop)
            return None
        for k, n in plan.clipped.items():
            self.clipped[k] += int(n)
        self.holding = False
        return plan

    def _publish_trajectory(self, now: int) -> bool:
        with self.lock:
            times, positions = self.engine.executor.trajectory(now, self.engine.cfg.max_points)
        if len(times) == 0:
            return False
        plan = self._safe(times, positions, now)
        if plan is None:
            return False
        with self.lock:  # deactivated or disabled while this was computed: nothing goes out
            if not (self.active and self.enabled):
                return False
            self._send_trajectory(plan)
        return True

    def _send_trajectory(self, plan) -> None:
        times, positions = plan.times_ns, plan.positions
        stamp = int(times[0])
        for arm in self.arms:
            joints = self.arm_cfg[arm]["joints"]
            idx = [self.joint_index[(arm, j)] for j in joints]
            msg = JointTrajectory()
            msg.header = Header(stamp=ns_to_stamp(stamp))
            msg.joint_names = list(joints)
            for t, row in zip(times, positions):
                p = JointTrajectoryPoint()
                p.positions = row[idx].tolist()
                dt = int(t) - stamp
                p.time_from_start.sec, p.time_from_start.nanosec = divmod(dt, 1_000_000_000)
                msg.points.append(p)
            self.pubs[arm].publish(msg)
        self.commanded_until_ns = int(times[-1])
        self.engine.sent(plan)
        self.sent_since_stop = True
        self.command_rate.tick()

    def _send_interbotix(self, q: np.ndarray) -> None:
        group_cls, single_cls = self._ix
        off, scale = self.gripper_scale
        for arm in self.arms:
            joints = self.arm_cfg[arm]["joints"]
            idx = {j: self.joint_index[(arm, j)] for j in joints}
            arm_joints = [j for j in joints if j != "gripper"]
            self.pubs[arm][0].publish(
                group_cls(name=self.interbotix_group, cmd=[float(q[idx[j]]) for j in arm_joints])
            )
            if "gripper" in idx:
                self.pubs[arm][1].publish(
                    single_cls(name="gripper", cmd=float(off + scale * q[idx["gripper"]]))
                )
        self.engine.last_plan = (
            np.array([self._now()], np.int64),
            np.array(q, np.float64)[None],
        )
        self.sent_since_stop = True
        self.command_rate.tick()

    def _hold(self, reason: str) -> None:
        """Stop the arms where they are. JointTrajectoryController gets an empty trajectory on
        each arm's topic: it drops what it was running and holds the position it has (the
        measured one may be stale or invalid: that is often why we stop). The Interbotix driver
        keeps the last command it got, which the safety filter passed: streaming just stops.
        Sends nothing when nothing this node sent can still be running (never enabled, or
        stopped already), so a disabled node publishes nothing. The next command starts from
        the measured state. Call without the lock."""
        with self.lock:
            if self.holding or not self.pubs:
                return
            self.holding = True
            sent, self.sent_since_stop = self.sent_since_stop, False
            self.engine.stopped()
            self.commanded_until_ns = 0
            if sent and self.output == "joint_trajectory":
                stamp = ns_to_stamp(self._now())
                for arm in self.arms:
                    msg = JointTrajectory()
                    msg.header = Header(stamp=stamp)
                    msg.joint_names = list(self.arm_cfg[arm]["joints"])
                    self.pubs[arm].publish(msg)
        if sent:
            self.get_logger().warning(f"stopped, holding position: {reason}")

    def _suppress(self, key: str, message: str) -> None:
        self.suppressed[key] += 1
        self.last_suppression = message
        self.error(("suppress", key), f"command suppressed: {message}")

    def on_control_tick(self) -> None:
        if not self._perception_ready:
            return
        now = self._now()
        with self.lock:
            active = self.active
            cmd = self.engine.tick(now) if active else None
        if not active or not self.enabled:
            return
        if self.output == "interbotix":
            if cmd is not None:
                plan = self._safe(np.array([now]), cmd[None], now)
                if plan is not None:
                    with self.lock:
                        if self.active and self.enabled:
                            self._send_interbotix(plan.positions[0])
            return
        # the watchdog: a trajectory already handed to the controller keeps running, so a stale
        # or invalid input must actively cut it
        if self.commanded_until_ns > now:
            problem = self._input_problem(now)
            if problem:
                self._suppress(problem.split(" ")[0], problem)
                with self.lock:
                    self.engine.executor.reset()
                self._hold(problem)

    def _input_problem(self, now: int) -> str | None:
        """Why nothing may be commanded now (the safety filter's watchdog), else None."""
        inputs = self._inputs()
        with self.lock:
            return self.engine.watchdog(now, inputs)

    # ------------------------------------------------------------------ diagnostics
    def on_diagnostics(self) -> None:
        now = time.monotonic()
        values, stale = self.perception_diagnostics(now)
        values.append(KeyValue(key="active", value=str(self.active)))
        values.append(KeyValue(key="enabled", value=str(self.enabled)))
        values.append(
            KeyValue(key="inference rate_hz", value=f"{self.inference_rate.rate_hz(now):.1f}")
        )
        values.append(
            KeyValue(key="command rate_hz", value=f"{self.command_rate.rate_hz(now):.1f}")
        )
        values += self.latency_values(self.stats.items())
        values += [
            KeyValue(key=f"suppressed {k}", value=str(v))
            for k, v in sorted(self.suppressed.items())
        ]
        values += [
            KeyValue(key=f"clipped {k}", value=str(v)) for k, v in sorted(self.clipped.items())
        ]
        values += [
            KeyValue(key=f"dropped {k}", value=str(v)) for k, v in sorted(self.drops.items())
        ]
        values.append(KeyValue(key="last suppression", value=self.last_suppression or "-"))
        if self.shadow:
            for arm, e in sorted(self.shadow_score.summary().items()):
                values.append(
                    KeyValue(key=f"shadow {arm} error_rad", value=f"{e['joints_rad']:.4f}")
                )
                values.append(
                    KeyValue(key=f"shadow {arm} gripper_error", value=f"{e['gripper']:.3f}")
                )
                values.append(KeyValue(key=f"shadow {arm} samples", value=str(e["samples"])))
        level, message = (
            DiagnosticStatus.OK,
            "shadow: commanding nothing" if self.shadow else "commanding",
        )
        if not self.active:
            level, message = DiagnosticStatus.OK, "inactive"
        elif not self.enabled:
            level, message = DiagnosticStatus.WARN, "disabled: no commands (call ~/enable)"
        elif stale:
            level, message = DiagnosticStatus.ERROR, f"stale inputs: {', '.join(stale)}"
        elif self.last_suppression and self.holding:
            level, message = DiagnosticStatus.ERROR, f"holding: {self.last_suppression}"
        self.publish_status("policy", level, message, values)

    def destroy_node(self) -> None:
        if getattr(self, "_perception_ready", False):  # also when __init__ failed half-way
            self.stop_perception()
        super().destroy_node()


def main(args=None) -> None:
    sys.setswitchinterval(0.0005)
    run_node(lambda: autostart(PolicyNode()), args, "policy")


def autostart(node: PolicyNode) -> PolicyNode:
    """``autostart`` parameter: configure + activate at start (the sim demo); a real robot
    drives the transitions with `ros2 lifecycle set` or a launch event."""
    from rclpy.parameter import Parameter

    auto = declare(node, "autostart", False, "Configure and activate at start.")
    del Parameter
    if auto:
        if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            raise ConfigError("autostart: configure failed (see the log above)")
        node.trigger_activate()
    return node


if __name__ == "__main__":
    main()
