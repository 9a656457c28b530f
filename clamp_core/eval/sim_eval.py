"""`clamp eval sim`: a policy in closed loop with the MuJoCo task, in one process, no ROS.

The same pieces as the robot: cameras rendered by the sim, views by the perception pipeline from
depth + extrinsics (``EpisodeRenderer``, the training-time path), the ONNX Runtime policy and
the policy node's own engine (``PolicyEngine``: joint state validation, action history,
restarts, chunk execution in any mode (by default the robot config's: seam_guided with
replan_remaining_steps 30), and
the safety filter). As on the robot, each chunk that arrives becomes a trajectory the simulated
controller follows (a JointTrajectoryController's linear interpolation); a stop holds the arm
where it is. By default inference takes no simulated time
and there is no transport (``latency_steps`` and ``camera_every`` model them): it measures the
model, while `clamp demo` measures the model plus the ROS 2 deployment.
"""

from __future__ import annotations

import time

import numpy as np

from ..geometry.image import encode_depth_mm
from .seams import clips_by_reason, detect_loops, inference_period, summarize_seams


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
    policy=None,
    noise_seed: int | None = 0,
) -> dict:
    """``execution``: an ``ExecutionConfig`` (default: the robot config's, ``NODE_EXECUTION``);
    ``safety``: run the node's safety filter
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
    ``measured`` (T, 14) the joint positions before that step, ``held`` (T,) whether the
    command was a hold (nothing sent yet, or stopped), and ``inference_steps`` (the steps
    where a chunk was requested), ``seam_steps`` (N,) and ``seam_jumps`` (N, 14) where a chunk
    took over and by how much it differed from the plan followed; not JSON, see
    ``clamp_core.eval.plots``. Every episode's result has ``seams`` (``summarize_seams``),
    ``loops`` (``detect_loops`` on the commands, at the median inference period) and
    ``clipped`` (the safety filter's values changed and stops, by reason); the run's result
    has the same over all episodes. ``policy``:
    run this object instead of loading ``model_dir`` (OnnxPolicy's ``metadata``, ``schedule``
    and ``predict``; e.g. a scripted policy), and call its ``start_episode(task, sim, seed)``,
    if it has one, once the arms have rested. ``noise_seed``: the run seed of the diffusion
    noise (each observation's noise comes from it and the observation's stamp, as in the node),
    so an evaluation is reproducible."""
    import dataclasses

    from tqdm import tqdm

    from ..aloha import NODE_EXECUTION
    from ..policy.engine import EngineConfig, Plan, PolicyEngine
    from ..policy.execution import ExecutionConfig
    from ..policy.rgb import rgb_inputs
    from ..policy.runtime import OnnxPolicy
    from ..policy.safety import aloha_defaults
    from ..sim.tasks import make_task
    from ..sim.tasks.base import SuccessMonitor
    from ..training.data import EpisodeRenderer

    if policy is None:
        policy = OnnxPolicy(model_dir, threads=threads, inference_steps=inference_steps)
    elif not isinstance(policy, OnnxPolicy):  # scripted policies draw no diffusion noise
        noise_seed = None
    meta = policy.metadata
    renderer = EpisodeRenderer(meta.perception_config())
    calib = None
    task = make_task(task_name)
    sim = task.make_sim(width=width, height=height)
    results = []
    cams = [c.name for c in meta.perception_config().cameras]
    rgb_cams = list(meta.rgb_cameras)
    monitor = SuccessMonitor(task)
    if latency_steps < 0 or camera_every < 1 or settle_steps < 0:
        raise ValueError(
            f"latency_steps and settle_steps must be >= 0 and camera_every >= 1, got "
            f"{latency_steps}, {settle_steps}, {camera_every}"
        )
    exec_cfg = execution if execution is not None else ExecutionConfig(**NODE_EXECUTION)
    dt_ns = round(1e9 / meta.control_rate_hz)
    joints = list(meta.joint_names)
    safety_cfg = aloha_defaults(joint_names=joints, control_period_s=dt_ns * 1e-9)
    # the policy node's engine, with the sim as its one joint state source and its controller
    engine = PolicyEngine(
        joints,
        {"sim": [(j, i) for i, j in enumerate(joints)]},
        safety_cfg,
        dataclasses.replace(exec_cfg, max_chunk_age_s=safety_cfg.max_chunk_age_s),
        EngineConfig(control_rate_hz=meta.control_rate_hz, seed=noise_seed or 0),
    )
    F, A = meta.action_horizon, meta.action_dim
    clipped: dict[str, int] = {}
    ep_clipped: dict[str, int] = {}
    all_jumps: list[np.ndarray] = []

    def count(key: str, n: int = 1) -> None:
        clipped[key] = clipped.get(key, 0) + n
        ep_clipped[key] = ep_clipped.get(key, 0) + n

    seams: list[tuple[int, np.ndarray]] = []  # the episode's (step, jump (A,))

    def delivered(chunk, now: int, step: int) -> bool:
        ok = engine.deliver(chunk, now)
        if engine.last_seam is not None:
            seams.append((step, engine.last_seam.jump))
        return ok

    for seed in tqdm(list(seeds), desc=f"eval {task_name}", disable=not progress):
        task.reset(sim, seed)
        rest = sim.qpos14()
        for _ in range(settle_steps):
            sim.step(rest)
        if hasattr(policy, "start_episode"):
            policy.start_episode(task, sim, seed)
        monitor.reset()
        # a new episode on a clock that starts again: the node's enable (a fresh start)
        engine.restart(0)
        engine.vouch()
        engine.stopped()
        engine.last_obs_stamp = None
        t0, inferences, pending, hold = time.perf_counter(), 0, None, None
        ep_clipped.clear()
        seams.clear()
        commands: list[np.ndarray] = []
        steps_rec: dict[str, list] = {
            "policy": [],
            "command": [],
            "measured": [],
            "infer": [],
            "held": [],
        }

        def send(now: int) -> None:
            """A chunk arrived: the plan from now goes to the controller (the sim follows it),
            as the node publishes it; a stop holds the arm where it is."""
            nonlocal hold
            times, positions = engine.executor.trajectory(now, engine.cfg.max_points)
            if len(times) == 0:
                return
            if safety:
                plan = engine.safe(times, positions, now, {}, enabled=True)
                for k, n in plan.clipped.items():
                    count(k, n)
            else:
                plan = Plan(times, positions, None, {})
            if plan.ok:
                engine.sent(plan)
                hold = None
            else:
                count("suppressed " + plan.stop.split(":")[0])
                engine.stopped()
                hold = np.clip(sim.qpos14(), *safety_cfg.limits())

        for step in range(task.max_steps):
            now = step * dt_ns
            measured = sim.qpos14()
            check = engine.joint_state("sim", joints, measured, now, now)
            if check.problem is not None:
                count("rejected joint states")
            if pending is not None and step >= pending[0]:
                if delivered(pending[1], now, step):
                    send(now)
                pending = None
            if pending is None and step % camera_every == 0:
                wants, _ = engine.wants(now, now)
                obs = None
                if wants:
                    frame = sim.observe(cameras=cams, render=True, color=bool(rgb_cams))
                    if calib is None:
                        from ..data.episode import CameraCalib

                        calib = {c: CameraCalib.from_pinhole(c, sim.intrinsics[c]) for c in cams}
                    rec = {
                        "stamp_ns": now,
                        "extrinsics": frame.extrinsics,
                        "depth_mm": {c: encode_depth_mm(frame.depth_m[c]) for c in cams},
                    }
                    views = renderer.render_frame(rec, calib).images
                    obs = engine.observation(
                        now,
                        views,
                        meta.action_history,
                        # the node's resize of the colour images (none without an RGB branch)
                        rgb=rgb_inputs(frame.images, rgb_cams, meta.rgb_size) or None,
                        history_stride=meta.action_history_stride,
                    )
                if obs is not None:
                    if noise_seed is None:  # a policy with its own sampling (scripted)
                        chunk = policy.predict(obs)
                    else:
                        chunk = policy.predict(obs, noise=engine.noise(now, (F, A)))
                    inferences += 1
                    steps_rec["infer"].append(step)
                    if latency_steps > 0:
                        pending = (step + latency_steps, chunk)
                    elif delivered(chunk, now, step):
                        send(now)
            planned = engine.tick(now)  # the executor's command: the action history
            if engine.last_plan is not None and safety:
                problem = engine.watchdog(now, {})
                if problem:  # the watchdog cuts a running trajectory, as the node's does
                    count("suppressed " + problem.split(":")[0].split(" (")[0])
                    engine.executor.reset()
                    engine.stopped()
                    hold = np.clip(measured, *safety_cfg.limits())
            if engine.last_plan is not None:
                action = engine.previous_command(now)  # where the controller's plan is now
                if action is None:  # it ended long ago: the controller holds its last point
                    action = engine.last_plan[1][-1]
            else:  # nothing sent yet, or stopped: hold where the arm is
                hold = measured.copy() if hold is None else hold
                action = hold
            commands.append(np.array(action, np.float64))
            if trace:
                steps_rec["policy"].append(
                    np.array(planned if planned is not None else action, np.float64)
                )
                steps_rec["measured"].append(measured)
                steps_rec["command"].append(np.array(action, np.float64))
                steps_rec["held"].append(engine.last_plan is None)
            sim.step(action)
            # success must hold a while; a diverged sim (MuJoCo reset its state) ends it
            if monitor.update(sim) or monitor.diverged:
                break
        jumps = np.array([j for _, j in seams]).reshape(-1, A)
        all_jumps.append(jumps)
        loops = detect_loops(
            np.array(commands).reshape(-1, A),
            inference_period(steps_rec["infer"]),
            dt_ns * 1e-9,
        )
        results.append(
            {
                "seed": int(seed),
                "success": monitor.done,
                "steps": monitor.steps,
                "max_progress": monitor.progress,
                "diverged": monitor.diverged,
                "inferences": inferences,
                "wall_s": round(time.perf_counter() - t0, 2),
                "seams": summarize_seams(jumps, joints),
                "loops": loops.to_dict(),
                "clipped": clips_by_reason(ep_clipped),
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
                "held": np.array(steps_rec["held"], bool),
                "seam_steps": np.array([k for k, _ in seams], np.int64),
                "seam_jumps": jumps,
            }
    sim.close()
    n_ok = sum(r["success"] for r in results)
    failed = [r for r in results if not r["success"]]
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
        "clipped": clips_by_reason(clipped),
        "seams": summarize_seams(np.concatenate(all_jumps or [np.zeros((0, A))]), joints),
        "loops": {
            "episodes": sum(r["loops"]["loop"] for r in results),
            "failed_episodes": sum(r["loops"]["loop"] for r in failed),
            # of those, the sawtooth: the arms end each period where they began it
            "failed_returning": sum(r["loops"]["returning"] for r in failed),
            "failures": len(failed),
            "loop_s": round(sum(r["loops"]["loop_s"] for r in results), 2),
            # how big the loops of failed episodes are (mean of their speeds, rad/s)
            "failed_mean_speed": round(
                float(np.mean([r["loops"]["speed"] for r in failed if r["loops"]["loop"]] or [0])),
                3,
            ),
            # how far they get: 0 a sawtooth, 1 a motion that goes on (mean over them; None
            # without one)
            "failed_mean_progress": _mean_or_none(
                [r["loops"]["progress"] for r in failed if r["loops"]["loop"]]
            ),
        },
        "inference_steps": policy.schedule.cfg.inference_steps,
    }


def _mean_or_none(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 3) if values else None
