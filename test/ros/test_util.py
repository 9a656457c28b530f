"""KeyedThrottle and the key / message helpers: bounded whatever the input (pure logic, a fake
log function; no ROS)."""

from __future__ import annotations

import pytest

from clamp_ros import util
from clamp_ros.util import KeyedThrottle, problem_key, shorten


class FakeLog:
    """Stands in for ``logger.error``; records every line."""

    __name__ = "error"

    def __init__(self):
        self.lines: list[str] = []

    def __call__(self, text: str) -> None:
        self.lines.append(text)


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(util.time, "monotonic", c)
    return c


def test_throttles_per_key_and_counts_suppressed(clock):
    log = FakeLog()
    t = KeyedThrottle(log, 2.0)
    t(("cam_a", "tf"), "first")
    t(("cam_a", "tf"), "second")  # suppressed
    t(("cam_b", "tf"), "other camera")  # its own key: logged
    assert log.lines == ["first", "other camera"]
    clock.t += 2.5
    t(("cam_a", "tf"), "third")
    assert log.lines[-1] == "third (1 more like this suppressed)"


def test_table_is_bounded_least_recently_used_first(clock):
    log = FakeLog()
    t = KeyedThrottle(log, 2.0, max_keys=4)
    for k in range(4):
        t(k, f"m{k}")
    t(0, "again")  # suppressed, but makes key 0 the most recently used
    t(4, "m4")  # evicts key 1, the least recently used
    assert len(t) == 4 and t.evicted == 1
    t(0, "still throttled")
    t(1, "forgotten: logged again")
    assert log.lines[-1] == "forgotten: logged again"
    assert "still throttled" not in log.lines


def test_many_distinct_keys_keep_the_table_bounded(clock):
    log = FakeLog()
    t = KeyedThrottle(log, 2.0)
    for k in range(10_000):
        t(("cam", "tf", f"frame_{k}"), "x")
    assert len(t) == t.max_keys == 256
    assert len(t._suppressed) <= 256
    assert t.evicted == 10_000 - 256


def test_suppressed_counts_of_evicted_keys_are_dropped(clock):
    t = KeyedThrottle(FakeLog(), 2.0, max_keys=2)
    for _ in range(5):
        t("a", "x")
    t("b", "x")
    t("c", "x")  # evicts "a" and its count
    assert "a" not in t._suppressed and len(t._suppressed) <= 2


def test_messages_are_cut_with_a_marker(clock):
    log = FakeLog()
    t = KeyedThrottle(log, 2.0, max_chars=1000)
    t("k", "y" * 2_000_000)
    line = log.lines[-1]
    assert len(line) < 1100
    assert line.startswith("y" * 1000) and "[cut: 2000000 chars]" in line
    t("short", "fits")
    assert log.lines[-1] == "fits"


def test_string_parts_of_keys_are_cut(clock):
    log = FakeLog()
    t = KeyedThrottle(log, 2.0, max_key_chars=16)
    t(("cam", "a" * 100_000 + "1"), "x")
    t(("cam", "a" * 100_000 + "2"), "y")  # same first 16 characters: the same key
    t("b" * 100_000, "z")
    assert log.lines == ["x", "z"]
    assert all(len(p) <= 16 for k in t._last for p in (k if isinstance(k, tuple) else (k,)))


def test_other_severities_and_plain_functions_work(clock):
    lines = []

    def warning(text):
        lines.append(("w", text))

    KeyedThrottle(warning, 1.0)("k", "careful")
    KeyedThrottle(lines.append, 1.0)("k", "plain")
    assert lines == [("w", "careful"), "plain"]


@pytest.mark.parametrize("kwargs", [{"max_keys": 0}, {"max_chars": 0}, {"max_key_chars": 0}])
def test_invalid_bounds(kwargs):
    with pytest.raises(ValueError):
        KeyedThrottle(FakeLog(), 1.0, **kwargs)


def test_problem_key_is_short_and_ignores_names_and_numbers():
    a = problem_key("camera 'cam_a': no pose for frame 'ghost_1' at 12.5s: 'x' unknown")
    b = problem_key("camera 'cam_a': no pose for frame 'ghost_22' at 13.25s: 'y' unknown")
    assert a == b == "camera '*': no pose for frame '*' at #s: '*' unknown"
    assert problem_key("size 1e30 m") == "size # m"

    def huge(c):
        return "camera 'cam_a': no pose for frame '" + c * 2_000_000 + "' at 1s"

    assert len(problem_key(huge("q"))) <= 100
    assert problem_key(huge("q")) == problem_key(huge("z"))
    assert problem_key("extrapolation into the future") != problem_key("frame does not exist")


def test_shorten():
    assert shorten("cam_a_optical") == "cam_a_optical"
    s = shorten("f" * 100_000)
    assert s.startswith("f" * 64) and s.endswith("...[100000 chars]") and len(s) < 100
    assert shorten("x" * 64) == "x" * 64
