"""The policy node feeds a model's RGB branch over DDS: the colour images of its rgb cameras,
synchronised with depth and resized by the one resize every path uses, reach the model.

The model sees colour only (``tiny_models.write_color_model``: its chunk is a known function of
the mean colour of each rgb camera), so each chunk the node publishes (``publish_chunks``) can
be checked against the colour images the synthetic scene node published at that chunk's
observation stamp, which this process receives too. One rgb camera is on a moving wrist: its
colour changes, and the chunks with it. A colour image the model cannot take (another aspect
ratio) is skipped with a specific error, never a crash or a command; views from topics carry no
colour, so a node configured that way refuses an RGB model in one line.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from trajectory_msgs.msg import JointTrajectory

from clamp_core.aloha import ALOHA_JOINT_NAMES
from clamp_core.perception import PerceptionConfig
from clamp_core.policy.rgb import rgb_inputs
from clamp_core.training.data import perception_for_episodes
from clamp_ros.conversions import stamp_to_ns
from test.core.policy.tiny_models import TinySpec, color_chunk, make_metadata, write_color_model
from test.ros.conftest import (
    child_env,
    log_tail,
    rclpy_session,
    read_log,
    start_process,
    stop_process,
    wait_for_log,
)
from test.ros.test_policy_node import Q0, VIEW, Robot, policy_cmd, scene_cmd

pytestmark = pytest.mark.ros

RGB_CAMERAS = ["cam_left_wrist", "cam_high"]
"""A moving camera (its colour changes) and a fixed one, in a non-alphabetical order."""
SCENE = {"width": 160, "height": 120, "wrist_period_s": 2.0}
"""The scene's cameras (4:3) and a fast wrist circle, so the wrist camera's colour moves."""
CHUNKS = 10
KEEP_IMAGES = 300
"""Newest colour images kept per camera (30 s of the scene's 10 Hz)."""
COLOUR_PARAMS = {
    "publish_chunks": True,
    "execution.mode": "receding_horizon",  # unguided: a seam-guided prefix would blend in
    **{f"perception.cameras.{c}.use_color": True for c in RGB_CAMERAS},
}


def colour_metadata(rgb_size):
    """The node's interface (cameras, views, joints) with an RGB branch of colour only;
    actions near the resting pose, so the node can command them."""
    cams = [c.name for c in PerceptionConfig().cameras]
    band = {"min": (Q0 - 0.2).tolist(), "max": (Q0 + 0.2).tolist()}
    return make_metadata(
        TinySpec(horizon=10, history=2, cond_tokens=2, cond_dim=4),
        name="colour",
        joint_names=list(ALOHA_JOINT_NAMES),
        cameras=cams,
        perception=perception_for_episodes(cams, VIEW, color_cameras=RGB_CAMERAS),
        rgb_cameras=RGB_CAMERAS,
        rgb_size=list(rgb_size),
        normalization={"qpos": band, "action": band},
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("rgb_models")
    meta = write_color_model(root / "colour", colour_metadata([40, 30]))
    write_color_model(root / "square", dataclasses.replace(meta, rgb_size=[40, 40]))
    return root, meta


class Observer:
    """This process's view of the graph: the rgb cameras' colour images by stamp, the node's
    chunks, and the robot side (joint states, controllers, diagnostics)."""

    def __init__(self, node):
        self.robot = Robot(node)
        self.images: dict[str, dict[int, np.ndarray]] = {c: {} for c in RGB_CAMERAS}
        self.chunks: list[tuple[int, np.ndarray]] = []
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        for cam in RGB_CAMERAS:
            node.create_subscription(
                Image, f"/{cam}/color/image_raw", lambda m, c=cam: self._on_image(c, m), reliable
            )
        node.create_subscription(JointTrajectory, "/policy/chunks", self._on_chunk, reliable)

    def _on_image(self, cam: str, msg: Image) -> None:
        assert msg.encoding == "rgb8"
        image = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width, 3)
        images = self.images[cam]
        images[stamp_to_ns(msg.header.stamp)] = image
        if len(images) > KEEP_IMAGES:
            del images[min(images)]

    def _on_chunk(self, msg: JointTrajectory) -> None:
        assert list(msg.joint_names) == list(ALOHA_JOINT_NAMES)
        actions = np.array([list(p.positions) for p in msg.points], np.float64)
        self.chunks.append((stamp_to_ns(msg.header.stamp), actions))

    def now_ns(self) -> int:
        return self.robot.node.get_clock().now().nanoseconds

    def chunks_since(self, t_ns: int) -> int:
        return sum(stamp >= t_ns for stamp, _ in self.chunks)

    def commands_since(self, t_ns: int) -> int:
        return sum(
            stamp_to_ns(m.header.stamp) >= t_ns
            for side in self.robot.traj.values()
            for _, m in side
        )

    def suppressed(self, key: str) -> int:
        status = self.robot.last_status()
        values = {} if status is None else {kv.key: kv.value for kv in status.values}
        return int(values.get(f"suppressed {key}", 0))


@pytest.fixture(scope="module")
def graph(ros_domain_id, tmp_path_factory):
    """The synthetic cameras (one process for the module) and this process's side, which has
    received colour images from both rgb cameras before any policy node starts (so it holds
    the images of every observation a node infers on)."""
    tmp = tmp_path_factory.mktemp("policy_rgb")
    env = child_env(ros_domain_id, tmp / "ros_log", FASTDDS_BUILTIN_TRANSPORTS="LARGE_DATA")
    scene = start_process(scene_cmd(**SCENE), env, tmp / "scene.log")
    try:
        with rclpy_session(env, "policy_rgb_checker") as node:
            obs = Observer(node)
            obs.robot.spin_until(
                lambda: all(obs.images.values()) or scene.poll() is not None,
                "colour images of the rgb cameras",
            )
            assert scene.poll() is None, log_tail(scene)
            yield obs, env, tmp
    finally:
        stop_process(scene)


def start_policy_until(graph, model, predicate, what: str):
    """Start the policy node on ``model`` and spin until ``predicate`` holds (it must stay
    alive); returns the running process (stopped on failure)."""
    obs, env, tmp = graph
    proc = start_process(policy_cmd(model, **COLOUR_PARAMS), env, tmp / f"{model.name}.log")
    try:
        obs.robot.spin_until(lambda: predicate() or proc.poll() is not None, what)
        assert proc.poll() is None, log_tail(proc)
    except BaseException:
        stop_process(proc)
        raise
    return proc


def test_chunks_follow_the_colour_of_the_rgb_cameras(graph, models):
    obs, env, tmp = graph
    root, meta = models
    start = obs.now_ns()
    proc = start_policy_until(
        graph, root / "colour", lambda: obs.chunks_since(start) >= CHUNKS, f"{CHUNKS} chunks"
    )
    stop_process(proc)
    assert "no command from this observation" not in read_log(proc), log_tail(proc)
    expected = []
    for stamp, actions in [(t, a) for t, a in obs.chunks if t >= start]:
        missing = [c for c in RGB_CAMERAS if stamp not in obs.images[c]]
        assert not missing, f"no colour image of {missing} at the chunk's stamp {stamp}"
        images = {c: obs.images[c][stamp] for c in RGB_CAMERAS}
        want = color_chunk(meta, rgb_inputs(images, meta.rgb_cameras, meta.rgb_size))
        assert actions.shape == want.shape
        np.testing.assert_allclose(actions, want, rtol=0, atol=1e-5, err_msg=f"stamp {stamp}")
        expected.append(want)
    # the wrist camera's colour changed between observations, and the model's input with it
    # (far beyond the tolerance); the fixed camera's part of every chunk stayed the same
    expected = np.array(expected)
    wrist = [a for a in range(meta.action_dim) if a % 6 < 3]
    fixed = [a for a in range(meta.action_dim) if a % 6 >= 3]
    assert len({round(float(e[0, 0]), 4) for e in expected}) >= 3, expected[:, 0, wrist]
    assert np.ptp(expected[:, :, wrist], axis=0).max() > 1e-3
    assert np.ptp(expected[:, :, fixed], axis=0).max() < 1e-9


def test_colour_the_model_cannot_take_is_skipped_with_a_specific_error(graph, models):
    obs, env, tmp = graph
    root, _ = models
    start = obs.now_ns()
    # a 40x40 RGB input from 160x120 cameras: every observation's colour is refused
    proc = start_policy_until(
        graph,
        root / "square",
        lambda: obs.suppressed("bad_rgb") >= 3,
        "three observations skipped for their colour",
    )
    try:
        assert obs.chunks_since(start) == 0, "a chunk from an observation without usable colour"
        assert obs.commands_since(start) == 0, "a command without usable colour"
        log = read_log(proc)
        assert re.search(
            r"command suppressed: no command from this observation: camera 'cam_left_wrist': "
            r"color image is 160x120 .* rgb_size is 40x40",
            log,
        ), log_tail(proc)
        # throttled: not one line per observation
        assert log.count("color image is 160x120") < obs.suppressed("bad_rgb")
    finally:
        code = stop_process(proc)
    assert code in (0, -2), log_tail(proc)


def test_an_rgb_model_with_views_from_topics_fails_configure_in_one_line(graph, models):
    _, env, tmp = graph
    root, _ = models
    proc = start_process(
        policy_cmd(root / "colour", views_from_topics=True, **COLOUR_PARAMS),
        env,
        tmp / "views_from_topics.log",
    )
    try:
        wait_for_log(proc, r"configure failed")
        proc.wait(timeout=60)
        assert proc.returncode == 2, log_tail(proc)
    finally:
        stop_process(proc)
    (line,) = [ln for ln in read_log(proc).splitlines() if "views_from_topics is true" in ln]
    assert re.search(
        r"configure failed: model 'colour' has an RGB branch \(rgb_cameras "
        r"\['cam_left_wrist', 'cam_high'\]\) but views_from_topics is true: .*no color images",
        line,
    ), line


def test_the_sim_demo_subscribes_to_colour_for_an_rgb_model(models, tmp_path):
    """`clamp demo` / `clamp bench e2e` start the policy node with the sim configs, which
    subscribe to depth only: for an RGB model they turn colour on for exactly its cameras."""
    from clamp_ros.sim_demo import model_color_params

    root, meta = models
    from clamp_core.models.config import preset
    from clamp_core.training.export import export_untrained

    depth_only = tmp_path / "depth_only"
    export_untrained(preset("cpu-small"), depth_only, verify=False)
    assert model_color_params(str(root / "colour")) == {
        f"perception.cameras.{c}.use_color": True for c in meta.rgb_cameras
    }
    assert len(meta.rgb_cameras) == 2
    assert model_color_params(str(depth_only)) == {}
    assert model_color_params(str(root / "missing")) == {}  # the node reports it
