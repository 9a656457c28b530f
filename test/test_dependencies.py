"""Every third-party module the package imports is either declared in package.xml (so `rosdep
install` brings it on a robot) or listed here as pip-only with the reason; a new import fails
this test until someone decides which."""

from __future__ import annotations

import ast
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ROSDEP = {  # module -> rosdep key (exec_depend)
    "numpy": "python3-numpy",
    "yaml": "python3-yaml",
    "cv2": "python3-opencv",
    "h5py": "python3-h5py",
    "tqdm": "python3-tqdm",
    "matplotlib": "python3-matplotlib",
    "ament_index_python": "ament_index_python",
    "rclpy": "rclpy",
    "builtin_interfaces": "builtin_interfaces",
    "std_msgs": "std_msgs",
    "std_srvs": "std_srvs",
    "sensor_msgs": "sensor_msgs",
    "geometry_msgs": "geometry_msgs",
    "trajectory_msgs": "trajectory_msgs",
    "diagnostic_msgs": "diagnostic_msgs",
    "lifecycle_msgs": "lifecycle_msgs",
    "rcl_interfaces": "rcl_interfaces",
    "tf2_msgs": "tf2_msgs",
    "rosgraph_msgs": "rosgraph_msgs",
    "launch": "launch",
    "launch_ros": "launch_ros",
}
PIP_ONLY = {  # module -> why it is not a rosdep dependency (README: "On a real robot")
    "onnxruntime": "no rosdep key; CPU or CUDA build is the user's choice",
    "numba": "optional fast perception kernels; numpy fallback",
    "rosbags": "recording and bag conversion; no rosdep key",
    "mcap": "bag recovery; no rosdep key",
    "torch": "training and export only (a workstation, not the robot)",
    "onnx": "export only",
    "onnxscript": "export only",
    "mujoco": "simulation only",
    "gym_aloha": "simulation comparison only",
    "open3d": "benchmark baseline only",
    "interbotix_xs_msgs": "from the user's Interbotix workspace",
}


def _imports() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for pkg in ("clamp_core", "clamp_ros"):
        for path in (ROOT / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for n in names:
                    found.setdefault(n.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_third_party_import_is_declared_or_pip_only():
    stdlib = set(sys.stdlib_module_names) | {"clamp_core", "clamp_ros"}
    third = {m: p for m, p in _imports().items() if m not in stdlib}
    unknown = {m: sorted(p)[:3] for m, p in third.items() if m not in ROSDEP and m not in PIP_ONLY}
    assert not unknown, f"imports neither in package.xml's map nor pip-only: {unknown}"
    declared = {
        e.text for e in ET.parse(ROOT / "package.xml").getroot() if e.tag.endswith("depend")
    }
    missing = sorted({ROSDEP[m] for m in third if m in ROSDEP} - declared)
    assert not missing, f"package.xml lacks <exec_depend> for {missing}"
