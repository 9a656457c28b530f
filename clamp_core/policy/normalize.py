"""Per-dimension min-max normalisation of qpos and actions to [-1, 1].

The statistics travel with the model in ``metadata.json`` as ``{"min": [...], "max": [...]}``;
training computes them with ``compute_minmax`` and the runtime applies the same ``MinMax``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np


class NormalizationError(ValueError):
    """Statistics that cannot normalise (non-finite, min above max, lengths that differ)."""


class MinMax:
    """Maps ``lo`` to -1 and ``hi`` to +1 per dimension, linearly.

    The range is floored at ``eps`` so that a dimension that never moves in the data (a
    gripper held closed) maps to 0 and back to its value instead of dividing by zero."""

    def __init__(self, lo, hi, eps: float = 1e-3):
        lo = np.asarray(lo, dtype=np.float64)
        hi = np.asarray(hi, dtype=np.float64)
        if lo.ndim != 1 or hi.ndim != 1 or lo.shape != hi.shape or lo.size == 0:
            raise NormalizationError(
                f"min and max need one value per dimension, equally many; got shapes "
                f"{lo.shape} and {hi.shape}"
            )
        bad = np.flatnonzero(~(np.isfinite(lo) & np.isfinite(hi)))
        if bad.size:
            raise NormalizationError(f"min/max are not finite in dimensions {bad.tolist()}")
        inverted = np.flatnonzero(lo > hi)
        if inverted.size:
            raise NormalizationError(
                f"min is above max in dimensions {inverted.tolist()}: min "
                f"{lo[inverted].tolist()}, max {hi[inverted].tolist()}"
            )
        if not (np.isfinite(eps) and eps > 0):
            raise NormalizationError(f"eps (range floor) must be finite and > 0, got {eps}")
        self.lo, self.hi, self.eps = lo, hi, float(eps)
        span = np.maximum(hi - lo, self.eps)
        self._center = ((lo + hi) / 2).astype(np.float32)
        self._scale = (2.0 / span).astype(np.float32)
        self._half_span = (span / 2).astype(np.float32)

    @property
    def dim(self) -> int:
        return int(self.lo.shape[0])

    def _check(self, x: np.ndarray, what: str) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim < 1 or x.shape[-1] != self.dim:
            raise NormalizationError(
                f"{what}: last axis must have {self.dim} values, got shape {x.shape}"
            )
        return x

    def normalize(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(..., D) raw units -> (..., D) float32, [-1, 1] over the statistics' range."""
        x = self._check(x, "normalize")
        out = np.subtract(x, self._center, out=out)
        return np.multiply(out, self._scale, out=out)

    def unnormalize(self, y: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(..., D) normalised -> (..., D) float32 raw units."""
        y = self._check(y, "unnormalize")
        out = np.multiply(y, self._half_span, out=out)
        return np.add(out, self._center, out=out)

    def to_dict(self) -> dict[str, list[float]]:
        return {"min": [float(v) for v in self.lo], "max": [float(v) for v in self.hi]}

    @staticmethod
    def from_dict(d: dict[str, Any], eps: float = 1e-3) -> MinMax:
        """Build from ``{"min": [...], "max": [...]}``; other keys are errors."""
        if not isinstance(d, dict) or set(d) != {"min", "max"}:
            got = sorted(d) if isinstance(d, dict) else type(d).__name__
            raise NormalizationError(f"statistics need exactly the keys ['max', 'min'], got {got}")
        return MinMax(d["min"], d["max"], eps)

    def __repr__(self) -> str:
        return f"MinMax(dim={self.dim}, eps={self.eps})"


def compute_minmax(arrays: Iterable[np.ndarray], eps: float = 1e-3) -> MinMax:
    """Streaming per-dimension min and max over arrays of shape (N, D) (e.g. one per episode)."""
    lo = hi = dim = None
    for i, a in enumerate(arrays):
        a = np.asarray(a, dtype=np.float64)
        if a.ndim != 2:
            raise NormalizationError(f"array {i}: needs shape (N, D), got {a.shape}")
        if dim is not None and a.shape[1] != dim:
            raise NormalizationError(
                f"array {i}: has {a.shape[1]} dimensions but earlier arrays have {dim}"
            )
        dim = a.shape[1]
        if a.shape[0] == 0:
            continue
        if not np.isfinite(a).all():
            rows = np.flatnonzero(~np.isfinite(a).all(axis=1))
            raise NormalizationError(
                f"array {i}: non-finite values in rows {rows[:10].tolist()}; clean the data "
                "before computing statistics"
            )
        a_lo, a_hi = a.min(axis=0), a.max(axis=0)
        lo = a_lo if lo is None else np.minimum(lo, a_lo)
        hi = a_hi if hi is None else np.maximum(hi, a_hi)
    if lo is None:
        raise NormalizationError("no data: every array was empty (or none was given)")
    return MinMax(lo, hi, eps)
