"""Perception configuration: YAML files, defaults and the errors that say what to change."""

from __future__ import annotations

from pathlib import Path

import pytest

from clamp_core.perception.config import ConfigError, PerceptionConfig

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("name", ["aloha_bimanual.yaml", "synthetic_demo.yaml"])
def test_shipped_parameter_files_parse(name):
    cfg = PerceptionConfig.from_yaml(ROOT / "config" / name, "perception")
    assert [c.name for c in cfg.cameras] == [
        "cam_high",
        "cam_low",
        "cam_left_wrist",
        "cam_right_wrist",
    ]
    assert [v.name for v in cfg.views] == [
        "overhead",
        "back_right",
        "front_left",
        "wrist_left",
        "wrist_right",
    ]
    assert cfg.cameras[2].depth_topic == "cam_left_wrist/depth/image_raw"


def test_robot_file_spells_out_the_defaults():
    """config/aloha_bimanual.yaml documents every parameter with its default value."""
    from_file = PerceptionConfig.from_yaml(ROOT / "config" / "aloha_bimanual.yaml").to_dict()
    defaults = PerceptionConfig().to_dict()
    assert from_file == defaults


def test_round_trip_through_dict():
    cfg = PerceptionConfig(image_width=96, image_height=64, voxel_size_m=0.005)
    assert PerceptionConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "change, message",
    [
        ({"workspace_min": [0, 0, 0], "workspace_max": [1, -1, 1]}, "workspace_min"),
        ({"depth_min_m": 2.0, "depth_max_m": 1.0}, "depth_min_m"),
        ({"image_width": 4}, "view size"),
        ({"backend": "cuda"}, "backend"),
        ({"near_m": 0.0}, "near_m"),
        ({"voxel_size_m": -1.0}, "voxel_size_m"),
        ({"bogus": 1}, "unknown perception parameters"),
        ({"camera_names": ["a", "a"]}, "unique"),
        ({"views": {"overhead": {"fov_deg": 200.0}}, "view_names": ["overhead"]}, "fov_deg"),
        ({"cameras": {"cam_x": {"registred": True}}, "camera_names": ["cam_x"]}, "registred"),
        ({"cameras": {"cam_y": {}}, "camera_names": ["cam_x"]}, "not listed"),
    ],
)
def test_invalid_values_are_refused_with_a_useful_message(change, message):
    with pytest.raises(ConfigError, match=message):
        PerceptionConfig.from_dict(change)


def test_camera_topics_default_to_realsense_names():
    cfg = PerceptionConfig.from_dict({"camera_names": ["cam_a"]})
    cam = cfg.cameras[0]
    assert (cam.color_topic, cam.depth_topic, cam.info_topic) == (
        "cam_a/color/image_raw",
        "cam_a/depth/image_raw",
        "cam_a/color/camera_info",
    )
