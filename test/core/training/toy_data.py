"""Small, fast episodes for training tests: one cube per episode on the analytic table scene,
and actions that reach toward it, so images, actions and text are genuinely related."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clamp_core.data.episode import CameraCalib, EpisodeMeta, EpisodeWriter, episode_path
from clamp_core.sim.synthetic_scene import Box, SyntheticScene


def toy_actions(cube: np.ndarray, frames: int) -> np.ndarray:
    """(frames, 14): both arms move in proportion to the cube position as time goes on."""
    s = np.linspace(0.0, 1.0, frames)[:, None]
    cx, cy = float(cube[0]), float(cube[1])
    left = np.concatenate(
        [
            np.full_like(s, 2 * cx),
            np.full_like(s, 2 * cy),
            s,
            s * cx * 4,
            s * cy * 4,
            np.zeros_like(s),
            1.0 - s,
        ],
        axis=1,
    )
    right = np.concatenate([-left[:, :6], s], axis=1)
    return np.concatenate([left, right], axis=1).astype(np.float32)


def write_toy_episodes(
    out: Path, n: int, frames: int = 24, size=(64, 48), seed: int = 0, task: str = "toy_reach"
) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for k in range(n):
        cube = np.array([rng.uniform(-0.3, 0.3), rng.uniform(-0.2, 0.2), 0.03])
        scene = SyntheticScene(
            boxes=[Box("cube", tuple(cube), (0.03, 0.03, 0.03), (220, 40, 40))],
            width=size[0],
            height=size[1],
        )
        meta = EpisodeMeta(
            task=task,
            instruction="reach for the red cube",
            sim=True,
            fps=50.0,
            seed=seed + k,
            object_names=["cube"],
        )
        calibs = [CameraCalib.from_pinhole(c.name, scene.intrinsics) for c in scene.cameras]
        actions = toy_actions(cube, frames)
        path = episode_path(out, task, seed + k)
        with EpisodeWriter(path, meta, calibs, create_dirs=True) as w:
            for t in range(frames):
                t_s = t / 50.0
                images, depth, ext = {}, {}, {}
                for c in scene.cameras:
                    d, rgb = scene.render(c.name, t_s)
                    images[c.name] = rgb
                    depth[c.name] = np.round(d * 1000).astype(np.uint16)
                    ext[c.name] = scene.camera_pose(c.name, t_s).matrix()
                q = actions[max(t - 1, 0)]
                w.add_frame(
                    int(t_s * 1e9) + 1,
                    q,
                    np.zeros(14),
                    np.zeros(14),
                    actions[t],
                    images,
                    depth,
                    ext,
                    object_positions=cube[None],
                    task_progress=int(t >= frames // 2),
                )
            w.close(success=True)
        paths.append(path)
    return paths
