"""ROS message fields -> numpy and clamp_core types, for any object with the messages' field names:
rclpy messages in the live nodes, ``rosbags``' deserialised messages in the bag tools. One path,
so live and recorded data get the same checks and the same error messages.
"""

from __future__ import annotations

import math

import numpy as np

from ..aloha import ARM_JOINT_NAMES
from .camera import PinholeCamera
from .image import decode_color, decode_compressed_color, decode_compressed_depth, decode_depth
from .tf_buffer import TfBuffer
from .transforms import Transform


class MalformedStampError(ValueError):
    """A header stamp no clock can produce (nanosec >= 1e9, or before 1970)."""


def stamp_to_ns(stamp) -> int:
    """builtin_interfaces/Time -> integer ns; raises MalformedStampError instead of interpreting a
    malformed one (a nanosec of 4e9 would read as +4 s, then look like a clock jump)."""
    sec, nanosec = int(stamp.sec), int(stamp.nanosec)
    if not 0 <= nanosec < 1_000_000_000:
        raise MalformedStampError(f"malformed stamp: nanosec {nanosec} is not in [0, 1e9)")
    if sec < 0:
        raise MalformedStampError(f"malformed stamp: sec {sec} is before 1970")
    return sec * 1_000_000_000 + nanosec


def depth_from_msg(msg) -> tuple[np.ndarray, float]:
    """sensor_msgs/Image -> (depth (H, W) in stored units, metres per unit); raises
    ImageDecodeError."""
    return decode_depth(msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian, msg.data)


def color_from_msg(msg) -> np.ndarray:
    """sensor_msgs/Image -> (H, W, 3) uint8 RGB; raises ImageDecodeError."""
    return decode_color(msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian, msg.data)


def compressed_color_from_msg(msg) -> np.ndarray:
    """sensor_msgs/CompressedImage (JPEG / PNG) -> (H, W, 3) uint8 RGB; raises ImageDecodeError."""
    return decode_compressed_color(msg.format, msg.data)


def compressed_depth_from_msg(msg) -> tuple[np.ndarray, float]:
    """sensor_msgs/CompressedImage of image_transport's compressedDepth -> (depth, metres per
    unit); raises ImageDecodeError."""
    return decode_compressed_depth(msg.format, msg.data)


def camera_from_info(msg) -> PinholeCamera:
    """sensor_msgs/CameraInfo -> PinholeCamera; raises CameraModelError for one that cannot
    describe a camera."""
    return PinholeCamera.from_camera_info(msg.width, msg.height, msg.k, msg.d, msg.distortion_model)


def transform_from_msg(t) -> Transform:
    """geometry_msgs/TransformStamped -> Transform (T_parent_child)."""
    tr, q = t.transform.translation, t.transform.rotation
    return Transform(np.array([tr.x, tr.y, tr.z]), np.array([q.x, q.y, q.z, q.w]))


def add_transforms(
    buffer: TfBuffer, transforms, static: bool, now_ns: int | None = None
) -> list[str]:
    """Insert TransformStamped messages; returns one error string per rejected transform.
    ``now_ns``: the receiver's clock; transforms stamped implausibly far from it are refused (see
    TfBuffer.set_transform)."""
    errors = []
    for t in transforms:
        try:
            buffer.set_transform(
                t.header.frame_id,
                t.child_frame_id,
                stamp_to_ns(t.header.stamp),
                transform_from_msg(t),
                static=static,
                now_ns=now_ns,
            )
        except ValueError as e:
            parent, child = _short(t.header.frame_id), _short(t.child_frame_id)
            errors.append(f"tf '{parent}' -> '{child}': {e}")
    return errors


def _short(text: str, n: int = 64) -> str:
    """A frame id (any publisher's string) cut for a log line."""
    return text if len(text) <= n else f"{text[: n - 3]}..."


def arm_joint_values(names, values, what: str) -> np.ndarray | None:
    """(7,) ``values`` in ARM_JOINT_NAMES order picked by ``names`` (extra joints, e.g. fingers,
    are ignored); None when ``values`` is empty (a JointState may omit velocities or efforts).
    Raises ValueError naming a missing or repeated joint, a length mismatch or a non-finite
    value."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size == 0 and what != "position":
        return None
    names = [str(n) for n in names]
    if values.size != len(names):
        raise ValueError(f"{len(names)} joint names but {values.size} {what} values")
    index: dict[str, int] = {}
    for i, n in enumerate(names):
        if n in index:
            raise ValueError(f"joint '{n[:64]}' appears more than once")
        index[n] = i
    missing = [n for n in ARM_JOINT_NAMES if n not in index]
    if missing:
        raise ValueError(f"missing joint(s) {missing} (has {names[:10]})")
    out = values[[index[n] for n in ARM_JOINT_NAMES]]
    if not np.isfinite(out).all():
        bad = [n for n, v in zip(ARM_JOINT_NAMES, out, strict=True) if not math.isfinite(v)]
        raise ValueError(f"non-finite {what} for {bad}")
    return out
