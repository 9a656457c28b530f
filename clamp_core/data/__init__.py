"""Episode data: the HDF5 episode format (writer, lazy reader, training index) and its checker.

Pure Python + h5py; ``docs/episodes.md`` documents the file layout.
"""

from .check import Problem, check_dataset
from .episode import (
    ALOHA_JOINT_NAMES,
    FORMAT,
    FORMAT_VERSION,
    CameraCalib,
    EpisodeError,
    EpisodeFormatError,
    EpisodeIndex,
    EpisodeMeta,
    EpisodeReader,
    EpisodeValidationError,
    EpisodeWriteError,
    EpisodeWriter,
    episode_path,
    find_episodes,
    is_complete,
    partial_path,
)

__all__ = [
    "ALOHA_JOINT_NAMES",
    "FORMAT",
    "FORMAT_VERSION",
    "CameraCalib",
    "EpisodeError",
    "EpisodeFormatError",
    "EpisodeIndex",
    "EpisodeMeta",
    "EpisodeReader",
    "EpisodeValidationError",
    "EpisodeWriteError",
    "EpisodeWriter",
    "Problem",
    "check_dataset",
    "episode_path",
    "find_episodes",
    "is_complete",
    "partial_path",
]
