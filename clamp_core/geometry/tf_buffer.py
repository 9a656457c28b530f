"""A time-indexed transform tree, the one used by live nodes, bag replay and training code.

Semantics follow tf2: every frame has at most one parent; a link is static (valid at all
times) or dynamic (a time series, interpolated linearly in translation and by SLERP in rotation).
Lookups outside the recorded time span are errors unless within ``extrapolation_tolerance_s``,
in which case the nearest sample is held. Times are integer nanoseconds, like ROS stamps.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np

from .transforms import Transform


class TfError(LookupError):
    """Base class of every lookup failure; the message says which frames and why."""


class UnknownFrameError(TfError):
    pass


class ConnectivityError(TfError):
    pass


class ExtrapolationError(TfError):
    """Requested time outside a link's data; ``into_future`` tells which side (waiting helps
    only for the future)."""

    def __init__(self, message: str, into_future: bool = False):
        super().__init__(message)
        self.into_future = into_future


def _fmt_s(stamp_ns: int) -> str:
    return f"{stamp_ns * 1e-9:.6f}s"


@dataclass
class _Track:
    """Time series of one dynamic link, kept sorted by stamp."""

    stamps: list[int] = field(default_factory=list)
    values: list[Transform] = field(default_factory=list)

    def insert(self, stamp_ns: int, value: Transform) -> None:
        i = bisect.bisect_left(self.stamps, stamp_ns)
        if i < len(self.stamps) and self.stamps[i] == stamp_ns:
            self.values[i] = value  # same stamp re-sent: last writer wins, as in tf2
            return
        self.stamps.insert(i, stamp_ns)
        self.values.insert(i, value)

    def prune_before(self, stamp_ns: int) -> None:
        i = bisect.bisect_left(self.stamps, stamp_ns)
        # keep one sample older than the horizon so lookups right at the edge still interpolate
        i = max(0, i - 1)
        if i:
            del self.stamps[:i]
            del self.values[:i]


class TfBuffer:
    """Transform tree with history.

    Args:
        cache_duration_s: how much dynamic history to keep per link.
        extrapolation_tolerance_s: a lookup this far outside a link's data holds the nearest sample
            instead of failing (0 = strict, like tf2).
    """

    def __init__(self, cache_duration_s: float = 10.0, extrapolation_tolerance_s: float = 0.0):
        if cache_duration_s <= 0:
            raise ValueError("cache_duration_s must be > 0")
        if extrapolation_tolerance_s < 0:
            raise ValueError("extrapolation_tolerance_s must be >= 0")
        self.cache_ns = int(cache_duration_s * 1e9)
        self.tolerance_ns = int(extrapolation_tolerance_s * 1e9)
        self._parent: dict[str, str] = {}
        self._static: dict[str, Transform] = {}
        self._static_matrix: dict[str, np.ndarray] = {}
        self._dynamic: dict[str, _Track] = {}

    # ------------------------------------------------------------------ writing
    def set_transform(
        self, parent: str, child: str, stamp_ns: int, transform: Transform, static: bool = False
    ) -> None:
        """Record ``T_parent_child`` at ``stamp_ns``. Raises ValueError on an invalid link."""
        parent, child = parent.lstrip("/"), child.lstrip("/")
        if not parent or not child:
            raise ValueError(f"empty frame id in transform '{parent}' -> '{child}'")
        if parent == child:
            raise ValueError(f"transform from frame '{child}' to itself")
        if self._parent.get(child) != parent:
            if self._would_loop(parent, child):
                raise ValueError(
                    f"transform '{parent}' -> '{child}' would create a loop in the tree"
                )
            # re-parenting: the old history describes another tree, drop it
            self._static.pop(child, None)
            self._dynamic.pop(child, None)
            self._parent[child] = parent
        if static:
            self._static[child] = transform
            self._static_matrix.pop(child, None)
            self._dynamic.pop(child, None)
            return
        self._static.pop(child, None)
        track = self._dynamic.setdefault(child, _Track())
        track.insert(int(stamp_ns), transform)
        track.prune_before(track.stamps[-1] - self.cache_ns)

    def clear(self) -> None:
        """Forget dynamic history (e.g. after simulated time jumped backwards). The tree and the
        static links stay: lookups through a dynamic link fail with ExtrapolationError (into the
        future: new data will come) until that link is updated again."""
        for child in self._dynamic:
            self._dynamic[child] = _Track()

    def _would_loop(self, parent: str, child: str) -> bool:
        f = parent
        seen = set()
        while f in self._parent and f not in seen:
            if f == child:
                return True
            seen.add(f)
            f = self._parent[f]
        return f == child

    # ------------------------------------------------------------------ reading
    def frames(self) -> list[str]:
        return sorted(set(self._parent) | set(self._parent.values()))

    def has_frame(self, frame: str) -> bool:
        frame = frame.lstrip("/")
        return frame in self._parent or frame in self._parent.values()

    def _path_to_root(self, frame: str) -> list[str]:
        path = [frame]
        while path[-1] in self._parent:
            path.append(self._parent[path[-1]])
        return path

    def _link(self, child: str, stamp_ns: int, target: str, source: str) -> Transform:
        """T_parent_child at ``stamp_ns``."""
        if child in self._static:
            return self._static[child]
        track = self._dynamic[child]
        stamps = track.stamps
        if not stamps:
            raise ExtrapolationError(
                f"lookup '{target}' <- '{source}': no data for link '{self._parent[child]}' -> "
                f"'{child}' since the buffer was cleared",
                into_future=True,
            )
        i = bisect.bisect_left(stamps, stamp_ns)
        if i < len(stamps) and stamps[i] == stamp_ns:
            return track.values[i]
        if i == 0 or i == len(stamps):
            edge = 0 if i == 0 else len(stamps) - 1
            gap = abs(stamps[edge] - stamp_ns)
            if gap <= self.tolerance_ns:
                return track.values[edge]
            where = "past" if i == 0 else "future"
            have = "earliest" if i == 0 else "latest"
            raise ExtrapolationError(
                f"lookup '{target}' <- '{source}' would extrapolate {gap * 1e-9:.3f}s into the "
                f"{where}: requested {_fmt_s(stamp_ns)}, {have} data for link "
                f"'{self._parent[child]}' -> '{child}' is at {_fmt_s(stamps[edge])}",
                into_future=i != 0,
            )
        t0, t1 = stamps[i - 1], stamps[i]
        return Transform.interpolate(
            track.values[i - 1], track.values[i], (stamp_ns - t0) / (t1 - t0)
        )

    def latest_common_time(self, target: str, source: str) -> int | None:
        """Newest stamp at which the whole chain has data (None if the chain is all static)."""
        up, down = self._chain(target, source)
        latest = [
            self._dynamic[c].stamps[-1]
            for c in up + down
            if c in self._dynamic and self._dynamic[c].stamps
        ]
        return min(latest) if latest else None

    def _chain(self, target: str, source: str) -> tuple[list[str], list[str]]:
        """Children on the path source -> common ancestor and target -> common ancestor."""
        for f in (target, source):
            if not self.has_frame(f):
                known = ", ".join(self.frames()) or "none"
                raise UnknownFrameError(
                    f"lookup '{target}' <- '{source}': frame '{f}' does not exist "
                    f"(known frames: {known})"
                )
        src_path = self._path_to_root(source)
        tgt_path = self._path_to_root(target)
        if src_path[-1] != tgt_path[-1]:
            raise ConnectivityError(
                f"frames '{target}' and '{source}' are not connected: their trees have roots "
                f"'{tgt_path[-1]}' and '{src_path[-1]}'"
            )
        common = set(tgt_path)
        ancestor = next(f for f in src_path if f in common)
        return src_path[: src_path.index(ancestor)], tgt_path[: tgt_path.index(ancestor)]

    def lookup(self, target: str, source: str, stamp_ns: int | None = None) -> Transform:
        """``T_target_source`` at ``stamp_ns`` (None = latest common time): maps points expressed
        in ``source`` into ``target``. Raises a TfError subclass naming the problem."""
        target, source = target.lstrip("/"), source.lstrip("/")
        if target == source:
            if not self.has_frame(target):
                raise UnknownFrameError(f"frame '{target}' does not exist")
            return Transform.identity()
        up, down = self._chain(target, source)
        if stamp_ns is None:
            stamp_ns = self.latest_common_time(target, source) or 0
        t_anc_src = Transform.identity()
        for child in reversed(up):  # ancestor ... -> source
            t_anc_src = t_anc_src @ self._link(child, stamp_ns, target, source)
        t_anc_tgt = Transform.identity()
        for child in reversed(down):
            t_anc_tgt = t_anc_tgt @ self._link(child, stamp_ns, target, source)
        return t_anc_tgt.inverse() @ t_anc_src

    def lookup_matrix(self, target: str, source: str, stamp_ns: int | None = None) -> np.ndarray:
        """As :meth:`lookup`, as a (4, 4) float64 matrix; the fast path for per-frame use
        (link matrices are composed directly, static ones are cached)."""
        target, source = target.lstrip("/"), source.lstrip("/")
        if target == source:
            if not self.has_frame(target):
                raise UnknownFrameError(f"frame '{target}' does not exist")
            return np.eye(4)
        up, down = self._chain(target, source)
        if stamp_ns is None:
            stamp_ns = self.latest_common_time(target, source) or 0
        m_src = np.eye(4)
        for child in reversed(up):
            m_src = m_src @ self._link_matrix(child, stamp_ns, target, source)
        m_tgt = np.eye(4)
        for child in reversed(down):
            m_tgt = m_tgt @ self._link_matrix(child, stamp_ns, target, source)
        inv = np.eye(4)
        inv[:3, :3] = m_tgt[:3, :3].T
        inv[:3, 3] = -m_tgt[:3, :3].T @ m_tgt[:3, 3]
        return inv @ m_src

    def _link_matrix(self, child: str, stamp_ns: int, target: str, source: str) -> np.ndarray:
        if child in self._static:
            m = self._static_matrix.get(child)
            if m is None:
                m = self._static_matrix[child] = self._static[child].matrix()
            return m
        return self._link(child, stamp_ns, target, source).matrix()

    def can_transform(self, target: str, source: str, stamp_ns: int | None = None) -> bool:
        try:
            self.lookup(target, source, stamp_ns)
            return True
        except TfError:
            return False
