"""An untrained export's metadata subscribes its RGB branch's cameras to colour (``use_color``
exactly on them), as training writes it, so the policy node configured from it feeds colour."""

from __future__ import annotations

from clamp_core.models.config import ModelConfig, preset
from clamp_core.perception.config import PerceptionConfig
from clamp_core.training.export import untrained_checkpoint_meta


def config(rgb_cameras: list[str] | None) -> ModelConfig:
    d = preset("cpu-small").to_dict()
    d["rgb"].update(enabled=rgb_cameras is not None, cameras=rgb_cameras or ["cam_high"])
    return ModelConfig.from_dict(d)


def use_color(cfg: ModelConfig) -> dict[str, bool]:
    p = PerceptionConfig.from_dict(untrained_checkpoint_meta(cfg)["perception"])
    return {c.name: c.use_color for c in p.cameras}


def test_use_color_exactly_on_the_rgb_cameras():
    flags = use_color(config(["cam_left_wrist", "cam_high"]))
    assert set(flags) == {"cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist"}
    assert {c for c, on in flags.items() if on} == {"cam_left_wrist", "cam_high"}


def test_no_colour_without_an_rgb_branch():
    assert not any(use_color(config(None)).values())
