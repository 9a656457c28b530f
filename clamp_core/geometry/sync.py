"""Approximate-time synchronisation of N streams around a reference stream.

Each message of the reference stream (the first one, usually the main camera's depth) is a
pivot. A set is emitted when every other stream has a message within ``tolerance_s`` of the pivot
and the choice is final: that stream has already delivered something at or after the pivot's
stamp, so no later message can be closer. The output therefore depends only on the stamps, not on
the arrival interleaving across streams: live nodes and offline bag replay produce the same sets.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass
from typing import Any


class SyncError(ValueError):
    """A message the synchroniser cannot accept (unknown stream, time going backwards)."""


class DuplicateStampError(SyncError):
    """A message with the same stamp as the newest one of its stream (``reject_duplicates``)."""


@dataclass(frozen=True)
class SyncedSet:
    """One synchronised set: ``items[stream] = (stamp_ns, item)``; ``stamp_ns`` is the pivot's."""

    stamp_ns: int
    items: dict[str, tuple[int, Any]]

    @property
    def spread_ns(self) -> int:
        stamps = [s for s, _ in self.items.values()]
        return max(stamps) - min(stamps)


class ApproximateTimeSync:
    """Args:
    streams: stream names; ``streams[0]`` is the reference.
    tolerance_s: max |stamp - pivot stamp| for a stream's message to join the set.
    queue_size: messages kept per stream (oldest dropped first).
    reject_duplicates: raise DuplicateStampError for a message whose stamp equals the newest one
        already accepted on its stream (a re-sent frame would otherwise make a second set with
        the same pivot, i.e. a duplicate output). Off by default: offline data may repeat a
        stamp on purpose.
    """

    def __init__(
        self,
        streams: list[str],
        tolerance_s: float,
        queue_size: int = 30,
        reject_duplicates: bool = False,
    ):
        if not streams or len(set(streams)) != len(streams):
            raise ValueError(f"streams must be non-empty and unique, got {streams}")
        if tolerance_s < 0:
            raise ValueError("tolerance_s must be >= 0")
        if queue_size < 1:
            raise ValueError("queue_size must be >= 1")
        self.streams = list(streams)
        self.reference = streams[0]
        self.tolerance_ns = int(round(tolerance_s * 1e9))
        self.reject_duplicates = reject_duplicates
        self._queues: dict[str, deque] = {s: deque(maxlen=queue_size) for s in streams}
        self._latest: dict[str, int | None] = {s: None for s in streams}
        self.dropped_pivots = 0  # reference messages that found no partner set

    def reset(self) -> None:
        for s in self.streams:
            self._queues[s].clear()
            self._latest[s] = None

    def latest_stamp(self, stream: str) -> int | None:
        return self._latest[stream]

    def add(self, stream: str, stamp_ns: int, item: Any) -> list[SyncedSet]:
        """Offer one message; returns the sets completed by it (usually zero or one)."""
        if stream not in self._queues:
            raise SyncError(f"unknown stream '{stream}' (known: {', '.join(self.streams)})")
        last = self._latest[stream]
        if last is not None and stamp_ns < last:
            raise SyncError(
                f"stream '{stream}': stamp {stamp_ns * 1e-9:.6f}s is older than the previous "
                f"{last * 1e-9:.6f}s (time went backwards)"
            )
        if self.reject_duplicates and stamp_ns == last:
            raise DuplicateStampError(
                f"stream '{stream}': stamp {stamp_ns * 1e-9:.6f}s equals the previous message's "
                f"(re-sent frame)"
            )
        self._latest[stream] = stamp_ns
        q = self._queues[stream]
        if stream == self.reference and len(q) == q.maxlen:
            self.dropped_pivots += 1  # the oldest waiting pivot falls out of the queue
        q.append((stamp_ns, item))
        return self._drain()

    def _best(self, stream: str, pivot: int) -> tuple[int, Any] | None:
        q = self._queues[stream]
        if not q:
            return None
        stamps = [s for s, _ in q]
        i = bisect.bisect_left(stamps, pivot)
        cands = [q[j] for j in (i - 1, i) if 0 <= j < len(q)]
        # equal distance on both sides of the pivot: the older message wins
        return min(cands, key=lambda m: (abs(m[0] - pivot), m[0]))

    def _drain(self) -> list[SyncedSet]:
        out: list[SyncedSet] = []
        ref_q = self._queues[self.reference]
        while ref_q:
            pivot, ref_item = ref_q[0]
            chosen: dict[str, tuple[int, Any]] = {self.reference: (pivot, ref_item)}
            pending = False
            dead = False
            for s in self.streams[1:]:
                latest = self._latest[s]
                if latest is None or latest < pivot:
                    # a later message of this stream may still be closer to the pivot
                    pending = True
                    break
                best = self._best(s, pivot)
                if best is None or abs(best[0] - pivot) > self.tolerance_ns:
                    dead = True
                    break
                chosen[s] = best
            if pending:
                break
            ref_q.popleft()
            if dead:
                self.dropped_pivots += 1
                continue
            out.append(SyncedSet(pivot, chosen))
            # older partners can never serve a later pivot better than the chosen ones
            for s in self.streams[1:]:
                q = self._queues[s]
                while q and q[0][0] < chosen[s][0]:
                    q.popleft()
        return out
