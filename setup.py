"""ament_python package clamp_ros; also installs with pip into a plain virtualenv."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "clamp_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    description="ROS 2 deployment stack for a CLAMP-pretrained Diffusion Policy on bimanual arms",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["clamp_core", "clamp_core.*", "clamp_ros", "clamp_ros.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")),
        (f"share/{PACKAGE}/config/topics", glob("config/topics/*.yaml")),  # clamp data from-bag
        # shipped models: models/<name>/{metadata.json, *.onnx}
        *[(f"share/{PACKAGE}/{d.rstrip('/')}", glob(f"{d}*")) for d in sorted(glob("models/*/"))],
    ],
    install_requires=["numpy", "pyyaml"],
    extras_require={"fast": ["numba"], "dev": ["pytest", "ruff"]},
    zip_safe=True,
    entry_points={
        "console_scripts": [
            "clamp = clamp_ros.cli:main",
            "perception_node = clamp_ros.perception_node:main",
            "synthetic_scene_node = clamp_ros.synthetic_scene_node:main",
            "sim_node = clamp_ros.sim_node:main",
            "policy_node = clamp_ros.policy_node:main",
            "recorder_node = clamp_ros.recorder_node:main",
        ],
    },
)
