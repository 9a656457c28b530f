"""The live graph over Fast DDS: synthetic cameras -> perception node -> this checker.

Both nodes run as their own processes, started from their console scripts with the demo's
parameter file (the node set of launch/synthetic_demo.launch.py). The views that arrive must match
the scene's closed-form geometry: depth equal to ray casting the virtual camera, every XYZ on a
scene surface, wrist views posed by the wrists' tf at the image stamp.
"""

from __future__ import annotations

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from sensor_msgs.msg import Image, PointCloud2

from clamp_core.geometry.camera import PinholeCamera
from clamp_core.geometry.transforms import Transform, look_at, rpy_to_matrix
from clamp_core.perception.config import PerceptionConfig
from clamp_core.sim.synthetic_scene import SyntheticScene
from clamp_ros.conversions import cloud_from_msg, stamp_to_ns
from clamp_ros.graph import GRAPHS, node_command, share_dir
from test.ros.conftest import child_env, rclpy_session, spin_until, start_process, stop_process

pytestmark = pytest.mark.ros

W, H = 320, 240
SCENE_PARAMS = {"width": W, "height": H, "rate_hz": 5.0}
PERCEPTION_PARAMS = {"publish_cloud": True}


@pytest.fixture(scope="module")
def live(ros_domain_id, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("live")
    env = child_env(ros_domain_id, tmp / "ros_log", FASTDDS_BUILTIN_TRANSPORTS="LARGE_DATA")
    procs = []
    try:
        for spec in GRAPHS["synthetic_demo"]:
            extra = SCENE_PARAMS if spec.executable == "synthetic_scene_node" else PERCEPTION_PARAMS
            procs.append(start_process(node_command(spec, extra), env, tmp / f"{spec.name}.log"))
        with rclpy_session(env, "live_checker") as node:
            yield node, procs
    finally:
        for p in procs:
            stop_process(p)


def _expected_pose(view, stamp_ns: int, scene: SyntheticScene) -> Transform:
    if not view.attached:
        return look_at(view.eye, view.target, view.up)
    cam = next(c for c in scene.cameras if c.optical_frame == view.attach_frame)
    offset = np.eye(4)
    offset[:3, :3] = rpy_to_matrix(*view.offset_rpy)
    offset[:3, 3] = view.offset_xyz
    return Transform.from_matrix(scene.camera_pose(cam.name, stamp_ns * 1e-9).matrix() @ offset)


def test_views_over_dds_match_the_scene_geometry(live):
    node, procs = live
    config = PerceptionConfig.from_yaml(share_dir() / "config/synthetic_demo.yaml", "perception")
    names = [v.name for v in config.views]
    received: dict[int, dict[str, Image]] = {}
    clouds: list[PointCloud2] = []
    for n in names:
        node.create_subscription(
            Image,
            f"views/{n}",
            lambda m, n=n: received.setdefault(stamp_to_ns(m.header.stamp), {}).update({n: m}),
            5,
        )
    node.create_subscription(PointCloud2, "fused_points", clouds.append, 2)
    diags: list[DiagnosticStatus] = []
    node.create_subscription(
        DiagnosticArray,
        "/diagnostics",
        lambda m: diags.extend(s for s in m.status if s.name.endswith("perception")),
        10,
    )

    def complete_sets():
        return [s for s, views in received.items() if len(views) == len(names)]

    spin_until(node, lambda: len(complete_sets()) >= 2 and clouds, what="two complete view sets")
    assert all(p.poll() is None for p in procs), "a node died"

    scene = SyntheticScene(width=W, height=H)
    for stamp in complete_sets()[:2]:
        for view in config.views:
            msg = received[stamp][view.name]
            assert (msg.encoding, msg.header.frame_id) == ("32FC4", config.base_frame)
            img = np.frombuffer(msg.data, np.float32).reshape(msg.height, msg.width, 4)
            mask = img[..., 0] > 0
            view_cam = PinholeCamera.from_fov(msg.width, msg.height, view.fov_deg)
            expected, _ = scene.render_pose(_expected_pose(view, stamp, scene), view_cam)
            both = mask & (expected > 0) & _smooth(expected)
            assert both.sum() > 0.15 * mask.size, f"{view.name}: too little overlap"
            gy, gx = np.gradient(expected)
            slack = 0.5 * (np.abs(gx) + np.abs(gy)) + 2e-3  # half a pixel + mm depth quantisation
            ok = np.abs(img[..., 0] - expected) <= slack
            assert ok[both].mean() > 0.98, f"{view.name} at {stamp}: depth disagrees with geometry"
            assert np.percentile(scene.surface_distance(img[mask][:, 1:]), 99) < 3e-3
    cloud = cloud_from_msg(clouds[-1])
    assert len(cloud) > 10_000
    lo, hi = np.asarray(config.workspace_min), np.asarray(config.workspace_max)
    assert np.all((cloud >= lo - 1e-6) & (cloud <= hi + 1e-6))
    assert np.percentile(scene.surface_distance(cloud), 99) < 3e-3

    # diagnostics: input rates per stream, output rate, latency, drops by reason
    def ok_values():
        ok = [d for d in diags if d.level == DiagnosticStatus.OK]
        values = {kv.key: kv.value for kv in ok[-1].values} if ok else {}
        return values if float(values.get("views rate_hz", 0)) > 0 else None

    values = spin_until(node, ok_values, what="an OK perception diagnostic with output")
    for cam in ("cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist"):
        assert float(values[f"{cam}/depth rate_hz"]) > 0
    assert float(values["views rate_hz"]) > 0
    assert float(values["processing_ms p50"]) > 0
    assert values["backend"] in ("numba", "numpy")


def _smooth(depth: np.ndarray, tol: float = 0.01) -> np.ndarray:
    ok = depth > 0
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            shifted = np.roll(np.roll(depth, dy, 0), dx, 1)
            ok &= (np.abs(shifted - depth) < tol) & (shifted > 0)
    return ok
