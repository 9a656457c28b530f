"""The episode bag writer (clamp_core.data.recording): bounded queue, metadata in the bag,
atomic finalisation, discard, disk full, and recovery of truncated MCAP files.

Bags are checked with readers that share no code with the writer (rosbags): the ``mcap``
package (its stream reader, and its indexed reader with the ROS 2 decoder of
``mcap-ros2-support``), plus a raw byte search of each message's unique payload."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from clamp_core.data.recording import (
    EPISODE_KEY,
    BoundedQueue,
    EpisodeBagWriter,
    RecorderConfig,
    RecordingError,
    StaticCache,
    StreamMonitor,
    TopicSpec,
    default_typestore,
    read_episode_metadata,
    recover_bag,
)

mcap_reader = pytest.importorskip("mcap.reader")
mcap_ros2_decoder = pytest.importorskip("mcap_ros2.decoder")
from mcap.records import Metadata  # noqa: E402
from mcap.stream_reader import StreamReader  # noqa: E402

TS = default_typestore()
JOINTS = "/follower_left/joint_states"
IMAGE = "/cam_high/color/image_raw"
STATIC = "/tf_static"
TOPICS = [
    TopicSpec(JOINTS, "sensor_msgs/msg/JointState", required=True, min_rate_hz=50),
    TopicSpec(IMAGE, "sensor_msgs/msg/Image", qos="sensor_data"),
    TopicSpec(STATIC, "tf2_msgs/msg/TFMessage", qos="static"),
]
META = {
    "task": "drawer_open",
    "instruction": "open the drawer",
    "operator": "ana",
    "notes": "",
    "robot": "aloha",
    "joint_names": ["left_waist", "left_gripper"],
    "camera_names": ["cam_high"],
    "software_version": "0.1.0",
}


# ---------------------------------------------------------------------------------- messages
def joint_state(i: int, stamp_ns: int) -> bytes:
    m = TS.types
    msg = m["sensor_msgs/msg/JointState"](
        header=m["std_msgs/msg/Header"](
            stamp=m["builtin_interfaces/msg/Time"](sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9),
            frame_id=f"js{i}",
        ),
        name=["waist", "gripper"],
        position=np.array([i * 0.001, -i * 0.001]),
        velocity=np.zeros(2),
        effort=np.zeros(2),
    )
    return bytes(TS.serialize_cdr(msg, "sensor_msgs/msg/JointState"))


def image(i: int, stamp_ns: int, w: int = 64, h: int = 48, seed: int = 0) -> bytes:
    m = TS.types
    data = np.random.default_rng(seed * 100000 + i).integers(0, 255, h * w * 3, dtype=np.uint8)
    msg = m["sensor_msgs/msg/Image"](
        header=m["std_msgs/msg/Header"](
            stamp=m["builtin_interfaces/msg/Time"](sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9),
            frame_id="cam_high_color_optical_frame",
        ),
        height=h,
        width=w,
        encoding="rgb8",
        is_bigendian=0,
        step=w * 3,
        data=data,
    )
    return bytes(TS.serialize_cdr(msg, "sensor_msgs/msg/Image"))


def tf_static(child: str) -> bytes:
    m = TS.types
    t = m["geometry_msgs/msg/TransformStamped"](
        header=m["std_msgs/msg/Header"](
            stamp=m["builtin_interfaces/msg/Time"](sec=0, nanosec=0), frame_id="world"
        ),
        child_frame_id=child,
        transform=m["geometry_msgs/msg/Transform"](
            translation=m["geometry_msgs/msg/Vector3"](x=1.0, y=2.0, z=3.0),
            rotation=m["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0),
        ),
    )
    msg = m["tf2_msgs/msg/TFMessage"](transforms=[t])
    return bytes(TS.serialize_cdr(msg, "tf2_msgs/msg/TFMessage"))


class FakeClock:
    def __init__(self, t0: int = 1_700_000_000 * 10**9):
        self.t = t0

    def __call__(self) -> int:
        return self.t


def make_writer(out: Path, name: str = "ep0", clock=None, **cfg) -> EpisodeBagWriter:
    config = RecorderConfig(
        output_dir=str(out), min_free_gb=0.0, reserve_mb=cfg.pop("reserve_mb", 1.0), **cfg
    )
    return EpisodeBagWriter(config, name, TOPICS, META, typestore=TS, clock_ns=clock or FakeClock())


def record(writer: EpisodeBagWriter, n: int, t0: int, dt_ns: int = 10_000_000, image_every=5):
    """Push ``n`` joint states (and an image every ``image_every``); returns what was pushed
    as [(topic, stamp_ns, data)]."""
    sent = []
    for i in range(n):
        stamp = t0 + i * dt_ns
        items = [(JOINTS, stamp, joint_state(i, stamp))]
        if i % image_every == 0:
            items.append((IMAGE, stamp, image(i, stamp)))
        for item in items:
            assert writer.push(*item)
            sent.append(item)
    return sent


def mcap_messages(path: Path) -> list[tuple[str, int, bytes]]:
    """(topic, log_time, data) of every message, read with the mcap package's indexed reader."""
    with open(path, "rb") as f:
        reader = mcap_reader.make_reader(f)
        return [(c.topic, m.log_time, bytes(m.data)) for _, c, m in reader.iter_messages()]


def dir_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ---------------------------------------------------------------------------------- queue, rates
def test_queue_bound_and_drop_counting():
    q = BoundedQueue(max_messages=3, max_bytes=10_000)
    assert all(q.put("a", i, b"x" * 10) for i in range(3))
    assert not q.put("a", 3, b"x") and not q.put("b", 4, b"x")
    assert q.drops == {"a": 1, "b": 1} and len(q) == 3
    assert q.get(0.0)[1] == 0  # oldest first: what was queued keeps its order
    q2 = BoundedQueue(max_messages=100, max_bytes=25)
    assert q2.put("img", 0, b"x" * 20)
    assert not q2.put("img", 1, b"x" * 10)  # the byte bound too
    assert q2.drops["img"] == 1 and q2.nbytes == 20
    assert q2.get(0.0) is not None and q2.get(0.01) is None


def test_stream_monitor_names_silent_slow_and_gappy_streams():
    mon = StreamMonitor({"fast": 50.0, "slow": 30.0, "gappy": 30.0, "opt": 0.0}, window_s=2.0)
    t = 100.0
    for i in range(200):  # 2 s at 100 Hz; 'slow' at 20 Hz; 'gappy' 30 Hz with a 0.3 s hole
        now = t + i * 0.01
        mon.tick("fast", now)
        if i % 5 == 0:
            mon.tick("slow", now)
    for k in range(66):
        now = t + k / 30.0
        if not 0.8 < now - t < 1.1:
            mon.tick("gappy", now)
    now = t + 2.0
    problems = mon.problems(now, since_s=t - 1.0)
    assert set(problems) == {"slow", "gappy"}, problems
    assert "rate" in problems["slow"] and "gap" in problems["gappy"]
    assert mon.rate_hz("fast", now) == pytest.approx(100.0, rel=0.02)
    assert "fast" in mon.problems(now + 1.5, since_s=t)  # then it stops: silent
    assert mon.silent(["fast", "opt"], now) == ["opt"]
    assert mon.counts["fast"] == 200


def test_static_cache_keeps_latest_distinct_messages_bounded():
    cache = StaticCache(max_n=2)
    for child in ("a", "b", "a", "c"):
        cache.add(tf_static(child))
    assert cache.messages() == [tf_static("a"), tf_static("c")]


def test_config_errors_name_the_parameter():
    with pytest.raises(ValueError, match="recorder.flush_period_s"):
        RecorderConfig(flush_period_s=5.0)
    with pytest.raises(ValueError, match="recorder.compression"):
        RecorderConfig(compression="lz5")
    with pytest.raises(ValueError, match="/x: qos"):
        TopicSpec("/x", "std_msgs/msg/String", qos="fast")


# ---------------------------------------------------------------------------------- bags
def test_episode_bag_holds_messages_static_tf_and_metadata(tmp_path: Path):
    clock = FakeClock()
    w = make_writer(tmp_path, clock=clock)
    statics = [(STATIC, tf_static("cam_high_link")), (STATIC, tf_static("cam_low_link"))]
    w.start(statics)
    assert (tmp_path / "ep0.partial").is_dir() and not (tmp_path / "ep0").exists()
    sent = record(w, 120, clock.t + 1)
    clock.t += 5 * 10**9
    result = w.stop(success=True, extra={"stopped_by": "service"})
    assert result.finalised and result.error is None
    bag = tmp_path / "ep0"
    assert bag.is_dir() and not (tmp_path / "ep0.partial").exists()
    assert sorted(p.name for p in bag.iterdir()) == ["ep0.mcap", "metadata.yaml"]

    got = mcap_messages(bag / "ep0.mcap")
    assert [g for g in got if g[0] != STATIC] == sorted(sent, key=lambda s: s[1])
    assert [g[2] for g in got if g[0] == STATIC] == [d for _, d in statics]

    # decodable by the independent ROS 2 decoder
    with open(bag / "ep0.mcap", "rb") as f:
        reader = mcap_reader.make_reader(f, decoder_factories=[mcap_ros2_decoder.DecoderFactory()])
        decoded = list(reader.iter_decoded_messages(topics=[STATIC]))
    assert [d.decoded_message.transforms[0].child_frame_id for d in decoded] == [
        "cam_high_link",
        "cam_low_link",
    ]

    info = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert info["storage_identifier"] == "mcap"
    counts = {
        t["topic_metadata"]["name"]: t["message_count"] for t in info["topics_with_message_count"]
    }
    assert counts == {JOINTS: 120, IMAGE: 24, STATIC: 2}
    meta = json.loads(info["custom_data"][EPISODE_KEY])
    assert meta == read_episode_metadata(bag)
    for key, value in META.items():
        assert meta[key] == value
    assert meta["success"] is True and meta["stopped_by"] == "service"
    assert meta["stop_ns"] - meta["start_ns"] == 5 * 10**9
    assert meta["drops"] == {} and meta["messages"][JOINTS] == 120

    # the same metadata, written at the start, inside the MCAP file itself
    with open(bag / "ep0.mcap", "rb") as f:
        records = [r for r in StreamReader(f).records if isinstance(r, Metadata)]
    start_record = [r for r in records if r.name == EPISODE_KEY]
    assert len(start_record) == 1
    at_start = json.loads(start_record[0].metadata["json"])
    assert at_start["task"] == "drawer_open" and at_start["start_ns"] == meta["start_ns"]


def test_compressed_bag_reads_back(tmp_path: Path):
    clock = FakeClock()
    w = make_writer(tmp_path, clock=clock, compression="zstd")
    w.start()
    sent = record(w, 30, clock.t)
    assert w.stop(success=False).finalised
    assert mcap_messages(tmp_path / "ep0" / "ep0.mcap") == sent
    assert read_episode_metadata(tmp_path / "ep0")["success"] is False


def test_drops_are_counted_in_the_metadata(tmp_path: Path):
    clock = FakeClock()
    w = make_writer(tmp_path, clock=clock, queue_max_messages=1)
    w.start()
    w.queue.max_messages = 0  # the writer thread cannot keep up: every push is dropped
    assert not w.push(JOINTS, clock.t, joint_state(0, clock.t))
    assert not w.push(JOINTS, clock.t, joint_state(1, clock.t))
    result = w.stop(success=True)
    assert result.drops == {JOINTS: 2}
    assert read_episode_metadata(result.path)["drops"] == {JOINTS: 2}


def test_discard_removes_only_the_running_episode(tmp_path: Path):
    clock = FakeClock()
    first = make_writer(tmp_path, "ep0", clock=clock)
    first.start()
    record(first, 10, clock.t)
    first.stop(success=True)
    before = dir_digest(tmp_path)
    second = make_writer(tmp_path, "ep1", clock=clock)
    second.start()
    record(second, 10, clock.t)
    second.discard()
    assert not (tmp_path / "ep1.partial").exists() and not (tmp_path / "ep1").exists()
    assert dir_digest(tmp_path) == before
    assert not second.push(JOINTS, clock.t, joint_state(0, clock.t))


def test_start_refuses_existing_names_and_low_disk(tmp_path: Path):
    (tmp_path / "ep0").mkdir()
    with pytest.raises(RecordingError, match="exists already"):
        make_writer(tmp_path, "ep0").start()
    config = RecorderConfig(output_dir=str(tmp_path), min_free_gb=1e9)
    with pytest.raises(RecordingError, match="recorder.min_free_gb"):
        EpisodeBagWriter(config, "ep1", TOPICS, META, typestore=TS).start()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ep0"]
    with pytest.raises(RecordingError, match="episode name"):
        make_writer(tmp_path, "../x")


class FullDisk:
    """A file object that raises ENOSPC once ``budget`` more bytes have been written (the
    bytes that fit are written, as a real full disk does)."""

    def __init__(self, f, budget: int):
        self._f = f
        self.budget = budget

    def write(self, data) -> int:
        n = len(data)
        if n > self.budget:
            self._f.write(bytes(data[: self.budget]))
            self.budget = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.budget -= n
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)


def test_disk_full_stops_cleanly_and_keeps_earlier_bags(tmp_path: Path):
    clock = FakeClock()
    first = make_writer(tmp_path, "ep0", clock=clock)
    first.start()
    record(first, 20, clock.t)
    first.stop(success=True)
    before = dir_digest(tmp_path)

    w = make_writer(tmp_path, "ep1", clock=clock, flush_period_s=0.1)
    w.write_hook = lambda f: FullDisk(f, budget=200_000)
    w.start()
    sent = []
    t = clock.t
    i = 0
    while w.state == "recording" and i < 5000:
        stamp = t + i * 10_000_000
        for item in ((JOINTS, stamp, joint_state(i, stamp)), (IMAGE, stamp, image(i, stamp))):
            if w.push(*item):
                sent.append(item)
        i += 1
    w._done.wait(60)
    assert w.failed and "disk full" in w.error
    result = w.result
    assert result.finalised, result.error
    bag = Path(result.path)
    assert bag == tmp_path / "ep1" and not (tmp_path / "ep1.partial").exists()
    got = mcap_messages(bag / "ep1.mcap")
    assert got and got == sent[: len(got)]  # a prefix of what was sent, nothing garbled
    assert sum(result.messages.values()) == len(got)
    meta = read_episode_metadata(bag)
    assert "disk full" in meta["error"] and meta["success"] is None
    assert not w.push(JOINTS, t, joint_state(0, t))
    assert w.stop(success=True) is result  # a later stop changes nothing
    assert {k: v for k, v in dir_digest(tmp_path).items() if k.startswith("ep0")} == before


# ---------------------------------------------------------------------------------- recovery
@pytest.fixture(scope="module")
def finished_bag(tmp_path_factory) -> tuple[Path, list]:
    """5 s of messages (joint states at 100 Hz, an image every 5th) written by the recorder."""
    out = tmp_path_factory.mktemp("bags")
    clock = FakeClock()
    w = make_writer(out, "long", clock=clock)
    w.start([(STATIC, tf_static("cam_high_link"))])
    sent = record(w, 500, clock.t + 1)
    clock.t += 6 * 10**9
    assert w.stop(success=True).finalised
    return out / "long" / "long.mcap", sent


@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.55, 0.8, 0.999])
def test_recover_truncated_mcap(tmp_path: Path, finished_bag, fraction: float):
    mcap_path, sent = finished_bag
    raw = mcap_path.read_bytes()
    cut = int(len(raw) * fraction)
    partial = tmp_path / "long.partial" / "long"
    partial.mkdir(parents=True)
    (partial / "long.mcap").write_bytes(raw[:cut])
    source_digest = dir_digest(tmp_path)

    summary = recover_bag(tmp_path / "long.partial")
    bag = tmp_path / "long"
    assert summary["bag"] == str(bag)
    assert {k: v for k, v in dir_digest(tmp_path).items() if k.startswith("long.partial")} == (
        source_digest
    )

    # the oracle: where each sent payload lies in the original file
    ends = [raw.find(data) + len(data) for _, _, data in sent]
    assert all(e > len(data) for e, (_, _, data) in zip(ends, sent, strict=True))
    before_cut = [s for s, e in zip(sent, ends, strict=True) if e <= cut]
    got_mcap = [g for g in mcap_messages(bag / "long.mcap") if g[0] != STATIC]
    from rosbags.rosbag2 import Reader

    with Reader(bag) as reader:
        got_rosbags = [(c.topic, t, bytes(d)) for c, t, d in reader.messages() if c.topic != STATIC]
    assert got_mcap == got_rosbags
    assert got_mcap == sent[: len(got_mcap)]  # a prefix: nothing invented, nothing reordered
    if before_cut:
        t_last = max(s[1] for s in before_cut)
        must = [s for s in before_cut if s[1] <= t_last - 10**9]
        assert got_mcap[: len(must)] == must, "lost more than the last second before the cut"
    meta = read_episode_metadata(bag)
    assert meta["task"] == META["task"] and meta["recovered"] is True
    if fraction < 0.99:  # (the last cut keeps the final metadata record: success known)
        assert meta["success"] is None
    if got_mcap and fraction < 0.99:
        assert meta["stop_ns"] == max(g[1] for g in got_mcap)
    info = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert info["message_count"] == summary["total_messages"]

    with pytest.raises(RecordingError, match="exists already"):
        recover_bag(tmp_path / "long.partial")


def test_recover_a_complete_bag_keeps_its_final_metadata(tmp_path: Path, finished_bag):
    mcap_path, sent = finished_bag
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(mcap_path, src / "long.mcap")  # its metadata.yaml was lost
    summary = recover_bag(src / "long.mcap", out=tmp_path / "out")
    assert summary["truncated"] is None and summary["total_messages"] == len(sent) + 1
    meta = read_episode_metadata(tmp_path / "out")
    assert meta["success"] is True and meta["recovered"] is True  # the final metadata, kept


def test_recover_refuses_what_is_not_a_bag(tmp_path: Path):
    with pytest.raises(RecordingError, match="no such bag"):
        recover_bag(tmp_path / "nothing")
    (tmp_path / "x.db3").write_bytes(b"")
    with pytest.raises(RecordingError, match="not an .mcap"):
        recover_bag(tmp_path / "x.db3")
