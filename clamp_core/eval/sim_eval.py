"""`clamp eval sim`: a policy in closed loop with the MuJoCo task, in one process, no ROS.

The same pieces as the robot: cameras rendered by the sim, views by the perception pipeline from
depth + extrinsics (``EpisodeRenderer``, the training-time path), the ONNX Runtime policy and
the policy node's chunk executor (``ChunkExecutor``, any execution mode; by default the one the
demo and robot configs use) and its safety filter (the ALOHA limits, every command limited from
the previous one and against the measured state). By default inference takes no simulated time
and there is no transport (``latency_steps`` and ``camera_every`` model them): it measures the
model, while `clamp demo` measures the model plus the ROS 2 deployment.
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
    execution=None,
    progress: bool = True,
    threads: int = 0,
    inference_steps: int | None = None,
    safety: bool = True,
    latency_steps: int = 0,
    camera_every: int = 1,
    settle_steps: int = 5,
    trace: bool = False,
) -> dict:
    """``execution``: an ``ExecutionConfig`` (default: ``ExecutionConfig(mode="async")``, as in
    config/aloha_bimanual.yaml and the demo); ``safety``: run the node's safety filter
    (``aloha_defaults``) on every command (False: the policy's commands as they are);
    ``latency_steps``: control steps from an observation to its chunk's arrival (the
    deployment's stamp-to-command latency; 0: inference takes no simulated time);
    ``camera_every``: control steps between camera frames (observations only on those);
    ``settle_steps``: control steps the arms rest at the reset pose before the first
    observation: they sag a few mrad under gravity, as on a robot. Default 5: in `clamp demo`
    the policy's first frame after a reset comes about one camera period later; 0: the exact
    reset pose every demo starts from. ``trace``: each episode's result also holds
    ``trace``, numpy arrays per control step: ``t_s`` (T,), ``policy`` (T, 14) what the
    executor planned, ``command`` (T, 14) what the sim was sent (after the safety filter),
    ``measured`` (T, 14) the joint positions before that step, and ``inference_steps`` (the
    steps where a chunk was requested); not JSON, see ``clamp_core.eval.plots``."""
    import dataclasses

    from tqdm import tqdm

    from ..policy.execution import ChunkExecutor, ExecutionConfig
    from ..policy.runtime import OnnxPolicy, PolicyObservation
    from ..policy.safety import SafetyFilter, aloha_defaults
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
    if latency_steps < 0 or camera_every < 1 or settle_steps < 0:
        raise ValueError(
            f"latency_steps and settle_steps must be >= 0 and camera_every >= 1, got "
            f"{latency_steps}, {settle_steps}, {camera_every}"
        )
    exec_cfg = execution if execution is not None else ExecutionConfig(mode="async")
    executor = ChunkExecutor(exec_cfg, meta.joint_names)
    dt_ns = round(1e9 / meta.control_rate_hz)
    filt = SafetyFilter(
        aloha_defaults(joint_names=list(meta.joint_names), control_period_s=dt_ns * 1e-9)
    )
    clipped: dict[str, int] = {}
    for seed in tqdm(list(seeds), desc=f"eval {task_name}", disable=not progress):
        task.reset(sim, seed)
        rest = sim.qpos14()
        for _ in range(settle_steps):
            sim.step(rest)
        monitor.reset()
        executor.reset()
        history: deque = deque(maxlen=max(meta.action_history, 1))
        t0, inferences, previous, pending = time.perf_counter(), 0, None, None
        steps_rec: dict[str, list] = {"policy": [], "command": [], "measured": [], "infer": []}
        for step in range(task.max_steps):
            now = step * dt_ns
            if pending is not None and step >= pending[0]:
                executor.add_chunk(pending[1], now_ns=now)
                pending = None
            if pending is None and step % camera_every == 0 and executor.needs_inference(now):
                frame = sim.observe(cameras=cams, render=True, color=False)
                if calib is None:
                    from ..data.episode import CameraCalib

                    calib = {c: CameraCalib.from_pinhole(c, sim.intrinsics[c]) for c in cams}
                rec = {
                    "stamp_ns": now,
                    "extrinsics": frame.extrinsics,
                    "depth_mm": {c: encode_depth_mm(frame.depth_m[c]) for c in cams},
                }
                views = renderer.render_frame(rec, calib).images
                qpos = frame.qpos
                hist = list(history)  # padded with the measured position, as the node does
                hist = [qpos] * (meta.action_history - len(hist)) + hist
                obs = PolicyObservation(now, views, qpos, np.array(hist[-meta.action_history :]))
                chunk = policy.predict(obs)
                inferences += 1
                steps_rec["infer"].append(step)
                if latency_steps > 0:
                    pending = (step + latency_steps, chunk)
                else:
                    executor.add_chunk(chunk, now_ns=now)
            action = executor.command_at(now)
            if action is None:  # nothing planned (yet): hold, as the node does
                action = sim.qpos14() if previous is None else previous
            history.append(action)  # what the policy asked for, as the node records it
            if trace:
                steps_rec["policy"].append(np.array(action, np.float64))
                steps_rec["measured"].append(sim.qpos14())
            if safety:  # as the node: from the previous command, against the measured state
                res = filt.filter(
                    np.array([now]),
                    action[None],
                    sim.qpos14(),
                    now,
                    {},
                    now,
                    True,
                    previous=previous,
                )
                if res.ok:
                    action = previous = res.positions[0]
                else:  # stopped, as the node: hold where the arm is, plan from there again
                    action, previous = res.hold_position, None
                    key = "suppressed " + res.suppressed.split(":")[0]
                    clipped[key] = clipped.get(key, 0) + 1
                for k, n in res.clipped.items():
                    clipped[k] = clipped.get(k, 0) + n
            if trace:
                steps_rec["command"].append(np.array(action, np.float64))
            sim.step(action)
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
                "inferences": inferences,
                "wall_s": round(time.perf_counter() - t0, 2),
            }
        )
        if trace:
            n = len(steps_rec["command"])
            results[-1]["trace"] = {
                "t_s": np.arange(n) * dt_ns * 1e-9,
                "policy": np.array(steps_rec["policy"]).reshape(n, -1),
                "command": np.array(steps_rec["command"]).reshape(n, -1),
                "measured": np.array(steps_rec["measured"]).reshape(n, -1),
                "inference_steps": np.array(steps_rec["infer"], np.int64),
            }
    sim.close()
    n_ok = sum(r["success"] for r in results)
    return {
        "task": task_name,
        "model": str(model_dir),
        "episodes": results,
        "successes": n_ok,
        "success_rate": n_ok / max(len(results), 1),
        "execution": dataclasses.asdict(exec_cfg),
        "safety": safety,
        "latency_steps": latency_steps,
        "camera_every": camera_every,
        "settle_steps": settle_steps,
        "clipped": clipped,
        "inference_steps": policy.schedule.cfg.inference_steps,
    }
