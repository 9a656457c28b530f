"""Quaternions, rigid transforms and look_at, checked against transforms3d and plain linear algebra.

transforms3d uses (w, x, y, z) quaternions; clamp_core uses ROS order (x, y, z, w).
"""

from __future__ import annotations

import numpy as np
import pytest
import transforms3d.axangles as t3d_axangles
import transforms3d.euler as t3d_euler
import transforms3d.quaternions as t3d_quat

from clamp_core.geometry.transforms import (
    Transform,
    look_at,
    matrix_to_quat,
    quat_multiply,
    quat_normalize,
    quat_slerp,
    quat_to_matrix,
    rpy_to_matrix,
)

SEEDS = range(5)


def xyzw_to_wxyz(q):
    return np.array([q[3], q[0], q[1], q[2]])


def wxyz_to_xyzw(q):
    return np.array([q[1], q[2], q[3], q[0]])


def random_quats(rng, n):
    q = rng.normal(size=(n, 4))
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def random_transform(rng):
    return Transform(rng.uniform(-3, 3, 3), random_quats(rng, 1)[0])


def rotation_angle(q_a, q_b):
    """Angle (rad, in [0, pi]) of the rotation taking a to b, from matrices (sign-free)."""
    r = quat_to_matrix(q_a).T @ quat_to_matrix(q_b)
    return float(np.arccos(np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0)))


def quat_about(axis, angle):
    """xyzw quaternion for ``angle`` about ``axis`` via transforms3d (independent of the module)."""
    return wxyz_to_xyzw(t3d_quat.axangle2quat(axis, angle))


def assert_same_rotation(q_a, q_b, atol=1e-9):
    """q and -q are the same rotation."""
    q_a, q_b = np.asarray(q_a), np.asarray(q_b)
    assert min(np.abs(q_a - q_b).max(), np.abs(q_a + q_b).max()) < atol, (q_a, q_b)


# ----------------------------------------------------------------------------- quaternions
@pytest.mark.parametrize("seed", SEEDS)
def test_quat_to_matrix_matches_transforms3d(seed):
    rng = np.random.default_rng(seed)
    for q in random_quats(rng, 200):
        np.testing.assert_allclose(
            quat_to_matrix(q), t3d_quat.quat2mat(xyzw_to_wxyz(q)), atol=1e-12
        )


def test_quat_to_matrix_of_known_rotation():
    # +90 deg about z maps x to y
    q = np.array([0.0, 0.0, np.sin(np.pi / 4), np.cos(np.pi / 4)])
    np.testing.assert_allclose(quat_to_matrix(q) @ [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(quat_to_matrix(q) @ [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], atol=1e-12)


def test_quat_to_matrix_normalises_its_input():
    rng = np.random.default_rng(1)
    q = random_quats(rng, 1)[0]
    np.testing.assert_allclose(quat_to_matrix(3.7 * q), quat_to_matrix(q), atol=1e-12)


@pytest.mark.parametrize("bad", [[0, 0, 0, 0], [np.nan, 0, 0, 1], [np.inf, 0, 0, 1]])
def test_quat_normalize_rejects_degenerate(bad):
    with pytest.raises(ValueError, match="quaternion"):
        quat_normalize(np.array(bad, dtype=float))


@pytest.mark.parametrize("seed", SEEDS)
def test_matrix_to_quat_matches_transforms3d_and_round_trips(seed):
    rng = np.random.default_rng(seed)
    for q in random_quats(rng, 200):
        m = t3d_quat.quat2mat(xyzw_to_wxyz(q))
        got = matrix_to_quat(m)
        assert got[3] >= 0.0
        assert abs(np.linalg.norm(got) - 1.0) < 1e-12
        assert_same_rotation(got, q, atol=1e-9)
        assert_same_rotation(got, wxyz_to_xyzw(t3d_quat.mat2quat(m)), atol=1e-9)
        np.testing.assert_allclose(quat_to_matrix(got), m, atol=1e-12)


@pytest.mark.parametrize(
    "axis",
    [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, -1], [1, -2, 3], [-1, 0, 1e-3]],
)
@pytest.mark.parametrize("angle", [np.pi, np.pi - 1e-7, 0.5 * np.pi, 1e-8, 0.0])
def test_matrix_to_quat_all_branches(axis, angle):
    """Half-turns (trace = -1) exercise the non-trace branches of Shepperd's method."""
    m = t3d_axangles.axangle2mat(axis, angle)
    q = matrix_to_quat(m)
    assert q[3] >= 0.0
    np.testing.assert_allclose(quat_to_matrix(q), m, atol=1e-9)
    assert_same_rotation(q, quat_about(axis, angle), atol=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
def test_quat_multiply_matches_transforms3d_and_matrix_product(seed):
    rng = np.random.default_rng(seed)
    qs = random_quats(rng, 100)
    for a, b in zip(qs[::2], qs[1::2], strict=True):
        ab = quat_multiply(a, b)
        np.testing.assert_allclose(
            ab, wxyz_to_xyzw(t3d_quat.qmult(xyzw_to_wxyz(a), xyzw_to_wxyz(b))), atol=1e-12
        )
        # "apply b first, then a"
        np.testing.assert_allclose(
            quat_to_matrix(ab), quat_to_matrix(a) @ quat_to_matrix(b), atol=1e-12
        )


# ----------------------------------------------------------------------------- rpy
@pytest.mark.parametrize("seed", SEEDS)
def test_rpy_matches_transforms3d_static_xyz(seed):
    rng = np.random.default_rng(seed)
    for r, p, y in rng.uniform(-np.pi, np.pi, size=(100, 3)):
        np.testing.assert_allclose(
            rpy_to_matrix(r, p, y), t3d_euler.euler2mat(r, p, y, "sxyz"), atol=1e-12
        )


def test_rpy_single_axes():
    np.testing.assert_allclose(rpy_to_matrix(0, 0, np.pi / 2) @ [1, 0, 0], [0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(rpy_to_matrix(0, np.pi / 2, 0) @ [0, 0, 1], [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(rpy_to_matrix(np.pi / 2, 0, 0) @ [0, 1, 0], [0, 0, 1], atol=1e-12)


# ----------------------------------------------------------------------------- Transform
@pytest.mark.parametrize("seed", SEEDS)
def test_matrix_layout_and_from_matrix_round_trip(seed):
    rng = np.random.default_rng(seed)
    t = random_transform(rng)
    m = t.matrix()
    assert m.shape == (4, 4) and m.dtype == np.float64
    np.testing.assert_array_equal(m[3], [0, 0, 0, 1])
    np.testing.assert_allclose(m[:3, 3], t.translation)
    np.testing.assert_allclose(m[:3, :3], t3d_quat.quat2mat(xyzw_to_wxyz(t.rotation)), atol=1e-12)
    back = Transform.from_matrix(m)
    np.testing.assert_allclose(back.matrix(), m, atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_compose_equals_matrix_product(seed):
    rng = np.random.default_rng(seed)
    for _ in range(20):
        a, b, c = (random_transform(rng) for _ in range(3))
        np.testing.assert_allclose((a @ b).matrix(), a.matrix() @ b.matrix(), atol=1e-12)
        # associativity
        np.testing.assert_allclose(((a @ b) @ c).matrix(), (a @ (b @ c)).matrix(), atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_inverse_identities(seed):
    rng = np.random.default_rng(seed)
    for _ in range(20):
        a, b = random_transform(rng), random_transform(rng)
        np.testing.assert_allclose(a.inverse().matrix(), np.linalg.inv(a.matrix()), atol=1e-12)
        np.testing.assert_allclose((a @ a.inverse()).matrix(), np.eye(4), atol=1e-12)
        np.testing.assert_allclose((a.inverse() @ a).matrix(), np.eye(4), atol=1e-12)
        np.testing.assert_allclose(
            (a @ b).inverse().matrix(), (b.inverse() @ a.inverse()).matrix(), atol=1e-12
        )
        np.testing.assert_allclose(a.inverse().inverse().matrix(), a.matrix(), atol=1e-12)


def test_identity_is_neutral():
    rng = np.random.default_rng(7)
    a = random_transform(rng)
    i = Transform.identity()
    np.testing.assert_array_equal(i.matrix(), np.eye(4))
    np.testing.assert_allclose((i @ a).matrix(), a.matrix(), atol=1e-15)
    np.testing.assert_allclose((a @ i).matrix(), a.matrix(), atol=1e-15)


@pytest.mark.parametrize("seed", SEEDS)
def test_apply_equals_homogeneous_matrix(seed):
    rng = np.random.default_rng(seed)
    t = random_transform(rng)
    pts = rng.uniform(-5, 5, size=(50, 3))
    homog = np.c_[pts, np.ones(len(pts))] @ t.matrix().T
    np.testing.assert_allclose(t.apply(pts), homog[:, :3], atol=1e-12)
    # apply then inverse-apply is the identity on points
    np.testing.assert_allclose(t.inverse().apply(t.apply(pts)), pts, atol=1e-12)


def test_apply_known_transform():
    # child frame rotated +90 deg about z and shifted by (1, 2, 3) in the parent
    t = Transform([1.0, 2.0, 3.0], quat_about([0, 0, 1], np.pi / 2))
    np.testing.assert_allclose(t.apply(np.array([[1.0, 0.0, 0.0]])), [[1.0, 3.0, 3.0]], atol=1e-12)


def test_transform_validates_and_normalises():
    with pytest.raises(ValueError, match="not finite"):
        Transform([0.0, np.nan, 0.0], [0, 0, 0, 1])
    with pytest.raises(ValueError):
        Transform([0.0, 0.0, 0.0], [0, 0, 0, 0])
    t = Transform([0, 0, 0], [0, 0, 0, 2.0])
    np.testing.assert_allclose(t.rotation, [0, 0, 0, 1])
    assert t.translation.dtype == np.float64 and t.translation.shape == (3,)


# ----------------------------------------------------------------------------- slerp
@pytest.mark.parametrize("seed", SEEDS)
def test_slerp_endpoints(seed):
    rng = np.random.default_rng(seed)
    for a, b in random_quats(rng, 40).reshape(20, 2, 4):
        assert_same_rotation(quat_slerp(a, b, 0.0), a, atol=1e-12)
        assert_same_rotation(quat_slerp(a, b, 1.0), b, atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_slerp_constant_angular_speed(seed):
    """angle(a, slerp(a, b, t)) = t * angle(a, b); the midpoint is half-way from both ends."""
    rng = np.random.default_rng(seed)
    for a, b in random_quats(rng, 40).reshape(20, 2, 4):
        total = rotation_angle(a, b)
        mid = quat_slerp(a, b, 0.5)
        assert abs(np.linalg.norm(mid) - 1.0) < 1e-12
        assert rotation_angle(a, mid) == pytest.approx(total / 2, abs=1e-9)
        assert rotation_angle(mid, b) == pytest.approx(total / 2, abs=1e-9)
        for t in (0.1, 0.3, 0.77):
            q = quat_slerp(a, b, t)
            assert rotation_angle(a, q) == pytest.approx(t * total, abs=1e-9)
            assert rotation_angle(q, b) == pytest.approx((1 - t) * total, abs=1e-9)


@pytest.mark.parametrize("angle", [0.2, 0.06, 0.02, 2e-3])
def test_slerp_small_angles_keep_constant_speed(angle):
    """Small but ordinary angles (a few degrees) must not fall back to a lerp whose angular error
    is ~1e-6 rad: the rotation at t is exactly t * angle about the axis."""
    a = quat_about([0.3, -1, 0.5], 1.1)
    b = quat_multiply(quat_about([0, 0, 1], angle), a)
    for t in np.linspace(0.0, 1.0, 21):
        expected = quat_multiply(quat_about([0, 0, 1], t * angle), a)
        assert_same_rotation(quat_slerp(a, b, t), expected, atol=1e-12)


def test_slerp_about_a_fixed_axis_against_axis_angle():
    a = quat_about([1, 2, 3], 0.2)
    b = quat_multiply(quat_about([1, 2, 3], 1.0), a)  # 1 rad further about the same axis
    for t in (0.0, 0.25, 0.5, 0.9, 1.0):
        expected = quat_multiply(quat_about([1, 2, 3], t * 1.0), a)
        assert_same_rotation(quat_slerp(a, b, t), expected, atol=1e-12)


def test_slerp_takes_the_shortest_path_for_negated_quaternion():
    a = np.array([0.0, 0.0, 0.0, 1.0])
    b = quat_about([0, 0, 1], np.radians(120))
    neg_b = -b  # same rotation, opposite hemisphere
    assert neg_b[3] < 0
    for other in (b, neg_b):
        mid = quat_slerp(a, other, 0.5)
        # the short way is +60 deg about z; the long way would be -120 deg
        assert_same_rotation(mid, quat_about([0, 0, 1], np.radians(60)), atol=1e-12)
        assert rotation_angle(a, mid) == pytest.approx(np.radians(60), abs=1e-12)
    rng = np.random.default_rng(3)
    for a, b in random_quats(rng, 20).reshape(10, 2, 4):
        for t in (0.25, 0.5, 0.8):
            assert_same_rotation(quat_slerp(a, b, t), quat_slerp(a, -b, t), atol=1e-12)
            assert_same_rotation(quat_slerp(-a, b, t), quat_slerp(a, b, t), atol=1e-12)


@pytest.mark.parametrize("angle", [1e-3, 1e-5, 1e-9, 0.0])
def test_slerp_nearly_identical_rotations(angle):
    a = quat_about([0, 1, 0], 0.4)
    b = quat_multiply(quat_about([0, 1, 0], angle), a)
    q = quat_slerp(a, b, 0.5)
    assert np.all(np.isfinite(q))
    assert abs(np.linalg.norm(q) - 1.0) < 1e-12
    assert_same_rotation(q, quat_multiply(quat_about([0, 1, 0], angle / 2), a), atol=1e-10)


def test_interpolate_transform_linear_translation_slerp_rotation():
    a = Transform([0.0, 0.0, 0.0], [0, 0, 0, 1])
    b = Transform([2.0, -4.0, 6.0], quat_about([0, 0, 1], np.pi / 2))
    for t in (0.0, 0.25, 0.5, 1.0):
        m = Transform.interpolate(a, b, t)
        np.testing.assert_allclose(m.translation, [2 * t, -4 * t, 6 * t], atol=1e-12)
        assert_same_rotation(m.rotation, quat_about([0, 0, 1], t * np.pi / 2), atol=1e-12)


# ----------------------------------------------------------------------------- look_at
def assert_valid_camera_pose(t: Transform, eye, target, up=(0.0, 0.0, 1.0)):
    eye, target, up = (np.asarray(v, dtype=float) for v in (eye, target, up))
    r = t.matrix()[:3, :3]
    x, y, z = r[:, 0], r[:, 1], r[:, 2]
    np.testing.assert_allclose(r.T @ r, np.eye(3), atol=1e-9)
    assert np.linalg.det(r) == pytest.approx(1.0, abs=1e-9)  # right-handed
    np.testing.assert_allclose(np.cross(x, y), z, atol=1e-9)
    np.testing.assert_allclose(t.translation, eye, atol=1e-12)
    d = (target - eye) / np.linalg.norm(target - eye)
    np.testing.assert_allclose(z, d, atol=1e-9)  # optical axis points at the target
    # the target sits on the optical axis in the camera frame, at its distance
    p = t.inverse().apply(target[None])[0]
    np.testing.assert_allclose(p, [0, 0, np.linalg.norm(target - eye)], atol=1e-9)
    return x, y, z


@pytest.mark.parametrize("seed", SEEDS)
def test_look_at_random_poses(seed):
    rng = np.random.default_rng(seed)
    for _ in range(50):
        eye, target = rng.uniform(-2, 2, 3), rng.uniform(-2, 2, 3)
        x, y, z = assert_valid_camera_pose(look_at(eye, target), eye, target)
        up = np.array([0.0, 0.0, 1.0])
        assert abs(x @ up) < 1e-9  # x (image right) is horizontal
        assert y @ up <= 1e-12  # y (image down) never points up


def test_look_at_known_pose():
    """A camera at the origin looking along +x with z up: right is -y, down is -z."""
    t = look_at([0, 0, 0], [5, 0, 0])
    np.testing.assert_allclose(t.matrix()[:3, :3], [[0, 0, 1], [-1, 0, 0], [0, -1, 0]], atol=1e-12)
    # a point above the target appears above the image centre (negative y)
    p = t.inverse().apply(np.array([[5.0, 0.0, 1.0]]))[0]
    assert p[1] < 0
    # a point to the camera's left (+y in the base) appears left of centre (negative x)
    p = t.inverse().apply(np.array([[5.0, 1.0, 0.0]]))[0]
    assert p[0] < 0


def test_look_at_custom_up():
    eye, target, up = [0, 0, 0], [0, 0, 3], [0, 1, 0]
    x, y, z = assert_valid_camera_pose(look_at(eye, target, up), eye, target, up)
    assert abs(x @ up) < 1e-9
    assert y @ np.asarray(up) < 0


@pytest.mark.parametrize("target", [[0, 0, -2], [0, 0, 5], [1e-9, 0, -1]])
def test_look_at_along_up_is_still_a_valid_pose(target):
    eye = [0.0, 0.0, 1.0]
    target = np.asarray(target, dtype=float) + [0, 0, 1.0]
    assert_valid_camera_pose(look_at(eye, target), eye, target)


@pytest.mark.parametrize("target", [[1, 2, 3], [1 + 1e-12, 2, 3]])
def test_look_at_degenerate_raises(target):
    with pytest.raises(ValueError, match="coincide"):
        look_at([1, 2, 3], target)
