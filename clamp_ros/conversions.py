"""ROS message <-> numpy / clamp_core conversions. The only place that knows both worlds."""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import TransformStamped
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import Header

from clamp_core.geometry.camera import PinholeCamera
from clamp_core.geometry.image import decode_color, decode_depth
from clamp_core.geometry.tf_buffer import TfBuffer
from clamp_core.geometry.transforms import Transform


class MalformedStampError(ValueError):
    """A header stamp no clock can produce (nanosec >= 1e9, or before 1970)."""


def stamp_to_ns(stamp: Time) -> int:
    """Stamp -> integer ns; raises MalformedStampError instead of interpreting a malformed one (a
    nanosec of 4e9 would read as +4 s, then look like a clock jump)."""
    sec, nanosec = int(stamp.sec), int(stamp.nanosec)
    if not 0 <= nanosec < 1_000_000_000:
        raise MalformedStampError(f"malformed stamp: nanosec {nanosec} is not in [0, 1e9)")
    if sec < 0:
        raise MalformedStampError(f"malformed stamp: sec {sec} is before 1970")
    return sec * 1_000_000_000 + nanosec


def ns_to_stamp(ns: int) -> Time:
    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def depth_from_msg(msg: Image) -> tuple[np.ndarray, float]:
    """(depth (H, W) in stored units, metres per unit); raises ImageDecodeError."""
    return decode_depth(msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian, msg.data)


def color_from_msg(msg: Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB; raises ImageDecodeError."""
    return decode_color(msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian, msg.data)


def camera_from_info(msg: CameraInfo) -> PinholeCamera:
    """Raises CameraModelError for a CameraInfo that cannot describe a camera."""
    return PinholeCamera.from_camera_info(msg.width, msg.height, msg.k, msg.d, msg.distortion_model)


def info_from_camera(cam: PinholeCamera, header: Header) -> CameraInfo:
    msg = CameraInfo(header=header, width=cam.width, height=cam.height)
    msg.distortion_model = cam.distortion_model or "plumb_bob"
    msg.d = list(cam.distortion) or [0.0] * 5
    msg.k = [cam.fx, 0.0, cam.cx, 0.0, cam.fy, cam.cy, 0.0, 0.0, 1.0]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [cam.fx, 0.0, cam.cx, 0.0, 0.0, cam.fy, cam.cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return msg


def image_msg(array: np.ndarray, encoding: str, header: Header) -> Image:
    """Wrap a C-contiguous (H, W[, C]) array; ``encoding`` must match its dtype and channels."""
    a = np.ascontiguousarray(array)
    msg = Image(header=header, height=a.shape[0], width=a.shape[1], encoding=encoding)
    msg.is_bigendian = False
    msg.step = a.strides[0]
    msg.data = a.tobytes()
    return msg


def transform_from_msg(t: TransformStamped) -> Transform:
    tr, q = t.transform.translation, t.transform.rotation
    return Transform(np.array([tr.x, tr.y, tr.z]), np.array([q.x, q.y, q.z, q.w]))


def transform_msg(parent: str, child: str, stamp_ns: int, t: Transform) -> TransformStamped:
    msg = TransformStamped()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = parent
    msg.child_frame_id = child
    x, y, z = (float(v) for v in t.translation)
    msg.transform.translation.x, msg.transform.translation.y, msg.transform.translation.z = x, y, z
    qx, qy, qz, qw = (float(v) for v in t.rotation)
    r = msg.transform.rotation
    r.x, r.y, r.z, r.w = qx, qy, qz, qw
    return msg


def add_transforms(
    buffer: TfBuffer, transforms, static: bool, now_ns: int | None = None
) -> list[str]:
    """Insert TransformStamped messages; returns one error string per rejected transform.
    ``now_ns``: the receiving node's clock; transforms stamped implausibly far from it are
    refused (see TfBuffer.set_transform)."""
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


_CLOUD_FIELDS = [
    PointField(name="x", offset=0, datatype=PointField.FLOAT32, count=1),
    PointField(name="y", offset=4, datatype=PointField.FLOAT32, count=1),
    PointField(name="z", offset=8, datatype=PointField.FLOAT32, count=1),
    PointField(name="rgb", offset=12, datatype=PointField.FLOAT32, count=1),
]


def cloud_msg(xyz: np.ndarray, rgb: np.ndarray | None, header: Header) -> PointCloud2:
    """(N, 3) float32 + optional (N, 3) uint8 -> PointCloud2 with x, y, z, rgb (RViz packing)."""
    n = len(xyz)
    buf = np.empty((n, 4), np.float32)
    buf[:, :3] = xyz
    packed = (
        np.full(n, 0xFFFFFFFF, np.uint32)
        if rgb is None
        else ((rgb[:, 0].astype(np.uint32) << 16) | (rgb[:, 1].astype(np.uint32) << 8) | rgb[:, 2])
    )
    buf[:, 3] = packed.view(np.float32)
    msg = PointCloud2(header=header, height=1, width=n, fields=_CLOUD_FIELDS)
    msg.is_bigendian = False
    msg.point_step = 16
    msg.row_step = 16 * n
    msg.is_dense = True
    msg.data = buf.tobytes()
    return msg


def cloud_from_msg(msg: PointCloud2) -> np.ndarray:
    """(N, 3) float32 xyz of a cloud written by :func:`cloud_msg`."""
    a = np.frombuffer(msg.data, np.float32).reshape(-1, msg.point_step // 4)
    return a[:, :3].copy()
