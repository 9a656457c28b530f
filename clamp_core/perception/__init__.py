"""Multi-camera RGB-D fusion and re-rendering of 4-channel (depth + global XYZ) virtual views."""

from .config import CameraConfig, ConfigError, PerceptionConfig, ViewConfig
from .pipeline import (
    VIEW_CHANNELS,
    PerceptionError,
    PerceptionPipeline,
    PerceptionResult,
    PointCloud,
    RenderedViews,
    RgbdFrame,
)

__all__ = [
    "VIEW_CHANNELS",
    "CameraConfig",
    "ConfigError",
    "PerceptionConfig",
    "PerceptionError",
    "PerceptionPipeline",
    "PerceptionResult",
    "PointCloud",
    "RenderedViews",
    "RgbdFrame",
    "ViewConfig",
]
