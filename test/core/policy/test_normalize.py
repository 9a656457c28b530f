"""Min-max normalisation: [-1, 1] over the data range, exact round trips, constant dimensions,
streaming statistics and the errors for statistics that cannot work."""

from __future__ import annotations

import numpy as np
import pytest

from clamp_core.policy import MinMax, NormalizationError, compute_minmax


def test_range_maps_to_minus_one_one():
    mm = MinMax([0.0, -2.0, 10.0], [1.0, 2.0, 30.0])
    y = mm.normalize(np.array([[0.0, -2.0, 10.0], [1.0, 2.0, 30.0], [0.5, 0.0, 20.0]]))
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, [[-1, -1, -1], [1, 1, 1], [0, 0, 0]], atol=1e-6)


def test_round_trip_any_leading_dims():
    rng = np.random.default_rng(0)
    lo = rng.uniform(-3, 0, 14)
    mm = MinMax(lo, lo + rng.uniform(0.1, 4, 14))
    x = rng.uniform(-4, 4, size=(2, 5, 14)).astype(np.float32)
    y = mm.normalize(x)
    assert y.shape == x.shape and y.dtype == np.float32
    back = mm.unnormalize(y)
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, x, atol=1e-5)
    np.testing.assert_allclose(mm.normalize(x[0, 0]), y[0, 0])  # (D,) works too


def test_constant_dimension_maps_to_zero_and_back():
    mm = MinMax([0.0, 0.8], [1.0, 0.8], eps=1e-3)  # dim 1: a gripper that never moved
    y = mm.normalize(np.array([0.25, 0.8], np.float32))
    assert y[1] == 0.0
    assert mm.unnormalize(y)[1] == np.float32(0.8)
    # off the constant value, the floored range (eps) sets the slope: no division by zero
    np.testing.assert_allclose(mm.normalize(np.array([0.0, 0.8005]))[1], 1.0, rtol=1e-3)
    assert np.isfinite(mm.unnormalize(np.ones((3, 2)))).all()


def test_out_argument_writes_in_place():
    mm = MinMax([0.0, 0.0], [2.0, 4.0])
    buf = np.empty(2, np.float32)
    res = mm.normalize(np.array([1.0, 4.0]), out=buf)
    assert res is buf
    np.testing.assert_allclose(buf, [0.0, 1.0])


def test_dict_round_trip():
    mm = MinMax([0.0, -1.5], [1.0, 2.5])
    d = mm.to_dict()
    assert d == {"min": [0.0, -1.5], "max": [1.0, 2.5]}
    again = MinMax.from_dict(d)
    np.testing.assert_array_equal(again.lo, mm.lo)
    np.testing.assert_array_equal(again.hi, mm.hi)
    with pytest.raises(NormalizationError, match="mean"):
        MinMax.from_dict({**d, "mean": [0.0, 0.0]})


def test_compute_minmax_streams_over_arrays():
    rng = np.random.default_rng(1)
    parts = [rng.normal(size=(n, 3)) for n in (5, 0, 17, 2)]
    mm = compute_minmax(iter(parts))
    allx = np.concatenate(parts)
    np.testing.assert_array_equal(mm.lo, allx.min(axis=0))
    np.testing.assert_array_equal(mm.hi, allx.max(axis=0))


@pytest.mark.parametrize(
    "arrays, match",
    [
        ([np.zeros((3, 2)), np.zeros((3, 4))], "array 1: has 4 dimensions"),
        ([np.zeros((0, 2)), np.zeros((3, 4))], "array 1: has 4 dimensions"),
        ([np.zeros((3, 2)), np.array([[0.0, np.nan]])], "array 1: non-finite"),
        ([np.zeros(3)], r"array 0: needs shape \(N, D\)"),
        ([], "no data"),
        ([np.zeros((0, 2))], "no data"),
    ],
)
def test_compute_minmax_errors(arrays, match):
    with pytest.raises(NormalizationError, match=match):
        compute_minmax(arrays)


@pytest.mark.parametrize(
    "lo, hi, match",
    [
        ([0.0, 0.0], [1.0], "equally many"),
        ([0.0, np.nan], [1.0, 1.0], r"not finite in dimensions \[1\]"),
        ([0.0, 0.0], [1.0, np.inf], r"not finite in dimensions \[1\]"),
        ([0.0, 2.0], [1.0, 1.0], r"min is above max in dimensions \[1\]"),
    ],
)
def test_bad_statistics(lo, hi, match):
    with pytest.raises(NormalizationError, match=match):
        MinMax(lo, hi)


def test_wrong_last_dimension():
    with pytest.raises(NormalizationError, match="3 values"):
        MinMax([0, 0, 0], [1, 1, 1]).normalize(np.zeros((4, 2)))
