"""ROS message <-> numpy / clamp_core conversions. The only place that knows both worlds."""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import TransformStamped
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import Header

from clamp_core.geometry.camera import PinholeCamera

# the field-level decoding is pure logic shared with the bag tools: clamp_core.geometry.messages
from clamp_core.geometry.messages import (  # noqa: F401 - re-exported for the nodes
    MalformedStampError,
    add_transforms,
    camera_from_info,
    color_from_msg,
    compressed_color_from_msg,
    compressed_depth_from_msg,
    depth_from_msg,
    stamp_to_ns,
    transform_from_msg,
)
from clamp_core.geometry.transforms import Transform


def ns_to_stamp(ns: int) -> Time:
    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def trajectory_msg(stamp_ns: int, joint_names, points):
    """trajectory_msgs/JointTrajectory stamped ``stamp_ns``: ``points`` (time_from_start ns,
    which may be negative; positions; effort)."""
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    msg = JointTrajectory()
    msg.header = Header(stamp=ns_to_stamp(stamp_ns))
    msg.joint_names = list(joint_names)
    for dt, positions, effort in points:
        p = JointTrajectoryPoint(positions=positions, effort=effort)
        p.time_from_start.sec, p.time_from_start.nanosec = divmod(int(dt), 1_000_000_000)
        msg.points.append(p)
    return msg


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
