"""`clamp bench sim`: control steps per second per worker with four 640x480 RGB-D cameras, and
episode generation throughput with 1 and 2 workers."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from .aloha import START_POSE
from .generate import Job, generate
from .tasks import make_task


def bench_sim(
    task_name: str = "transfer_cube", steps: int = 100, episodes: int = 6, progress: bool = True
) -> dict:
    task = make_task(task_name)
    sim = task.make_sim(width=640, height=480)
    task.reset(sim, 0)
    sim.observe()  # warm up the renderers
    t0 = time.perf_counter()
    for _ in range(steps):
        sim.step(START_POSE)
        sim.observe()
    step_render = steps / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(steps * 5):
        sim.step(START_POSE)
    physics_only = steps * 5 / (time.perf_counter() - t0)
    sim.close()

    gen = {}
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as out:
            jobs = [Job(task_name, s, out, 320, 240) for s in range(episodes)]
            t0 = time.perf_counter()
            results = list(generate(jobs, workers, progress=progress))
            secs = time.perf_counter() - t0
            written = sum(r.status == "written" for r in results)
            size = sum(f.stat().st_size for f in Path(out).rglob("*.hdf5"))
            gen[workers] = {
                "episodes_per_min": 60 * len(results) / secs,
                "written": written,
                "mb_per_episode": size / 1e6 / max(written, 1),
            }
    return {
        "metric": "control steps per second per worker, 4 RGB-D cameras at 640x480",
        "unit": "steps/s",
        "ours": step_render,
        "baseline": None,
        "baseline_name": None,
        "ratio": None,
        "config": {
            "task": task_name,
            "target_steps_per_s": 20,
            "physics_only_steps_per_s": physics_only,
            "generation_320x240": gen,
            "generation_speedup_2_workers": gen[2]["episodes_per_min"] / gen[1]["episodes_per_min"],
            "cpu_count": os.cpu_count(),
        },
    }
