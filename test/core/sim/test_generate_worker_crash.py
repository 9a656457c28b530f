"""A worker process that dies during generation (a segfault in MuJoCo or the GL driver) costs its
own episode one retry, then an "error" result, never the run: the other episodes are all
written, each once, and the CLI names the lost one."""

from __future__ import annotations

import functools
import os
import resource
import signal
from pathlib import Path

from clamp_core import cli
from clamp_core.sim import generate as generate_module
from clamp_core.sim.generate import Job, JobResult, generate

CRASH_SEED = 2
SEEDS = range(5)


def _record_run(job: Job) -> None:
    with open(Path(job.out_dir) / f"runs-{job.seed}", "a") as f:
        f.write(f"{os.getpid()}\n")


def _segfault() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file from the test
    os.kill(os.getpid(), signal.SIGSEGV)


def crash_once(job: Job) -> JobResult:
    """Stand-in for ``run_job``: the worker running CRASH_SEED exits abruptly the first time."""
    _record_run(job)
    marker = Path(job.out_dir) / "crashed"
    if job.seed == CRASH_SEED and not marker.exists():
        marker.touch()
        os._exit(1)
    return JobResult(job.task, job.seed, "written", frames=job.seed)


def crash_always(job: Job) -> JobResult:
    """Stand-in for ``run_job``: the worker running CRASH_SEED segfaults every time."""
    _record_run(job)
    if job.seed == CRASH_SEED:
        _segfault()
    return JobResult(job.task, job.seed, "written", frames=job.seed)


def _runs(out: Path, seed: int) -> list[str]:
    path = out / f"runs-{seed}"
    return path.read_text().split() if path.exists() else []


def test_a_job_whose_worker_dies_once_is_retried_in_a_fresh_process(tmp_path):
    jobs = [Job("dummy", s, str(tmp_path)) for s in SEEDS]
    results = list(generate(jobs, workers=2, progress=False, runner=crash_once))
    assert sorted((r.seed, r.status) for r in results) == [(s, "written") for s in SEEDS]
    (retried,) = [r for r in results if r.seed == CRASH_SEED]
    assert "worker process died on an earlier try (exit code 1)" in retried.message
    first, second = _runs(tmp_path, CRASH_SEED)
    assert first != second  # the retry ran in a new process
    for s in SEEDS:
        if s != CRASH_SEED:
            assert len(_runs(tmp_path, s)) == 1, s  # finished jobs never run twice
    assert all(not r.message for r in results if r.seed != CRASH_SEED)


def test_a_job_that_kills_its_worker_twice_is_an_error_and_the_others_finish(tmp_path):
    jobs = [Job("dummy", s, str(tmp_path)) for s in SEEDS]
    results = list(generate(jobs, workers=2, progress=False, runner=crash_always))
    assert sorted(r.seed for r in results) == list(SEEDS)  # each job's result exactly once
    (lost,) = [r for r in results if r.status != "written"]
    assert (lost.seed, lost.status) == (CRASH_SEED, "error")
    assert "worker process died" in lost.message and f"seed {CRASH_SEED}" in lost.message
    assert "killed by SIGSEGV, then killed by SIGSEGV" in lost.message
    assert len(_runs(tmp_path, CRASH_SEED)) == 2  # tried, and retried once
    for s in SEEDS:
        if s != CRASH_SEED:
            assert len(_runs(tmp_path, s)) == 1, s


def test_cli_reports_the_lost_episode_in_one_line_and_fails(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(
        generate_module, "generate", functools.partial(generate, runner=crash_always)
    )
    args = ["generate", "--task", "transfer_cube", "--episodes", "4", "--workers", "2"]
    assert cli.main([*args, "--out", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert errors[0].startswith(f"error: transfer_cube seed {CRASH_SEED}: worker process died")
    assert "killed by SIGSEGV" in errors[0]
    written = captured.out.splitlines()[1].split()
    assert written[:2] == ["transfer_cube", "3"] and written[-1] == "1"  # 3 written, 1 error
