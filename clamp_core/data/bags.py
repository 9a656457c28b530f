"""rosbag2 bags, ours or any team's: opening (a bag directory, a bare .mcap or .db3, an MCAP whose
writer died), the topics map naming each role's topic, and decoding of the mapped messages into
numpy, in recording order. Used by ``clamp data from-bag`` and by anything that replays bags.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import re
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import yaml

from ..aloha import ARM_JOINT_NAMES, SIDES
from ..geometry.camera import CameraModelError, PinholeCamera
from ..geometry.image import ImageDecodeError
from ..geometry.messages import (
    MalformedStampError,
    arm_joint_values,
    camera_from_info,
    color_from_msg,
    compressed_color_from_msg,
    compressed_depth_from_msg,
    depth_from_msg,
    stamp_to_ns,
    transform_from_msg,
)
from ..geometry.transforms import Transform
from ..shipped import shipped_path
from ..teleop import LEADER_GRIPPER_CLOSED_RAD, LEADER_GRIPPER_OPEN_RAD

EPISODE_KEY = "clamp.episode"
"""The custom_data key (metadata.yaml, and MCAP metadata records) of the recorder's episode
metadata: a JSON object with task, instruction, success, operator, notes, ..."""
TYPESTORE = "ROS2_JAZZY"
"""rosbags type store for bags that carry no message definitions (old sqlite3 bags)."""

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
JOINT_STATE = "sensor_msgs/msg/JointState"
JOINT_TRAJECTORY = "trajectory_msgs/msg/JointTrajectory"
TF_MESSAGE = "tf2_msgs/msg/TFMessage"
ACCEPTED_TYPES = {
    "color": (IMAGE, COMPRESSED_IMAGE),
    "depth": (IMAGE, COMPRESSED_IMAGE),
    "camera_info": (CAMERA_INFO,),
    "depth_camera_info": (CAMERA_INFO,),
    "follower": (JOINT_STATE,),
    "leader": (JOINT_STATE,),
    "command": (JOINT_TRAJECTORY,),
    "tf": (TF_MESSAGE,),
    "tf_static": (TF_MESSAGE,),
}
"""Message types each kind of mapped topic may carry."""

_MCAP_MAGIC = b"\x89MCAP0\r\n"
_MCAP_FOOTER_BYTES = 37  # footer record (1 + 8 + 20) + magic
_MCAP_OP_METADATA = 0x0C
_MCAP_OP_FOOTER = 0x02
_NAME_OK = re.compile(r"^[A-Za-z0-9_.\-]+$")


class BagError(ValueError):
    """A bag that cannot be read as asked; the message names the bag and the topic or key."""


class TopicsMapError(BagError):
    """A topics map that does not fit the format; the message names the key."""


class StampOrderError(BagError):
    """A stream whose header stamps go backwards in recording order."""


# ---------------------------------------------------------------------------------------------
# topics map


@dataclass
class CameraTopics:
    """The topics of one RGB-D camera; the map's key is the camera's name in episodes."""

    name: str
    color: str
    """Colour: sensor_msgs/Image (rgb8, bgr8, ...) or CompressedImage (JPEG / PNG)."""
    depth: str
    """Depth: sensor_msgs/Image (16UC1 mm or 32FC1 m) or CompressedImage (compressedDepth)."""
    camera_info: str
    """sensor_msgs/CameraInfo of the colour stream (and of depth, which must be registered)."""
    frame_id: str = ""
    """Optical frame to look up in tf instead of the images' header frame_id (empty: trust the
    headers; set it when a driver stamps every camera with the same frame)."""


@dataclass
class ArmTopics:
    """The topics of one arm (``left`` or ``right``)."""

    follower: str
    """sensor_msgs/JointState of the follower arm: qpos, qvel, effort."""
    leader: str = ""
    """sensor_msgs/JointState of the leader arm: the action source (empty: none)."""
    command: str = ""
    """trajectory_msgs/JointTrajectory commands: the action source where the bag has no leader
    (empty: none)."""


@dataclass
class TopicsMap:
    """Which topic carries what, for one family of bags (``config/topics/*.yaml``)."""

    cameras: list[CameraTopics]
    """Cameras in episode order."""
    arms: dict[str, ArmTopics]
    """Exactly ``left`` and ``right``."""
    tf: str = "/tf"
    """tf2_msgs/TFMessage with the dynamic transforms."""
    tf_static: str = "/tf_static"
    """tf2_msgs/TFMessage with the static transforms."""
    base_frame: str = "world"
    """Frame of the episode's camera extrinsics."""
    leader_gripper_range: list[float] = field(
        default_factory=lambda: [LEADER_GRIPPER_CLOSED_RAD, LEADER_GRIPPER_OPEN_RAD]
    )
    """[closed_rad, open_rad]: the leader gripper joint's angles that map linearly onto the
    follower's normalised gripper 0 (closed) .. 1 (open)."""
    follower_gripper_range: list[float] | None = None
    """[closed, open] of the follower's gripper joint in its joint states; None when they already
    carry the normalised gripper (0 closed .. 1 open), as our simulator's do."""
    expected_rates_hz: dict[str, float] = field(
        default_factory=lambda: {"camera": 30.0, "joint_states": 50.0}
    )
    """Nominal rates the report compares each stream with: ``camera`` (colour, depth) and
    ``joint_states`` (follower and leader); a kind left out is not checked."""
    source: str = ""
    """Where the map came from (for error messages)."""

    def __post_init__(self) -> None:
        where = self.source or "topics map"
        if not self.cameras:
            raise TopicsMapError(f"{where}: cameras: needs at least one camera")
        names = [c.name for c in self.cameras]
        for n in names:
            if not _NAME_OK.match(n):
                raise TopicsMapError(
                    f"{where}: cameras.{n}: camera names may use letters, digits, '_', '-', '.'"
                )
        if sorted(self.arms) != sorted(SIDES):
            raise TopicsMapError(
                f"{where}: arms: needs exactly {list(SIDES)}, got {sorted(self.arms)}"
            )
        for key in ("leader_gripper_range", "follower_gripper_range"):
            value = getattr(self, key)
            if value is None and key == "follower_gripper_range":
                continue
            if not _is_pair(value):
                raise TopicsMapError(
                    f"{where}: {key}: needs [closed, open] (two finite numbers at least 1e-3 "
                    f"apart), got {value!r}"
                )
            setattr(self, key, [float(v) for v in value])
        for kind, rate in self.expected_rates_hz.items():
            if kind not in ("camera", "joint_states"):
                raise TopicsMapError(
                    f"{where}: expected_rates_hz.{kind}: unknown kind (camera, joint_states)"
                )
            if not _is_number(rate) or rate <= 0:
                raise TopicsMapError(f"{where}: expected_rates_hz.{kind}: needs a rate > 0 Hz")
        if not isinstance(self.base_frame, str) or not self.base_frame.strip("/"):
            raise TopicsMapError(f"{where}: base_frame: needs a frame name")
        topics: dict[str, str] = {}
        for key, topic in self._keyed_topics():
            if topic in topics:
                raise TopicsMapError(
                    f"{where}: {key}: topic '{topic}' is also mapped by {topics[topic]}"
                )
            topics[topic] = key

    def _keyed_topics(self) -> Iterator[tuple[str, str]]:
        for c in self.cameras:
            for kind in ("color", "depth", "camera_info"):
                yield f"cameras.{c.name}.{kind}", getattr(c, kind)
        for side in SIDES:
            for kind in ("follower", "leader", "command"):
                topic = getattr(self.arms[side], kind)
                if topic:
                    yield f"arms.{side}.{kind}", topic
        yield "tf", self.tf
        yield "tf_static", self.tf_static

    @property
    def camera_names(self) -> list[str]:
        return [c.name for c in self.cameras]

    def routes(self) -> dict[str, tuple[str, str, str]]:
        """topic -> (role, name, kind): ('camera', cam, color | depth | camera_info),
        ('arm', side, follower | leader | command), ('tf', '', tf | tf_static)."""
        out = {}
        for c in self.cameras:
            for kind in ("color", "depth", "camera_info"):
                out[getattr(c, kind)] = ("camera", c.name, kind)
        for side in SIDES:
            for kind in ("follower", "leader", "command"):
                topic = getattr(self.arms[side], kind)
                if topic:
                    out[topic] = ("arm", side, kind)
        out[self.tf] = ("tf", "", "tf")
        out[self.tf_static] = ("tf", "", "tf_static")
        return out

    @classmethod
    def load(cls, path) -> TopicsMap:
        """Read a YAML topics map; a wrong one raises TopicsMapError naming the key."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as e:
            raise TopicsMapError(f"topics map {path}: cannot read: {e.strerror or e}") from None
        except yaml.YAMLError as e:
            raise TopicsMapError(f"topics map {path}: not valid YAML: {e}") from None
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data, source: str = "topics map") -> TopicsMap:
        where = source
        if not isinstance(data, dict):
            raise TopicsMapError(f"{where}: needs a mapping at the top level")
        known = {f.name for f in dataclasses.fields(cls)} - {"source"}
        _no_unknown(where, "", data, known)
        for key in ("cameras", "arms"):
            if key not in data:
                raise TopicsMapError(f"{where}: {key}: missing")
        cams = data["cameras"]
        if not isinstance(cams, dict) or not cams:
            raise TopicsMapError(f"{where}: cameras: needs a mapping camera name -> topics")
        cameras = []
        cam_fields = {f.name for f in dataclasses.fields(CameraTopics)} - {"name"}
        for name, entry in cams.items():
            key = f"cameras.{name}"
            if not isinstance(entry, dict):
                raise TopicsMapError(f"{where}: {key}: needs a mapping of topics")
            if "depth_camera_info" in entry:
                raise TopicsMapError(
                    f"{where}: {key}.depth_camera_info: depth that is not registered to colour "
                    "is not supported; record the driver's aligned depth (RealSense: "
                    "aligned_depth_to_color)"
                )
            _no_unknown(where, key, entry, cam_fields)
            values = {}
            for k in ("color", "depth", "camera_info"):
                values[k] = _topic(where, f"{key}.{k}", entry.get(k))
            frame = entry.get("frame_id", "") or ""
            if not isinstance(frame, str):
                raise TopicsMapError(f"{where}: {key}.frame_id: needs a frame name")
            cameras.append(CameraTopics(str(name), frame_id=frame.lstrip("/"), **values))
        arms_in = data["arms"]
        if not isinstance(arms_in, dict):
            raise TopicsMapError(f"{where}: arms: needs a mapping side -> topics")
        arms = {}
        arm_fields = {f.name for f in dataclasses.fields(ArmTopics)}
        for side, entry in arms_in.items():
            key = f"arms.{side}"
            if side not in SIDES:
                raise TopicsMapError(f"{where}: {key}: unknown arm (use {', '.join(SIDES)})")
            if not isinstance(entry, dict):
                raise TopicsMapError(f"{where}: {key}: needs a mapping of topics")
            _no_unknown(where, key, entry, arm_fields)
            arms[side] = ArmTopics(
                follower=_topic(where, f"{key}.follower", entry.get("follower")),
                leader=_topic(where, f"{key}.leader", entry.get("leader"), optional=True),
                command=_topic(where, f"{key}.command", entry.get("command"), optional=True),
            )
        kwargs: dict[str, Any] = {}
        for key in ("tf", "tf_static"):
            if key in data:
                kwargs[key] = _topic(where, key, data[key])
        if "base_frame" in data:
            if not isinstance(data["base_frame"], str):
                raise TopicsMapError(f"{where}: base_frame: needs a frame name")
            kwargs["base_frame"] = data["base_frame"].lstrip("/")
        for key in ("leader_gripper_range", "follower_gripper_range"):
            if key in data:
                kwargs[key] = data[key]
        if "expected_rates_hz" in data:
            rates = data["expected_rates_hz"]
            if not isinstance(rates, dict):
                raise TopicsMapError(f"{where}: expected_rates_hz: needs a mapping kind -> Hz")
            kwargs["expected_rates_hz"] = dict(rates)
        return cls(cameras, arms, source=source, **kwargs)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_pair(v) -> bool:
    return (
        isinstance(v, (list, tuple))
        and len(v) == 2
        and all(_is_number(x) for x in v)
        and abs(float(v[1]) - float(v[0])) >= 1e-3
    )


def _no_unknown(where: str, key: str, entry: dict, known: set[str]) -> None:
    for k in entry:
        if k not in known:
            at = f"{key}.{k}" if key else str(k)
            raise TopicsMapError(
                f"{where}: {at}: unknown key (known here: {', '.join(sorted(known))})"
            )


def _topic(where: str, key: str, value, optional: bool = False) -> str:
    if value is None or value == "":
        if optional:
            return ""
        raise TopicsMapError(f"{where}: {key}: missing (needs a topic name)")
    if not isinstance(value, str) or any(c.isspace() for c in value):
        raise TopicsMapError(f"{where}: {key}: needs a topic name, got {value!r}")
    # names in a map are resolved in the root namespace, as rosbag2 stores them
    return value if value.startswith("/") else f"/{value}"


SHIPPED_MAPS = ("clamp", "trossen_realsense")
"""Topics maps shipped in ``config/topics/<name>.yaml``."""


def topics_map_path(name_or_path) -> Path:
    """A shipped map's name (``clamp``, ``trossen_realsense``) or a YAML file's path -> path.
    Shipped maps come from the source tree's ``config/topics`` or the installed package's
    ``share/clamp_ros/config/topics``."""
    text = str(name_or_path)
    if text in SHIPPED_MAPS:
        found = shipped_path(Path("config") / "topics" / f"{text}.yaml")
        if found is None:
            raise TopicsMapError(f"topics map '{text}': shipped map not found (config/topics)")
        return found
    return Path(text)


# ---------------------------------------------------------------------------------------------
# opening


@dataclass(frozen=True)
class Truncation:
    """Where an MCAP file without its footer (its writer was killed) stops being readable."""

    file: str
    readable_bytes: int
    """Bytes up to the end of the last complete record; everything before is read."""
    total_bytes: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class TopicInfo(NamedTuple):
    msgtype: str
    count: int
    """Messages in the bag (of the readable part, for a truncated MCAP)."""


def _mcap_has_footer(path: Path) -> bool:
    size = path.stat().st_size
    if size < len(_MCAP_MAGIC) + _MCAP_FOOTER_BYTES:
        return False
    with path.open("rb") as f:
        f.seek(-_MCAP_FOOTER_BYTES, os.SEEK_END)
        tail = f.read()
    return tail[-8:] == _MCAP_MAGIC and tail[0] == _MCAP_OP_FOOTER


def _read_str(buf: bytes, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<I", buf, pos)
    pos += 4
    return buf[pos : pos + n].decode("utf-8", errors="replace"), pos + n


def _mcap_scan(path: Path) -> tuple[int, dict[str, str]]:
    """Walk the top-level records of an MCAP file (chunks are skipped, not decompressed):
    returns (end of the last complete record, {EPISODE_KEY: json} when a metadata record
    carries the recorder's episode metadata: a record named EPISODE_KEY with a 'json' entry, or
    an entry named EPISODE_KEY)."""
    metadata: dict[str, str] = {}
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(len(_MCAP_MAGIC))
        if head != _MCAP_MAGIC:
            raise BagError(f"{path}: not an MCAP file (no MCAP magic at the start)")
        pos = len(_MCAP_MAGIC)
        end = None  # the header record must be complete for anything to be readable
        while pos + 9 <= size:
            f.seek(pos)
            op, length = struct.unpack("<BQ", f.read(9))
            if not 0x01 <= op <= 0x0F or pos + 9 + length > size:
                break  # a record cut off (or never written) by the crash
            if op == _MCAP_OP_METADATA and length < 2**24:
                body = f.read(length)
                name = ""
                try:
                    name, p = _read_str(body, 0)
                    (nbytes,) = struct.unpack_from("<I", body, p)
                    p += 4
                    stop = p + nbytes
                    values = {}
                    while p < stop:
                        k, p = _read_str(body, p)
                        v, p = _read_str(body, p)
                        values[k] = v
                except struct.error:
                    values = {}  # a malformed metadata record carries nothing we can use
                if name == EPISODE_KEY and "json" in values:
                    metadata[EPISODE_KEY] = values["json"]  # the recorder's record
                elif EPISODE_KEY in values:
                    metadata[EPISODE_KEY] = values[EPISODE_KEY]
            if op == _MCAP_OP_FOOTER:
                break
            pos += 9 + length
            end = pos
    if end is None:
        raise BagError(f"{path}: truncated before the end of its MCAP header; nothing readable")
    return end, metadata


# data end record (crc 0) + footer without a summary + magic: what a reader needs after the
# records to take the readable prefix for a complete, unindexed file
_SYNTHETIC_TAIL = (
    struct.pack("<BQI", 0x0F, 4, 0)
    + struct.pack("<BQQQI", _MCAP_OP_FOOTER, 20, 0, 0, 0)
    + _MCAP_MAGIC
)


class _PrefixFile(io.RawIOBase):
    """The first ``end`` bytes of a file followed by ``_SYNTHETIC_TAIL``; nothing is copied."""

    def __init__(self, path: Path, end: int) -> None:
        super().__init__()
        self._f = path.open("rb")
        self._end = end
        self._size = end + len(_SYNTHETIC_TAIL)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, b) -> int:
        n = min(len(b), self._size - self._pos)
        if n <= 0:
            return 0
        view = memoryview(b)
        done = 0
        if self._pos < self._end:
            k = min(n, self._end - self._pos)
            self._f.seek(self._pos)
            got = self._f.readinto(view[:k])
            done += got
            if got < k:  # the file shrank under us
                self._pos += done
                return done
        if done < n:
            start = self._pos + done - self._end
            chunk = _SYNTHETIC_TAIL[start : start + n - done]
            view[done : done + len(chunk)] = chunk
            done += len(chunk)
        self._pos += done
        return done

    def close(self) -> None:
        self._f.close()
        super().close()


class _PrefixPath:
    """What rosbags' MCAP reader needs of a path, serving a ``_PrefixFile``."""

    suffix = ".mcap"

    def __init__(self, path: Path, end: int) -> None:
        self._path, self._end = path, end
        self.name = path.name

    def exists(self) -> bool:
        return True

    def is_dir(self) -> bool:
        return False

    def open(self, mode: str = "rb"):
        return io.BufferedReader(_PrefixFile(self._path, self._end), buffer_size=1 << 20)

    def __fspath__(self) -> str:
        return str(self._path)

    def __str__(self) -> str:
        return str(self._path)


class Bag:
    """One recording, opened for reading: a rosbag2 directory (metadata.yaml + MCAP or sqlite3
    files), a bare ``.mcap`` / ``.db3`` file, or a directory whose recording never finished (no
    metadata.yaml). An MCAP file without its footer (writer killed, power lost) is read up to
    its last complete record and ``truncation`` says where that is.

    ``with Bag(path) as bag: for topic, msgtype, log_ns, msg in bag.messages(topics): ...``
    """

    def __init__(self, path) -> None:
        from rosbags.highlevel import AnyReader
        from rosbags.typesys import Stores, get_typestore

        self.path = Path(path)
        p = self.path
        if not p.exists():
            raise BagError(f"bag {p}: does not exist")
        self.name = p.name[: -len(p.suffix)] if p.is_file() else p.name
        self.custom_data: dict[str, str] = {}
        self.truncation: Truncation | None = None
        metadata_yaml = p / "metadata.yaml" if p.is_dir() else None
        if metadata_yaml is not None and metadata_yaml.is_file():
            self.custom_data = _custom_data(metadata_yaml)
            files = _storage_files_of(metadata_yaml)
        elif p.is_dir():
            # a recording that never finished: its storage file, here or one folder down (the
            # recorder's <name>.partial/<name>/<name>.mcap)
            files = sorted(x for x in p.iterdir() if x.suffix in (".mcap", ".db3"))
            if not files:
                files = sorted(x for x in p.glob("*/*") if x.suffix in (".mcap", ".db3"))
            if len(files) != 1:
                raise BagError(
                    f"bag {p}: no metadata.yaml and {len(files)} storage files (.mcap / .db3); "
                    "pass the storage file itself"
                )
            if files[0].parent != p:
                self.name = files[0].stem
            metadata_yaml = None
        elif p.suffix in (".mcap", ".db3"):
            files = [p]
        else:
            raise BagError(
                f"bag {p}: not a rosbag2 directory (no metadata.yaml) nor a .mcap / .db3 file"
            )
        self.storage = "mcap" if all(f.suffix == ".mcap" for f in files) else "sqlite3"
        target: Any = p if metadata_yaml is not None else files[0]
        for f in files:
            if f.suffix != ".mcap":
                continue
            if not f.is_file():
                raise BagError(f"bag {p}: storage file {f.name} is missing")
            complete = _mcap_has_footer(f)
            if complete and EPISODE_KEY in self.custom_data:
                continue
            end, meta = _mcap_scan(f)
            for k, v in meta.items():
                self.custom_data.setdefault(k, v)
            if not complete:
                if len(files) > 1:
                    raise BagError(
                        f"bag {p}: {f.name} is truncated and the bag has {len(files)} files; "
                        "convert the truncated file on its own"
                    )
                self.truncation = Truncation(str(f), end, f.stat().st_size)
                target = _PrefixPath(f, end)
        self._reader = AnyReader(
            [target], default_typestore=get_typestore(getattr(Stores, TYPESTORE))
        )
        try:
            self._reader.open()
        except Exception as e:  # rosbags' errors carry the reason; name the bag
            raise BagError(f"bag {p}: cannot be read: {e}") from e
        self._open = True
        self.topics: dict[str, TopicInfo] = {}
        for c in self._reader.connections:
            prev = self.topics.get(c.topic)
            if prev is not None and prev.msgtype != c.msgtype:
                raise BagError(
                    f"bag {p}: topic {c.topic} carries two message types ({prev.msgtype}, "
                    f"{c.msgtype})"
                )
            self.topics[c.topic] = TopicInfo(c.msgtype, (prev.count if prev else 0) + c.msgcount)

    @property
    def message_count(self) -> int:
        return sum(t.count for t in self.topics.values())

    @property
    def start_ns(self) -> int:
        return int(self._reader.start_time)

    @property
    def end_ns(self) -> int:
        return int(self._reader.end_time)

    def episode_metadata(self) -> dict | None:
        """The recorder's ``clamp.episode`` JSON object, or None if the bag has none. Raises
        BagError when it is there but is not a JSON object."""
        raw = self.custom_data.get(EPISODE_KEY)
        if raw is None:
            return None
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as e:
            raise BagError(f"bag {self.path}: custom_data {EPISODE_KEY}: not JSON: {e}") from None
        if not isinstance(data, dict):
            raise BagError(f"bag {self.path}: custom_data {EPISODE_KEY}: needs a JSON object")
        return data

    def messages(self, topics: Iterable[str] | None = None) -> Iterator[tuple[str, str, int, Any]]:
        """(topic, msgtype, log_ns, deserialised message) in recording order (log time), for the
        given topics (default all). A message that does not deserialise raises BagError."""
        wanted = None if topics is None else set(topics)
        conns = [c for c in self._reader.connections if wanted is None or c.topic in wanted]
        if not conns:
            return
        try:
            for conn, log_ns, raw in self._reader.messages(connections=conns):
                yield (
                    conn.topic,
                    conn.msgtype,
                    int(log_ns),
                    self._reader.deserialize(raw, conn.msgtype),
                )
        except BagError:
            raise
        except Exception as e:  # corrupt data past the checks at open
            raise BagError(f"bag {self.path}: unreadable message: {e}") from e

    def close(self) -> None:
        if getattr(self, "_open", False):
            self._open = False
            self._reader.close()

    def __enter__(self) -> Bag:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _custom_data(metadata_yaml: Path) -> dict[str, str]:
    info = _bag_info(metadata_yaml)
    custom = info.get("custom_data") or {}
    if not isinstance(custom, dict):
        return {}
    return {str(k): str(v) for k, v in custom.items()}


_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's loader when PyYAML has it: a recorded bag's metadata.yaml lists every topic with
its QoS, and the pure-Python parser took a tenth of a second per read."""


def _bag_info(metadata_yaml: Path) -> dict:
    try:
        data = yaml.load(metadata_yaml.read_text(), Loader=_YAML_LOADER)
    except (OSError, yaml.YAMLError) as e:
        raise BagError(f"bag {metadata_yaml.parent}: unreadable metadata.yaml: {e}") from None
    info = data.get("rosbag2_bagfile_information") if isinstance(data, dict) else None
    if not isinstance(info, dict):
        raise BagError(
            f"bag {metadata_yaml.parent}: metadata.yaml has no rosbag2_bagfile_information"
        )
    return info


def _storage_files_of(metadata_yaml: Path) -> list[Path]:
    info = _bag_info(metadata_yaml)
    rel = info.get("relative_file_paths") or []
    return [metadata_yaml.parent / Path(str(r)).name for r in rel]


# ---------------------------------------------------------------------------------------------
# decoded messages


@dataclass(frozen=True)
class DecodedImage:
    """One image, decoded. ``data``: colour (H, W, 3) uint8 RGB; depth (H, W) uint16 or float32
    in its stored unit, ``scale_m`` metres per unit."""

    data: np.ndarray
    frame_id: str
    scale_m: float | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return int(self.data.shape[1]), int(self.data.shape[0])


class CameraIntrinsics(NamedTuple):
    """One CameraInfo: the camera model and the frame it names."""

    camera: PinholeCamera
    frame_id: str


class JointSample(NamedTuple):
    """One arm's JointState in ``ARM_JOINT_NAMES`` order; the gripper as the message has it."""

    positions: np.ndarray
    """(7,) float64."""
    velocities: np.ndarray | None
    """(7,) float64, or None when the message has no velocities."""
    efforts: np.ndarray | None
    """(7,) float64, or None when the message has no efforts."""


@dataclass(frozen=True)
class TrajectoryCommand:
    """One JointTrajectory for an arm, in ``ARM_JOINT_NAMES`` order. Executed as ros2_control's
    JointTrajectoryController does: it replaces the running command at ``start_ns``, moves
    linearly from where the command was then to the first point, then through the points, and
    holds the last one; no points means stop and hold."""

    start_ns: int
    times_ns: np.ndarray
    """(n,) int64 time of each point after ``start_ns``."""
    positions: np.ndarray
    """(n, 7) float64."""

    def sample(self, t_ns: int, before: np.ndarray | None) -> np.ndarray | None:
        """The commanded (7,) position at ``t_ns`` >= ``start_ns``; ``before`` is the command's
        value when this trajectory took over (None: unknown, the first point is held)."""
        if len(self.times_ns) == 0:
            return None if before is None else before.copy()
        rel = t_ns - self.start_ns
        times = self.times_ns
        if rel >= times[-1]:
            return self.positions[-1].copy()
        if rel < times[0]:
            if before is None or times[0] <= 0:
                return self.positions[0].copy()
            w = max(rel, 0) / times[0]
            return before + w * (self.positions[0] - before)
        i = int(np.searchsorted(times, rel, side="right"))
        t0, t1 = times[i - 1], times[i]
        w = (rel - t0) / (t1 - t0)
        return self.positions[i - 1] + w * (self.positions[i] - self.positions[i - 1])


class StampedTransform(NamedTuple):
    parent: str
    child: str
    stamp_ns: int
    transform: Transform


@dataclass(frozen=True)
class RoleMessage:
    """One mapped message, decoded. ``role``/``name``/``kind``: ('camera', cam, 'color' |
    'depth' | 'camera_info'), ('arm', side, 'follower' | 'leader' | 'command') or ('tf', '',
    'tf' | 'tf_static'). ``value`` is a DecodedImage, CameraIntrinsics, JointSample,
    TrajectoryCommand or a list of StampedTransform; None when the message could not be decoded,
    and ``error`` says why."""

    role: str
    name: str
    kind: str
    stamp_ns: int
    """Header stamp (a trajectory's start; zero stamps, which mean 'now', become log_ns; tf:
    the newest of its transforms)."""
    log_ns: int
    """When the recorder received it: the bag's clock."""
    topic: str
    value: Any
    error: str | None = None


def _duration_ns(d) -> int:
    return int(d.sec) * 1_000_000_000 + int(d.nanosec)


def decode_trajectory(msg, log_ns: int) -> TrajectoryCommand:
    """trajectory_msgs/JointTrajectory -> TrajectoryCommand (raises ValueError naming the
    problem); a zero header stamp means 'start now', i.e. at ``log_ns``."""
    start = stamp_to_ns(msg.header.stamp) or log_ns
    names = [str(n) for n in msg.joint_names]
    times, rows = [], []
    for k, p in enumerate(msg.points):
        t = _duration_ns(p.time_from_start)
        if times and t <= times[-1]:
            raise ValueError(f"point {k}: time_from_start does not increase")
        times.append(t)
        rows.append(arm_joint_values(names, p.positions, "position"))
    positions = np.array(rows, dtype=np.float64).reshape(len(rows), len(ARM_JOINT_NAMES))
    return TrajectoryCommand(start, np.array(times, dtype=np.int64), positions)


def decode_joint_state(msg) -> JointSample:
    names = list(msg.name)
    return JointSample(
        arm_joint_values(names, msg.position, "position"),
        arm_joint_values(names, msg.velocity, "velocity"),
        arm_joint_values(names, msg.effort, "effort"),
    )


def decode_image(msg, msgtype: str, kind: str) -> DecodedImage:
    """A colour or depth Image / CompressedImage -> DecodedImage; raises ImageDecodeError."""
    frame = str(msg.header.frame_id).lstrip("/")
    if kind == "color":
        rgb = color_from_msg(msg) if msgtype == IMAGE else compressed_color_from_msg(msg)
        return DecodedImage(rgb, frame)
    if msgtype == IMAGE:
        depth, scale = depth_from_msg(msg)
    else:
        depth, scale = compressed_depth_from_msg(msg)
    return DecodedImage(depth, frame, scale)


def decode_transforms(msg) -> list[StampedTransform]:
    return [
        StampedTransform(
            str(t.header.frame_id),
            str(t.child_frame_id),
            stamp_to_ns(t.header.stamp),
            transform_from_msg(t),
        )
        for t in msg.transforms
    ]


def check_types(bag: Bag, tmap: TopicsMap) -> None:
    """Raise BagError naming the first mapped topic whose message type its kind cannot take."""
    for topic, (role, name, kind) in tmap.routes().items():
        info = bag.topics.get(topic)
        if info is None:
            continue
        accepted = ACCEPTED_TYPES[kind]
        if _norm_type(info.msgtype) not in accepted:
            where = f"{role} '{name}' {kind}" if name else kind
            raise BagError(
                f"bag {bag.path}: topic {topic} ({where}) carries {info.msgtype}; a {kind} topic "
                f"needs {' or '.join(accepted)}"
            )


def _norm_type(msgtype: str) -> str:
    pkg, _, rest = msgtype.partition("/")
    return msgtype if rest.startswith("msg/") else f"{pkg}/msg/{rest}"


def read_roles(
    bag: Bag, tmap: TopicsMap, kinds: Iterable[str] | None = None
) -> Iterator[RoleMessage]:
    """The mapped messages of ``bag``, decoded, in recording order (as they reached the
    recorder, which is how live nodes saw them). Within each stream other than tf and commands,
    header stamps never decrease: a stream whose stamps go backwards raises StampOrderError.
    ``kinds``
    restricts to some kinds (e.g. {'follower', 'leader'}: no images are decoded)."""
    check_types(bag, tmap)
    routes = tmap.routes()
    if kinds is not None:
        kinds = set(kinds)
        routes = {t: r for t, r in routes.items() if r[2] in kinds}
    last: dict[str, tuple[int, int]] = {}
    for topic, msgtype, log_ns, msg in bag.messages(routes):
        role, name, kind = routes[topic]
        value, error = None, None
        stamp = log_ns
        try:
            if kind in ("tf", "tf_static"):
                value = decode_transforms(msg)
                if value and kind == "tf":
                    stamp = max(t.stamp_ns for t in value)
            else:
                stamp = stamp_to_ns(msg.header.stamp) or log_ns
                if kind in ("color", "depth"):
                    value = decode_image(msg, _norm_type(msgtype), kind)
                elif kind == "camera_info":
                    value = CameraIntrinsics(camera_from_info(msg), str(msg.header.frame_id))
                elif kind in ("follower", "leader"):
                    value = decode_joint_state(msg)
                else:
                    value = decode_trajectory(msg, log_ns)
                    stamp = value.start_ns
        except (ValueError, ImageDecodeError, CameraModelError, MalformedStampError) as e:
            value, error = None, str(e)[:300]
        # tf interleaves publishers and a trajectory may be scheduled ahead: neither is a clock
        if kind not in ("tf", "tf_static", "command") and error is None:
            prev = last.get(topic)
            if prev is not None and stamp < prev[0]:
                raise StampOrderError(
                    f"bag {bag.path}: topic {topic}: header stamps go backwards (message at "
                    f"log time {_fmt(log_ns)} is stamped {_fmt(stamp)}, the one before "
                    f"{_fmt(prev[0])}); a stream whose time jumps back cannot be resampled"
                )
            last[topic] = (stamp, log_ns)
        yield RoleMessage(role, name, kind, int(stamp), log_ns, topic, value, error)


def _fmt(ns: int) -> str:
    return f"{ns * 1e-9:.6f} s"
