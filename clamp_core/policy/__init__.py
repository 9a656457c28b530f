"""The policy at run time: model metadata, normalisation, the DDIM sampler and ONNX Runtime.

Numpy + onnxruntime only (no torch): the training side imports the schedule and the
normalisation from here so that both sides share one definition.
"""

from .metadata import (
    FORMAT_VERSION,
    MetadataError,
    MetadataMismatch,
    PolicyMetadata,
    check_compatible,
)
from .normalize import MinMax, NormalizationError, compute_minmax
from .runtime import (
    ActionChunk,
    OnnxPolicy,
    PolicyInputError,
    PolicyLoadError,
    PolicyObservation,
    PolicyOutputError,
)
from .schedule import NoiseSchedule, ScheduleConfig, ddim_sample

__all__ = [
    "FORMAT_VERSION",
    "ActionChunk",
    "MetadataError",
    "MetadataMismatch",
    "MinMax",
    "NoiseSchedule",
    "NormalizationError",
    "OnnxPolicy",
    "PolicyInputError",
    "PolicyLoadError",
    "PolicyMetadata",
    "PolicyObservation",
    "PolicyOutputError",
    "ScheduleConfig",
    "check_compatible",
    "compute_minmax",
    "ddim_sample",
]
