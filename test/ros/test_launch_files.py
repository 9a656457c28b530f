"""Structural checks of launch/*.launch.py and the node sets they start (clamp_ros.graph).

The `launch` / `launch_ros` packages are not on PyPI, so most checks read the launch files
without running them: they compile; every executable they can start (via the GRAPHS node sets
they reference, or a literal ``executable="..."``) is a console script of setup.py; every
parameter file they use exists in config/, is a valid ROS 2 parameters file, and its perception
section parses. Where `launch_ros` is installed (a ROS 2 machine), generate_launch_description()
is called and its Node actions are checked as well.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
from pathlib import Path

import pytest
import yaml

from clamp_core.perception.config import ConfigError, PerceptionConfig
from clamp_ros import graph
from clamp_ros.graph import GRAPHS, NodeSpec, node_command

pytestmark = pytest.mark.ros

REPO = Path(__file__).resolve().parents[2]
LAUNCH_FILES = sorted((REPO / "launch").glob("*.launch.py"))
CONFIG_FILES = sorted((REPO / "config").glob("*.yaml"))
PERCEPTION_EXECUTABLE = "perception_node"


# ---------------------------------------------------------------------------------- helpers
def console_scripts() -> dict[str, str]:
    """setup.py's console_scripts, read from its source (``name -> module:function``)."""
    tree = ast.parse((REPO / "setup.py").read_text(), "setup.py")
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "console_scripts":
                    entries = ast.literal_eval(value)
                    scripts = {}
                    for entry in entries:
                        name, _, target = entry.partition("=")
                        scripts[name.strip()] = target.strip()
                    return scripts
    raise AssertionError("setup.py declares no console_scripts")


class LaunchRefs:
    """What a launch file refers to, found in its syntax tree."""

    def __init__(self, path: Path):
        self.path = path
        self.tree = ast.parse(path.read_text(), str(path))
        self.graphs: list[str] = []
        self.executables: set[str] = set()
        self.params: set[str] = set()
        for node in ast.walk(self.tree):
            if (
                isinstance(node, ast.Subscript)
                and isinstance(node.value, ast.Name)
                and node.value.id == "GRAPHS"
            ):
                assert isinstance(node.slice, ast.Constant), (
                    f"{path.name}: GRAPHS index must be a literal graph name"
                )
                self.graphs.append(node.slice.value)
            elif isinstance(node, ast.keyword) and node.arg == "executable":
                if isinstance(node.value, ast.Constant):
                    self.executables.add(node.value.value)
            elif (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and node.value.endswith((".yaml", ".yml"))
            ):
                self.params.add(node.value)

    def specs(self) -> list[NodeSpec]:
        return [spec for name in self.graphs for spec in GRAPHS[name]]

    def all_executables(self) -> set[str]:
        return self.executables | {s.executable for s in self.specs()}

    def all_params(self) -> set[str]:
        return self.params | {p for s in self.specs() for p in s.params}


def ros_param_sections(doc, where: str) -> dict[str, dict]:
    """Validate a ROS 2 parameters document and return ``{node path: ros__parameters}``.

    The layout rcl accepts: a mapping of node names (or ``/**``, or namespaces nesting node
    names), each node holding exactly one key, ``ros__parameters``, whose value is a mapping.
    """
    assert isinstance(doc, dict) and doc, f"{where}: not a non-empty YAML mapping"
    sections: dict[str, dict] = {}

    def visit(mapping: dict, prefix: str) -> None:
        for key, value in mapping.items():
            path = f"{prefix}/{str(key).strip('/')}" if prefix else str(key)
            assert isinstance(key, str), f"{where}: node key {key!r} is not a string"
            assert isinstance(value, dict), f"{where}: '{path}' is not a mapping"
            if "ros__parameters" in value:
                assert set(value) == {"ros__parameters"}, (
                    f"{where}: '{path}' has keys besides ros__parameters: {sorted(value)}"
                )
                assert isinstance(value["ros__parameters"], dict), (
                    f"{where}: '{path}/ros__parameters' is not a mapping"
                )
                sections[path] = value["ros__parameters"]
            else:
                visit(value, path)  # a namespace

    visit(doc, "")
    return sections


def load_launch_module(path: Path):
    spec = importlib.util.spec_from_file_location(f"launch_file_{path.name.split('.')[0]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _text(value) -> str | None:
    """A launch argument given as a plain string (or a list of TextSubstitutions), else None."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and all(hasattr(v, "text") for v in value):
        return "".join(v.text for v in value)
    return getattr(value, "text", None)


@pytest.fixture(scope="module")
def scripts() -> dict[str, str]:
    return console_scripts()


# ---------------------------------------------------------------------------------- tests
def test_there_are_launch_files():
    assert LAUNCH_FILES, "launch/ holds no *.launch.py"


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_compiles(path: Path):
    compile(path.read_text(), str(path), "exec")
    refs = LaunchRefs(path)
    assert any(
        isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description"
        for n in refs.tree.body
    ), f"{path.name} defines no generate_launch_description()"


def test_console_scripts_resolve(scripts: dict[str, str]):
    """Every console script points at a callable that imports (what colcon's wrapper loads)."""
    for name, target in scripts.items():
        module, _, func = target.partition(":")
        assert callable(getattr(importlib.import_module(module), func)), f"{name} -> {target}"


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_executables_are_console_scripts(path: Path, scripts: dict[str, str]):
    refs = LaunchRefs(path)
    for name in refs.graphs:
        assert name in GRAPHS, f"{path.name} uses unknown node set GRAPHS['{name}']"
    executables = refs.all_executables()
    assert executables, f"{path.name}: no executable found (neither GRAPHS nor executable=...)"
    missing = sorted(executables - set(scripts))
    assert not missing, f"{path.name} starts {missing}, not console scripts of setup.py"


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_params_files(path: Path):
    refs = LaunchRefs(path)
    for rel in sorted(refs.all_params()):
        file = REPO / rel
        assert file.is_file(), f"{path.name} uses {rel}, which does not exist"
        assert file.parent == REPO / "config", f"{path.name}: {rel} is not in config/ (installed)"
        ros_param_sections(yaml.safe_load(file.read_text()), rel)
    for spec in refs.specs():
        if spec.executable == PERCEPTION_EXECUTABLE:
            for rel in spec.params:
                cfg = PerceptionConfig.from_yaml(REPO / rel, spec.name)
                assert cfg.cameras and cfg.views, f"{rel}: perception config without cameras"


def _node_name(section_key: str) -> str:
    """The node a section applies to (``/**`` is read by every node; take `perception`)."""
    return "perception" if section_key == "/**" else section_key.strip("/").split("/")[-1]


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_config_is_ros_params_file(path: Path):
    """Every shipped config is a valid parameters file and every perception section parses
    with PerceptionConfig.from_yaml (given the node name the section applies to)."""
    sections = ros_param_sections(yaml.safe_load(path.read_text()), path.name)
    for key, params in sections.items():
        if "perception" in params:
            try:
                cfg = PerceptionConfig.from_yaml(path, _node_name(key))
            except ConfigError as e:
                pytest.fail(f"{path.name} [{key}]: {e}")
            assert cfg.base_frame == params["perception"].get("base_frame", cfg.base_frame)


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_config_read_by_rclpy(path: Path):
    """rclpy's own parameter-file reader sees each node's parameters, flattened the way the
    node declares them (``perception.base_frame``)."""
    from rclpy.parameter import parameter_dict_from_yaml_file

    sections = ros_param_sections(yaml.safe_load(path.read_text()), path.name)
    for key, params in sections.items():
        node = _node_name(key)
        flat = parameter_dict_from_yaml_file(str(path), use_wildcard=True, target_nodes=[node])
        for name, value in params.items():
            if isinstance(value, dict):
                assert any(p.startswith(f"{name}.") for p in flat), f"{path.name}: {name}.*"
            else:
                assert name in flat, f"{path.name}: {node} does not get {name}"
        if "perception" in params:
            assert "perception.base_frame" in flat or "base_frame" not in params["perception"]


@pytest.mark.parametrize("graph_name", sorted(GRAPHS))
def test_node_command(graph_name: str, scripts: dict[str, str]):
    """``clamp demo`` starts what launch would: existing executables and parameter files."""
    for spec in GRAPHS[graph_name]:
        assert spec.executable in scripts
        cmd = node_command(spec, {"flag": True, "names": ["a", "b"]})
        exe = Path(cmd[0])
        assert exe.is_file() and os.access(exe, os.X_OK), f"{spec.name}: {cmd[0]} not executable"
        assert exe.name == spec.executable
        assert cmd[1] == "--ros-args"
        assert cmd[cmd.index("-r") + 1] == f"__node:={spec.name}"
        files = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "--params-file"]
        assert len(files) == len(spec.params)
        for file, rel in zip(files, spec.params, strict=True):
            assert Path(file).is_file(), f"{spec.name}: params file {file} missing"
            assert (
                Path(file).resolve() == (REPO / rel).resolve()
                or Path(file).resolve().read_bytes() == (REPO / rel).read_bytes()
            )
            ros_param_sections(yaml.safe_load(Path(file).read_text()), file)
        n = spec.name  # overrides are scoped to the node so they beat its params-file section
        assert cmd[-4:] == ["-p", f"{n}:flag:=true", "-p", f"{n}:names:=[a,b]"]


def test_share_dir_holds_configs():
    for spec in (s for specs in GRAPHS.values() for s in specs):
        for rel in spec.params:
            assert (graph.share_dir() / rel).is_file(), f"{graph.share_dir() / rel} missing"


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_generate_launch_description(path: Path, scripts: dict[str, str]):
    """Only where ROS 2's launch packages are installed (not from PyPI). Note: plain
    ``import launch`` "succeeds" here anyway, as the namespace package of the repo's launch/
    folder, so the check imports the submodules that only the real packages have."""
    pytest.importorskip("launch.actions")
    launch_ros_actions = pytest.importorskip("launch_ros.actions")
    description = load_launch_module(path).generate_launch_description()

    def walk(entities):
        for entity in entities:
            yield entity
            yield from walk(getattr(entity, "describe_sub_entities", lambda: [])())

    nodes = [e for e in walk(description.entities) if isinstance(e, launch_ros_actions.Node)]
    expected = LaunchRefs(path).all_executables()
    assert len(nodes) >= len(LaunchRefs(path).specs()) and nodes
    seen = set()
    for node in nodes:
        package, executable = _text(node.node_package), _text(node.node_executable)
        if package is not None:
            assert package == "clamp_ros"
        if executable is not None:
            assert executable in scripts, f"{path.name}: Node executable {executable}"
            seen.add(executable)
    assert seen <= expected
