"""Rigid transforms and quaternions (ROS order: x, y, z, w).

Everything here works on plain numpy arrays so that tf data from live messages, bag files and
simulators goes through the same math.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def quat_normalize(q: np.ndarray) -> np.ndarray:
    """Return the unit quaternion of ``q`` (4,) xyzw; raises on a zero or non-finite input."""
    q = np.asarray(q, dtype=np.float64)
    n = float(np.linalg.norm(q))
    if not np.isfinite(n) or n < 1e-12:
        raise ValueError(f"quaternion {q.tolist()} has no rotation (zero or non-finite norm)")
    return q / n


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """(4,) xyzw quaternion -> (3, 3) rotation matrix."""
    x, y, z, w = quat_normalize(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def matrix_to_quat(r: np.ndarray) -> np.ndarray:
    """(3, 3) rotation matrix -> (4,) xyzw unit quaternion with w >= 0 (Shepperd's method)."""
    r = np.asarray(r, dtype=np.float64)
    trace = r[0, 0] + r[1, 1] + r[2, 2]
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = [(r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s, 0.25 * s]
    elif r[0, 0] > r[1, 1] and r[0, 0] > r[2, 2]:
        s = 2.0 * np.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2])
        q = [0.25 * s, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s, (r[2, 1] - r[1, 2]) / s]
    elif r[1, 1] > r[2, 2]:
        s = 2.0 * np.sqrt(1.0 + r[1, 1] - r[0, 0] - r[2, 2])
        q = [(r[0, 1] + r[1, 0]) / s, 0.25 * s, (r[1, 2] + r[2, 1]) / s, (r[0, 2] - r[2, 0]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + r[2, 2] - r[0, 0] - r[1, 1])
        q = [(r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, 0.25 * s, (r[1, 0] - r[0, 1]) / s]
    q = quat_normalize(np.array(q))
    return -q if q[3] < 0 else q


def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a * b of xyzw quaternions (apply b first, then a)."""
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return np.array(
        [
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
            aw * bw - ax * bx - ay * by - az * bz,
        ]
    )


def quat_slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """Spherical linear interpolation between unit quaternions, shortest path, t in [0, 1]."""
    a = quat_normalize(a)
    b = quat_normalize(b)
    dot = float(np.dot(a, b))
    if dot < 0.0:  # q and -q are the same rotation: take the short way round
        b = -b
        dot = -dot
    # angle between the 4-vectors, accurate for tiny angles too (arccos(dot) is not)
    theta = 2.0 * np.arctan2(np.linalg.norm(b - a), np.linalg.norm(b + a))
    if theta < 1e-6:  # nearly parallel: lerp's error is O(theta^3), below float precision
        return quat_normalize(a + t * (b - a))
    s = np.sin(theta)
    return (np.sin((1.0 - t) * theta) * a + np.sin(t * theta) * b) / s


def rpy_to_matrix(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """Fixed-axis roll (x), pitch (y), yaw (z) in radians -> (3, 3), i.e. Rz @ Ry @ Rx (REP-103)."""
    cr, sr = np.cos(roll), np.sin(roll)
    cp, sp = np.cos(pitch), np.sin(pitch)
    cy, sy = np.cos(yaw), np.sin(yaw)
    rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class Transform:
    """A rigid transform ``T_parent_child``: maps points in the child frame to the parent frame.

    rotation: (4,) xyzw unit quaternion; translation: (3,) metres.
    """

    translation: np.ndarray
    rotation: np.ndarray

    def __post_init__(self) -> None:
        t = np.asarray(self.translation, dtype=np.float64).reshape(3)
        if not np.all(np.isfinite(t)):
            raise ValueError(f"translation {t.tolist()} is not finite")
        object.__setattr__(self, "translation", t)
        object.__setattr__(self, "rotation", quat_normalize(np.asarray(self.rotation).reshape(4)))

    @staticmethod
    def identity() -> Transform:
        return Transform(np.zeros(3), np.array([0.0, 0.0, 0.0, 1.0]))

    @staticmethod
    def from_matrix(m: np.ndarray) -> Transform:
        """(4, 4) homogeneous matrix -> Transform."""
        m = np.asarray(m, dtype=np.float64)
        return Transform(m[:3, 3], matrix_to_quat(m[:3, :3]))

    def matrix(self) -> np.ndarray:
        """(4, 4) float64 homogeneous matrix."""
        m = np.eye(4)
        m[:3, :3] = quat_to_matrix(self.rotation)
        m[:3, 3] = self.translation
        return m

    def inverse(self) -> Transform:
        q_inv = self.rotation * np.array([-1.0, -1.0, -1.0, 1.0])
        return Transform(-quat_to_matrix(q_inv) @ self.translation, q_inv)

    def __matmul__(self, other: Transform) -> Transform:
        """Compose: (T_a_b @ T_b_c) = T_a_c."""
        r = quat_to_matrix(self.rotation)
        return Transform(
            r @ other.translation + self.translation, quat_multiply(self.rotation, other.rotation)
        )

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Transform (N, 3) points from the child to the parent frame."""
        return np.asarray(points) @ quat_to_matrix(self.rotation).T + self.translation

    @staticmethod
    def interpolate(a: Transform, b: Transform, t: float) -> Transform:
        """Linear in translation, SLERP in rotation; t in [0, 1]."""
        return Transform(
            a.translation + t * (b.translation - a.translation),
            quat_slerp(a.rotation, b.rotation, t),
        )


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray = (0.0, 0.0, 1.0)) -> Transform:
    """Pose ``T_base_cam`` of an optical-frame camera (z forward, x right, y down) at ``eye``
    looking at ``target``; ``up`` is the base-frame direction that appears up in the image."""
    eye = np.asarray(eye, dtype=np.float64)
    z = np.asarray(target, dtype=np.float64) - eye
    if np.linalg.norm(z) < 1e-9:
        raise ValueError("look_at: eye and target coincide")
    z /= np.linalg.norm(z)
    x = np.cross(z, np.asarray(up, dtype=np.float64))
    if np.linalg.norm(x) < 1e-6:
        # looking straight along `up`: pick any perpendicular so the pose is still well defined
        x = np.cross(z, np.array([0.0, 1.0, 0.0]) if abs(z[1]) < 0.9 else np.array([1.0, 0.0, 0.0]))
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, y, z, eye
    return Transform.from_matrix(m)
