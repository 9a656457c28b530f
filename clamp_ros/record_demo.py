"""`clamp demo --record N --out DIR`: record N teleoperated demos over ROS 2 as an operator would
on the robot, with the scripted expert at the leader arms: per episode the sim resets to the next
seed, the recorder starts (task and instruction set as parameters), the expert moves the leader
arms, and the recorder stops with the sim's success flag. One rosbag2 MCAP bag per episode."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .graph import NodeSpec, ProcessGroup
from .sim_demo import GraphClient

GRAPH = [
    NodeSpec("sim_node", "sim", ("config/sim_record.yaml",)),
    NodeSpec("recorder_node", "recorder", ("config/sim_record.yaml",)),
]
HOLD_AFTER_SUCCESS_S = 0.5
"""Recorded after the task succeeds, as `clamp generate` keeps a few steps after success."""


class Operator(GraphClient):
    """This process's hands on the graph: the services an operator calls."""

    call_timeout_s = 60.0

    def __init__(self, node):
        from rcl_interfaces.srv import SetParameters
        from std_srvs.srv import SetBool, Trigger

        super().__init__(node)
        self.Trigger, self.SetBool, self.SetParameters = Trigger, SetBool, SetParameters
        c = node.create_client
        self.reset = c(Trigger, "/sim/reset")
        self.start_demo = c(Trigger, "/sim/start_demo")
        self.success = c(Trigger, "/sim/success")
        self.rec_start = c(Trigger, "/recorder/start")
        self.rec_stop = c(SetBool, "/recorder/stop")
        self.rec_params = c(SetParameters, "/recorder/set_parameters")

    def trigger(self, client, idempotent: bool = False):
        return self.call(client, self.Trigger.Request(), resend_after_s=5.0 if idempotent else None)

    def set_recorder(self, **values: str) -> None:
        from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue

        req = self.SetParameters.Request(
            parameters=[
                Parameter(
                    name=k,
                    value=ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=v),
                )
                for k, v in values.items()
            ]
        )
        res = self.call(self.rec_params, req, resend_after_s=5.0)
        bad = [r.reason for r in res.results if not r.successful]
        if bad:
            raise RuntimeError(f"recorder parameters refused: {bad}")


def run_record(args, say=print) -> dict:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from clamp_core.sim.tasks import make_task

    from .demo import demo_env

    if args.record < 1:
        raise ValueError(f"--record must be >= 1, got {args.record}")
    task = make_task(args.task)  # an unknown task fails here, before any process starts
    env = demo_env()
    out = Path(args.out).resolve()
    bags = out / "bags"
    bags.mkdir(parents=True, exist_ok=True)
    w, h = (int(x) for x in args.camera_size.lower().split("x"))
    if not (0 < args.camera_rate <= 50 and 0 < args.real_time_factor <= 10):
        raise ValueError(
            f"--camera-rate must be in (0, 50] Hz and --real-time-factor in (0, 10], got "
            f"{args.camera_rate} and {args.real_time_factor}"
        )
    sim_params = {
        "task": args.task,
        "seed": args.seed,
        "width": w,
        "height": h,
        "camera_rate_hz": float(args.camera_rate),
        "real_time_factor": float(args.real_time_factor),
    }
    rec_params = {
        "recorder.output_dir": str(bags),
        "recorder.camera_min_rate_hz": 0.9 * float(args.camera_rate),
    }
    say(
        f"record: sim '{args.task}' with the expert at the leader arms + recorder "
        f"(ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']}, bags in {bags}, logs in {out / 'logs'})"
    )
    episodes = []
    t0 = time.monotonic()
    with ProcessGroup(env, log_dir=out / "logs") as group:
        group.start(GRAPH[0], sim_params)
        group.start(GRAPH[1], rec_params)
        rclpy.init()
        node = rclpy.create_node("clamp_record_operator")
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        op = Operator(node)
        try:
            for k in range(args.record):
                seed = args.seed + k
                if k > 0:
                    op.trigger(op.reset)
                    op.wait_sim(0.2)  # the reset's state reaches every subscriber first
                name = f"{args.task}_seed{seed:05d}"
                op.set_recorder(
                    task=args.task,
                    instruction=task.instruction,
                    operator="scripted expert (sim)",
                    notes=f"clamp demo --record, seed {seed}",
                    episode_name=name,
                )
                started = None
                deadline = time.monotonic() + 120.0
                while time.monotonic() < deadline:  # a start waits for every required topic
                    started = op.trigger(op.rec_start)
                    if started.success or "silent" not in started.message:
                        break
                    op.spin(1.0)
                if not started.success:
                    raise RuntimeError(f"the recorder refused to start: {started.message}")
                op.wait_sim(0.2)  # a moment of rest before the operator moves
                if not op.trigger(op.start_demo).success:
                    raise RuntimeError("the sim refused ~/start_demo")
                start_ns, done = op.sim_ns, False
                while (op.sim_ns - start_ns) * 1e-9 < args.max_seconds:
                    op.spin(0.25)
                    if any(p.poll() is not None for _, p in group.procs):
                        raise RuntimeError(f"a node exited; see the logs in {out / 'logs'}")
                    if op.trigger(op.success, idempotent=True).success:
                        done = True
                        op.wait_sim(HOLD_AFTER_SUCCESS_S)
                        break
                sim_s = (op.sim_ns - start_ns) * 1e-9
                stopped = op.call(op.rec_stop, op.SetBool.Request(data=done))
                episodes.append(
                    {
                        "seed": seed,
                        "success": done,
                        "sim_s": round(sim_s, 2),
                        "bag": str(bags / name),
                        "saved": bool(stopped.success),
                        "recorder": stopped.message,
                    }
                )
                say(
                    f"  episode {k + 1}/{args.record} seed {seed}: "
                    f"{'success' if done else 'FAILURE'} after {sim_s:.1f} s; {stopped.message}"
                )
        finally:
            executor.shutdown()
            node.destroy_node()
            rclpy.try_shutdown()
    summary = {
        "task": args.task,
        "bags_dir": str(bags),
        "episodes": episodes,
        "saved": sum(e["saved"] for e in episodes),
        "successes": sum(e["success"] for e in episodes),
        "wall_s": round(time.monotonic() - t0, 1),
    }
    (out / "record_summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def main_record(args) -> int:
    say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    summary = run_record(args, say)
    if args.json:
        print(json.dumps(summary))
    else:
        say(
            f"recorded {summary['saved']}/{len(summary['episodes'])} bags "
            f"({summary['successes']} successful demos) in {summary['bags_dir']}"
        )
    return 0 if summary["saved"] == len(summary["episodes"]) else 1
