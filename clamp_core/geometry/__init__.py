"""Camera models, depth decoding, rigid transforms, the tf buffer and time synchronisation."""

from .camera import CameraModelError, PinholeCamera
from .image import ImageDecodeError, decode_color, decode_depth
from .sync import ApproximateTimeSync, SyncedSet, SyncError
from .tf_buffer import ConnectivityError, ExtrapolationError, TfBuffer, TfError, UnknownFrameError
from .transforms import Transform, look_at

__all__ = [
    "ApproximateTimeSync",
    "CameraModelError",
    "ConnectivityError",
    "ExtrapolationError",
    "ImageDecodeError",
    "PinholeCamera",
    "SyncError",
    "SyncedSet",
    "TfBuffer",
    "TfError",
    "Transform",
    "UnknownFrameError",
    "decode_color",
    "decode_depth",
    "look_at",
]
