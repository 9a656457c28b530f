"""config/aloha_bimanual.yaml documents every parameter the robot's nodes read: each parameter
the policy, perception and recorder nodes declare is in the file with a comment, every key in it
is a parameter, and the safety limits it spells out are the arms' limits. Per-camera and
per-view entries are shown by example: every field a camera or a view has appears for at least
one of them."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from test.ros.conftest import child_env, rclpy_session

pytestmark = pytest.mark.ros

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config" / "aloha_bimanual.yaml"
BUILT_IN = {"use_sim_time", "start_type_description_service"}
SECTIONS = {"PolicyNode": "policy", "RecorderNode": "recorder"}
"""Nodes with a section of their own in the file (besides the shared ``/**``)."""
PER_ENTRY = re.compile(r"^perception\.(cameras|views)\.([^.]+)\.(.+)$")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _commented_keys(text: str) -> set[str]:
    """Dotted keys whose line, or a comment line right above it, carries a comment; a value
    continued on the next lines counts with its key."""
    keys, stack, pending = set(), [], False
    lines = text.splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            pending = stripped.startswith("#")
            continue
        m = re.match(r"^(\s*)([A-Za-z_/*][\w/*]*):", line)
        if not m:  # continuation of a flow sequence
            continue
        indent, key = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        dotted = ".".join(k for _, k in stack[2:])  # below <node>.ros__parameters
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        continued = not re.match(r"^\s*[A-Za-z_/*#]", nxt) and nxt.strip() != ""
        if "#" in line or pending or (continued and "#" in nxt):
            keys.add(dotted)
        pending = False
    return keys


def _shown_by_another_arm(name: str, given: dict, commented: set[str]) -> bool:
    """Per-arm parameters (``<arm>.<field>``) are documented once, on the first arm."""
    arm, _, field = name.partition(".")
    arms = given.get("arms", [])
    return arm in arms and any(f"{a}.{field}" in commented for a in arms)


def _declared(node) -> dict:
    return {name: p.value for name, p in node._parameters.items() if name not in BUILT_IN}


@pytest.fixture(scope="module")
def declared(tmp_path_factory) -> dict:
    from clamp_ros.params import declare
    from clamp_ros.perception_node import PerceptionNode
    from clamp_ros.policy_node import PolicyNode
    from clamp_ros.recorder_node import RecorderNode

    env = child_env(0, tmp_path_factory.mktemp("ros_log"))
    env["ROS_DOMAIN_ID"] = "0"
    with rclpy_session(env, "config_probe") as probe:
        out = {}
        for cls in (PolicyNode, PerceptionNode, RecorderNode):
            node = cls(context=probe.context)
            try:
                if cls is PolicyNode:  # declared by the executable before it starts the node
                    declare(node, "autostart", False)
                out[cls.__name__] = _declared(node)
            finally:
                node.destroy_node()
        return out


def test_every_parameter_is_in_the_file_with_a_comment(declared):
    doc = yaml.safe_load(CONFIG.read_text())
    shared = _flat(doc["/**"]["ros__parameters"])
    commented = _commented_keys(CONFIG.read_text())
    for node, params in declared.items():
        section = SECTIONS.get(node)
        given = {**shared, **(_flat(doc[section]["ros__parameters"]) if section else {})}
        shown: dict[str, set[str]] = {}
        for key in given:
            m = PER_ENTRY.match(key)
            if m:
                shown.setdefault(m.group(1), set()).add(m.group(3))
        entry_fields: dict[str, set[str]] = {}
        missing, undocumented = [], []
        for name in params:
            m = PER_ENTRY.match(name)
            if m:
                entry_fields.setdefault(m.group(1), set()).add(m.group(3))
            elif name not in given:
                missing.append(name)
            elif name not in commented and not _shown_by_another_arm(name, given, commented):
                undocumented.append(name)
        assert params and not missing, f"{node}: parameters missing from {CONFIG.name}: {missing}"
        assert not undocumented, f"{node}: parameters without a comment: {undocumented}"
        for kind, fields in entry_fields.items():
            lacking = fields - shown.get(kind, set())
            assert not lacking, f"{node}: no {kind} entry in {CONFIG.name} shows {sorted(lacking)}"


def test_every_key_in_the_file_is_a_parameter(declared):
    doc = yaml.safe_load(CONFIG.read_text())
    every = set().union(*declared.values())
    for section in ("/**", *SECTIONS.values()):
        node = next((n for n, sec in SECTIONS.items() if sec == section), None)
        known = set(declared[node]) if node else every
        unknown = set(_flat(doc[section]["ros__parameters"])) - known
        assert not unknown, f"{CONFIG.name} [{section}]: no node declares {sorted(unknown)}"


def test_safety_limits_in_the_file_are_the_arms_limits(declared):
    """The file spells out the limits; they must be the vx300s limits the node defaults to."""
    from clamp_core.policy.safety import aloha_defaults

    safety = yaml.safe_load(CONFIG.read_text())["policy"]["ros__parameters"]["safety"]
    ref = aloha_defaults()
    # exactly: a rounded pi (3.14159) in the file would be the limit the robot runs with
    for name, value in safety.items():
        np.testing.assert_array_equal(value, getattr(ref, name), err_msg=name)
    for name in ("position_min", "position_max", "max_velocity"):
        np.testing.assert_allclose(declared["PolicyNode"][f"safety.{name}"], getattr(ref, name))
    policy = yaml.safe_load(CONFIG.read_text())["policy"]["ros__parameters"]
    assert policy["joint_names"] == list(ref.joint_names)
