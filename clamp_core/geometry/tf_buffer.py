"""A time-indexed transform tree, the one used by live nodes, bag replay and training code.

Semantics follow tf2: every frame has at most one parent; a link is static (valid at all
times) or dynamic (a time series, interpolated linearly in translation and by SLERP in rotation).
Lookups outside the recorded time span are errors unless within ``extrapolation_tolerance_s``,
in which case the nearest sample is held. Times are integer nanoseconds, like ROS stamps.

Hostile or broken /tf input. Anyone on the network can publish /tf, so one bad message must not
poison the buffer for everyone else. :meth:`TfBuffer.set_transform` refuses (``TfRejectedError``, a
``ValueError``) before touching anything, so a refused sample never enters the buffer nor changes
the tree:

* Clock checks, when the caller passes ``now_ns`` (dynamic links only; a static link is valid at
  all times, its stamp is ignored): a stamp more than ``future_horizon_s`` ahead of the clock
  (one such sample would become the newest of its link and push the real history out of the
  cache), and a stamp older than ``now - cache_duration_s`` (it would be pruned at once, and in
  the meantime lookups would interpolate across the bogus gap to it). Without a clock only
  stamps outside ``[0, 2**63)`` (ROS int64 nanoseconds) are refused.
* Frame ids longer than 256 characters or containing whitespace / non-printable characters (ROS
  names never do; they would flood or forge log lines).
* A link that would make the tree exceed ``max_frames`` frames (every new child id is a new
  table entry, so a publisher inventing ids would otherwise grow the buffer without bound).

Memory is bounded too: each dynamic link keeps ``cache_duration_s`` of history (plus one older
sample, so lookups at the edge still interpolate) and at most ``max_samples_per_link`` samples
(the oldest go first). The cache is pruned relative to ``now_ns`` when given (samples from an
earlier clock-less insert that lie beyond the horizon are dropped then too). Without a clock it
is pruned relative to the link's newest stamp, except that a newest sample more than
``future_horizon_s`` ahead of the second newest is not trusted as the reference: the second
newest is used instead. A single far-future outlier thus cannot evict the history; a legitimate
slow link (period above the horizon) merely keeps one extra period of history. A burst of several
mutually consistent future samples cannot be told from a real time jump without a clock: callers
that have one should pass ``now_ns``.

Error messages are bounded (well under 1000 characters): frame ids are cut to 64 characters and
escaped, and an unknown-frame error names at most 5 of the known frames.
"""

from __future__ import annotations

import bisect
import heapq
import math
import numbers
from dataclasses import dataclass, field

import numpy as np

from .transforms import Transform

MAX_FRAME_ID_LEN = 256
_SHORT_LEN = 64
_KNOWN_LISTED = 5
_STAMP_LIMIT = 2**63  # ROS time is int64 nanoseconds


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


class TfRejectedError(ValueError):
    """A transform refused by :meth:`TfBuffer.set_transform` (bad stamp, bad frame id, tree
    full). The buffer is unchanged. A ValueError, like every other invalid-link error."""


def _fmt_s(stamp_ns: int) -> str:
    return f"{stamp_ns * 1e-9:.6f}s"


def _short(frame: str) -> str:
    """``frame`` for an error message: non-printable characters escaped, cut to 64 characters."""
    if not frame.isprintable():
        frame = frame[: 4 * _SHORT_LEN].encode("unicode_escape").decode("ascii")
    if len(frame) > _SHORT_LEN:
        frame = frame[: _SHORT_LEN - 3] + "..."
    return frame


def _bad_frame_id(frame: str) -> str | None:
    """Why ``frame`` is not acceptable as a frame id, or None."""
    if len(frame) > MAX_FRAME_ID_LEN:
        return (
            f"frame id '{_short(frame)}' is {len(frame)} characters long (max {MAX_FRAME_ID_LEN})"
        )
    if not frame.isprintable() or any(c.isspace() for c in frame):
        return f"frame id '{_short(frame)}' contains whitespace or control characters"
    return None


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

    def prune_after(self, stamp_ns: int) -> None:
        i = bisect.bisect_right(self.stamps, stamp_ns)
        del self.stamps[i:]
        del self.values[i:]

    def keep_newest(self, n: int) -> None:
        excess = len(self.stamps) - n
        if excess > 0:
            del self.stamps[:excess]
            del self.values[:excess]


def _positive_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _duration_ns(name: str, value, allow_zero: bool) -> int:
    ok = isinstance(value, numbers.Real) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ValueError(
            f"{name} must be a finite number {'>=' if allow_zero else '>'} 0, got {value!r}"
        )
    return int(value * 1e9)


class TfBuffer:
    """Transform tree with history.

    Args:
        cache_duration_s: how much dynamic history to keep per link.
        extrapolation_tolerance_s: a lookup this far outside a link's data holds the nearest sample
            instead of failing (0 = strict, like tf2).
        future_horizon_s: how far ahead of the caller's clock (``now_ns``) a dynamic stamp may be;
            without a clock, how far the newest sample of a link may lead the second newest and
            still count as the reference for pruning (see the module docstring).
        max_frames: most frames the tree may hold; links that would add more are refused.
        max_samples_per_link: most samples one dynamic link keeps (the oldest are dropped).
    """

    def __init__(
        self,
        cache_duration_s: float = 10.0,
        extrapolation_tolerance_s: float = 0.0,
        future_horizon_s: float = 1.0,
        max_frames: int = 1000,
        max_samples_per_link: int = 10000,
    ):
        self.cache_ns = _duration_ns("cache_duration_s", cache_duration_s, allow_zero=False)
        self.tolerance_ns = _duration_ns(
            "extrapolation_tolerance_s", extrapolation_tolerance_s, allow_zero=True
        )
        self.horizon_ns = _duration_ns("future_horizon_s", future_horizon_s, allow_zero=True)
        self.future_horizon_s = float(future_horizon_s)
        # a link needs two frames and interpolation needs two samples
        self.max_frames = _positive_int("max_frames", max_frames, 2)
        self.max_samples_per_link = _positive_int("max_samples_per_link", max_samples_per_link, 2)
        self._parent: dict[str, str] = {}
        self._static: dict[str, Transform] = {}
        self._static_matrix: dict[str, np.ndarray] = {}
        self._dynamic: dict[str, _Track] = {}
        # frame -> number of links naming it (as child or parent); the known frames are its keys
        self._refs: dict[str, int] = {}

    # ------------------------------------------------------------------ writing
    def set_transform(
        self,
        parent: str,
        child: str,
        stamp_ns: int,
        transform: Transform,
        static: bool = False,
        now_ns: int | None = None,
    ) -> None:
        """Record ``T_parent_child`` at ``stamp_ns``.

        ``now_ns`` is the caller's clock (same time base as the stamps); when given, dynamic
        stamps more than ``future_horizon_s`` ahead of it or older than ``cache_duration_s``
        behind it are refused and the cache is pruned relative to it. Raises ValueError on an
        invalid link (a loop, a self-transform, an empty id) and its subclass TfRejectedError on a
        refused sample (bad stamp or frame id, tree full); either way the buffer is unchanged.
        """
        parent, child = parent.lstrip("/"), child.lstrip("/")
        if not parent or not child:
            raise ValueError(f"empty frame id in transform '{_short(parent)}' -> '{_short(child)}'")
        for frame in (parent, child):
            why = _bad_frame_id(frame)
            if why is not None:
                raise TfRejectedError(why)
        link = f"'{_short(parent)}' -> '{_short(child)}'"
        if parent == child:
            raise ValueError(f"transform from frame '{_short(child)}' to itself")
        stamp = None
        if not static:
            stamp = self._check_stamp(link, stamp_ns, now_ns)
        reparent = self._parent.get(child) != parent
        if reparent:
            if self._would_loop(parent, child):
                raise ValueError(f"transform {link} would create a loop in the tree")
            self._check_room(parent, child)
            # re-parenting: the old history describes another tree, drop it
            self._static.pop(child, None)
            self._static_matrix.pop(child, None)
            self._dynamic.pop(child, None)
            old = self._parent.get(child)
            if old is None:
                self._ref(child, +1)
            else:
                self._ref(old, -1)
            self._ref(parent, +1)
            self._parent[child] = parent
        if static:
            self._static[child] = transform
            self._static_matrix.pop(child, None)
            self._dynamic.pop(child, None)
            return
        self._static.pop(child, None)
        self._static_matrix.pop(child, None)
        track = self._dynamic.setdefault(child, _Track())
        track.insert(stamp, transform)
        self._prune(track, None if now_ns is None else int(now_ns))

    def _check_stamp(self, link: str, stamp_ns, now_ns) -> int:
        try:
            stamp = int(stamp_ns)
        except (TypeError, ValueError, OverflowError):
            raise TfRejectedError(f"link {link}: invalid stamp {str(stamp_ns)[:40]!r}") from None
        if stamp < 0:
            raise TfRejectedError(f"link {link} has a negative stamp ({stamp * 1e-9:.3g} s)")
        if stamp >= _STAMP_LIMIT:
            raise TfRejectedError(
                f"link {link}: stamp {stamp * 1e-9:.3g} s beyond int64 nanoseconds"
            )
        if now_ns is None:
            return stamp
        now = int(now_ns)
        ahead = stamp - now
        if ahead > self.horizon_ns:
            raise TfRejectedError(
                f"link {link} stamped {ahead * 1e-9:.3g} s ahead of the clock "
                f"(horizon {self.future_horizon_s:g} s)"
            )
        if stamp < now - self.cache_ns:
            raise TfRejectedError(
                f"link {link} stamped {-ahead * 1e-9:.3g} s behind the clock, older than the "
                f"{self.cache_ns * 1e-9:g} s cache"
            )
        return stamp

    def _check_room(self, parent: str, child: str) -> None:
        """Refuse a (re-)link that would take the tree past ``max_frames`` frames."""
        new = [f for f in (parent, child) if f not in self._refs]
        if not new:
            return
        old = self._parent.get(child)
        freed = old is not None and self._refs.get(old) == 1  # the old parent disappears
        if len(self._refs) + len(new) - freed > self.max_frames:
            raise TfRejectedError(
                f"tf tree full: {len(self._refs)} frames known (max {self.max_frames}); "
                f"frame '{_short(new[0])}' refused"
            )

    def _ref(self, frame: str, delta: int) -> None:
        n = self._refs.get(frame, 0) + delta
        if n > 0:
            self._refs[frame] = n
        else:
            self._refs.pop(frame, None)

    def _prune(self, track: _Track, now_ns: int | None) -> None:
        if now_ns is not None:
            track.prune_after(now_ns + self.horizon_ns)  # clock-less outliers from earlier
            reference = now_ns
        else:
            s = track.stamps
            # a newest sample far ahead of the rest is not trusted to age the others out
            trusted = len(s) < 2 or s[-1] - s[-2] <= self.horizon_ns
            reference = s[-1] if trusted else s[-2]
        track.prune_before(reference - self.cache_ns)
        track.keep_newest(self.max_samples_per_link)

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
        return sorted(self._refs)

    def frame_count(self) -> int:
        """Number of known frames (diagnostics; compare with ``max_frames``)."""
        return len(self._refs)

    def has_frame(self, frame: str) -> bool:
        return frame.lstrip("/") in self._refs

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
                f"lookup '{_short(target)}' <- '{_short(source)}': no data for link "
                f"'{_short(self._parent[child])}' -> '{_short(child)}' since the buffer was "
                "cleared",
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
                f"lookup '{_short(target)}' <- '{_short(source)}' would extrapolate "
                f"{gap * 1e-9:.3f}s into the {where}: requested {_fmt_s(stamp_ns)}, {have} data "
                f"for link '{_short(self._parent[child])}' -> '{_short(child)}' is at "
                f"{_fmt_s(stamps[edge])}",
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

    def sample_distance_ns(self, target: str, source: str, stamp_ns: int) -> int:
        """How far ``stamp_ns`` is from measured tf on the chain ``target`` <- ``source``: the
        largest, over the chain's dynamic links, of the distance to the link's nearest sample
        (0 when every link is static or sampled exactly then). Lookups interpolate across gaps of
        any length; callers that need a pose measured near a time (a camera pose at an image
        stamp) compare this with their tolerance. Raises TfError for unknown or unconnected
        frames, like :meth:`lookup`."""
        target, source = target.lstrip("/"), source.lstrip("/")
        if target == source:
            return 0
        up, down = self._chain(target, source)
        worst = 0
        for child in up + down:
            track = self._dynamic.get(child)
            if track is None:
                continue  # static
            stamps = track.stamps
            if not stamps:
                return _STAMP_LIMIT
            i = bisect.bisect_left(stamps, stamp_ns)
            near = [abs(stamps[j] - stamp_ns) for j in (i - 1, i) if 0 <= j < len(stamps)]
            worst = max(worst, min(near))
        return worst

    def _known_summary(self) -> str:
        """At most 5 known frames (alphabetically first), then how many there are."""
        if not self._refs:
            return "none"
        names = ", ".join(_short(f) for f in heapq.nsmallest(_KNOWN_LISTED, self._refs))
        if len(self._refs) > _KNOWN_LISTED:
            names += f", ... ({len(self._refs)} known)"
        return names

    def _chain(self, target: str, source: str) -> tuple[list[str], list[str]]:
        """Children on the path source -> common ancestor and target -> common ancestor."""
        for f in (target, source):
            if f not in self._refs:
                raise UnknownFrameError(
                    f"lookup '{_short(target)}' <- '{_short(source)}': frame '{_short(f)}' does "
                    f"not exist (known frames: {self._known_summary()})"
                )
        src_path = self._path_to_root(source)
        tgt_path = self._path_to_root(target)
        if src_path[-1] != tgt_path[-1]:
            raise ConnectivityError(
                f"frames '{_short(target)}' and '{_short(source)}' are not connected: their trees "
                f"have roots '{_short(tgt_path[-1])}' and '{_short(src_path[-1])}'"
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
                raise UnknownFrameError(
                    f"frame '{_short(target)}' does not exist "
                    f"(known frames: {self._known_summary()})"
                )
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
                raise UnknownFrameError(
                    f"frame '{_short(target)}' does not exist "
                    f"(known frames: {self._known_summary()})"
                )
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
