"""Expert data generation: one HDF5 episode per (task, seed), in parallel worker processes.

Each episode is first simulated without cameras (physics is cheap, rendering is not); only if
the expert succeeds is it replayed - MuJoCo is deterministic, so identically - with the four
RGB-D cameras and written. Failed expert episodes are counted and leave no file. Episodes whose
file is already complete are skipped, so an interrupted run resumes where it stopped; files are
published atomically by ``EpisodeWriter``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np

from ..aloha import GRIPPER_INDICES
from ..data.episode import (
    CameraCalib,
    EpisodeMeta,
    EpisodeWriteError,
    EpisodeWriter,
    episode_path,
    is_complete,
)
from ..geometry.image import encode_depth_mm
from .aloha import CONTROL_DT, JOINT_NAMES, SimError
from .tasks import make_task

HOLD_AFTER_SUCCESS = 25
"""Steps recorded after the success detector fires (0.5 s of the goal state)."""
WORKER_THREADS = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
    "LP_NUM_THREADS": "1",  # Mesa llvmpipe's rasteriser threads
}
"""Thread pools of each worker process when there are several: every library sizes its pool to
the machine, so N workers would run N pools of N threads each. Variables already set in the
environment are left as they are."""
WORKER_DEATH_RETRIES = 1
"""Times a job is run again, in a fresh process, after the worker process running it died: a
segfault can be a one-off. A job that still kills its worker is an "error" result."""


@dataclass(frozen=True)
class Job:
    task: str
    seed: int
    out_dir: str
    width: int = 640
    height: int = 480
    compression: str | None = "gzip"
    """Of images and depth: 'gzip', 'lzf' or None (see ``EpisodeWriter``)."""
    rest_steps: int = 0
    """Control steps the arms hold their start pose before the expert starts and recording
    begins: they sag a few mrad under gravity, as a robot's arms do before an episode (0: the
    episode starts at the exact reset pose)."""
    start_jitter: float = 0.0
    """Uniform +-rad added to every arm joint's start pose (grippers untouched) during the
    rest, from a generator seeded with the episode seed; needs rest_steps to reach it."""


@dataclass(frozen=True)
class JobResult:
    task: str
    seed: int
    status: str
    """written | skipped | failed (the expert did not succeed) | error."""
    frames: int = 0
    seconds: float = 0.0
    message: str = ""


_SIMS: dict = {}  # per worker process: (task name, size) -> (task, sim)


def _task_sim(name: str, width: int, height: int):
    key = (name, width, height)
    if key not in _SIMS:
        task = make_task(name)
        _SIMS[key] = (task, task.make_sim(width=width, height=height))
    return _SIMS[key]


def _rollout(
    task, sim, seed: int, record=None, rest_steps: int = 0, start_jitter: float = 0.0
) -> tuple[bool, int]:
    """Run the expert from ``seed``; ``record(step, frame, action)`` is called before each step
    when given. Returns (success, steps)."""
    task.reset(sim, seed)
    if rest_steps > 0:  # not recorded: the episode starts from the rested arms
        start = sim.qpos14().copy()
        if start_jitter > 0:
            arm = [i for i in range(len(start)) if i not in GRIPPER_INDICES]
            rng = np.random.default_rng([seed, 1])  # apart from the expert's stream
            start[arm] += rng.uniform(-start_jitter, start_jitter, len(arm))
        for _ in range(rest_steps):
            sim.step(start)
    expert = task.expert(sim, np.random.default_rng(seed))
    done_at = None
    for step in range(task.max_steps):
        action = expert.act(sim)
        if record is not None:
            record(step, sim.observe(render=True), action)
        sim.step(action)
        if sim.diverged:
            return False, step + 1
        if done_at is None and task.success(sim):
            done_at = step
        if done_at is not None and step - done_at >= HOLD_AFTER_SUCCESS:
            return True, step + 1
    return done_at is not None, task.max_steps


def run_job(job: Job) -> JobResult:
    t0 = time.perf_counter()
    path = episode_path(job.out_dir, job.task, job.seed)
    if is_complete(path):
        return JobResult(job.task, job.seed, "skipped")
    try:
        task, sim = _task_sim(job.task, job.width, job.height)
        ok, _ = _rollout(task, sim, job.seed, None, job.rest_steps, job.start_jitter)
        if not ok:
            return JobResult(job.task, job.seed, "failed", seconds=time.perf_counter() - t0)
        meta = EpisodeMeta(
            task=task.name,
            instruction=task.instruction,
            sim=True,
            fps=1.0 / CONTROL_DT,
            seed=job.seed,
            joint_names=list(JOINT_NAMES),
            camera_names=[c.name for c in sim.cameras],
            object_names=list(task.object_names),
            writer="clamp generate",
        )
        cams = [CameraCalib.from_pinhole(n, sim.intrinsics[n]) for n in meta.camera_names]
        with EpisodeWriter(
            path,
            meta,
            cams,
            compression=job.compression,
            depth_compression=job.compression,
            create_dirs=True,
        ) as writer:

            def record(step, frame, action):
                writer.add_frame(
                    stamp_ns=int(round(step * CONTROL_DT * 1e9)),
                    qpos=frame.qpos,
                    qvel=frame.qvel,
                    effort=frame.effort,
                    action=action,
                    images=frame.images,
                    depth_mm={k: encode_depth_mm(v) for k, v in frame.depth_m.items()},
                    extrinsics=frame.extrinsics,
                    object_positions=task.object_positions(sim),
                    task_progress=int(task.progress(sim)),
                )

            ok, steps = _rollout(task, sim, job.seed, record, job.rest_steps, job.start_jitter)
            if not ok:  # cannot happen for a deterministic replay; never keep a failure
                writer.discard()
                return JobResult(
                    job.task,
                    job.seed,
                    "failed",
                    seconds=time.perf_counter() - t0,
                    message="replay diverged from the dry run",
                )
            writer.close(success=True)
        return JobResult(job.task, job.seed, "written", steps, time.perf_counter() - t0)
    except (EpisodeWriteError, SimError, OSError) as e:
        return JobResult(job.task, job.seed, "error", message=str(e))


def check_output_dir(out_dir: str) -> None:
    """Fail early, with a clear message, when the output folder cannot be written."""
    probe = os.path.join(out_dir, f".clamp-write-test-{os.getpid()}")
    try:
        os.makedirs(out_dir, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"x")
    except OSError as e:
        raise EpisodeWriteError(f"output folder '{out_dir}' is not writable: {e}") from e
    finally:
        if os.path.exists(probe):
            os.remove(probe)


def generate(
    jobs: list[Job],
    workers: int = 1,
    progress: bool = True,
    runner: Callable[[Job], JobResult] = run_job,
):
    """Run ``jobs`` on ``workers`` processes (in this one when ``workers <= 1``); yields their
    JobResults as they finish. A worker process that dies costs its own job one retry, then an
    "error" result, never the run (see ``_run_in_processes``). ``runner`` runs one job; another
    one must be a module-level function, for the spawned workers to import it."""
    try:
        from tqdm import tqdm
    except ImportError:  # progress is a nicety
        tqdm = None
    bar = tqdm(total=len(jobs), unit="ep", disable=not progress) if tqdm else None
    if workers <= 1:
        results = map(runner, jobs)
    else:
        results = _run_in_processes(runner, jobs, workers)
    counts: dict[str, int] = {}
    try:
        for r in results:
            counts[r.status] = counts.get(r.status, 0) + 1
            if bar is not None:
                bar.set_postfix(counts)
                bar.update(1)
            yield r
    finally:
        if bar is not None:
            bar.close()
        if workers > 1:
            results.close()  # kills the workers when the caller stops early


def _run_in_processes(runner: Callable[[Job], JobResult], jobs: list[Job], workers: int):
    """Yield ``runner(job)`` for each of ``jobs`` as they finish, from ``workers`` spawned
    processes (MuJoCo's GL contexts do not survive a fork).

    Each process gets one job at a time, so one that dies - a segfault in MuJoCo or the GL
    driver, the OOM killer - is charged to the job it was running, and only it is replaced: the
    others keep their episode, simulators and renderers. (A shared pool cannot do this: Pool
    waits forever for the lost job, ProcessPoolExecutor fails every job in flight.)
    """
    context = mp.get_context("spawn")
    todo = deque(range(len(jobs)))
    deaths: dict[int, list[str]] = {}  # job index -> how each process that ran it ended
    idle: list[_WorkerProcess] = []
    running: dict[Future, tuple[_WorkerProcess, int]] = {}
    try:
        while todo or running:
            while todo and len(running) < workers:
                worker = idle.pop() if idle else _WorkerProcess(context)
                i = todo.popleft()
                try:
                    future = worker.submit(runner, jobs[i])
                except BrokenProcessPool:  # it died while idle: the job never reached it
                    worker.end()
                    worker = _WorkerProcess(context)
                    future = worker.submit(runner, jobs[i])
                running[future] = (worker, i)
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                worker, i = running.pop(future)
                job = jobs[i]
                if isinstance(future.exception(), BrokenProcessPool):
                    deaths.setdefault(i, []).append(worker.end())
                    if len(deaths[i]) <= WORKER_DEATH_RETRIES:
                        todo.appendleft(i)
                        continue
                    result = JobResult(
                        job.task,
                        job.seed,
                        "error",
                        message=f"worker process died on every try at {job.task} seed "
                        f"{job.seed} ({', then '.join(deaths[i])}); no episode written",
                    )
                else:
                    idle.append(worker)
                    result = future.result()  # a job's own exception ends the run, as before
                    if i in deaths:  # recovered: say so, a crash is worth knowing about
                        note = (
                            f"worker process died on an earlier try ({', then '.join(deaths[i])})"
                        )
                        result = replace(
                            result, message="; ".join(filter(None, [result.message, note]))
                        )
                yield result
    finally:
        for worker in idle + [w for w, _ in running.values()]:
            worker.kill()


class _WorkerProcess:
    """One spawned process that runs one job at a time: a one-worker ProcessPoolExecutor."""

    def __init__(self, context):
        self._pool = ProcessPoolExecutor(1, mp_context=context)
        self._process = None

    def submit(self, runner, job: Job) -> Future:
        with _environment(WORKER_THREADS):  # the process starts in the first submit
            future = self._pool.submit(runner, job)
        if self._process is None:
            # the executor has no public handle on its process; this one tells how it ended
            processes = getattr(self._pool, "_processes", None) or {}
            self._process = next(iter(processes.values()), None)
        return future

    def end(self) -> str:
        """Clean up after the process died; says how it ended ("killed by SIGSEGV")."""
        self._pool.shutdown(wait=True)
        code = self._process.exitcode if self._process is not None else None
        if code is None:
            return "exit status unknown"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"

    def kill(self) -> None:
        """Stop now, dropping any episode in progress (its file is never published)."""
        if self._process is not None:
            self._process.terminate()
        self._pool.shutdown(wait=True, cancel_futures=True)


@contextmanager
def _environment(defaults: dict[str, str]):
    """Set the variables of ``defaults`` that are not set yet, for the duration of the block."""
    added = [k for k in defaults if k not in os.environ]
    os.environ.update({k: defaults[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)
