"""Helpers for tests that start ROS 2 processes and talk to them over DDS.

Fixtures
  ros_domain_id   one ROS_DOMAIN_ID for the whole pytest run (1..101, from the pid; override with
                  CLAMP_TEST_ROS_DOMAIN_ID), so parallel runs on one machine rarely share a graph.
  ros_env         a clean environment dict for child processes (see ``child_env``): this run's
                  domain, localhost-only discovery, ROS_LOG_DIR in tmp_path, no bootstrap guard.
  rclpy_node      an rclpy node in the test process on the same graph as ``ros_env`` children;
                  uses its own rclpy Context, so it never disturbs other tests' rclpy use.

Functions (import with ``from test.ros.conftest import ...``)
  start_process(cmd, env, log_path)   Popen in a new session, stdout+stderr to ``log_path``.
  stop_process(proc)                  SIGINT, wait, then SIGKILL; returns the exit code.
  wait_for(predicate, timeout_s)      poll until true (no fixed sleeps for synchronisation).
  wait_for_log(proc, pattern)         poll the process's log for a regex; fail early if it died.
  spin_until(node, predicate)         spin an rclpy node until a predicate holds.

Why the environment is cleaned: the ROS wheels' bootstrapper re-executes Python once with
LD_LIBRARY_PATH set and marks that with ``_ROS_WHEELS_BOOTSTRAP_COMPLETE``. A child that inherits
both skips its own bootstrap and may load another environment's libraries, so both are removed
and every child bootstraps itself. PYTHONPATH is removed too: callers that want a different
import path (an install space) set it explicitly.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

VENV = Path(sys.prefix)
"""The virtualenv (or prefix) running the tests: also the ament prefix of the ROS wheels."""

STRIPPED_VARS = ("_ROS_WHEELS_BOOTSTRAP_COMPLETE", "LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONHOME")
"""Never inherited by a child process (see the module docstring)."""

ROS_VAR_PREFIXES = ("ROS_", "RMW_", "RCUTILS_", "FASTDDS_", "FASTRTPS_", "AMENT_PREFIX_PATH")
"""Variables that decide which graph a participant joins and how; ``rclpy_node`` copies them
from ``ros_env`` into the test process before rclpy.init."""

DEFAULT_TIMEOUT_S = 120.0
"""Generous: a loaded CI machine can take tens of seconds to import numba and warm up a node."""


# ---------------------------------------------------------------------------------- environment
def domain_id_for_run() -> int:
    """A ROS_DOMAIN_ID in 1..101 for this test run (0, the default of every ROS 2 tool, is
    avoided; ids above 101 can collide with ephemeral ports on Linux)."""
    override = os.environ.get("CLAMP_TEST_ROS_DOMAIN_ID")
    if override:
        return int(override)
    return 1 + os.getpid() % 101


def child_env(
    domain_id: int, log_dir: Path, base: Mapping[str, str] | None = None, **extra: str
) -> dict[str, str]:
    """Environment for a ROS 2 child process.

    Starts from ``base`` (default: os.environ) without STRIPPED_VARS, then sets: this run's
    ROS_DOMAIN_ID, ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, ROS_LOG_DIR=log_dir,
    AMENT_PREFIX_PATH=<venv> unless already set, RMW_IMPLEMENTATION=rmw_fastrtps_cpp unless
    already set, unbuffered and uncolored output (so log files are complete and greppable);
    then ``extra`` (a value of None removes the variable).
    """
    env = {
        k: v for k, v in (os.environ if base is None else base).items() if k not in STRIPPED_VARS
    }
    log_dir.mkdir(parents=True, exist_ok=True)
    env.update(
        ROS_DOMAIN_ID=str(domain_id),
        ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
        ROS_LOG_DIR=str(log_dir),
        PYTHONUNBUFFERED="1",
        RCUTILS_COLORIZED_OUTPUT="0",
        RCUTILS_LOGGING_BUFFERED_STREAM="0",
    )
    env.pop("ROS_LOCALHOST_ONLY", None)  # deprecated; conflicts with the discovery range
    env.setdefault("AMENT_PREFIX_PATH", str(VENV))
    env.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    for k, v in extra.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


@pytest.fixture(scope="session")
def ros_domain_id() -> int:
    return domain_id_for_run()


@pytest.fixture
def ros_env(ros_domain_id: int, tmp_path: Path) -> dict[str, str]:
    """A clean child environment on this run's ROS domain (a fresh dict per test: edit freely)."""
    return child_env(ros_domain_id, tmp_path / "ros_log")


# ---------------------------------------------------------------------------------- processes
def start_process(
    cmd: Sequence[str], env: Mapping[str, str], log_path: Path, cwd: Path | None = None
) -> subprocess.Popen:
    """Start ``cmd`` with stdout and stderr appended to ``log_path``.

    The process gets its own session (process group), so ``stop_process`` also reaches anything
    it spawns and a Ctrl-C on the test run does not hit it twice. ``cwd`` defaults to the log
    file's folder: never the source tree, whose packages would shadow an installed copy for
    ``python -c``. The Popen carries ``log_path`` for ``wait_for_log`` and failure messages.
    """
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")  # noqa: SIM115 (closed by stop_process)
    try:
        proc = subprocess.Popen(
            [str(c) for c in cmd],
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=str(cwd or log_path.parent),
            start_new_session=True,
        )
    except BaseException:
        log.close()
        raise
    proc.log_path = log_path  # type: ignore[attr-defined]
    proc.log_file = log  # type: ignore[attr-defined]
    return proc


def stop_process(proc: subprocess.Popen, timeout_s: float = 20.0, sig: int = signal.SIGINT) -> int:
    """Stop a process started by ``start_process``: ``sig`` (default SIGINT, what Ctrl-C and
    ros2 launch send) to its process group, wait up to ``timeout_s``, then SIGKILL.

    Returns the exit code as Popen reports it (negative = killed by that signal; -9 means it
    ignored ``sig`` and was killed). Safe to call twice or on a process that already exited.
    """
    try:
        if proc.poll() is None:
            _signal_group(proc, sig)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=timeout_s)
    finally:
        log = getattr(proc, "log_file", None)
        if log is not None and not log.closed:
            log.close()
    return proc.returncode


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # start_new_session: the group id is the child's pid
    except ProcessLookupError:
        pass
    except PermissionError:  # not a group leader we own: fall back to the process itself
        proc.send_signal(sig)


def read_log(proc_or_path: subprocess.Popen | Path) -> str:
    path = getattr(proc_or_path, "log_path", proc_or_path)
    try:
        return Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return ""


def log_tail(proc_or_path: subprocess.Popen | Path, lines: int = 40) -> str:
    return "\n".join(read_log(proc_or_path).splitlines()[-lines:])


# ---------------------------------------------------------------------------------- waiting
def wait_for(
    predicate: Callable[[], object],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    interval_s: float = 0.05,
    what: str = "condition",
    details: Callable[[], str] | None = None,
) -> object:
    """Poll ``predicate`` until it returns something truthy (returned) or fail the test;
    ``details()`` is appended to the failure message (e.g. a log tail)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            extra = f"\n{details()}" if details is not None else ""
            pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}{extra}")
        time.sleep(interval_s)


def wait_for_log(
    proc: subprocess.Popen, pattern: str, timeout_s: float = DEFAULT_TIMEOUT_S
) -> re.Match:
    """Wait until the process's log matches the regex ``pattern`` and return the match; fail at
    once (with the log's tail) if the process exits first."""
    rx = re.compile(pattern)

    def check():
        m = rx.search(read_log(proc))
        if m is None and proc.poll() is not None:
            pytest.fail(
                f"process exited with {proc.returncode} before logging /{pattern}/; "
                f"log tail:\n{log_tail(proc)}"
            )
        return m

    return wait_for(
        check,
        timeout_s,
        0.1,
        f"/{pattern}/ in {proc.log_path}",
        details=lambda: f"log tail:\n{log_tail(proc)}",
    )


def spin_until(
    node,
    predicate: Callable[[], object],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    what: str = "condition",
    executor=None,
) -> object:
    """Spin ``node`` in short slices until ``predicate`` holds (returned). Uses ``executor``,
    else the node's own executor (as ``rclpy_node`` sets), else rclpy's global one."""
    import rclpy

    executor = executor or node.executor
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}")
        if executor is not None:
            executor.spin_once(timeout_sec=0.05)
        else:
            rclpy.spin_once(node, timeout_sec=0.05)


def call_service(node, client, request, what: str, timeout_s: float = DEFAULT_TIMEOUT_S):
    """Wait for the service, call it and spin until its answer (returned)."""
    spin_until(node, client.service_is_ready, timeout_s, f"service {what}")
    fut = client.call_async(request)
    spin_until(node, fut.done, timeout_s, f"answer of {what}")
    return fut.result()


def start_recording(node, timeout_s: float = DEFAULT_TIMEOUT_S):
    """Call /recorder/start until it accepts, or refuses for another reason than required
    topics still silent (discovery); returns its last answer."""
    from std_srvs.srv import Trigger

    client = node.create_client(Trigger, "/recorder/start")
    answers = []
    spin_until(
        node,
        lambda: (
            answers.append(call_service(node, client, Trigger.Request(), "start", timeout_s))
            or answers[-1].success
            or "silent" not in answers[-1].message
        ),
        timeout_s,
        "the recorder to start",
    )
    return answers[-1]


# ---------------------------------------------------------------------------------- rclpy
@contextlib.contextmanager
def rclpy_session(env: Mapping[str, str], name: str) -> Iterator:
    """An rclpy node with its own Context and SingleThreadedExecutor (``node.executor``), on the
    graph of processes started with ``env``: the ROS variables of ``env`` (ROS_DOMAIN_ID,
    discovery range, RMW, Fast DDS transports, AMENT_PREFIX_PATH) are put into os.environ before
    rclpy.init, because rcl reads them at init, and restored afterwards."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            if key.startswith(ROS_VAR_PREFIXES):
                mp.setenv(key, value)
        mp.delenv("ROS_LOCALHOST_ONLY", raising=False)
        context = rclpy.Context()
        rclpy.init(context=context)
        node = rclpy.create_node(re.sub(r"[^0-9a-zA-Z_]", "_", name)[:60], context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)  # also sets node.executor
        try:
            yield node
        finally:
            executor.shutdown()
            node.destroy_node()
            if context.ok():
                rclpy.shutdown(context=context)


@pytest.fixture
def rclpy_node(ros_env: dict[str, str], request) -> Iterator:
    """:func:`rclpy_session` for one test; call ``spin_until(node, ...)`` or
    ``node.executor.spin_until_future_complete(future, timeout_sec=...)``."""
    pytest.importorskip("rclpy")
    with rclpy_session(ros_env, f"pytest_{request.node.name}") as node:
        yield node
