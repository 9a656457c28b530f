"""TfBuffer: tf2-like lookups, interpolation, errors, pruning, and a randomized oracle test.

Oracles: 4x4 matrix products and np.linalg.inv for chains, transforms3d axis-angle for rotation
interpolation (SLERP between R0 and R1 is R0 @ exp(t * log(R0^T R1))).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import transforms3d.axangles as t3d_axangles
import transforms3d.quaternions as t3d_quat

from clamp_core.geometry.tf_buffer import (
    ConnectivityError,
    ExtrapolationError,
    TfBuffer,
    TfError,
    TfRejectedError,
    UnknownFrameError,
)
from clamp_core.geometry.transforms import Transform

S = 1_000_000_000  # ns per second


def quat_about(axis, angle):
    w, x, y, z = t3d_quat.axangle2quat(axis, angle)
    return np.array([x, y, z, w])


def tf_of(translation, axis=(0, 0, 1), angle=0.0) -> Transform:
    return Transform(np.asarray(translation, dtype=float), quat_about(axis, angle))


def random_transform(rng) -> Transform:
    q = rng.normal(size=4)
    return Transform(rng.uniform(-2, 2, 3), q / np.linalg.norm(q))


def rotation_angle(r):
    return float(np.arccos(np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0)))


def oracle_interp(m0, m1, t):
    """Linear translation, constant-speed shortest rotation, built from axis-angle."""
    axis, angle = t3d_axangles.mat2axangle(m0[:3, :3].T @ m1[:3, :3])
    m = np.eye(4)
    m[:3, :3] = m0[:3, :3] @ t3d_axangles.axangle2mat(axis, t * angle)
    m[:3, 3] = (1 - t) * m0[:3, 3] + t * m1[:3, 3]
    return m


def assert_tf_close(t: Transform, m, atol=1e-9):
    np.testing.assert_allclose(t.matrix(), m, atol=atol)


# ----------------------------------------------------------------------------- interpolation
def test_midpoint_interpolation_linear_translation_and_half_angle():
    tf = TfBuffer()
    tf.set_transform("world", "tool", 1 * S, tf_of([0, 0, 0]))
    tf.set_transform("world", "tool", 2 * S, tf_of([2, 4, -6], axis=(1, 1, 0), angle=np.pi / 2))
    mid = tf.lookup("world", "tool", 3 * S // 2)
    np.testing.assert_allclose(mid.translation, [1, 2, -3], atol=1e-12)
    r = mid.matrix()[:3, :3]
    assert rotation_angle(r) == pytest.approx(np.pi / 4, abs=1e-12)
    axis, angle = t3d_axangles.mat2axangle(r)
    np.testing.assert_allclose(
        axis * angle, np.array([1, 1, 0]) / np.sqrt(2) * np.pi / 4, atol=1e-9
    )
    quarter = tf.lookup("world", "tool", 5 * S // 4)
    np.testing.assert_allclose(quarter.translation, [0.5, 1, -1.5], atol=1e-12)
    assert rotation_angle(quarter.matrix()[:3, :3]) == pytest.approx(np.pi / 8, abs=1e-12)


def test_exact_sample_stamps_return_the_samples():
    tf = TfBuffer()
    a, b = tf_of([1, 0, 0], angle=0.3), tf_of([0, 1, 0], angle=-0.4)
    tf.set_transform("world", "tool", 10 * S, a)
    tf.set_transform("world", "tool", 11 * S, b)
    assert_tf_close(tf.lookup("world", "tool", 10 * S), a.matrix(), atol=1e-15)
    assert_tf_close(tf.lookup("world", "tool", 11 * S), b.matrix(), atol=1e-15)


def test_lookup_direction_is_target_from_source():
    tf = TfBuffer()
    t_parent_child = tf_of([1, 2, 3], axis=(0, 0, 1), angle=np.pi / 2)
    tf.set_transform("parent", "child", 0, t_parent_child, static=True)
    # a point at the child's origin + 1 m along child x is at (1, 3, 3) in the parent
    p = tf.lookup("parent", "child").apply(np.array([[1.0, 0.0, 0.0]]))
    np.testing.assert_allclose(p, [[1.0, 3.0, 3.0]], atol=1e-12)
    back = tf.lookup("child", "parent").apply(p)
    np.testing.assert_allclose(back, [[1.0, 0.0, 0.0]], atol=1e-12)


def test_self_lookup_is_identity_and_leading_slash_ignored():
    tf = TfBuffer()
    t = tf_of([1, 2, 3], angle=0.5)
    tf.set_transform("/world", "/base", 0, t, static=True)
    assert tf.has_frame("world") and tf.has_frame("/base")
    assert_tf_close(tf.lookup("base", "base", 5 * S), np.eye(4), atol=0)
    assert_tf_close(tf.lookup("/world", "base"), t.matrix())


# ----------------------------------------------------------------------------- chains and trees
def test_chain_of_mixed_static_and_dynamic_links():
    """world -dyn-> base -static-> arm -dyn-> wrist -static-> cam."""
    rng = np.random.default_rng(0)
    tf = TfBuffer()
    base = {t: random_transform(rng) for t in (1 * S, 2 * S)}
    wrist = {t: random_transform(rng) for t in (1 * S, 2 * S)}
    t_base_arm, t_wrist_cam = random_transform(rng), random_transform(rng)
    tf.set_transform("base", "arm", 0, t_base_arm, static=True)
    tf.set_transform("wrist", "cam", 123, t_wrist_cam, static=True)
    for t in (1 * S, 2 * S):
        tf.set_transform("world", "base", t, base[t])
        tf.set_transform("arm", "wrist", t, wrist[t])
    for t in (1 * S, 2 * S):
        expected = base[t].matrix() @ t_base_arm.matrix() @ wrist[t].matrix() @ t_wrist_cam.matrix()
        assert_tf_close(tf.lookup("world", "cam", t), expected)
        assert_tf_close(tf.lookup("cam", "world", t), np.linalg.inv(expected))
        assert_tf_close(tf.lookup("arm", "cam", t), wrist[t].matrix() @ t_wrist_cam.matrix())
    # between samples each dynamic link is interpolated on its own, then composed
    for frac in (0.25, 0.5, 0.9):
        t = int(S + frac * S)
        expected = (
            oracle_interp(base[S].matrix(), base[2 * S].matrix(), frac)
            @ t_base_arm.matrix()
            @ oracle_interp(wrist[S].matrix(), wrist[2 * S].matrix(), frac)
            @ t_wrist_cam.matrix()
        )
        assert_tf_close(tf.lookup("world", "cam", t), expected)


def test_lookup_between_branches_via_common_ancestor():
    rng = np.random.default_rng(1)
    tf = TfBuffer()
    links = {
        ("world", "table"): random_transform(rng),
        ("table", "left_base"): random_transform(rng),
        ("left_base", "left_cam"): random_transform(rng),
        ("table", "right_base"): random_transform(rng),
        ("right_base", "right_cam"): random_transform(rng),
    }
    for (p, c), t in links.items():
        tf.set_transform(p, c, 0, t, static=True)
    m = {k: v.matrix() for k, v in links.items()}
    t_table_left = m[("table", "left_base")] @ m[("left_base", "left_cam")]
    t_table_right = m[("table", "right_base")] @ m[("right_base", "right_cam")]
    assert_tf_close(tf.lookup("left_cam", "right_cam"), np.linalg.inv(t_table_left) @ t_table_right)
    assert_tf_close(tf.lookup("right_cam", "left_cam"), np.linalg.inv(t_table_right) @ t_table_left)
    # target an ancestor of the source and vice versa
    assert_tf_close(tf.lookup("table", "left_cam"), t_table_left)
    assert_tf_close(
        tf.lookup("left_cam", "world"), np.linalg.inv(m[("world", "table")] @ t_table_left)
    )


def test_branch_lookup_does_not_need_links_above_the_common_ancestor():
    """world -> table is dynamic with data only at 1 s; a camera-to-camera lookup under the table
    at 50 s never touches that link, so it must not fail with an extrapolation error."""
    tf = TfBuffer()
    tf.set_transform("world", "table", 1 * S, tf_of([1, 0, 0]))
    tf.set_transform("table", "a", 0, tf_of([0, 1, 0]), static=True)
    tf.set_transform("table", "b", 0, tf_of([0, 0, 1]), static=True)
    np.testing.assert_allclose(tf.lookup("a", "b", 50 * S).translation, [0, -1, 1], atol=1e-12)
    with pytest.raises(ExtrapolationError):
        tf.lookup("world", "b", 50 * S)


def test_static_links_valid_at_any_time():
    tf = TfBuffer()
    t = tf_of([0.1, 0.2, 0.3], angle=1.0)
    tf.set_transform("base", "cam", 5 * S, t, static=True)
    for stamp in (0, 1, 5 * S, 10**18, None):
        assert_tf_close(tf.lookup("base", "cam", stamp), t.matrix())
    assert tf.latest_common_time("base", "cam") is None


# ----------------------------------------------------------------------------- errors
def make_track(tf: TfBuffer, parent="odom", child="base_link", t0=1 * S, t1=2 * S):
    tf.set_transform("map", parent, 0, tf_of([0, 0, 0]), static=True)
    tf.set_transform(parent, child, t0, tf_of([0, 0, 0]))
    tf.set_transform(parent, child, t1, tf_of([1, 0, 0]))


def test_extrapolation_into_the_past():
    tf = TfBuffer()
    make_track(tf)
    with pytest.raises(ExtrapolationError) as info:
        tf.lookup("map", "base_link", S // 2)
    err = info.value
    assert isinstance(err, TfError) and isinstance(err, LookupError)
    assert err.into_future is False
    msg = str(err)
    for part in ("map", "base_link", "odom", "past", "0.500000s", "1.000000s"):
        assert part in msg, (part, msg)


def test_extrapolation_into_the_future():
    tf = TfBuffer()
    make_track(tf)
    with pytest.raises(ExtrapolationError) as info:
        tf.lookup("base_link", "map", 3 * S)
    err = info.value
    assert err.into_future is True
    msg = str(err)
    for part in ("map", "base_link", "odom", "future", "3.000000s", "2.000000s"):
        assert part in msg, (part, msg)
    assert not tf.can_transform("base_link", "map", 3 * S)
    assert tf.can_transform("base_link", "map", 3 * S // 2)


def test_tolerance_holds_the_nearest_sample():
    tf = TfBuffer(extrapolation_tolerance_s=0.1)
    make_track(tf)
    first, last = tf.lookup("odom", "base_link", 1 * S), tf.lookup("odom", "base_link", 2 * S)
    # held, not extrapolated: exactly the edge samples
    assert_tf_close(tf.lookup("odom", "base_link", 2 * S + 50_000_000), last.matrix(), atol=0)
    assert_tf_close(tf.lookup("odom", "base_link", 2 * S + 100_000_000), last.matrix(), atol=0)
    assert_tf_close(tf.lookup("odom", "base_link", 1 * S - 100_000_000), first.matrix(), atol=0)
    with pytest.raises(ExtrapolationError) as info:
        tf.lookup("odom", "base_link", 2 * S + 100_000_001)
    assert info.value.into_future is True
    with pytest.raises(ExtrapolationError) as info:
        tf.lookup("odom", "base_link", 1 * S - 100_000_001)
    assert info.value.into_future is False


def test_strict_buffer_rejects_one_nanosecond_outside():
    tf = TfBuffer()
    make_track(tf)
    with pytest.raises(ExtrapolationError):
        tf.lookup("odom", "base_link", 2 * S + 1)
    with pytest.raises(ExtrapolationError):
        tf.lookup("odom", "base_link", 1 * S - 1)


def test_unknown_frame_lists_known_frames():
    tf = TfBuffer()
    with pytest.raises(UnknownFrameError, match="none"):
        tf.lookup("world", "cam")
    tf.set_transform("world", "base", 0, tf_of([0, 0, 0]), static=True)
    tf.set_transform("base", "cam", 0, tf_of([0, 0, 0]), static=True)
    for target, source in (("world", "camera"), ("camera", "world")):
        with pytest.raises(UnknownFrameError) as info:
            tf.lookup(target, source)
        msg = str(info.value)
        assert "'camera'" in msg
        for known in ("world", "base", "cam"):
            assert known in msg
    with pytest.raises(UnknownFrameError, match="ghost"):
        tf.lookup("ghost", "ghost")
    assert isinstance(UnknownFrameError("x"), TfError)


def test_unconnected_trees():
    tf = TfBuffer()
    tf.set_transform("world", "a", 0, tf_of([0, 0, 0]), static=True)
    tf.set_transform("odom", "b", 0, tf_of([0, 0, 0]), static=True)
    with pytest.raises(ConnectivityError) as info:
        tf.lookup("a", "b")
    msg = str(info.value)
    for part in ("'a'", "'b'", "world", "odom"):
        assert part in msg
    assert not tf.can_transform("a", "b")


@pytest.mark.parametrize("static", [True, False])
def test_loop_rejected_and_tree_unchanged(static):
    tf = TfBuffer()
    tf.set_transform("a", "b", 0, tf_of([1, 0, 0]), static=True)
    tf.set_transform("b", "c", 0, tf_of([0, 1, 0]), static=True)
    for parent, child in (("c", "a"), ("c", "b"), ("b", "a")):
        with pytest.raises(ValueError, match="loop"):
            tf.set_transform(parent, child, 0, tf_of([0, 0, 0]), static=static)
    np.testing.assert_allclose(tf.lookup("a", "c").translation, [1, 1, 0], atol=1e-12)
    assert tf.frames() == ["a", "b", "c"]


@pytest.mark.parametrize("parent, child", [("a", "a"), ("", "b"), ("a", ""), ("/", "b")])
def test_invalid_links_rejected(parent, child):
    with pytest.raises(ValueError):
        TfBuffer().set_transform(parent, child, 0, tf_of([0, 0, 0]))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cache_duration_s": 0},
        {"cache_duration_s": float("nan")},
        {"cache_duration_s": float("inf")},
        {"extrapolation_tolerance_s": -1},
        {"future_horizon_s": -0.1},
        {"future_horizon_s": float("nan")},
        {"max_frames": 1},
        {"max_frames": 10.5},
        {"max_samples_per_link": 1},
        {"max_samples_per_link": True},
    ],
)
def test_invalid_buffer_settings(kwargs):
    with pytest.raises(ValueError):
        TfBuffer(**kwargs)


# ----------------------------------------------------------------------------- history
def test_reparenting_drops_old_history():
    tf = TfBuffer()
    tf.set_transform("odom", "base", 1 * S, tf_of([1, 0, 0]))
    tf.set_transform("odom", "base", 2 * S, tf_of([2, 0, 0]))
    tf.set_transform("map", "base", 5 * S, tf_of([0, 5, 0]))
    np.testing.assert_allclose(tf.lookup("map", "base", 5 * S).translation, [0, 5, 0])
    # the old odom samples must not be interpolated against the new parent's sample
    with pytest.raises(ExtrapolationError):
        tf.lookup("map", "base", 3 * S // 2)
    with pytest.raises(TfError):  # odom no longer has any link at all
        tf.lookup("odom", "base", 3 * S // 2)
    assert "odom" not in tf.frames()


def test_dynamic_to_static_and_back_replaces_the_link():
    tf = TfBuffer()
    tf.set_transform("base", "cam", 1 * S, tf_of([1, 0, 0]))
    tf.set_transform("base", "cam", 0, tf_of([0, 0, 7]), static=True)
    np.testing.assert_allclose(tf.lookup("base", "cam", 99 * S).translation, [0, 0, 7])
    tf.set_transform("base", "cam", 3 * S, tf_of([3, 0, 0]))
    np.testing.assert_allclose(tf.lookup("base", "cam", 3 * S).translation, [3, 0, 0])
    with pytest.raises(ExtrapolationError):
        tf.lookup("base", "cam", 99 * S)


def test_cache_pruning_keeps_the_edge_interpolable():
    tf = TfBuffer(cache_duration_s=1.0)
    period = 300_000_000  # 0.3 s: the horizon (newest - 1 s) falls between two samples
    stamps = list(range(0, 10 * S + 1, period))
    for t in stamps:
        tf.set_transform("odom", "base", t, tf_of([t / S, 0, 0]))
    tf.set_transform("world", "odom", 0, tf_of([0, 0, 0]), static=True)
    newest = stamps[-1]
    horizon = newest - S
    for t in (horizon, horizon + 1, newest - 1, newest):
        np.testing.assert_allclose(
            tf.lookup("world", "base", t).translation, [t / S, 0, 0], atol=1e-9
        )
    # old history is gone
    with pytest.raises(ExtrapolationError) as info:
        tf.lookup("world", "base", horizon - 2 * period)
    assert info.value.into_future is False
    # what is kept is bounded by the cache duration (+ one sample below the horizon)
    kept = sum(tf.can_transform("world", "base", t) for t in stamps)
    assert kept <= S // period + 2


def test_pruning_is_per_link():
    tf = TfBuffer(cache_duration_s=1.0)
    tf.set_transform("world", "slow", 0, tf_of([0, 0, 0]))
    tf.set_transform("world", "slow", 1 * S, tf_of([1, 0, 0]))
    for t in range(0, 20 * S, S // 2):
        tf.set_transform("world", "fast", t, tf_of([0, 0, 0]))
    np.testing.assert_allclose(tf.lookup("world", "slow", S // 2).translation, [0.5, 0, 0])


def test_out_of_order_inserts_equal_sorted_inserts():
    rng = np.random.default_rng(2)
    samples = [(int(t), random_transform(rng)) for t in np.arange(20) * 100_000_000 + 7]
    ordered, shuffled = TfBuffer(), TfBuffer()
    for t, x in samples:
        ordered.set_transform("world", "tool", t, x)
    for i in rng.permutation(len(samples)):
        t, x = samples[i]
        shuffled.set_transform("world", "tool", t, x)
    for t in rng.integers(samples[0][0], samples[-1][0], size=50):
        assert_tf_close(
            shuffled.lookup("world", "tool", int(t)),
            ordered.lookup("world", "tool", int(t)).matrix(),
        )
    # a late sample between two existing ones is used
    late = TfBuffer()
    late.set_transform("w", "t", 0, tf_of([0, 0, 0]))
    late.set_transform("w", "t", 2 * S, tf_of([2, 0, 0]))
    late.set_transform("w", "t", 1 * S, tf_of([5, 0, 0]))
    np.testing.assert_allclose(late.lookup("w", "t", S // 2).translation, [2.5, 0, 0])


def test_same_stamp_resent_last_writer_wins():
    tf = TfBuffer()
    tf.set_transform("w", "t", S, tf_of([1, 0, 0]))
    tf.set_transform("w", "t", S, tf_of([2, 0, 0]))
    np.testing.assert_allclose(tf.lookup("w", "t", S).translation, [2, 0, 0])


def test_lookup_latest_common_time():
    tf = TfBuffer()
    tf.set_transform("world", "odom", 0, tf_of([0, 0, 0]), static=True)
    for t in (1 * S, 2 * S, 3 * S):
        tf.set_transform("odom", "base", t, tf_of([t / S, 0, 0]))
    for t in (1 * S, 3 * S // 2, 2 * S):  # this link lags behind
        tf.set_transform("base", "cam", t, tf_of([0, t / S, 0]))
    assert tf.latest_common_time("world", "cam") == 2 * S
    assert tf.latest_common_time("cam", "world") == 2 * S
    assert_tf_close(tf.lookup("world", "cam"), tf.lookup("world", "cam", 2 * S).matrix(), atol=0)
    np.testing.assert_allclose(tf.lookup("world", "cam").translation, [2, 2, 0])
    # the chain world -> base alone has newer data
    assert tf.latest_common_time("world", "base") == 3 * S
    np.testing.assert_allclose(tf.lookup("world", "base").translation, [3, 0, 0])


def test_clear_keeps_static_links_and_forgets_dynamic_history():
    tf = TfBuffer()
    t_static = tf_of([0, 0, 1], angle=0.3)
    tf.set_transform("base", "cam", 0, t_static, static=True)
    tf.set_transform("world", "base", 10 * S, tf_of([1, 0, 0]))
    tf.set_transform("world", "base", 11 * S, tf_of([2, 0, 0]))
    tf.clear()
    assert_tf_close(tf.lookup("base", "cam", 0), t_static.matrix())
    assert_tf_close(tf.lookup("base", "cam", 10**15), t_static.matrix())
    # the tree is known, its dynamic data is not: waiting for new data is the right reaction
    with pytest.raises(ExtrapolationError, match="cleared") as err:
        tf.lookup("world", "cam", 10 * S)
    assert err.value.into_future
    # simulated time restarted: earlier stamps are accepted and nothing from before leaks in
    tf.set_transform("world", "base", 1 * S, tf_of([7, 0, 0]))
    tf.set_transform("world", "base", 2 * S, tf_of([9, 0, 0]))
    np.testing.assert_allclose(
        tf.lookup("world", "cam", 3 * S // 2).matrix(),
        tf_of([8, 0, 0]).matrix() @ t_static.matrix(),
        atol=1e-12,
    )
    with pytest.raises(ExtrapolationError):
        tf.lookup("world", "base", 10 * S)


# ----------------------------------------------------------------------------- property
def build_random_tree(rng, n_frames, stamps):
    """A random tree; each link static or dynamic (samples at ``stamps``)."""
    tf = TfBuffer(cache_duration_s=1e3)
    names = [f"f{i}" for i in range(n_frames)]
    parent, static, data = {}, {}, {}
    for i in range(1, n_frames):
        child, par = names[i], names[int(rng.integers(0, i))]
        parent[child] = par
        static[child] = bool(rng.random() < 0.4)
        if static[child]:
            data[child] = random_transform(rng)
            tf.set_transform(par, child, int(rng.integers(0, 10**12)), data[child], static=True)
        else:
            data[child] = {t: random_transform(rng) for t in stamps}
    # dynamic samples arrive in a random global order, as from several publishers
    inserts = [(c, t) for c in data if not static[c] for t in stamps]
    for k in rng.permutation(len(inserts)):
        c, t = inserts[k]
        tf.set_transform(parent[c], c, t, data[c][t])
    return tf, names, parent, static, data


def oracle_root_from(frame, parent, static, data, stamps, t):
    """T_root_frame as a 4x4 matrix product, interpolating each dynamic link by axis-angle."""
    m = np.eye(4)
    chain = []
    while frame in parent:
        chain.append(frame)
        frame = parent[frame]
    for c in reversed(chain):
        if static[c]:
            link = data[c].matrix()
        else:
            j = int(np.searchsorted(stamps, t, side="right")) - 1
            j = min(j, len(stamps) - 2)
            t0, t1 = stamps[j], stamps[j + 1]
            link = oracle_interp(data[c][t0].matrix(), data[c][t1].matrix(), (t - t0) / (t1 - t0))
        m = m @ link
    return m


@pytest.mark.parametrize("seed", range(8))
def test_random_trees_match_matrix_products(seed):
    rng = np.random.default_rng(seed)
    stamps = sorted(int(x) for x in rng.choice(10 * S, size=6, replace=False))
    tf, names, parent, static, data = build_random_tree(rng, int(rng.integers(4, 9)), stamps)
    query_times = list(stamps) + [int(x) for x in rng.integers(stamps[0], stamps[-1], size=5)]
    for t in query_times:
        for _ in range(10):
            target, source = (names[int(i)] for i in rng.integers(0, len(names), size=2))
            expected = np.linalg.inv(
                oracle_root_from(target, parent, static, data, stamps, t)
            ) @ oracle_root_from(source, parent, static, data, stamps, t)
            got = tf.lookup(target, source, t)
            assert_tf_close(got, expected, atol=1e-8)
            # the matrix fast path agrees (twice: the second call uses cached static links)
            for _ in range(2):
                np.testing.assert_allclose(tf.lookup_matrix(target, source, t), expected, atol=1e-8)
            # apply() agrees with the matrix on points
            pts = rng.uniform(-1, 1, size=(4, 3))
            np.testing.assert_allclose(
                got.apply(pts), (np.c_[pts, np.ones(4)] @ expected.T)[:, :3], atol=1e-8
            )


# ----------------------------------------------------------------------------- hostile input
FAR_FUTURE = 2_147_483_647 * S  # int32 seconds maximum, as a hostile header.stamp.sec
STEP = S // 10


def pose_at(t) -> Transform:
    """The moving link's true pose: 1 m/s along x and 0.2 rad/s about z. Linear translation and
    a constant rotation axis make exact interpolation the pose itself, an independent oracle."""
    return tf_of([t / S, 0, 0], axis=(0, 0, 1), angle=0.2 * t / S)


def feed_moving_link(tf: TfBuffer, t0, t1, clock: bool) -> None:
    for t in range(t0, t1 + 1, STEP):
        tf.set_transform("world", "tool", t, pose_at(t), now_ns=t if clock else None)


def assert_recent_history_intact(tf: TfBuffer, t0, t1):
    for t in (t0, t0 + (t1 - t0) // 7, (t0 + t1) // 2 + 1, t1 - 1, t1):
        assert_tf_close(tf.lookup("world", "tool", t), pose_at(t).matrix(), atol=1e-9)


def test_far_future_sample_is_refused_against_the_clock_and_history_survives():
    tf = TfBuffer(cache_duration_s=1.0)
    feed_moving_link(tf, 0, 3 * S, clock=True)
    with pytest.raises(TfRejectedError) as info:
        tf.set_transform("world", "tool", FAR_FUTURE, tf_of([99, 99, 99]), now_ns=3 * S)
    msg = str(info.value)
    assert isinstance(info.value, ValueError)  # callers catching ValueError keep working
    for part in ("'world' -> 'tool'", "ahead of the clock", "horizon 1 s"):
        assert part in msg, (part, msg)
    assert len(msg) < 200
    # the last cache second interpolates exactly as before, and "latest" is still the real latest
    assert_recent_history_intact(tf, 2 * S, 3 * S)
    assert tf.latest_common_time("world", "tool") == 3 * S
    with pytest.raises(ExtrapolationError) as err:
        tf.lookup("world", "tool", 3 * S + 1)
    assert err.value.into_future
    # the link keeps working as new data arrives
    feed_moving_link(tf, 3 * S + STEP, 5 * S, clock=True)
    assert_recent_history_intact(tf, 4 * S, 5 * S)
    assert tf.latest_common_time("world", "tool") == 5 * S


def test_far_future_sample_without_clock_does_not_evict_history():
    tf = TfBuffer(cache_duration_s=1.0)
    feed_moving_link(tf, 0, 3 * S, clock=False)
    tf.set_transform("world", "tool", FAR_FUTURE, tf_of([99, 99, 99]))  # no clock: cannot tell
    assert_recent_history_intact(tf, 2 * S, 3 * S)
    # pruning goes on relative to the real data, not to the outlier
    feed_moving_link(tf, 3 * S + STEP, 5 * S, clock=False)
    assert_recent_history_intact(tf, 4 * S, 5 * S)
    with pytest.raises(ExtrapolationError) as err:
        tf.lookup("world", "tool", 2 * S)
    assert not err.value.into_future
    # the first insert with a clock drops what lies beyond the horizon
    t = 5 * S + STEP
    tf.set_transform("world", "tool", t, pose_at(t), now_ns=t)
    assert tf.latest_common_time("world", "tool") == t
    assert_recent_history_intact(tf, 4 * S + STEP, t)
    with pytest.raises(ExtrapolationError) as err:
        tf.lookup("world", "tool", t + S)
    assert err.value.into_future


def test_slow_link_without_clock_is_still_pruned():
    """Without a clock, each sample of a link whose period (2 s) exceeds the horizon (1 s) looks
    like an outlier when it arrives: pruning lags one sample behind, history stays bounded."""
    tf = TfBuffer(cache_duration_s=1.0, future_horizon_s=1.0)
    stamps = list(range(0, 40 * S + 1, 2 * S))
    for t in stamps:
        tf.set_transform("world", "tool", t, pose_at(t))
    kept = [t for t in stamps if tf.can_transform("world", "tool", t)]
    assert kept == stamps[-3:]
    assert_recent_history_intact(tf, stamps[-3], stamps[-1])


def test_negative_and_stale_stamps_are_refused_static_stamps_are_not_checked():
    tf = TfBuffer(cache_duration_s=1.0, future_horizon_s=0.5)
    now = 10 * S
    tf.set_transform("world", "tool", now, pose_at(now), now_ns=now)
    for clock in (None, now):
        with pytest.raises(TfRejectedError, match="negative"):
            tf.set_transform("world", "tool", -1, pose_at(0), now_ns=clock)
    with pytest.raises(TfRejectedError, match="behind the clock"):
        tf.set_transform("world", "tool", now - S - 1, pose_at(0), now_ns=now)
    with pytest.raises(TfRejectedError, match="ahead of the clock"):
        tf.set_transform("world", "tool", now + S // 2 + 1, pose_at(0), now_ns=now)
    # both edges are inclusive
    tf.set_transform("world", "tool", now - S, pose_at(now - S), now_ns=now)
    tf.set_transform("world", "tool", now + S // 2, pose_at(now + S // 2), now_ns=now)
    assert_recent_history_intact(tf, now - S, now + S // 2)
    assert not tf.can_transform("world", "tool", now - S - 1)
    # static links are valid at all times: their stamp is not checked against anything
    t_cam = tf_of([0, 0, 1], angle=0.4)
    for stamp in (-5 * S, 0, FAR_FUTURE, 2**70):
        tf.set_transform("tool", "cam", stamp, t_cam, static=True, now_ns=now)
        assert_tf_close(tf.lookup("tool", "cam", 0), t_cam.matrix())
    with pytest.raises(TfRejectedError):  # a dynamic stamp must fit ROS int64 nanoseconds
        tf.set_transform("tool", "cam2", 2**63, t_cam)


def test_max_frames_refuses_new_frames_and_keeps_the_tree():
    tf = TfBuffer(max_frames=4)
    tf.set_transform("world", "a", 0, tf_of([1, 0, 0]), static=True)
    tf.set_transform("a", "b", 1 * S, tf_of([0, 1, 0]))
    tf.set_transform("b", "c", 0, tf_of([0, 0, 1]), static=True)
    assert tf.frame_count() == 4
    for parent, child in (("c", "d"), ("x", "y"), ("d", "world")):
        with pytest.raises(TfRejectedError, match="tf tree full: 4 frames known") as info:
            tf.set_transform(parent, child, 1 * S, tf_of([0, 0, 0]))
        assert "'d'" in str(info.value) or "'x'" in str(info.value)
    assert tf.frames() == ["a", "b", "c", "world"] and tf.frame_count() == 4
    np.testing.assert_allclose(tf.lookup("world", "c", 1 * S).translation, [1, 1, 1], atol=1e-12)
    # known frames keep working: more samples, and re-parenting among known frames
    tf.set_transform("a", "b", 2 * S, tf_of([0, 2, 0]))
    np.testing.assert_allclose(tf.lookup("world", "c", 2 * S).translation, [1, 2, 1], atol=1e-12)
    tf.set_transform("world", "c", 0, tf_of([5, 0, 0]), static=True)
    assert tf.frame_count() == 4
    # re-parenting onto a new frame is fine when the old parent disappears with it
    small = TfBuffer(max_frames=2)
    small.set_transform("odom", "base", 1 * S, tf_of([1, 0, 0]))
    small.set_transform("map", "base", 1 * S, tf_of([2, 0, 0]))
    assert small.frames() == ["base", "map"]
    with pytest.raises(TfRejectedError, match="full"):
        small.set_transform("base", "odom", 1 * S, tf_of([0, 0, 0]))


def snapshot(tf: TfBuffer):
    """Everything observable about the test tree below."""
    stamps = [0, 1 * S, 3 * S // 2, 2 * S, 2 * S + 1, FAR_FUTURE]
    looks = []
    for target, source in (("world", "tool"), ("world", "cam"), ("tool", "cam")):
        for t in stamps:
            try:
                looks.append(tf.lookup_matrix(target, source, t).round(12).tolist())
            except TfError as e:
                looks.append(type(e).__name__)
    return tf.frames(), tf.frame_count(), tf.latest_common_time("world", "tool"), looks


HOSTILE = {
    "far future with clock": ("world", "tool", FAR_FUTURE, False, 2 * S),
    "far future re-parenting": ("base", "tool", FAR_FUTURE, False, 2 * S),
    "stale": ("world", "tool", 0, False, 2 * S),
    "negative": ("world", "tool", -S, False, None),
    "negative re-parenting": ("base", "tool", -S, False, None),
    "long child id": ("world", "x" * 100_000, 2 * S, False, None),
    "long parent id": ("y" * 100_000, "tool", 2 * S, True, None),
    "space in id": ("world", "base link", 2 * S, False, None),
    "newline in id": ("world\nFAKE LOG LINE", "tool", 2 * S, True, None),
    "nul in id": ("world", "to\x00ol", 2 * S, False, None),
    "bidi override in id": ("world", "tool\u202e", 2 * S, False, None),
    "tree full": ("tool", "extra", 2 * S, False, None),
    "tree full re-parenting": ("extra", "cam", 2 * S, True, None),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_refused_samples_never_change_the_buffer(case):
    parent, child, stamp, static, now = HOSTILE[case]
    tf = TfBuffer(cache_duration_s=1.0, max_frames=4)
    tf.set_transform("world", "tool", 1 * S, pose_at(1 * S), now_ns=1 * S)
    tf.set_transform("world", "tool", 2 * S, pose_at(2 * S), now_ns=2 * S)
    tf.set_transform("tool", "cam", 0, tf_of([0, 0, 1]), static=True)
    tf.set_transform("world", "base", 0, tf_of([0, 1, 0]), static=True)
    before = snapshot(tf)
    with pytest.raises(TfRejectedError) as info:
        tf.set_transform(parent, child, stamp, tf_of([9, 9, 9]), static=static, now_ns=now)
    msg = str(info.value)
    assert len(msg) < 300 and msg.isprintable(), msg
    assert snapshot(tf) == before


@pytest.mark.parametrize("length, ok", [(256, True), (257, False), (100_000, False)])
def test_frame_id_length_limit(length, ok):
    tf = TfBuffer()
    frame = "f" * length
    if ok:
        tf.set_transform("world", frame, 0, tf_of([1, 0, 0]), static=True)
        assert tf.has_frame(frame)
        return
    for parent, child in (("world", frame), (frame, "world")):
        with pytest.raises(TfRejectedError, match=f"is {length} characters long") as info:
            tf.set_transform(parent, child, 0, tf_of([1, 0, 0]), static=True)
        assert len(str(info.value)) < 200
    assert tf.frame_count() == 0


def test_long_frame_ids_are_cut_to_64_characters_in_messages():
    tf = TfBuffer()
    long = "a" * 70 + "TAIL"
    tf.set_transform("world", long, 0, tf_of([1, 0, 0]), static=True)
    with pytest.raises(UnknownFrameError) as info:
        tf.lookup(long, "ghost" * 20_000)
    msg = str(info.value)
    assert long not in msg and "TAIL" not in msg and "ghost" * 13 not in msg
    assert "'" + "a" * 61 + "...'" in msg  # 64 characters in all
    assert len(msg) < 1000


def test_unknown_frame_with_1000_known_frames_names_at_most_five():
    tf = TfBuffer()  # max_frames=1000
    for i in range(999):
        tf.set_transform("world", f"frame_{i:04d}", 0, tf_of([i, 0, 0]), static=True)
    assert tf.frame_count() == 1000
    with pytest.raises(TfRejectedError, match="tf tree full: 1000 frames known"):
        tf.set_transform("world", "frame_1000", 0, tf_of([0, 0, 0]), static=True)
    for target, source in (("world", "ghost"), ("ghost", "frame_0001"), ("ghost", "ghost")):
        with pytest.raises(UnknownFrameError) as info:
            tf.lookup(target, source)
        msg = str(info.value)
        assert len(msg) < 1000 and "'ghost'" in msg
        listed = msg.split("known frames: ")[1]
        named = {f for f in re.findall(r"[\w]+", listed) if tf.has_frame(f)}
        assert 1 <= len(named) <= 5, msg
        assert "... (1000 known)" in listed
    np.testing.assert_allclose(tf.lookup("world", "frame_0998").translation, [998, 0, 0])


def test_every_error_message_is_bounded_with_maximal_frame_ids():
    """256-character ids everywhere, every error path: messages stay under 1000 characters."""
    a, b, c, d, e = (ch * 256 for ch in "abcde")
    tf = TfBuffer(max_frames=5)
    tf.set_transform(a, b, 1 * S, pose_at(1 * S))
    tf.set_transform(a, b, 2 * S, pose_at(2 * S))
    tf.set_transform(b, c, 0, tf_of([0, 0, 1]), static=True)
    tf.set_transform(d, e, 0, tf_of([0, 0, 1]), static=True)
    attempts = [
        lambda: tf.lookup(a, "z" * 256),
        lambda: tf.lookup("z" * 256, "z" * 256),
        lambda: tf.lookup_matrix("y" * 256, "z" * 256),
        lambda: tf.lookup(c, e),
        lambda: tf.lookup(a, c, 0),
        lambda: tf.lookup(c, a, 3 * S),
        lambda: tf.set_transform(c, a, 0, tf_of([0, 0, 0])),
        lambda: tf.set_transform(c, c, 0, tf_of([0, 0, 0])),
        lambda: tf.set_transform(c, "f" * 256, 0, tf_of([0, 0, 0])),
        lambda: tf.set_transform(a, b, FAR_FUTURE, tf_of([0, 0, 0]), now_ns=2 * S),
        lambda: tf.set_transform(a, b, 0, tf_of([0, 0, 0]), now_ns=FAR_FUTURE),
        lambda: tf.set_transform(a, b, -1, tf_of([0, 0, 0])),
    ]
    for attempt in attempts:
        with pytest.raises((TfError, ValueError)) as info:
            attempt()
        assert len(str(info.value)) < 1000, str(info.value)
    tf.clear()
    with pytest.raises(ExtrapolationError, match="cleared") as info:
        tf.lookup(a, c, 1 * S)
    assert len(str(info.value)) < 1000


def test_per_link_sample_cap_drops_the_oldest():
    tf = TfBuffer(cache_duration_s=1e6, max_samples_per_link=50)
    stamps = [i * 1_000_000 for i in range(200)]
    for t in stamps:
        tf.set_transform("world", "tool", t, pose_at(t))
    kept = [t for t in stamps if tf.can_transform("world", "tool", t)]
    assert kept == stamps[-50:]
    assert_recent_history_intact(tf, stamps[-50], stamps[-1])
    # a late sample older than everything kept is the oldest, so it goes at once
    tf.set_transform("world", "tool", 0, pose_at(0))
    assert [t for t in stamps if tf.can_transform("world", "tool", t)] == stamps[-50:]
    # a late sample inside the kept span replaces the oldest one
    tf.set_transform("world", "tool", stamps[-1] - 500_000, pose_at(stamps[-1] - 500_000))
    assert [t for t in stamps if tf.can_transform("world", "tool", t)] == stamps[-49:]
