"""Episode recording: one rosbag2 bag (MCAP storage) per demonstration, written from
already-serialised CDR messages by a writer thread behind a bounded queue.

The recorder node is a thin driver of :class:`EpisodeBagWriter`; this module knows nothing of ROS
client libraries. Crash safety comes from small chunks flushed (and fsynced) at least every
``flush_period_s`` plus :func:`recover_bag`, which rebuilds a finalised bag from the complete
chunks of a truncated MCAP file.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import json
import os
import re
import shutil
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

from ..aloha import ALOHA_JOINT_NAMES
from ..fileio import fsync_path

EPISODE_KEY = "clamp.episode"
"""Key of the episode metadata: in metadata.yaml's ``custom_data`` (a JSON object as a string)
and the name of the MCAP metadata record written at the start of the file (``{"json": ...}``)."""

PARTIAL_SUFFIX = ".partial"
"""An episode is recorded into ``<out>/<name>.partial/<name>/`` and renamed to ``<out>/<name>``
when finalised; a ``.partial`` folder is a recording that is running or was interrupted."""

_MCAP_METADATA_OP = 0x0C
DROP_POLICY = "newest"
"""When the queue is full the arriving message is dropped (and counted): what is already queued
keeps its order and nothing written is ever reordered."""


class RecordingError(RuntimeError):
    """A recording that cannot start, or that stopped; the message says what to change."""


def software_version() -> str:
    """The clamp_ros version recorded with every episode."""
    try:
        from importlib.metadata import version

        return version("clamp_ros")
    except Exception:
        from clamp_core import __version__

        return __version__


# ---------------------------------------------------------------------------------- config
@dataclass
class RecorderConfig:
    """How episodes are written (the recorder node's ``recorder.*`` parameters)."""

    output_dir: str = "~/clamp_bags"
    """Folder of the episode bags (created if missing); one sub-folder per episode."""
    min_free_gb: float = 2.0
    """Refuse to start an episode when the output file system has less free space (GB)."""
    reserve_mb: float = 16.0
    """Space set aside at the start of each episode and freed on a disk-full error, so the bag
    can still be finalised (index, metadata.yaml). 0 disables it."""
    queue_max_messages: int = 2000
    """Messages waiting for the writer thread at most; beyond that new ones are dropped."""
    queue_max_mb: float = 512.0
    """Bytes waiting for the writer thread at most (MB); beyond that new ones are dropped."""
    compression: str = "none"
    """MCAP chunk compression: none | zstd (zstd costs CPU; images compress little)."""
    flush_period_s: float = 0.5
    """The open chunk is closed and flushed to disk at least this often (wall and message time):
    what a crash can lose, plus the queue's backlog."""
    fsync: bool = True
    """fsync after each flush, so a power loss also loses at most flush_period_s."""
    rate_window_s: float = 2.0
    """Sliding window of the per-topic rate estimates (s)."""
    stale_after_s: float = 1.0
    """A topic silent this long is reported (and a required one refuses a start)."""
    max_static_messages: int = 64
    """/tf_static messages kept in memory (latest first) to open every episode with."""
    robot: str = "aloha"
    """Robot name written into each episode's metadata."""
    joint_names: list[str] = field(default_factory=lambda: list(ALOHA_JOINT_NAMES))
    """The 14 action dimensions, in the model's order (written into the metadata)."""
    follower_topics: list[str] = field(
        default_factory=lambda: ["/follower_left/joint_states", "/follower_right/joint_states"]
    )
    """Follower arms' sensor_msgs/JointState (qpos); required."""
    leader_topics: list[str] = field(
        default_factory=lambda: ["/leader_left/joint_states", "/leader_right/joint_states"]
    )
    """Leader arms' sensor_msgs/JointState (the action source of teleoperation); required."""
    record_commands: bool = False
    """Also record command_topics (the policy's trajectory_msgs/JointTrajectory); optional."""
    command_topics: list[str] = field(
        default_factory=lambda: [
            "/left_arm_controller/joint_trajectory",
            "/right_arm_controller/joint_trajectory",
        ]
    )
    """Command topics recorded when record_commands is true."""
    tf_topic: str = "/tf"
    """tf2_msgs/TFMessage, recorded as it comes (optional)."""
    tf_static_topic: str = "/tf_static"
    """Static transforms: transient local; the latest are written at the start of each bag."""
    record_compressed: bool = False
    """Also record <color>/compressed and <depth>/compressedDepth (sensor_msgs/CompressedImage,
    image_transport) where a driver publishes them; optional topics."""
    record_raw_images: bool = True
    """Record the raw Image topics (required while true)."""
    state_qos: str = "reliable"
    """Joint state, command and /tf subscriptions: reliable | sensor_data."""
    camera_min_rate_hz: float = 30.0
    """Colour, depth and camera_info below this rate are reported (0: no check)."""
    joint_states_min_rate_hz: float = 30.0
    """Follower and leader joint states below this rate are reported (0: no check)."""
    min_rate_overrides: str = ""
    """Per-topic expected rates, 'topic=hz' separated by commas (overrides the above)."""

    def __post_init__(self):
        if not str(self.output_dir):
            raise ValueError("recorder.output_dir: must not be empty")
        for name in ("min_free_gb", "reserve_mb"):
            if getattr(self, name) < 0:
                raise ValueError(f"recorder.{name}={getattr(self, name)}: must be >= 0")
        if self.queue_max_messages < 1:
            raise ValueError(f"recorder.queue_max_messages={self.queue_max_messages}: must be >= 1")
        if not self.queue_max_mb > 0:
            raise ValueError(f"recorder.queue_max_mb={self.queue_max_mb}: must be > 0")
        if self.compression not in ("none", "zstd"):
            raise ValueError(f"recorder.compression={self.compression!r}: choose none or zstd")
        if not 0.01 <= self.flush_period_s <= 1.0:
            raise ValueError(
                f"recorder.flush_period_s={self.flush_period_s}: must be in [0.01, 1.0] "
                "(a crash loses up to this much)"
            )
        for name in ("rate_window_s", "stale_after_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"recorder.{name}={getattr(self, name)}: must be > 0")
        if self.max_static_messages < 1:
            raise ValueError("recorder.max_static_messages: must be >= 1")
        if self.state_qos not in ("reliable", "sensor_data"):
            raise ValueError(f"recorder.state_qos={self.state_qos!r}: reliable or sensor_data")
        for name in ("camera_min_rate_hz", "joint_states_min_rate_hz"):
            if getattr(self, name) < 0:
                raise ValueError(f"recorder.{name}: must be >= 0")
        if not self.follower_topics or not self.leader_topics:
            raise ValueError("recorder.follower_topics and recorder.leader_topics: list topics")
        self.rate_overrides()

    def rate_overrides(self) -> dict[str, float]:
        """``min_rate_overrides`` parsed: {topic: Hz}."""
        out = {}
        for item in filter(None, (x.strip() for x in self.min_rate_overrides.split(","))):
            topic, sep, hz = item.rpartition("=")
            try:
                out[topic.strip()] = float(hz)
            except ValueError:
                sep = ""
            if not sep or not topic.strip() or out.get(topic.strip(), -1) < 0:
                raise ValueError(
                    f"recorder.min_rate_overrides: {item!r} is not 'topic=hz' with hz >= 0"
                )
        return out


@dataclass(frozen=True)
class CameraTopics:
    """The topics of one camera, as the node resolved them."""

    name: str
    color: str
    depth: str
    info: str
    depth_info: str | None = None
    """Only for cameras whose depth is not registered to colour."""


def recorder_topics(
    config: RecorderConfig, cameras: Sequence[CameraTopics], image_qos: str = "sensor_data"
) -> list[TopicSpec]:
    """Every topic an episode records, with type, whether a start needs it, expected rate and
    the QoS to subscribe with."""
    cam_hz, js_hz = config.camera_min_rate_hz, config.joint_states_min_rate_hz
    specs: list[TopicSpec] = []
    for cam in cameras:
        if config.record_raw_images:
            specs.append(TopicSpec(cam.color, "sensor_msgs/msg/Image", True, cam_hz, image_qos))
            specs.append(TopicSpec(cam.depth, "sensor_msgs/msg/Image", True, cam_hz, image_qos))
        specs.append(TopicSpec(cam.info, "sensor_msgs/msg/CameraInfo", True, cam_hz, image_qos))
        if cam.depth_info:
            specs.append(
                TopicSpec(cam.depth_info, "sensor_msgs/msg/CameraInfo", True, cam_hz, image_qos)
            )
        if config.record_compressed:
            for topic in (f"{cam.color}/compressed", f"{cam.depth}/compressedDepth"):
                specs.append(
                    TopicSpec(topic, "sensor_msgs/msg/CompressedImage", False, 0.0, image_qos)
                )
    q = config.state_qos
    for topic in [*config.follower_topics, *config.leader_topics]:
        specs.append(TopicSpec(topic, "sensor_msgs/msg/JointState", True, js_hz, q))
    if config.record_commands:
        for topic in config.command_topics:
            specs.append(TopicSpec(topic, "trajectory_msgs/msg/JointTrajectory", False, 0.0, q))
    specs.append(TopicSpec(config.tf_topic, "tf2_msgs/msg/TFMessage", False, 0.0, q))
    specs.append(TopicSpec(config.tf_static_topic, "tf2_msgs/msg/TFMessage", False, 0.0, "static"))
    overrides = config.rate_overrides()
    seen: set[str] = set()
    out = []
    for spec in specs:
        if spec.topic in seen:
            raise ValueError(f"recorder: topic {spec.topic} is configured twice")
        seen.add(spec.topic)
        if spec.topic in overrides:
            spec = dataclasses.replace(spec, min_rate_hz=overrides[spec.topic])
        out.append(spec)
    unknown = sorted(set(overrides) - seen)
    if unknown:
        raise ValueError(f"recorder.min_rate_overrides: {unknown} are not recorded topics")
    return out


@dataclass(frozen=True)
class TopicSpec:
    """One recorded topic."""

    topic: str
    msgtype: str
    """ROS 2 type name, e.g. sensor_msgs/msg/Image."""
    required: bool = False
    """A start is refused while this topic is silent."""
    min_rate_hz: float = 0.0
    """Below this rate (over the rate window) the topic is reported (0: no check)."""
    qos: str = "reliable"
    """reliable | sensor_data (best effort) | static (reliable, transient local)."""

    def __post_init__(self):
        if not self.topic:
            raise ValueError("topic name must not be empty")
        if self.msgtype.count("/") != 2:
            raise ValueError(f"{self.topic}: type {self.msgtype!r} is not like pkg/msg/Name")
        if self.qos not in ("reliable", "sensor_data", "static"):
            raise ValueError(f"{self.topic}: qos {self.qos!r}: choose reliable|sensor_data|static")
        if self.min_rate_hz < 0:
            raise ValueError(f"{self.topic}: min_rate_hz must be >= 0")


def default_typestore():
    """rosbags' message definitions of the ROS 2 distribution the wheels are built from."""
    from rosbags.typesys import Stores, get_typestore

    store = getattr(Stores, "ROS2_KILTED", None) or Stores.ROS2_JAZZY
    return get_typestore(store)


def check_free_space(path: str | os.PathLike, min_free_gb: float) -> float:
    """Free space (GB) of the file system holding ``path``; RecordingError below the threshold."""
    free_gb = shutil.disk_usage(path).free / 1e9
    if free_gb < min_free_gb:
        raise RecordingError(
            f"only {free_gb:.2f} GB free on {path} (recorder.min_free_gb={min_free_gb}): "
            "free some space or lower the threshold"
        )
    return free_gb


def mcap_metadata_record(name: str, values: dict[str, str]) -> bytes:
    """An MCAP Metadata record (opcode 0x0C): name + string map, little-endian, length-prefixed."""

    def s(text: str) -> bytes:
        b = text.encode()
        return struct.pack("<I", len(b)) + b

    entries = b"".join(s(k) + s(v) for k, v in values.items())
    body = s(name) + struct.pack("<I", len(entries)) + entries
    return struct.pack("<BQ", _MCAP_METADATA_OP, len(body)) + body


# ---------------------------------------------------------------------------------- queue
class BoundedQueue:
    """FIFO of (topic, stamp_ns, data) bounded in messages and bytes; a put beyond either bound
    drops the new message and counts it for its topic."""

    def __init__(self, max_messages: int, max_bytes: int):
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._items: collections.deque = collections.deque()
        self._bytes = 0
        self._cond = threading.Condition()
        self.drops: collections.Counter = collections.Counter()
        self.peak_depth = 0

    def put(self, topic: str, stamp_ns: int, data: bytes) -> bool:
        n = len(data)
        with self._cond:
            if len(self._items) >= self.max_messages or self._bytes + n > self.max_bytes:
                self.drops[topic] += 1
                return False
            self._items.append((topic, stamp_ns, data))
            self._bytes += n
            self.peak_depth = max(self.peak_depth, len(self._items))
            self._cond.notify()
            return True

    def get(self, timeout_s: float):
        """The oldest item, or None after ``timeout_s`` without one."""
        with self._cond:
            if not self._items and not self._cond.wait(timeout_s):
                return None
            if not self._items:
                return None
            item = self._items.popleft()
            self._bytes -= len(item[2])
            return item

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes


# ---------------------------------------------------------------------------------- rates
class StreamMonitor:
    """Per-topic message counts, rate over a sliding window, time since the last message and
    the longest gap in the window; :meth:`problems` names the streams that are silent, slower
    than expected or have gaps. Memory per topic is bounded (``max_samples``)."""

    def __init__(
        self,
        min_rates: dict[str, float],
        window_s: float = 2.0,
        stale_after_s: float = 1.0,
        max_samples: int = 4096,
    ):
        self.min_rates = dict(min_rates)
        self.window_s = window_s
        self.stale_after_s = stale_after_s
        self._times = {t: collections.deque(maxlen=max_samples) for t in self.min_rates}
        self.counts: collections.Counter = collections.Counter()
        self.last: dict[str, float] = {}
        self._lock = threading.Lock()

    def tick(self, topic: str, now_s: float) -> None:
        with self._lock:
            q = self._times.get(topic)
            if q is None:
                return
            q.append(now_s)
            self.counts[topic] += 1
            self.last[topic] = now_s

    def _window(self, topic: str, now_s: float) -> list[float]:
        return [t for t in self._times[topic] if now_s - t <= self.window_s]

    def rate_hz(self, topic: str, now_s: float) -> float:
        with self._lock:
            w = self._window(topic, now_s)
        if len(w) < 2:
            return 0.0
        return (len(w) - 1) / max(w[-1] - w[0], 1e-9)

    def age_s(self, topic: str, now_s: float) -> float | None:
        last = self.last.get(topic)
        return None if last is None else now_s - last

    def silent(self, topics: Iterable[str], now_s: float) -> list[str]:
        """Those of ``topics`` without a message in the last ``stale_after_s``."""
        out = []
        for t in topics:
            age = self.age_s(t, now_s)
            if age is None or age > self.stale_after_s:
                out.append(t)
        return out

    def problems(self, now_s: float, since_s: float) -> dict[str, str]:
        """{topic: problem} for the streams expected to be live (``min_rate_hz`` > 0) over a
        window that began at or after ``since_s`` (the episode start)."""
        out = {}
        full_window = now_s - since_s >= self.window_s
        for topic, min_rate in self.min_rates.items():
            if min_rate <= 0:
                continue
            age = self.age_s(topic, now_s)
            if age is None or age > self.stale_after_s:
                out[topic] = "silent" if age is None else f"silent for {age:.1f} s"
                continue
            if not full_window:
                continue
            with self._lock:
                w = self._window(topic, now_s)
            rate = (len(w) - 1) / max(w[-1] - w[0], 1e-9) if len(w) >= 2 else 0.0
            gap = max((b - a for a, b in zip(w, w[1:], strict=False)), default=0.0)
            if gap > 3.0 / min_rate:  # the more specific cause of a low rate
                out[topic] = f"gap of {gap * 1e3:.0f} ms (expected {min_rate:g} Hz)"
            elif rate < 0.95 * min_rate:
                out[topic] = f"rate {rate:.1f} Hz < expected {min_rate:g} Hz"
        return out


class StaticCache:
    """The latest distinct /tf_static messages (serialised), oldest first, at most ``max_n``:
    every episode starts with them, as a transient-local subscription would deliver them."""

    def __init__(self, max_n: int = 64):
        self._msgs: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self.max_n = max_n
        self._lock = threading.Lock()

    def add(self, data: bytes) -> None:
        with self._lock:
            self._msgs.pop(data, None)
            self._msgs[bytes(data)] = None
            while len(self._msgs) > self.max_n:
                self._msgs.popitem(last=False)

    def messages(self) -> list[bytes]:
        with self._lock:
            return list(self._msgs)

    def __len__(self) -> int:
        return len(self._msgs)


# ---------------------------------------------------------------------------------- writer
@dataclass
class EpisodeResult:
    """What a finished (or failed) episode left on disk."""

    path: str
    """The bag folder (``<out>/<name>``; a ``.partial`` folder when it could not be finalised)."""
    finalised: bool
    messages: dict[str, int] = field(default_factory=dict)
    drops: dict[str, int] = field(default_factory=dict)
    bytes_written: int = 0
    error: str | None = None
    metadata: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class EpisodeBagWriter:
    """One episode bag: ``start`` opens it, ``push`` queues messages (any thread, never
    blocks), ``stop`` finalises it, ``discard`` removes it. A write error (disk full) stops the
    episode: what reached the disk is kept, finalised if the reserved space allows, and
    ``error`` says what happened."""

    def __init__(
        self,
        config: RecorderConfig,
        name: str,
        topics: Sequence[TopicSpec],
        metadata: dict,
        typestore=None,
        clock_ns: Callable[[], int] = time.time_ns,
    ):
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name) or name.endswith(PARTIAL_SUFFIX):
            raise RecordingError(f"episode name {name!r}: use letters, digits, '_', '-', '.'")
        self.config = config
        self.name = name
        self.topics = {t.topic: t for t in topics}
        self.metadata = dict(metadata)
        self.typestore = typestore or default_typestore()
        self.clock_ns = clock_ns
        out = Path(os.path.expanduser(config.output_dir))
        self.out_dir = out
        self.final_dir = out / name
        self.partial_dir = out / f"{name}{PARTIAL_SUFFIX}"
        self.bag_dir = self.partial_dir / name
        self.mcap_path = self.bag_dir / f"{name}.mcap"
        self.queue = BoundedQueue(config.queue_max_messages, int(config.queue_max_mb * 1e6))
        self.error: str | None = None
        self.state = "new"  # new | recording | stopping | done
        self._writer = None
        self._conns: dict = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._abort = threading.Event()
        self._done = threading.Event()
        self._result: EpisodeResult | None = None
        self._finish_args: dict = {}
        # what is durably on disk: counts per topic, chunk index length, file offset, times
        self._committed: dict = {}
        self._pending: collections.Counter = collections.Counter()
        self.committed_counts: collections.Counter = collections.Counter()
        self.bytes_written = 0
        self.write_hook: Callable | None = None
        """Tests: called with the open MCAP file object, returns the object to write through."""

    # ------------------------------------------------------------------ lifecycle
    def start(self, static_messages: Sequence[tuple[str, bytes]] = ()) -> None:
        """Create the bag, write the episode metadata record, the connections and
        ``static_messages`` ((topic, data) pairs), flush, and start the writer thread."""
        from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer

        self.out_dir.mkdir(parents=True, exist_ok=True)
        check_free_space(self.out_dir, self.config.min_free_gb)
        for p in (self.final_dir, self.partial_dir):
            if p.exists():
                raise RecordingError(f"{p} exists already: choose another episode name")
        unknown = [t.topic for t in self.topics.values() if t.msgtype not in self.typestore.types]
        if unknown:
            raise RecordingError(f"unknown message type on topics {unknown}")
        self.partial_dir.mkdir()
        try:
            if self.config.reserve_mb > 0:
                self._reserve(self.partial_dir / "reserve", int(self.config.reserve_mb * 1e6))
            writer = Writer(self.bag_dir, version=9, storage_plugin=StoragePlugin.MCAP)
            if self.config.compression == "zstd":
                writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
            writer.open()
            storage = writer.storage
            for attr in ("bio", "chunk", "chunks", "close_chunk", "channel_stats"):
                if not hasattr(storage, attr):
                    raise RecordingError(
                        f"rosbags' MCAP writer has no '{attr}': this rosbags version is not "
                        "supported by the recorder (tested with 0.11)"
                    )
            if self.write_hook is not None:
                storage.bio = self.write_hook(storage.bio)
            self.metadata.setdefault("start_ns", self.clock_ns())
            storage.bio.write(
                mcap_metadata_record(EPISODE_KEY, {"json": json.dumps(self.metadata)})
            )
            for spec in self.topics.values():
                self._conns[spec.topic] = writer.add_connection(
                    spec.topic,
                    spec.msgtype,
                    typestore=self.typestore,
                    offered_qos_profiles=_qos_profiles(spec.qos),
                )
            self._writer = writer
            now = self.clock_ns()
            for topic, data in static_messages:
                self._write(topic, now, data)
            self._flush()
        except BaseException:
            if self._writer is not None:
                self._writer.abort()
            shutil.rmtree(self.partial_dir, ignore_errors=True)
            raise
        self.state = "recording"
        self._thread = threading.Thread(target=self._run, name=f"bag-{self.name}", daemon=True)
        self._thread.start()

    def push(self, topic: str, stamp_ns: int, data: bytes) -> bool:
        """Queue one serialised message; False when it was dropped (full queue) or the episode
        is not recording."""
        if self.state != "recording" or topic not in self._conns:
            return False
        return self.queue.put(topic, stamp_ns, data)

    def stop(self, success: bool | None, extra: dict | None = None, timeout_s=None):
        """Write what is queued, finalise, rename ``.partial`` to the episode's name.
        Returns the EpisodeResult (``error`` set if the episode had already failed)."""
        if self.state in ("recording", "stopping"):
            self.state = "stopping"
            self._finish_args = {"success": success, "extra": extra or {}}
            self._stop.set()
            self.queue.wake()
            self._done.wait(timeout_s)
        return self._result

    def discard(self) -> None:
        """Stop without writing what is queued and remove the episode's folder."""
        if self._thread is not None and self.state in ("recording", "stopping"):
            self._abort.set()
            self._stop.set()
            self.queue.wake()
            self._done.wait()
        if self._writer is not None:
            self._writer.abort()
            self._writer = None
        shutil.rmtree(self.partial_dir, ignore_errors=True)
        if self._result is not None and self._result.finalised and not self._result.error:
            pass  # a finished bag is never removed
        self.state = "done"

    @property
    def failed(self) -> bool:
        return self.error is not None

    @property
    def result(self) -> EpisodeResult | None:
        return self._result

    def status(self) -> dict:
        """Figures for diagnostics."""
        return {
            "state": self.state,
            "queue_depth": len(self.queue),
            "queue_mb": self.queue.nbytes / 1e6,
            "peak_queue_depth": self.queue.peak_depth,
            "bytes_written": self.bytes_written,
            "drops": dict(self.queue.drops),
            "written": dict(self.committed_counts + self._pending),
            "error": self.error,
        }

    # ------------------------------------------------------------------ writer thread
    def _run(self) -> None:
        period = self.config.flush_period_s
        last_flush = time.monotonic()
        try:
            while not self._abort.is_set():
                item = self.queue.get(period / 4)
                if item is None and self._stop.is_set():
                    break
                if item is not None:
                    self._write(*item)
                now = time.monotonic()
                if now - last_flush >= period or self._chunk_span_ns() >= period * 1e9:
                    self._flush()
                    last_flush = now
            if not self._abort.is_set():
                self._flush()
                self._finalise(**self._finish_args)
        except OSError as e:
            self._on_write_error(e)
        except Exception as e:  # never die silently: the node reports self.error
            self.error = f"writer failed: {e!r}"
            self._on_write_error(e)
        finally:
            self.state = "done"
            self._done.set()

    def _write(self, topic: str, stamp_ns: int, data: bytes) -> None:
        self._writer.write(self._conns[topic], stamp_ns, data)
        self._pending[topic] += 1
        self.bytes_written += len(data)

    def _chunk_span_ns(self) -> int:
        chunk = self._writer.storage.chunk
        if not self._pending or chunk.message_end_time < chunk.message_start_time:
            return 0
        return chunk.message_end_time - chunk.message_start_time

    def _flush(self) -> None:
        """Close the open chunk, flush and (optionally) fsync: everything written so far is on
        disk; remember what that is, for a clean stop after a later write error."""
        storage = self._writer.storage
        if storage.chunk.bio.tell():
            storage.close_chunk()
        storage.bio.flush()
        if self.config.fsync:
            os.fsync(storage.bio.fileno())
        self.committed_counts.update(self._pending)
        self._pending.clear()
        w = self._writer
        self._committed = {
            "offset": storage.bio.tell(),
            "chunks": len(storage.chunks),
            "stats": dict(storage.channel_stats),
            "counts": dict(w.counts),
            "times": (storage.message_start_time, storage.message_end_time),
            "wtimes": (w.min_timestamp, w.max_timestamp),
        }

    def _episode_metadata(self, **updates) -> dict:
        meta = dict(self.metadata)
        meta.update(
            stop_ns=self.clock_ns(),
            drops={k: int(v) for k, v in sorted(self.queue.drops.items())},
            messages={k: int(v) for k, v in sorted(self.committed_counts.items())},
        )
        meta.update(updates)
        return meta

    def _finalise(self, success=None, extra=None, error=None) -> None:
        meta = self._episode_metadata(success=success, error=error, **(extra or {}))
        self._writer.set_custom_data(EPISODE_KEY, json.dumps(meta))
        self._writer.close()
        self._writer = None
        fsync_path(self.bag_dir / "metadata.yaml")
        fsync_path(self.mcap_path)
        (self.partial_dir / "reserve").unlink(missing_ok=True)
        if self.final_dir.exists():  # never replace a finished bag
            raise RecordingError(f"{self.final_dir} appeared while recording; kept as .partial")
        os.rename(self.bag_dir, self.final_dir)
        os.rmdir(self.partial_dir)
        fsync_path(self.out_dir)
        self._result = EpisodeResult(
            path=str(self.final_dir),
            finalised=True,
            messages=meta["messages"],
            drops=meta["drops"],
            bytes_written=self.bytes_written,
            error=error,
            metadata=meta,
        )

    def _on_write_error(self, exc: BaseException) -> None:
        """A write failed (disk full, I/O error): drop what did not reach the disk, free the
        reserve, and finalise the bag with what was committed; if even that fails, leave the
        truncated ``.partial`` bag for ``clamp data recover``."""
        reason = "disk full" if getattr(exc, "errno", None) == errno.ENOSPC else "write error"
        self.error = self.error or f"{reason} while writing {self.mcap_path}: {exc}"
        if self._abort.is_set() or self._writer is None:
            return
        storage = self._writer.storage
        try:
            storage.bio.close()
        except Exception:
            pass
        (self.partial_dir / "reserve").unlink(missing_ok=True)
        c = self._committed
        try:
            os.truncate(self.mcap_path, c["offset"])
            storage.bio = open(self.mcap_path, "ab")  # noqa: SIM115 (closed by the writer)
            del storage.chunks[c["chunks"] :]
            storage.chunk = type(storage.chunk)(
                2**63 - 1, 0, BytesIO(), collections.defaultdict(list)
            )
            storage.channel_stats = dict(c["stats"])
            storage.message_start_time, storage.message_end_time = c["times"]
            self._writer.counts = dict(c["counts"])
            self._writer.min_timestamp, self._writer.max_timestamp = c["wtimes"]
            self._pending.clear()
            self._finalise(success=None, error=self.error, **{"extra": {"stopped_by": "error"}})
        except Exception as e2:
            try:
                os.truncate(self.mcap_path, c["offset"])
            except OSError:
                pass
            self._writer = None
            self.error += (
                f"; could not finalise ({e2}): run `clamp data recover {self.partial_dir}`"
            )
            self._result = EpisodeResult(
                path=str(self.partial_dir),
                finalised=False,
                messages=dict(self.committed_counts),
                drops=dict(self.queue.drops),
                bytes_written=self.bytes_written,
                error=self.error,
                metadata=self.metadata,
            )

    @staticmethod
    def _reserve(path: Path, nbytes: int) -> None:
        with open(path, "wb") as f:
            try:
                os.posix_fallocate(f.fileno(), 0, nbytes)
            except (AttributeError, OSError):
                f.write(b"\0" * nbytes)


def _qos_profiles(kind: str) -> list:
    """The offered QoS written with a connection (``ros2 bag play`` replays /tf_static
    transient-local from it)."""
    from rosbags.interfaces import (
        Qos,
        QosDurability,
        QosHistory,
        QosLiveliness,
        QosReliability,
        QosTime,
    )

    never = QosTime(0x7FFFFFFF, 0xFFFFFFFF)
    return [
        Qos(
            history=QosHistory.KEEP_LAST,
            depth=100 if kind == "static" else 10,
            reliability=QosReliability.BEST_EFFORT
            if kind == "sensor_data"
            else QosReliability.RELIABLE,
            durability=QosDurability.TRANSIENT_LOCAL
            if kind == "static"
            else QosDurability.VOLATILE,
            deadline=never,
            lifespan=never,
            liveliness=QosLiveliness.AUTOMATIC,
            liveliness_lease_duration=never,
            avoid_ros_namespace_conventions=False,
        )
    ]


# ---------------------------------------------------------------------------------- recovery
def find_mcap(path: str | os.PathLike) -> Path:
    """The MCAP file of a bag given as the file, its bag folder, or a ``.partial`` folder."""
    p = Path(path)
    if p.is_file():
        if p.suffix != ".mcap":
            raise RecordingError(f"{p}: not an .mcap file")
        return p
    if not p.is_dir():
        raise RecordingError(f"{p}: no such bag")
    found = sorted(p.glob("*.mcap")) or sorted(p.glob("*/*.mcap"))
    if len(found) != 1:
        raise RecordingError(f"{p}: expected one .mcap file, found {len(found)}")
    return found[0]


def _register_schema(typestore, msgtype: str, msgdef: str) -> None:
    from rosbags.typesys import get_types_from_msg

    parts = re.split(r"^=+\s*\nMSG: (\S+)\s*\n", msgdef, flags=re.M)
    types = dict(get_types_from_msg(parts[0], msgtype))
    for i in range(1, len(parts) - 1, 2):
        types.update(get_types_from_msg(parts[i + 1], parts[i]))
    typestore.register(types)


def recover_bag(
    src: str | os.PathLike, out: str | os.PathLike | None = None, progress: bool = False
) -> dict:
    """Rebuild a finalised bag (MCAP + metadata.yaml, episode metadata in custom_data) from an
    MCAP file that may end mid-record (a recorder killed or a power loss): the records are
    read in file order and every message of a complete chunk is kept; the rest is lost.

    ``out`` defaults to the episode's name next to the ``.partial`` folder. The source is
    never modified. Returns a summary dict."""
    from mcap.exceptions import McapError
    from mcap.records import Channel, Message, Metadata, Schema
    from mcap.stream_reader import StreamReader
    from rosbags.rosbag2 import StoragePlugin, Writer

    mcap_path = find_mcap(src)
    name = mcap_path.stem.removesuffix(PARTIAL_SUFFIX)
    if out is None:
        parent = mcap_path.parent
        if parent.parent.name == f"{name}{PARTIAL_SUFFIX}":
            parent = parent.parent
        out = parent.parent / name
    out = Path(out)
    if out.exists():
        raise RecordingError(f"{out} exists already: give another --out (nothing was changed)")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.recovering"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    typestore = default_typestore()
    schemas: dict[int, Schema] = {}
    channels: dict[int, Channel] = {}
    conns: dict[int, object] = {}
    episode: dict = {}
    final_meta: dict | None = None
    truncated = None
    counts: collections.Counter = collections.Counter()
    last_ns = 0
    bag_dir = staging / out.name
    writer = Writer(bag_dir, version=9, storage_plugin=StoragePlugin.MCAP)
    writer.open()
    size = mcap_path.stat().st_size
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=size, unit="B", unit_scale=True, desc=f"recover {mcap_path.name}")
    try:
        with open(mcap_path, "rb") as f:
            reader = StreamReader(f, skip_magic=False, emit_chunks=False, validate_crcs=True)
            try:
                for record in reader.records:
                    if isinstance(record, Schema):
                        schemas[record.id] = record
                    elif isinstance(record, Channel):
                        channels[record.id] = record
                    elif isinstance(record, Metadata):
                        if record.name == EPISODE_KEY:
                            episode = json.loads(record.metadata.get("json", "{}"))
                        elif record.name == "rosbag2":
                            final_meta = _custom_data(record.metadata)
                    elif isinstance(record, Message):
                        conn = conns.get(record.channel_id)
                        if conn is None:
                            conn = _recover_connection(
                                writer, typestore, channels, schemas, record.channel_id
                            )
                            conns[record.channel_id] = conn
                        writer.write(conn, record.log_time, record.data)
                        counts[conn.topic] += 1
                        last_ns = max(last_ns, record.log_time)
                    if bar is not None:
                        bar.n = f.tell()
                        bar.refresh()
            except (McapError, EOFError, struct.error, ValueError) as e:
                truncated = f"{type(e).__name__}: {e}"
        if final_meta is not None and EPISODE_KEY in final_meta:
            meta = json.loads(final_meta[EPISODE_KEY])
        else:
            meta = dict(episode)
            meta.update(
                stop_ns=last_ns or meta.get("start_ns"),
                success=None,
                recovered=True,
                messages=dict(sorted(counts.items())),
                error=meta.get("error") or "recovered from an interrupted recording",
            )
        meta.update(recovered=True, recovered_from=str(mcap_path))
        writer.set_custom_data(EPISODE_KEY, json.dumps(meta))
        writer.close()
        os.rename(bag_dir, out)
        os.rmdir(staging)
        fsync_path(out.parent)
    except BaseException:
        if writer.storage is not None:
            writer.abort()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    return {
        "source": str(mcap_path),
        "bag": str(out),
        "messages": dict(sorted(counts.items())),
        "total_messages": sum(counts.values()),
        "last_ns": last_ns,
        "truncated": truncated,
        "episode": meta,
    }


def _recover_connection(writer, typestore, channels, schemas, channel_id):
    ch = channels.get(channel_id)
    if ch is None:
        raise RecordingError(f"message on channel {channel_id} before its channel record")
    schema = schemas.get(ch.schema_id)
    if schema is None:
        raise RecordingError(f"channel {ch.topic}: schema {ch.schema_id} missing")
    if schema.name not in typestore.types:
        _register_schema(typestore, schema.name, schema.data.decode())
    return writer.add_connection(ch.topic, schema.name, typestore=typestore)


def _custom_data(values: dict[str, str]) -> dict:
    """custom_data of a rosbag2 metadata record (the serialized metadata.yaml)."""
    import yaml

    try:
        doc = yaml.safe_load(values.get("serialized_metadata", "")) or {}
    except yaml.YAMLError:
        return {}
    return doc.get("custom_data") or {}


def read_episode_metadata(bag: str | os.PathLike) -> dict:
    """The ``clamp.episode`` JSON of a finalised bag (from metadata.yaml)."""
    import yaml

    meta = yaml.safe_load((Path(bag) / "metadata.yaml").read_text())
    custom = meta["rosbag2_bagfile_information"].get("custom_data") or {}
    if EPISODE_KEY not in custom:
        raise RecordingError(f"{bag}: metadata.yaml has no custom_data '{EPISODE_KEY}'")
    return json.loads(custom[EPISODE_KEY])
