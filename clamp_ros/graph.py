"""The node sets of each launch configuration: one source of truth for `ros2 launch` and for
`clamp demo` (which starts the same executables with the same parameter files where the
`launch` package is not installed)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = "clamp_ros"


@dataclass(frozen=True)
class NodeSpec:
    executable: str
    name: str
    params: tuple[str, ...] = ()
    """Parameter files, relative to the package's share directory."""
    overrides: dict = field(default_factory=dict)
    """Single parameters (``-p name:=value``), applied after the files."""


GRAPHS: dict[str, list[NodeSpec]] = {
    # synthetic cameras -> perception: the no-robot demo of the perception stack
    "synthetic_demo": [
        NodeSpec("synthetic_scene_node", "synthetic_scene", ("config/synthetic_demo.yaml",)),
        NodeSpec("perception_node", "perception", ("config/synthetic_demo.yaml",)),
    ],
    # simulated ALOHA (MuJoCo) -> perception: the robot's topics without the robot
    "sim_aloha": [
        NodeSpec("sim_node", "sim", ("config/sim_aloha.yaml",)),
        NodeSpec("perception_node", "perception", ("config/sim_aloha.yaml",)),
    ],
    # simulated ALOHA driven closed-loop by the policy node (perception in-process)
    "sim_demo": [
        NodeSpec("sim_node", "sim", ("config/sim_demo.yaml",)),
        NodeSpec("policy_node", "policy", ("config/sim_demo.yaml",)),
    ],
    # real robot: the policy node (perception in-process) on the real cameras and arms
    "aloha_bimanual": [
        NodeSpec("policy_node", "policy", ("config/aloha_bimanual.yaml",)),
    ],
    # real robot: the demo recorder (one rosbag2 MCAP bag per teleoperated episode)
    "aloha_record": [
        NodeSpec("recorder_node", "recorder", ("config/aloha_bimanual.yaml",)),
    ],
    # real robot: perception on the real cameras
    "aloha_perception": [
        NodeSpec("perception_node", "perception", ("config/aloha_bimanual.yaml",)),
    ],
}


def share_dir() -> Path:
    """The package's share directory: from the ament index when installed (colcon, or the pip
    environment that `make setup` registers), else the source tree."""
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory(PACKAGE))
    except Exception:  # not installed in an ament prefix: running from the source tree
        return Path(__file__).resolve().parents[1]


def executable_path(name: str) -> str:
    """Where `ros2 run clamp_ros <name>` would find it (``<prefix>/lib/clamp_ros``), else PATH."""
    try:
        from ament_index_python.packages import get_package_prefix

        candidate = Path(get_package_prefix(PACKAGE)) / "lib" / PACKAGE / name
        if candidate.exists():
            return str(candidate)
    except Exception:
        pass
    found = shutil.which(name) or str(Path(sys.executable).parent / name)
    return found


def node_command(spec: NodeSpec, extra_params: dict | None = None) -> list[str]:
    cmd = [executable_path(spec.executable), "--ros-args", "-r", f"__node:={spec.name}"]
    for p in spec.params:
        cmd += ["--params-file", str(share_dir() / p)]
    for k, v in {**spec.overrides, **(extra_params or {})}.items():
        # node-scoped: a plain -p loses to the node's own section of a params file
        cmd += ["-p", f"{spec.name}:{k}:={_fmt(v)}"]
    return cmd


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_fmt(x) for x in v) + "]"
    return str(v)


class ProcessGroup:
    """Starts node processes and stops them cleanly (SIGINT, then SIGTERM, then SIGKILL)."""

    def __init__(self, env: dict | None = None, log_dir: Path | None = None):
        self.env = {**os.environ, **(env or {})}
        self.log_dir = log_dir
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, spec: NodeSpec, extra_params: dict | None = None) -> subprocess.Popen:
        out = subprocess.DEVNULL
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"{spec.name}.log", "w")  # noqa: SIM115 (closed by OS)
        proc = subprocess.Popen(
            node_command(spec, extra_params),
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append((spec.name, proc))
        return proc

    def stop(self, timeout_s: float = 5.0) -> dict[str, int]:
        codes = {}
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            alive = [(n, p) for n, p in self.procs if p.poll() is None]
            if not alive:
                break
            for _, p in alive:
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    pass
            for _, p in alive:
                try:
                    p.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    pass
        for n, p in self.procs:
            codes[n] = p.poll()
        return codes

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
