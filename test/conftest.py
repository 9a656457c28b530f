"""Shared fixtures: a synthetic RGB-D scene with exact geometry."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # before anything imports mujoco: offscreen rendering

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from clamp_core.geometry import TfBuffer  # noqa: E402
from clamp_core.geometry.image import encode_depth_mm  # noqa: E402
from clamp_core.perception import RgbdFrame  # noqa: E402
from clamp_core.sim.synthetic_scene import SyntheticScene  # noqa: E402


def scene_tf(scene: SyntheticScene, stamp_ns: int, span_ns: int = 100_000_000) -> TfBuffer:
    """A TfBuffer with the scene's static camera mounts and wrist motion around ``stamp_ns``."""
    tf = TfBuffer()
    for cam in scene.cameras:
        tf.set_transform(cam.parent_frame, cam.optical_frame, 0, cam.T_parent_cam, static=True)
    for side in ("left", "right"):
        for t in range(stamp_ns - span_ns, stamp_ns + span_ns + 1, 10_000_000):
            tf.set_transform("world", f"{side}_wrist", t, scene.wrist_pose(side, t * 1e-9))
    return tf


def scene_frames(
    scene: SyntheticScene, stamp_ns: int, float_depth: bool = False
) -> list[RgbdFrame]:
    frames = []
    for cam in scene.cameras:
        depth_m, color = scene.render(cam.name, stamp_ns * 1e-9)
        depth, scale = (depth_m, 1.0) if float_depth else (encode_depth_mm(depth_m), 1e-3)
        frames.append(
            RgbdFrame(cam.name, stamp_ns, cam.optical_frame, scene.intrinsics, depth, scale, color)
        )
    return frames


@pytest.fixture(scope="session")
def small_scene() -> SyntheticScene:
    return SyntheticScene(width=160, height=120)


@pytest.fixture(scope="session")
def scene() -> SyntheticScene:
    return SyntheticScene()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
