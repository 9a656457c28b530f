"""ApproximateTimeSync: pivot semantics, and the property that makes live and bag replay agree:
the emitted sets depend only on the stamps, never on how the streams interleave on arrival.

The brute-force oracle: a reference message p is resolved once every partner stream has delivered
a stamp >= p; it is emitted iff, for every partner, the globally nearest message (ties to the
older) is within the tolerance, and that nearest message is the one chosen.
"""

from __future__ import annotations

import numpy as np
import pytest

from clamp_core.geometry.sync import (
    ApproximateTimeSync,
    DuplicateStampError,
    SyncedSet,
    SyncError,
)

MS = 1_000_000


def feed(sync: ApproximateTimeSync, messages):
    out = []
    for stream, stamp, item in messages:
        out.extend(sync.add(stream, stamp, item))
    return out


def as_plain(sets: list[SyncedSet]):
    return [(s.stamp_ns, dict(s.items)) for s in sets]


# ----------------------------------------------------------------------------- basics
def test_exact_stamps_emit_complete_sets():
    sync = ApproximateTimeSync(["depth", "color", "joints"], tolerance_s=0.005)
    out = []
    for k in range(4):
        t = 1000 * MS + k * 33 * MS
        assert sync.add("depth", t, f"d{k}") == []
        assert sync.add("color", t, f"c{k}") == []
        got = sync.add("joints", t, f"j{k}")
        assert len(got) == 1
        out.extend(got)
    assert [s.stamp_ns for s in out] == [1000 * MS + k * 33 * MS for k in range(4)]
    for k, s in enumerate(out):
        t = s.stamp_ns
        assert s.items == {"depth": (t, f"d{k}"), "color": (t, f"c{k}"), "joints": (t, f"j{k}")}
        assert s.spread_ns == 0
    assert sync.dropped_pivots == 0


def test_single_stream_emits_every_message():
    sync = ApproximateTimeSync(["depth"], tolerance_s=0.0)
    assert as_plain(sync.add("depth", 5, "a")) == [(5, {"depth": (5, "a")})]
    assert as_plain(sync.add("depth", 5, "b")) == [(5, {"depth": (5, "b")})]


def test_partner_beyond_tolerance_drops_the_pivot():
    sync = ApproximateTimeSync(["depth", "color"], tolerance_s=0.020)
    assert sync.add("depth", 100 * MS, "d") == []
    assert sync.dropped_pivots == 0  # still pending: a closer color image may come
    assert sync.add("color", 121 * MS, "c") == []
    assert sync.dropped_pivots == 1
    # the next pivot can use the same color image once it is known nothing closer follows
    assert sync.add("depth", 130 * MS, "d2") == []
    got = sync.add("color", 145 * MS, "c2")
    assert as_plain(got) == [(130 * MS, {"depth": (130 * MS, "d2"), "color": (121 * MS, "c")})]
    assert sync.dropped_pivots == 1


def test_partner_exactly_at_tolerance_is_accepted():
    sync = ApproximateTimeSync(["depth", "color"], tolerance_s=0.020)
    sync.add("depth", 100 * MS, "d")
    got = sync.add("color", 120 * MS, "c")
    assert len(got) == 1 and got[0].spread_ns == 20 * MS


def test_closest_partner_is_chosen_once_final():
    sync = ApproximateTimeSync(["depth", "color"], tolerance_s=0.050)
    sync.add("depth", 100 * MS, "d")
    assert sync.add("color", 60 * MS, "c60") == []
    assert sync.add("color", 98 * MS, "c98") == []  # a later one might still be closer
    got = sync.add("color", 105 * MS, "c105")
    assert as_plain(got) == [(100 * MS, {"depth": (100 * MS, "d"), "color": (98 * MS, "c98")})]


def test_closest_partner_after_the_pivot():
    sync = ApproximateTimeSync(["depth", "color"], tolerance_s=0.050)
    for t in (80, 90, 99):
        sync.add("color", t * MS, f"c{t}")
    sync.add("color", 100 * MS + 1, "c_after")
    got = sync.add("depth", 100 * MS, "d")
    assert got[0].items["color"] == (100 * MS + 1, "c_after")


def test_tie_goes_to_the_older_partner():
    sync = ApproximateTimeSync(["depth", "color"], tolerance_s=0.050)
    sync.add("depth", 100 * MS, "d")
    sync.add("color", 95 * MS, "older")
    got = sync.add("color", 105 * MS, "newer")
    assert got[0].items["color"] == (95 * MS, "older")
    assert got[0].spread_ns == 5 * MS


def test_slower_partner_reused_by_consecutive_pivots():
    """Camera at 30 Hz, joint states at 15 Hz: each joint message serves two camera frames."""
    cam_period, joint_period = 33_333_333, 66_666_666
    msgs = [("camera", k * cam_period, f"cam{k}") for k in range(12)]
    msgs += [("joints", 5 * MS + k * joint_period, f"js{k}") for k in range(7)]
    msgs.sort(key=lambda m: m[1])
    sync = ApproximateTimeSync(["camera", "joints"], tolerance_s=0.030)
    out = feed(sync, msgs)
    assert sync.dropped_pivots == 0
    assert [s.items["camera"][1] for s in out] == [f"cam{k}" for k in range(12)]
    assert [s.items["joints"][1] for s in out] == [f"js{k // 2}" for k in range(12)]
    assert all(s.spread_ns <= 30 * MS for s in out)


def test_older_partners_are_not_reused_after_a_newer_one_was_chosen():
    sync = ApproximateTimeSync(["depth", "color"], tolerance_s=0.1)
    for t in (0, 10, 20, 30):
        sync.add("color", t * MS, f"c{t}")
    out = feed(sync, [("depth", 21 * MS, "d0"), ("depth", 22 * MS, "d1"), ("depth", 29 * MS, "d2")])
    assert [s.items["color"][1] for s in out] == ["c20", "c20", "c30"]


# ----------------------------------------------------------------------------- errors
def test_backwards_stamp_raises_naming_the_stream_and_state_is_kept():
    sync = ApproximateTimeSync(["depth", "color"], tolerance_s=0.01)
    sync.add("color", 200 * MS, "c")
    with pytest.raises(SyncError) as info:
        sync.add("color", 199 * MS, "late")
    msg = str(info.value)
    assert "'color'" in msg and "backwards" in msg
    assert "0.199000s" in msg and "0.200000s" in msg
    assert isinstance(info.value, ValueError)
    assert sync.latest_stamp("color") == 200 * MS
    # the rejected message did not enter the queue
    got = sync.add("depth", 199 * MS, "d")
    assert got[0].items["color"] == (200 * MS, "c")


def test_backwards_reference_raises():
    sync = ApproximateTimeSync(["depth", "color"], tolerance_s=0.01)
    sync.add("depth", 5 * MS, "d")
    with pytest.raises(SyncError, match="'depth'"):
        sync.add("depth", 4 * MS, "d")
    sync.add("depth", 5 * MS, "same stamp again is not backwards")


def test_duplicate_stamp_is_refused_when_asked_and_state_is_kept():
    """A re-sent frame (same stamp as the newest on its stream) would make a second set with the
    same pivot: with reject_duplicates it is refused and changes nothing."""
    sync = ApproximateTimeSync(["depth", "color"], tolerance_s=0.01, reject_duplicates=True)
    assert sync.add("depth", 5 * MS, "d") == []
    got = sync.add("color", 5 * MS, "c")
    assert [s.stamp_ns for s in got] == [5 * MS]
    for stream, item in (("depth", "d again"), ("color", "c again")):
        with pytest.raises(DuplicateStampError) as info:
            sync.add(stream, 5 * MS, item)
        msg = str(info.value)
        assert f"'{stream}'" in msg and "0.005000s" in msg
        assert isinstance(info.value, SyncError)
    # nothing entered a queue: the next stamps make exactly one new set, with the new items
    assert sync.add("depth", 6 * MS, "d6") == []
    got = sync.add("color", 6 * MS, "c6")
    assert as_plain(got) == [(6 * MS, {"depth": (6 * MS, "d6"), "color": (6 * MS, "c6")})]
    # backwards is still the older error, and a reset forgets the stamps
    with pytest.raises(SyncError, match="backwards"):
        sync.add("depth", 5 * MS, "d")
    sync.reset()
    assert sync.add("depth", 6 * MS, "after reset") == []


def test_duplicate_stamps_are_accepted_by_default():
    sync = ApproximateTimeSync(["depth", "color"], tolerance_s=0.01)
    sync.add("color", 5 * MS, "c")
    assert len(sync.add("depth", 5 * MS, "d1")) == 1
    assert len(sync.add("depth", 5 * MS, "d2")) == 1


def test_unknown_stream_raises():
    sync = ApproximateTimeSync(["depth", "color"], tolerance_s=0.01)
    with pytest.raises(SyncError) as info:
        sync.add("imu", 0, None)
    msg = str(info.value)
    assert "'imu'" in msg and "depth" in msg and "color" in msg


@pytest.mark.parametrize(
    "kwargs",
    [
        {"streams": [], "tolerance_s": 0.01},
        {"streams": ["a", "a"], "tolerance_s": 0.01},
        {"streams": ["a", "b"], "tolerance_s": -0.01},
        {"streams": ["a", "b"], "tolerance_s": 0.01, "queue_size": 0},
    ],
)
def test_invalid_construction(kwargs):
    with pytest.raises(ValueError):
        ApproximateTimeSync(**kwargs)


def test_reference_queue_is_bounded_oldest_dropped_first():
    sync = ApproximateTimeSync(["depth", "color"], tolerance_s=1.0, queue_size=3)
    for k in range(6):
        assert sync.add("depth", k * 100 * MS, f"d{k}") == []
    out = sync.add("color", 1000 * MS, "c")
    assert [s.items["depth"][1] for s in out] == ["d3", "d4", "d5"]


def test_partner_queue_is_bounded_oldest_dropped_first():
    sync = ApproximateTimeSync(["depth", "color"], tolerance_s=0.005, queue_size=4)
    for k in range(10):
        sync.add("color", k * 10 * MS, f"c{k}")
    # c0..c5 were evicted: a pivot at 20 ms finds only c6 (60 ms), beyond tolerance
    assert sync.add("depth", 20 * MS, "d_old") == []
    assert sync.dropped_pivots == 1
    got = sync.add("depth", 70 * MS, "d_new")
    assert got[0].items["color"] == (70 * MS, "c7")


def test_reset_forgets_everything():
    sync = ApproximateTimeSync(["depth", "color"], tolerance_s=0.01)
    sync.add("depth", 500 * MS, "d")
    sync.add("color", 100 * MS, "c")
    sync.reset()
    assert sync.latest_stamp("depth") is None and sync.latest_stamp("color") is None
    sync.add("color", 10 * MS, "c2")  # earlier than before the reset: accepted
    assert as_plain(sync.add("depth", 10 * MS, "d2")) == [
        (10 * MS, {"depth": (10 * MS, "d2"), "color": (10 * MS, "c2")})
    ]


# ----------------------------------------------------------------------------- property
def make_stream(rng, period_ns, n, jitter_ns, offset_ns, p_missing, unique):
    base = offset_ns + np.arange(n) * period_ns
    stamps = base + rng.integers(-jitter_ns, jitter_ns + 1, size=n)
    stamps = np.maximum.accumulate(stamps)  # per-stream order is preserved
    keep = rng.random(n) >= p_missing
    out = [int(s) for s in stamps[keep]]
    # the reference may repeat a stamp; partner streams do not, so "nearest" is unambiguous
    return sorted(set(out)) if unique else out


def random_scenario(rng):
    names = ["depth", "color", "joints", "depth2"][: int(rng.integers(2, 5))]
    duration = 2_000 * MS
    streams = {}
    for i, name in enumerate(names):
        period = int(rng.choice([33_333_333, 16_666_666, 10 * MS, 66_666_666, 50 * MS]))
        jitter = int(rng.integers(0, 8 * MS))
        offset = 0 if rng.random() < 0.3 else int(rng.integers(-20 * MS, 20 * MS))
        p_missing = float(rng.choice([0.0, 0.1, 0.3]))
        streams[name] = make_stream(
            rng, period, duration // period, jitter, offset, p_missing, unique=i > 0
        )
        if i > 0 and rng.random() < 0.3:
            # some exact stamp matches with the reference, as from one hardware trigger
            ref = streams[names[0]]
            picks = rng.choice(len(ref), size=min(5, len(ref)), replace=False)
            streams[name] = sorted(set(streams[name]) | {ref[int(j)] for j in picks})
    tolerance_s = float(rng.choice([0.0, 0.005, 0.012, 0.03]))
    return names, streams, tolerance_s


def messages_of(streams):
    return {
        name: [(name, s, f"{name}#{k}") for k, s in enumerate(stamps)]
        for name, stamps in streams.items()
    }


def random_interleaving(rng, per_stream):
    """Merge the streams in a random order that preserves each stream's own order."""
    order = [name for name, msgs in per_stream.items() for _ in msgs]
    rng.shuffle(order)
    pos = dict.fromkeys(per_stream, 0)
    out = []
    for name in order:
        out.append(per_stream[name][pos[name]])
        pos[name] += 1
    return out


def interleavings(rng, per_stream):
    all_msgs = [m for msgs in per_stream.values() for m in msgs]
    yield sorted(all_msgs, key=lambda m: m[1])  # bag order by stamp
    yield [m for msgs in per_stream.values() for m in msgs]  # each stream in full, reference first
    yield [m for msgs in reversed(list(per_stream.values())) for m in msgs]  # reference last
    # a laggy live system: each stream delivered with its own constant latency
    latency = {name: int(rng.integers(0, 300 * MS)) for name in per_stream}
    yield sorted(all_msgs, key=lambda m: (m[1] + latency[m[0]], m[0]))
    for _ in range(6):
        yield random_interleaving(rng, per_stream)


def oracle(names, streams, tolerance_ns, per_stream):
    """Pivots in order; a partner is decided once it has a stamp >= the pivot (else the pivot and
    everything after it waits); a decided partner with nothing within tolerance drops the pivot."""
    ref, partners = names[0], names[1:]
    emitted, dropped = [], 0
    for pivot, item in [(m[1], m[2]) for m in per_stream[ref]]:
        chosen = {ref: (pivot, item)}
        verdict = "emit"
        for p in partners:
            if not streams[p] or streams[p][-1] < pivot:
                verdict = "wait"
                break
            # nearest message over the whole stream, ties to the older one
            best = min(per_stream[p], key=lambda m: (abs(m[1] - pivot), m[1]))
            if abs(best[1] - pivot) > tolerance_ns:
                verdict = "drop"
                break
            chosen[p] = (best[1], best[2])
        if verdict == "wait":
            break
        if verdict == "drop":
            dropped += 1
        else:
            emitted.append((pivot, chosen))
    return emitted, dropped


@pytest.mark.parametrize("seed", range(25))
def test_output_depends_only_on_stamps_not_on_interleaving(seed):
    rng = np.random.default_rng(seed)
    names, streams, tolerance_s = random_scenario(rng)
    per_stream = messages_of(streams)
    n_total = sum(len(v) for v in streams.values())
    results = []
    for msgs in interleavings(rng, per_stream):
        sync = ApproximateTimeSync(names, tolerance_s, queue_size=n_total + 1)
        results.append((as_plain(feed(sync, msgs)), sync.dropped_pivots))
    first = results[0]
    for other in results[1:]:
        assert other == first
    # and the sets are the right ones, by brute force over all messages
    emitted, dropped = oracle(names, streams, int(round(tolerance_s * 1e9)), per_stream)
    assert first == (emitted, dropped)


def test_property_scenarios_are_not_trivial():
    """Guard: across the seeds above there are both emitted and dropped pivots."""
    n_emitted = n_dropped = 0
    for seed in range(25):
        rng = np.random.default_rng(seed)
        names, streams, tolerance_s = random_scenario(rng)
        emitted, dropped = oracle(
            names, streams, int(round(tolerance_s * 1e9)), messages_of(streams)
        )
        n_emitted += len(emitted)
        n_dropped += dropped
    assert n_emitted > 200 and n_dropped > 50
