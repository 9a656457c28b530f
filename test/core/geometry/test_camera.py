"""PinholeCamera: CameraInfo parsing, validation, from_fov, and ray grids checked against OpenCV's
forward projection (cv2.projectPoints / cv2.fisheye.projectPoints) as an independent oracle."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from clamp_core.geometry.camera import CameraModelError, PinholeCamera

W, H = 640, 480
K_REAL = [615.2, 0.0, 322.7, 0.0, 614.8, 241.3, 0.0, 0.0, 1.0]
# a wide-ish industrial lens and a RealSense-like rational model
PLUMB_BOB = (-0.28, 0.07, 0.0008, -0.0005, 0.0)
RATIONAL = (-0.28, 0.07, 0.0008, -0.0005, 0.01, 0.02, 0.003, 0.001)
# a T265-like equidistant (Kannala-Brandt) lens
EQUIDISTANT = (-0.0037, 0.039, -0.037, 0.0063)
K_FISHEYE = [350.0, 0.0, 319.5, 0.0, 350.0, 239.5, 0.0, 0.0, 1.0]


def pixel_grid(w, h):
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    return np.stack([u, v], axis=-1)


# ----------------------------------------------------------------------------- from_camera_info
def test_from_camera_info_reads_k():
    cam = PinholeCamera.from_camera_info(W, H, K_REAL)
    assert (cam.width, cam.height) == (W, H)
    assert (cam.fx, cam.fy, cam.cx, cam.cy) == (615.2, 614.8, 322.7, 241.3)
    np.testing.assert_array_equal(cam.K, np.reshape(K_REAL, (3, 3)))
    assert not cam.has_distortion
    # a 3x3 array and a numpy row work the same
    cam2 = PinholeCamera.from_camera_info(W, H, np.reshape(K_REAL, (3, 3)))
    cam3 = PinholeCamera.from_camera_info(np.int64(W), np.int64(H), np.array(K_REAL))
    assert cam2 == cam == cam3
    assert isinstance(cam3.width, int) and isinstance(cam3.fx, float)


def test_from_camera_info_keeps_distortion():
    cam = PinholeCamera.from_camera_info(W, H, K_REAL, list(PLUMB_BOB), "plumb_bob")
    assert cam.distortion == PLUMB_BOB and cam.distortion_model == "plumb_bob"
    assert cam.has_distortion


@pytest.mark.parametrize(
    "k, match",
    [
        ([0.0, 0, 320, 0, 600, 240, 0, 0, 1], "focal"),
        ([600, 0, 320, 0, 0.0, 240, 0, 0, 1], "focal"),
        ([-600, 0, 320, 0, 600, 240, 0, 0, 1], "focal"),
        ([600, 0, 320, 0, -1e-3, 240, 0, 0, 1], "focal"),
        ([np.nan, 0, 320, 0, 600, 240, 0, 0, 1], "not finite"),
        ([600, 0, 320, 0, np.inf, 240, 0, 0, 1], "not finite"),
        ([600, 0, np.nan, 0, 600, 240, 0, 0, 1], "not finite"),
        ([600, 0, 320, 0, 600, 240, 0, 0], "K has 8 elements, expected 9"),
        ([600, 0, 320, 0, 600, 240, 0, 0, 1, 0, 0, 0], "K has 12 elements, expected 9"),
        ([], "K has 0 elements"),
    ],
)
def test_bad_intrinsics_raise(k, match):
    with pytest.raises(CameraModelError, match=match):
        PinholeCamera.from_camera_info(W, H, k)


@pytest.mark.parametrize("w, h", [(0, 480), (640, 0), (-640, 480), (0, 0)])
def test_empty_size_raises(w, h):
    with pytest.raises(CameraModelError, match=rf"{w}x{h} is empty"):
        PinholeCamera.from_camera_info(w, h, K_REAL)


def test_unsupported_distortion_model_with_coefficients_raises():
    with pytest.raises(CameraModelError) as info:
        PinholeCamera.from_camera_info(W, H, K_REAL, (0.1, 0.0, 0.0, 0.0, 0.0), "kannala_brandt8")
    msg = str(info.value)
    assert "unsupported distortion model 'kannala_brandt8'" in msg
    assert "plumb_bob" in msg and "equidistant" in msg
    with pytest.raises(CameraModelError, match="unsupported distortion model ''"):
        PinholeCamera.from_camera_info(W, H, K_REAL, (0.1,), "")
    assert isinstance(info.value, ValueError)


def test_unknown_model_without_coefficients_is_an_ideal_camera():
    cam = PinholeCamera.from_camera_info(W, H, K_REAL, (0.0,) * 5, "whatever")
    assert not cam.has_distortion
    ideal = PinholeCamera.from_camera_info(W, H, K_REAL)
    np.testing.assert_array_equal(cam.ray_grid(), ideal.ray_grid())


@pytest.mark.parametrize("d", [(np.nan, 0, 0, 0, 0), (0, np.inf, 0, 0, 0)])
def test_non_finite_distortion_raises(d):
    with pytest.raises(CameraModelError, match="distortion"):
        PinholeCamera.from_camera_info(W, H, K_REAL, d, "plumb_bob")


def test_non_finite_distortion_message_is_bounded():
    d = [0.1] * 100_000 + [np.nan]
    with pytest.raises(CameraModelError, match=r"d\[100000\] = nan") as info:
        PinholeCamera.from_camera_info(W, H, K_REAL, d, "plumb_bob")
    assert len(str(info.value)) < 200


# ----------------------------------------------------------------------------- coefficient counts
# what OpenCV itself takes (measured): pinhole 4, 5, 8, 12, 14; fisheye exactly 4
CV_PINHOLE_COUNTS = (4, 5, 8, 12, 14)


def _cv_takes(model: str, n: int) -> bool:
    k = np.reshape(K_REAL, (3, 3))
    pts = np.array([[[10.0, 20.0]]])
    d = np.full(n, 0.01)
    try:
        if model in ("equidistant", "fisheye"):
            cv2.fisheye.undistortPoints(pts, k, d)
        else:
            cv2.undistortPoints(pts, k, d)
    except cv2.error:
        return False
    return True


def test_opencv_counts_are_what_the_checks_assume():
    assert [n for n in range(1, 16) if _cv_takes("plumb_bob", n)] == list(CV_PINHOLE_COUNTS)
    assert [n for n in range(1, 16) if _cv_takes("fisheye", n)] == [4]


@pytest.mark.parametrize(
    "model, ok",
    [
        ("plumb_bob", (4, 5)),
        ("rational_polynomial", (8, 12, 14)),
        ("equidistant", (4,)),
        ("fisheye", (4,)),
    ],
)
def test_distortion_count_per_model(model, ok):
    """Each model takes its documented count (and OpenCV's compatible extensions); every other
    count of non-zero coefficients is refused naming the model and both counts, before it can
    reach OpenCV in the worker. What is accepted also works in OpenCV."""
    k = K_FISHEYE if model in ("equidistant", "fisheye") else K_REAL
    nominal = {"plumb_bob": 5, "rational_polynomial": 8}.get(model, 4)
    for n in range(1, 16):
        d = [0.001 * (i + 1) for i in range(n)]
        if n in ok:
            cam = PinholeCamera.from_camera_info(64, 48, k, d, model)
            assert np.all(np.isfinite(cam.ray_grid()))
            continue
        with pytest.raises(CameraModelError) as info:
            PinholeCamera.from_camera_info(64, 48, k, d, model)
        msg = str(info.value)
        assert f"'{model}'" in msg and f"needs {nominal} coefficients" in msg and f"got {n}" in msg


@pytest.mark.parametrize(
    "model, d",
    [
        ("equidistant", EQUIDISTANT + (0.0,)),  # a driver that pads d to 5
        ("fisheye", EQUIDISTANT + (0.0,) * 4),
        ("plumb_bob", PLUMB_BOB + (0.0,) * 3),
        ("rational_polynomial", RATIONAL + (0.0,)),
    ],
)
def test_zero_padding_beyond_the_model_count_is_ignored(model, d):
    k = K_FISHEYE if model in ("equidistant", "fisheye") else K_REAL
    nominal = {"plumb_bob": 5, "rational_polynomial": 8}.get(model, 4)
    padded = PinholeCamera.from_camera_info(W, H, k, d, model)
    exact = PinholeCamera.from_camera_info(W, H, k, d[:nominal], model)
    np.testing.assert_array_equal(padded.ray_grid(), exact.ray_grid())


@pytest.mark.parametrize("n", [0, 1, 3, 7, 100])
def test_all_zero_coefficients_of_any_count_are_an_ideal_camera(n):
    cam = PinholeCamera.from_camera_info(W, H, K_REAL, (0.0,) * n, "rational_polynomial")
    assert not cam.has_distortion


def test_long_model_name_is_cut_in_the_message():
    with pytest.raises(CameraModelError) as info:
        PinholeCamera.from_camera_info(W, H, K_REAL, PLUMB_BOB, "m" * 100_000)
    assert len(str(info.value)) < 300 and "100000 chars" in str(info.value)


# ----------------------------------------------------------------------------- from_fov
@pytest.mark.parametrize(
    "w, h, fov", [(640, 480, 60.0), (1280, 720, 90.0), (64, 48, 42.5), (5, 3, 120)]
)
def test_from_fov(w, h, fov):
    cam = PinholeCamera.from_fov(w, h, fov)
    f = 0.5 * h / math.tan(math.radians(fov) / 2)
    assert cam.fy == pytest.approx(f, rel=1e-12)
    assert cam.fx == pytest.approx(f, rel=1e-12)  # square pixels
    assert (cam.cx, cam.cy) == ((w - 1) / 2, (h - 1) / 2)
    # geometric check of the convention: the top and bottom image *edges* (v = -0.5 and
    # v = H - 0.5, half a pixel beyond the outer pixel centres) are at +-fov/2
    top = (-0.5 - cam.cy) / cam.fy
    bottom = (h - 0.5 - cam.cy) / cam.fy
    assert math.degrees(math.atan(-top)) == pytest.approx(fov / 2, abs=1e-9)
    assert math.degrees(math.atan(bottom)) == pytest.approx(fov / 2, abs=1e-9)


def test_from_fov_90_degrees_focal_is_half_height():
    assert PinholeCamera.from_fov(100, 80, 90.0).fy == pytest.approx(40.0, rel=1e-12)


@pytest.mark.parametrize("fov", [0.0, -10.0, 180.0, 270.0, float("nan")])
def test_from_fov_rejects_bad_fov(fov):
    with pytest.raises(CameraModelError, match="field of view"):
        PinholeCamera.from_fov(640, 480, fov)


# ----------------------------------------------------------------------------- ray grids
def test_undistorted_ray_grid_formula():
    cam = PinholeCamera.from_camera_info(W, H, K_REAL)
    rays = cam.ray_grid()
    assert rays.shape == (H, W, 2) and rays.dtype == np.float32 and rays.flags.c_contiguous
    g = pixel_grid(W, H)
    np.testing.assert_allclose(rays[..., 0], (g[..., 0] - cam.cx) / cam.fx, atol=1e-6)
    np.testing.assert_allclose(rays[..., 1], (g[..., 1] - cam.cy) / cam.fy, atol=1e-6)
    # pixel (cx, cy) region: x grows to the right, y grows downwards
    assert rays[0, 0, 0] < 0 < rays[0, -1, 0]
    assert rays[0, 0, 1] < 0 < rays[-1, 0, 1]


def test_ray_grid_is_cached():
    cam = PinholeCamera.from_fov(32, 24, 60.0)
    assert cam.ray_grid() is cam.ray_grid()


def test_project_inverts_the_ray_grid():
    cam = PinholeCamera.from_camera_info(W, H, K_REAL)
    rays = cam.ray_grid().reshape(-1, 2).astype(np.float64)
    depth = np.random.default_rng(0).uniform(0.2, 5.0, size=len(rays))
    pts = np.c_[rays, np.ones(len(rays))] * depth[:, None]
    np.testing.assert_allclose(cam.project(pts), pixel_grid(W, H).reshape(-1, 2), atol=1e-3)


def assert_rays_reproject(cam: PinholeCamera, project):
    rays = cam.ray_grid()
    assert rays.shape == (cam.height, cam.width, 2) and rays.dtype == np.float32
    assert np.all(np.isfinite(rays))
    r = rays.reshape(-1, 2).astype(np.float64)
    obj = np.c_[r, np.ones(len(r))].reshape(-1, 1, 3)
    img = project(obj, np.asarray(cam.K), np.asarray(cam.distortion, dtype=np.float64))
    err = np.abs(img.reshape(-1, 2) - pixel_grid(cam.width, cam.height).reshape(-1, 2))
    assert err.max() < 1e-3, f"max reprojection error {err.max():.2e} px"


def cv2_project(obj, k, d):
    img, _ = cv2.projectPoints(obj, np.zeros(3), np.zeros(3), k, d)
    return img


def cv2_fisheye_project(obj, k, d):
    img, _ = cv2.fisheye.projectPoints(obj, np.zeros(3), np.zeros(3), k, d[:4])
    return img


@pytest.mark.parametrize("model, d", [("plumb_bob", PLUMB_BOB), ("rational_polynomial", RATIONAL)])
def test_distorted_ray_grid_reprojects_to_pixel_grid(model, d):
    cam = PinholeCamera.from_camera_info(W, H, K_REAL, d, model)
    assert_rays_reproject(cam, cv2_project)
    # distortion actually changed the rays (barrel: corners pulled outwards once undistorted)
    ideal = PinholeCamera.from_camera_info(W, H, K_REAL).ray_grid()
    assert np.abs(cam.ray_grid() - ideal).max() > 0.05
    assert abs(cam.ray_grid()[0, 0, 0]) > abs(ideal[0, 0, 0])


@pytest.mark.parametrize("model", ["equidistant", "fisheye"])
def test_equidistant_ray_grid_reprojects_to_pixel_grid(model):
    cam = PinholeCamera.from_camera_info(W, H, K_FISHEYE, EQUIDISTANT, model)
    assert_rays_reproject(cam, cv2_fisheye_project)
    ideal = PinholeCamera.from_camera_info(W, H, K_FISHEYE).ray_grid()
    assert np.abs(cam.ray_grid() - ideal).max() > 0.05


def test_small_distorted_camera_centre_ray():
    """The principal point maps to the optical axis whatever the distortion."""
    k = [300.0, 0, 40.0, 0, 300.0, 30.0, 0, 0, 1]
    cam = PinholeCamera.from_camera_info(81, 61, k, PLUMB_BOB, "plumb_bob")
    np.testing.assert_allclose(cam.ray_grid()[30, 40], [0.0, 0.0], atol=1e-6)
    assert_rays_reproject(cam, cv2_project)
