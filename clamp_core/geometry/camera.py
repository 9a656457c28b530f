"""Pinhole camera models: from CameraInfo fields, or from a field of view for virtual cameras.

Convention (ROS / OpenCV): integer pixel coordinates are pixel centres, so pixel (u, v) covers
[u - 0.5, u + 0.5) x [v - 0.5, v + 0.5) and the image centre is ((W - 1) / 2, (H - 1) / 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# distortion models sensor_msgs/CameraInfo documents; anything else is refused with a clear error
_PLUMB_BOB = ("plumb_bob", "rational_polynomial")
_EQUIDISTANT = ("equidistant", "fisheye")

# Coefficient counts per model: (what CameraInfo documents, every count accepted). OpenCV's
# pinhole functions take 4, 5, 8, 12 or 14 coefficients (k1 k2 p1 p2 [k3 [k4 k5 k6 [s1..s4
# [tx ty]]]]) and its fisheye functions exactly 4; any other count makes it throw. plumb_bob may
# omit k3 (4); rational_polynomial may carry OpenCV's thin-prism / tilt terms (12, 14: some drivers
# publish them). Coefficients beyond the documented count that are all zero (drivers that pad
# d to a fixed length, e.g. equidistant to 5) are accepted and ignored.
_COEFFS = {
    "plumb_bob": (5, (4, 5), "k1, k2, p1, p2, k3"),
    "rational_polynomial": (8, (8, 12, 14), "k1, k2, p1, p2, k3, k4, k5, k6"),
    "equidistant": (4, (4,), "k1, k2, k3, k4"),
    "fisheye": (4, (4,), "k1, k2, k3, k4"),
}


def _short(text: str, limit: int = 64) -> str:
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}...[{len(text)} chars]"


class CameraModelError(ValueError):
    """A CameraInfo that cannot describe a usable camera."""


@dataclass(frozen=True)
class PinholeCamera:
    """Intrinsics of one camera. fx, fy, cx, cy in pixels; ``distortion`` as in CameraInfo.d."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    distortion_model: str = ""
    distortion: tuple[float, ...] = ()
    _rays: dict = field(default_factory=dict, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise CameraModelError(f"image size {self.width}x{self.height} is empty")
        vals = (self.fx, self.fy, self.cx, self.cy)
        if not all(math.isfinite(v) for v in vals):
            raise CameraModelError(f"intrinsics fx, fy, cx, cy = {vals} are not finite")
        if self.fx <= 0 or self.fy <= 0:
            raise CameraModelError(f"focal length fx={self.fx}, fy={self.fy} must be > 0")
        for i, v in enumerate(self.distortion):
            if not math.isfinite(v):
                raise CameraModelError(
                    f"distortion coefficient d[{i}] = {v} is not finite "
                    f"({len(self.distortion)} coefficients)"
                )
        if not self.has_distortion:
            return  # no coefficient is used: an ideal camera whatever the model and count
        if self.distortion_model not in _COEFFS:
            raise CameraModelError(
                f"unsupported distortion model '{_short(self.distortion_model)}' "
                f"(supported: {', '.join(_PLUMB_BOB + _EQUIDISTANT)})"
            )
        self._coefficients()  # raises for a count the model (and OpenCV) cannot take

    def _coefficients(self) -> np.ndarray:
        """The distortion coefficients OpenCV gets (see ``_COEFFS``); raises CameraModelError
        for a count the model does not take."""
        nominal, accepted, names = _COEFFS[self.distortion_model]
        d = self.distortion
        if len(d) in accepted:
            return np.asarray(d, dtype=np.float64)
        if len(d) > nominal and not any(d[nominal:]):
            return np.asarray(d[:nominal], dtype=np.float64)  # zero padding
        also = [n for n in accepted if n != nominal]
        also_text = f"; also accepted: {' or '.join(map(str, also))}" if also else ""
        raise CameraModelError(
            f"distortion model '{self.distortion_model}' needs {nominal} coefficients "
            f"({names}{also_text}), got {len(d)}"
        )

    @staticmethod
    def from_camera_info(
        width: int, height: int, k, d=(), distortion_model: str = ""
    ) -> PinholeCamera:
        """Build from CameraInfo's width, height, k (9, row-major K), d and distortion_model.

        Raises CameraModelError for intrinsics that describe no camera, and for distortion
        coefficients the model cannot take (wrong count for plumb_bob: 5, rational_polynomial: 8,
        equidistant / fisheye: 4; see ``_COEFFS`` for the counts also accepted)."""
        k = np.asarray(k, dtype=np.float64).reshape(-1)
        if k.size != 9:
            raise CameraModelError(f"K has {k.size} elements, expected 9")
        return PinholeCamera(
            int(width),
            int(height),
            float(k[0]),
            float(k[4]),
            float(k[2]),
            float(k[5]),
            distortion_model,
            tuple(float(x) for x in d),
        )

    @staticmethod
    def from_fov(width: int, height: int, fov_y_deg: float) -> PinholeCamera:
        """Square pixels, vertical field of view ``fov_y_deg``, principal point at the centre."""
        if not 0.0 < fov_y_deg < 180.0:
            raise CameraModelError(f"field of view {fov_y_deg} deg must be in (0, 180)")
        f = 0.5 * height / math.tan(math.radians(fov_y_deg) / 2.0)
        return PinholeCamera(width, height, f, f, (width - 1) / 2.0, (height - 1) / 2.0)

    @property
    def has_distortion(self) -> bool:
        return any(abs(x) > 0.0 for x in self.distortion)

    @property
    def K(self) -> np.ndarray:  # noqa: N802 (the conventional name)
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1.0]])

    def ray_grid(self) -> np.ndarray:
        """(H, W, 2) float32: normalised image coordinates (x/z, y/z) of every pixel centre,
        undistorted. Back-projection is then ``depth[..., None] * [rx, ry, 1]``. Cached."""
        rays = self._rays.get("grid")
        if rays is None:
            u, v = np.meshgrid(
                np.arange(self.width, dtype=np.float64), np.arange(self.height, dtype=np.float64)
            )
            if not self.has_distortion:
                rays = np.stack([(u - self.cx) / self.fx, (v - self.cy) / self.fy], axis=-1)
            else:
                rays = self._undistort(np.stack([u, v], axis=-1).reshape(-1, 1, 2))
                rays = rays.reshape(self.height, self.width, 2)
            rays = np.ascontiguousarray(rays, dtype=np.float32)
            self._rays["grid"] = rays
        return rays

    def _undistort(self, pixels: np.ndarray) -> np.ndarray:
        import cv2  # only needed for distorted real cameras

        d = self._coefficients()
        # OpenCV's default stopping rule (5 fixed-point iterations for plumb_bob) leaves errors of
        # several hundredths of a pixel at the corners of real lenses: iterate to convergence.
        criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-12)
        if self.distortion_model in _EQUIDISTANT:
            try:
                return cv2.fisheye.undistortPoints(pixels, self.K, d, criteria=criteria)
            except TypeError:  # OpenCV < 4.6 has no criteria here (its default is 10 iterations)
                return cv2.fisheye.undistortPoints(pixels, self.K, d)
        if hasattr(cv2, "undistortPointsIter"):  # OpenCV 4.x
            return cv2.undistortPointsIter(pixels, self.K, d, None, None, criteria)
        return cv2.undistortPoints(pixels, self.K, d, criteria=criteria)  # OpenCV 5

    def project(self, points_cam: np.ndarray) -> np.ndarray:
        """(N, 3) optical-frame points -> (N, 2) pixel coordinates (no distortion)."""
        p = np.asarray(points_cam, dtype=np.float64)
        return np.stack(
            [self.fx * p[:, 0] / p[:, 2] + self.cx, self.fy * p[:, 1] / p[:, 2] + self.cy], axis=-1
        )
