"""`clamp eval sim`: a policy in closed loop with the MuJoCo task, in one process, no ROS.

The same pieces as the robot: cameras rendered by the sim, views by the perception pipeline from
depth + extrinsics (``EpisodeRenderer``, the training-time path), the ONNX Runtime policy and
the chunk executor in receding-horizon mode. Zero transport latency and no clock: it measures
the model, while `clamp demo` measures the model plus the ROS 2 deployment.
"""

from __future__ import annotations

import time
from collections import deque

import numpy as np

from ..geometry.image import encode_depth_mm


def evaluate(
    model_dir,
    task_name: str,
    seeds,
    width: int = 320,
    height: int = 240,
    execute_steps: int = 10,
    camera_every: int = 5,
    progress: bool = True,
    threads: int = 0,
    inference_steps: int | None = None,
) -> dict:
    from tqdm import tqdm

    from ..policy.runtime import OnnxPolicy, PolicyObservation
    from ..sim.tasks import make_task
    from ..sim.tasks.base import SuccessMonitor
    from ..training.data import EpisodeRenderer

    policy = OnnxPolicy(model_dir, threads=threads, inference_steps=inference_steps)
    meta = policy.metadata
    renderer = EpisodeRenderer(meta.perception_config())
    calib = None
    task = make_task(task_name)
    sim = task.make_sim(width=width, height=height)
    results = []
    cams = [c.name for c in meta.perception_config().cameras]
    monitor = SuccessMonitor(task)
    for seed in tqdm(list(seeds), desc=f"eval {task_name}", disable=not progress):
        task.reset(sim, seed)
        monitor.reset()
        history: deque = deque(maxlen=max(meta.action_history, 1))
        chunk, k, views = None, 0, None
        t0 = time.perf_counter()
        for step in range(task.max_steps):
            if chunk is None or k >= execute_steps:
                frame = sim.observe(cameras=cams, render=True, color=False)
                if calib is None:
                    from ..data.episode import CameraCalib

                    calib = {c: CameraCalib.from_pinhole(c, sim.intrinsics[c]) for c in cams}
                rec = {
                    "stamp_ns": step * 20_000_000,
                    "extrinsics": frame.extrinsics,
                    "depth_mm": {c: encode_depth_mm(frame.depth_m[c]) for c in cams},
                }
                views = renderer.render_frame(rec, calib).images
                qpos = frame.qpos
                hist = list(history)  # padded with the measured position, as the node does
                hist = [qpos] * (meta.action_history - len(hist)) + hist
                obs = PolicyObservation(
                    step * 20_000_000, views, qpos, np.array(hist[-meta.action_history :])
                )
                chunk, k = policy.predict(obs), 0
            action = chunk.actions[k]
            k += 1
            sim.step(action)
            history.append(action)
            # success must hold a while; a diverged sim (MuJoCo reset its state) ends it
            if monitor.update(sim) or monitor.diverged:
                break
        results.append(
            {
                "seed": int(seed),
                "success": monitor.done,
                "steps": monitor.steps,
                "max_progress": monitor.progress,
                "diverged": monitor.diverged,
                "wall_s": round(time.perf_counter() - t0, 2),
            }
        )
    sim.close()
    n_ok = sum(r["success"] for r in results)
    return {
        "task": task_name,
        "model": str(model_dir),
        "episodes": results,
        "successes": n_ok,
        "success_rate": n_ok / max(len(results), 1),
        "execute_steps": execute_steps,
        "inference_steps": policy.schedule.cfg.inference_steps,
    }
