"""Declare a config dataclass as ROS 2 parameters (typed, described, read-only) and read it back.

The dataclasses in clamp_core are the single source of truth: every field becomes a parameter
named after its path (``perception.cameras.cam_high.depth_topic``) whose description is the
field's docstring, so ``ros2 param describe`` documents the node.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap

from rcl_interfaces.msg import ParameterDescriptor, ParameterType
from rclpy.node import Node

from clamp_core.perception.config import (
    CameraConfig,
    PerceptionConfig,
    ViewConfig,
    default_views,
)


@functools.cache
def field_docs(cls) -> dict[str, str]:
    """Attribute docstrings (the string literal after a field) of a dataclass."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    docs, last = {}, None
    for node in tree.body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            last = node.target.id
        elif (
            last
            and isinstance(node, ast.Expr)
            and isinstance(getattr(node, "value", None), ast.Constant)
            and isinstance(node.value.value, str)
        ):
            docs[last] = " ".join(node.value.value.split())
            last = None
        else:
            last = None
    return docs


def _ptype(value) -> int:
    if isinstance(value, bool):
        return ParameterType.PARAMETER_BOOL
    if isinstance(value, int):
        return ParameterType.PARAMETER_INTEGER
    if isinstance(value, float):
        return ParameterType.PARAMETER_DOUBLE
    if isinstance(value, str):
        return ParameterType.PARAMETER_STRING
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return ParameterType.PARAMETER_STRING_ARRAY
    if isinstance(value, list):
        return ParameterType.PARAMETER_DOUBLE_ARRAY
    raise TypeError(f"no ROS parameter type for {value!r}")


def declare(node: Node, name: str, default, description: str = ""):
    """Declare a read-only typed parameter and return its value (as a plain Python type)."""
    if isinstance(default, list) and default and not isinstance(default[0], str):
        default = [float(v) for v in default]
    desc = ParameterDescriptor(description=description, type=_ptype(default), read_only=True)
    value = node.declare_parameter(name, default, desc).value
    return list(value) if isinstance(value, (list, tuple)) or hasattr(value, "tolist") else value


def declare_dataclass(node: Node, prefix: str, obj, skip=("name",)) -> dict:
    """Declare one parameter ``<prefix>.<field>`` per field of the dataclass instance ``obj``
    (its value the default, its attribute docstring the description), except ``skip`` and
    private fields; returns {field: value the node was started with}."""
    docs = field_docs(type(obj))
    out = {}
    for f in dataclasses.fields(obj):
        if f.name in skip or f.name.startswith("_"):
            continue
        v = getattr(obj, f.name)
        out[f.name] = declare(
            node, f"{prefix}.{f.name}", list(v) if isinstance(v, tuple) else v, docs.get(f.name, "")
        )
    return out


def declare_perception_config(node: Node, prefix: str = "perception") -> PerceptionConfig:
    """Declare every PerceptionConfig field under ``prefix`` and build the config from the
    values the node was started with (params file, ``-p`` overrides). Raises ConfigError."""
    defaults = PerceptionConfig()
    values = declare_dataclass(node, prefix, defaults, skip=("cameras", "views"))
    cam_names = declare(
        node,
        f"{prefix}.camera_names",
        [c.name for c in defaults.cameras],
        "Real cameras to fuse; the first one's depth stream is the synchronisation reference.",
    )
    view_names = declare(
        node,
        f"{prefix}.view_names",
        [v.name for v in defaults.views],
        "Virtual views to render, in output order.",
    )
    known_views = {v.name: v for v in default_views()}
    values["cameras"] = [
        CameraConfig(name=n, **declare_dataclass(node, f"{prefix}.cameras.{n}", CameraConfig(n)))
        for n in cam_names
    ]
    values["views"] = [
        ViewConfig(
            name=n,
            **declare_dataclass(node, f"{prefix}.views.{n}", known_views.get(n, ViewConfig(n))),
        )
        for n in view_names
    ]
    return PerceptionConfig(**values)
