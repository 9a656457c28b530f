"""The real-robot install path: `colcon build` of a fresh clone, then `ros2 run`-style start of
the perception node from the install space.

What a user does on the robot: clone into ``ws/src/clamp_ros``, ``colcon build``, source
``install/setup.bash``, ``ros2 run clamp_ros perception_node --ros-args --params-file ...``.
Sourcing the setup file amounts to AMENT_PREFIX_PATH=<install/clamp_ros>:... and PYTHONPATH=
<install site-packages>:..., which is what these tests set (ros2cli is not available from PyPI,
so `ros2 run` is replaced by the path it resolves to: ``<prefix>/lib/clamp_ros/<executable>``).

The build is a real install (no --symlink-install) from a copy of the sources, so a missing
data_files entry, a wrong script_dir, or a module that only imports from the source tree fails
here. The editable install in the venv (``make setup``) is shadowed by PYTHONPATH, and every check
asserts that the installed copy is the one that ran.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test.ros.conftest import (
    VENV,
    child_env,
    log_tail,
    spin_until,
    start_process,
    stop_process,
    wait_for_log,
)

pytestmark = pytest.mark.ros

PACKAGE = "clamp_ros"
REPO = Path(__file__).resolve().parents[2]
CLONED = [
    "package.xml",
    "setup.py",
    "setup.cfg",
    "resource",
    "clamp_core",
    "clamp_ros",
    "launch",
    "config",
]
"""What a user's clone contributes to the build (no .venv, tests, models, build outputs)."""
EXECUTABLES = ["perception_node", "synthetic_scene_node", "clamp"]
PARAMS = "config/aloha_bimanual.yaml"
BUILD_TIMEOUT_S = 300


def _colcon() -> list[str]:
    exe = Path(sys.executable).parent / "colcon"
    if exe.exists():
        return [str(exe)]
    try:
        import colcon_core  # noqa: F401
    except ImportError:
        pytest.skip("colcon is not installed in this environment (colcon-common-extensions)")
    return [sys.executable, "-m", "colcon"]


class Workspace:
    def __init__(self, root: Path):
        self.root = root
        self.src = root / "src" / PACKAGE
        self.install = root / "install"
        self.prefix = self.install / PACKAGE
        self.share = self.prefix / "share" / PACKAGE
        self.libexec = self.prefix / "lib" / PACKAGE

    @property
    def site_packages(self) -> Path:
        found = sorted(self.prefix.glob("lib/python3*/site-packages"))
        assert len(found) == 1, f"expected one site-packages under {self.prefix}/lib: {found}"
        return found[0]

    def run_env(self, domain_id: int, log_dir: Path) -> dict[str, str]:
        """What `source install/setup.bash` gives a shell (plus the test-run isolation)."""
        return child_env(
            domain_id,
            log_dir,
            AMENT_PREFIX_PATH=os.pathsep.join([str(self.prefix), str(VENV)]),
            PYTHONPATH=str(self.site_packages),
        )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, ros_domain_id: int) -> Workspace:
    """A colcon workspace with a copy of the package, built and installed (once per module)."""
    ws = Workspace(tmp_path_factory.mktemp("colcon_ws"))
    ws.src.mkdir(parents=True)
    for item in CLONED:
        src = REPO / item
        assert src.exists(), f"{item} is missing from the repository"
        if src.is_dir():
            shutil.copytree(
                src,
                ws.src / item,
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
            )
        else:
            shutil.copy2(src, ws.src / item)
    env = child_env(
        ros_domain_id,
        ws.root / "ros_log",
        AMENT_PREFIX_PATH=str(VENV),
        COLCON_HOME=str(ws.root / "colcon_home"),
    )
    cmd = [
        *_colcon(),
        "--log-base",
        str(ws.root / "log"),
        "build",
        "--base-paths",
        str(ws.root / "src"),
        "--build-base",
        str(ws.root / "build"),
        "--install-base",
        str(ws.install),
        "--event-handlers",
        "console_direct+",
    ]
    result = subprocess.run(
        cmd, cwd=ws.root, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S
    )
    (ws.root / "colcon_build.log").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, (
        f"colcon build failed ({result.returncode}):\n{result.stdout[-4000:]}\n"
        f"{result.stderr[-4000:]}"
    )
    assert f"Finished <<< {PACKAGE}" in result.stdout + result.stderr
    return ws


def test_install_layout(workspace: Workspace):
    for name in EXECUTABLES:
        exe = workspace.libexec / name
        assert exe.is_file(), (
            f"{exe} missing: setup.cfg must set install_scripts=$base/lib/{PACKAGE}"
        )
        assert os.access(exe, os.X_OK), f"{exe} is not executable"
        assert not exe.is_symlink(), "expected a real install, not --symlink-install"
        assert not (workspace.prefix / "bin" / name).exists(), (
            f"{name} was also installed to bin/ (ros2 run looks in lib/{PACKAGE})"
        )
    share = workspace.share
    assert (share / "package.xml").is_file()
    assert (share / PARAMS).is_file()
    launch_files = sorted(p.name for p in (REPO / "launch").glob("*.launch.py"))
    assert launch_files, "the repository has no launch files"
    for name in launch_files:
        assert (share / "launch" / name).is_file(), f"launch/{name} was not installed"
    for yaml_file in sorted((REPO / "config").glob("*.yaml")):
        assert (share / "config" / yaml_file.name).is_file(), f"config/{yaml_file.name} missing"
    marker = workspace.prefix / "share" / "ament_index" / "resource_index" / "packages" / PACKAGE
    assert marker.is_file(), "package is not registered in the ament index"
    for pkg in ("clamp_core", "clamp_ros"):
        assert (workspace.site_packages / pkg / "__init__.py").is_file(), f"{pkg} not installed"


def test_install_space_resolves_to_installed_copy(
    workspace: Workspace, ros_domain_id: int, tmp_path: Path
):
    """In the sourced-install environment, Python imports the installed modules (not the source
    tree, not the venv's editable install) and the ament index points at the install space."""
    probe = (
        "import json, sys\n"
        "import clamp_core, clamp_ros, clamp_ros.perception_node as node\n"
        "from ament_index_python.packages import get_package_prefix, "
        "get_package_share_directory\n"
        "from clamp_ros import graph\n"
        "print(json.dumps(dict(node=node.__file__, clamp_ros=clamp_ros.__file__,\n"
        "    clamp_core=clamp_core.__file__, path=sys.path,\n"
        "    share=get_package_share_directory('clamp_ros'),\n"
        "    prefix=get_package_prefix('clamp_ros'), graph_share=str(graph.share_dir()),\n"
        "    exe=graph.executable_path('perception_node'))))\n"
    )
    env = workspace.run_env(ros_domain_id, tmp_path / "ros_log")
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout.strip().splitlines()[-1])
    site = workspace.site_packages.resolve()
    for key in ("node", "clamp_ros", "clamp_core"):
        assert Path(info[key]).resolve().is_relative_to(site), f"{key} imported from {info[key]}"
    assert str(REPO) not in [str(Path(p).resolve()) for p in info["path"] if p]
    assert Path(info["share"]).resolve() == workspace.share.resolve()
    assert Path(info["prefix"]).resolve() == workspace.prefix.resolve()
    assert Path(info["graph_share"]).resolve() == workspace.share.resolve()
    assert Path(info["exe"]).resolve() == (workspace.libexec / "perception_node").resolve()


def test_perception_node_runs_from_install(
    workspace: Workspace, ros_domain_id: int, tmp_path: Path, rclpy_node
):
    """`ros2 run clamp_ros perception_node --ros-args --params-file <share>/config/...` from the
    install space: it comes up, joins the graph, serves its parameters, and stops on Ctrl-C.

    On SIGINT rclpy's handler shuts the context down, ``rclpy.spin`` raises
    ExternalShutdownException (or KeyboardInterrupt), ``main`` catches it, destroys the node and
    returns None, so the process exits with code 0; that is what is asserted.
    """
    from rcl_interfaces.msg import ParameterType
    from rcl_interfaces.srv import GetParameters

    env = workspace.run_env(ros_domain_id, tmp_path / "ros_log")
    cmd = [
        workspace.libexec / "perception_node",
        "--ros-args",
        "--params-file",
        workspace.share / PARAMS,
    ]
    proc = start_process(cmd, env, tmp_path / "perception.log")
    try:
        wait_for_log(proc, r"perception backend '\w+' ready")

        spin_until(
            rclpy_node,
            lambda: "perception" in rclpy_node.get_node_names(),
            what="node 'perception' in the ROS graph",
        )

        client = rclpy_node.create_client(GetParameters, "/perception/get_parameters")
        assert client.wait_for_service(timeout_sec=120), "/perception/get_parameters not served"
        future = client.call_async(
            GetParameters.Request(names=["perception.base_frame", "perception.camera_names"])
        )
        rclpy_node.executor.spin_until_future_complete(future, timeout_sec=120)
        assert future.done(), "no reply from /perception/get_parameters"
        base_frame, cameras = future.result().values
        assert base_frame.type == ParameterType.PARAMETER_STRING
        assert base_frame.string_value == "world"
        assert list(cameras.string_array_value) == [
            "cam_high",
            "cam_low",
            "cam_left_wrist",
            "cam_right_wrist",
        ]
        assert proc.poll() is None, f"node exited early:\n{log_tail(proc)}"
    finally:
        code = stop_process(proc)
    assert code == 0, f"perception_node exited with {code} on SIGINT:\n{log_tail(proc)}"
    log = (tmp_path / "perception.log").read_text()
    assert "Traceback" not in log, log_tail(proc)
