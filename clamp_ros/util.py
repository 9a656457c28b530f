"""Small helpers shared by the nodes: keyed log throttling and rate / latency statistics."""

from __future__ import annotations

import collections
import importlib
import os
import re
import threading
import time
from collections.abc import Callable


def shorten(text: str, limit: int = 64) -> str:
    """``text`` if it has at most ``limit`` characters, else its first ``limit`` characters and
    a marker with the full length (for names from the wire: frame ids, encodings)."""
    text = str(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...[{len(text)} chars]"


_NUMBER = re.compile(r"[-+]?\d[\d.]*(?:e[-+]?\d+)?")
_QUOTED = re.compile(r"'[^']*(?:'|$)")  # also one cut off by the prefix


def problem_key(message: str, limit: int = 100) -> str:
    """A short, normalised form of a log message for throttling keys: quoted names and numbers
    (frame ids, stamps, sizes) do not make a new problem, and a hostile message cannot make a
    key longer than ``limit`` characters (only a prefix of the message is looked at)."""
    head = message[: 4 * limit]
    return _NUMBER.sub("#", _QUOTED.sub("'*'", head))[:limit]


class KeyedThrottle:
    """Log each (key) at most once per ``period_s``; counts what it suppressed.

    rclpy's own throttling is per call site, so one failing camera would hide another's
    errors; here the key is e.g. (camera, problem).

    Bounded whatever the input (keys and messages may be built from hostile strings):

    - at most ``max_keys`` keys are remembered; the least recently used one is forgotten first
      (with its count of suppressed messages), so a flood of distinct keys costs a fixed amount
      of memory and at worst logs a forgotten key again;
    - string parts of a key are cut to ``max_key_chars`` characters;
    - a logged message is cut to ``max_chars`` characters, with a marker saying how long it was.
    """

    def __init__(
        self,
        log_fn,
        period_s: float = 2.0,
        max_keys: int = 256,
        max_chars: int = 1000,
        max_key_chars: int = 128,
    ):
        if max_keys < 1 or max_chars < 1 or max_key_chars < 1:
            raise ValueError("max_keys, max_chars and max_key_chars must be >= 1")
        self._log = log_fn
        self._period = period_s
        self.max_keys = max_keys
        self.max_chars = max_chars
        self.max_key_chars = max_key_chars
        # key -> monotonic time it was last logged, least recently used first
        self._last: collections.OrderedDict = collections.OrderedDict()
        self._suppressed: collections.Counter = collections.Counter()
        self.evicted = 0  # keys forgotten to stay within max_keys
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._last)

    def _bound_key(self, key):
        if isinstance(key, str):
            return key[: self.max_key_chars]
        if isinstance(key, tuple):
            return tuple(self._bound_key(k) for k in key)
        return key

    def __call__(self, key, message: str) -> None:
        key = self._bound_key(key)
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None:
                self._last.move_to_end(key)
                if now - last < self._period:
                    self._suppressed[key] += 1
                    return
            n = self._suppressed.pop(key, 0)
            self._last[key] = now
            while len(self._last) > self.max_keys:
                old, _ = self._last.popitem(last=False)
                self._suppressed.pop(old, None)
                self.evicted += 1
        message = str(message)
        if len(message) > self.max_chars:
            message = f"{message[: self.max_chars]}... [cut: {len(message)} chars]"
        text = message + (f" ({n} more like this suppressed)" if n else "")
        # rclpy remembers the severity of each call site and raises if it changes, so every
        # severity needs its own line here (one throttle for warnings, one for errors)
        name = getattr(self._log, "__name__", "")
        if name == "error":
            self._log(text)
        elif name == "warning":
            self._log(text)
        elif name == "info":
            self._log(text)
        else:
            self._log(text)


class RateMeter:
    """Events per second over a sliding window, plus time since the last event."""

    def __init__(self, window_s: float = 5.0):
        self._window = window_s
        self._times: collections.deque = collections.deque()
        self.last = None

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.last = now
        self._times.append(now)
        while self._times and now - self._times[0] > self._window:
            self._times.popleft()

    def rate_hz(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        while self._times and now - self._times[0] > self._window:
            self._times.popleft()
        if len(self._times) < 2:
            return 0.0
        return (len(self._times) - 1) / max(self._times[-1] - self._times[0], 1e-9)

    def age_s(self, now: float | None = None) -> float | None:
        if self.last is None:
            return None
        return (time.monotonic() if now is None else now) - self.last


class LatencyStats:
    """Keeps the last ``n`` samples (ms) and reports percentiles."""

    def __init__(self, n: int = 500):
        self._samples: collections.deque = collections.deque(maxlen=n)

    def add(self, ms: float) -> None:
        self._samples.append(ms)

    def percentile(self, q: float) -> float | None:
        if not self._samples:
            return None
        s = sorted(self._samples)
        return s[min(len(s) - 1, int(round(q / 100.0 * (len(s) - 1))))]

    def __len__(self) -> int:
        return len(self._samples)


EXECUTORS = ("events", "single")


def make_executor(kind: str | None = None):
    """The executor every node spins in: ``CLAMP_EXECUTOR`` = events (default where rclpy has
    it) or single.

    rclpy's EventsExecutor (C++, rclpy >= 9) takes messages in the order they arrived; the
    wait-set SingleThreadedExecutor rebuilds its wait set in Python on every callback and visits
    ready subscriptions in creation order, so a node with images, tf and joint states at 50 Hz
    spends much of a core there and can handle an image set before the tf published ahead of
    it."""
    from rclpy.executors import SingleThreadedExecutor

    kind = kind or os.environ.get("CLAMP_EXECUTOR", "events")
    if kind not in EXECUTORS:
        raise ValueError(f"CLAMP_EXECUTOR={kind!r}: choose one of {list(EXECUTORS)}")
    if kind == "events":
        try:
            from rclpy.experimental import EventsExecutor
        except ImportError:
            return SingleThreadedExecutor()
        return EventsExecutor()
    return SingleThreadedExecutor()


def spin(executor) -> None:
    """Spin until shutdown. The EventsExecutor of the rclpy 9 wheels never returns from a
    blocking ``spin()`` / ``spin_once()`` without a timeout (nothing is dispatched), so it is
    spun in short slices."""
    import rclpy

    if type(executor).__name__ != "EventsExecutor":
        return executor.spin()
    while rclpy.ok():
        executor.spin_once(timeout_sec=0.1)


def run_node(make_node: Callable, args=None, name: str = "node") -> None:
    """The body of every node executable: init, build the node, spin until Ctrl-C or shutdown,
    then tear down in the order that never hangs. A ValueError while building the node (a bad
    parameter) is printed as one line and exits with status 2."""
    import rclpy
    from rclpy.executors import ExternalShutdownException

    rclpy.init(args=args)
    node = None
    executor = make_executor()
    config_error = False
    try:
        node = make_node()
        executor.add_node(node)
        spin(executor)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RuntimeError:
        # Ctrl-C can shut the context down while the executor is taking a message; rclpy then
        # raises from the take instead of ExternalShutdownException. That is still a shutdown.
        if rclpy.ok():
            raise
    except ValueError as e:
        if node is not None:
            raise
        print(f"[{name}] configuration error: {e}", flush=True)
        config_error = True
    finally:
        executor.shutdown(timeout_sec=2.0)  # stop callbacks before the node goes away
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    if config_error:
        raise SystemExit(2)


def message_class(msgtype: str):
    """'sensor_msgs/msg/Image' -> the rclpy message class; None when not installed here."""
    parts = msgtype.split("/")
    if len(parts) != 3 or parts[1] != "msg":
        return None
    try:
        return getattr(importlib.import_module(f"{parts[0]}.msg"), parts[2])
    except (ImportError, AttributeError):
        return None
