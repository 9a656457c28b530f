"""``clamp data from-bag``: rosbag2 recordings -> episode HDF5 files, resampled onto the control
rate, cameras synchronised and posed from the bag's tf, actions from the leader arms (or the
recorded commands). A bag that cannot be converted faithfully is refused with the reason.
"""

from __future__ import annotations

import bisect
import heapq
import json
import math
import re
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..aloha import ALOHA_JOINT_NAMES, ARM_JOINT_NAMES, SIDES
from ..geometry.image import encode_depth_mm
from ..geometry.sync import ApproximateTimeSync, SyncedSet
from ..geometry.tf_buffer import ExtrapolationError, TfBuffer, TfError
from ..teleop import GripperMap
from .bags import (
    Bag,
    BagError,
    DecodedImage,
    RoleMessage,
    TopicsMap,
    TrajectoryCommand,
    check_types,
    read_roles,
    topics_map_path,
)
from .episode import (
    CameraCalib,
    EpisodeError,
    EpisodeMeta,
    EpisodeWriter,
    is_complete,
)

WRITER = "clamp data from-bag"
GAP_FACTOR = 2.5
"""A stream's stamps further apart than this many nominal periods count as a gap."""
GAPS_LISTED = 5
"""Largest gaps listed per stream in the report."""


@dataclass
class FromBagConfig:
    """How bags become episodes (``clamp data from-bag`` options)."""

    fps: float = 50.0
    """Frame rate of the episode: frames lie on a grid with this rate (the control rate)."""
    sync_tolerance_s: float = 0.02
    """How far (s) a camera's frame may be from the reference camera's (the first camera's
    depth) to join its set, as the live nodes' perception.sync_tolerance_s; also how far from tf
    samples a camera pose may be interpolated or held (a longer tf gap drops the frame)."""
    max_image_age_s: float = 0.1
    """A frame takes the newest synchronised image set at or before its stamp; an older set than
    this drops the frame (a camera stalled)."""
    max_state_gap_s: float = 0.1
    """Joint states (follower and leader) are interpolated at each frame stamp between the
    samples around it; samples further apart than this drop the frame."""
    max_dropped_fraction: float = 0.05
    """Refuse a bag when more than this fraction of its grid frames had to be dropped."""
    lateness_s: float = 1.0
    """How far a stream's stamps may trail the bag's clock (its recording time): a frame is
    made without waiting longer for a stream that has nothing newer by then."""
    sync_queue_size: int = 30
    """Images buffered per camera stream while waiting for partners."""
    max_pending_sets: int = 512
    """Synchronised image sets buffered while other streams catch up; more is refused (streams
    recorded too far apart in time)."""
    compression: str | None = "gzip"
    """Of images and depth in the episode ('gzip', 'lzf' or None, see ``EpisodeWriter``)."""
    overwrite: bool = False
    """Convert again when the episode file already exists (else the bag is skipped)."""
    task: str = ""
    """Task id; overrides the bag's metadata (required when the bag has none)."""
    instruction: str = ""
    """Language instruction; overrides the bag's metadata (required when the bag has none)."""
    success: bool | None = None
    """Overrides the bag's success flag; without either, a bag counts as a successful demo."""

    def __post_init__(self) -> None:
        positive = (
            "fps",
            "max_image_age_s",
            "max_state_gap_s",
            "lateness_s",
        )
        for name in positive:
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name}: needs a finite number > 0, got {v!r}")
        if not (math.isfinite(self.sync_tolerance_s) and self.sync_tolerance_s >= 0):
            raise ValueError(f"sync_tolerance_s: needs a number >= 0, got {self.sync_tolerance_s}")
        if not 0.0 <= self.max_dropped_fraction <= 1.0:
            raise ValueError(f"max_dropped_fraction: needs 0 .. 1, got {self.max_dropped_fraction}")
        for name in ("sync_queue_size", "max_pending_sets"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: needs an integer >= 1")
        if self.lateness_s < self.sync_tolerance_s:
            raise ValueError("lateness_s must be at least sync_tolerance_s")
        if self.compression not in (None, "lzf", "gzip"):
            raise ValueError(f"compression: use gzip, lzf or None, got {self.compression!r}")


class BagRefusedError(Exception):
    """The bag cannot be converted faithfully; ``str()`` is the reason."""


class _NotReadyError(Exception):
    """A frame needs data the bag has not delivered yet (tf after the images)."""


def _ns(seconds: float) -> int:
    return int(round(seconds * 1e9))


# ---------------------------------------------------------------------------------------------
# time series


class _Series:
    """One arm's joint samples, kept from the newest one at or before the frame cursor on."""

    def __init__(self) -> None:
        self.stamps: list[int] = []
        self.values: list[np.ndarray] = []
        self.first: int | None = None

    @property
    def latest(self) -> int | None:
        return self.stamps[-1] if self.stamps else None

    def add(self, stamp: int, value: np.ndarray) -> None:
        if self.first is None:
            self.first = stamp
        if self.stamps and stamp == self.stamps[-1]:
            self.values[-1] = value  # the same stamp re-sent: the last one counts
            return
        self.stamps.append(stamp)
        self.values.append(value)

    def prune(self, t: int) -> None:
        """Forget samples that no time at or after ``t`` needs."""
        i = bisect.bisect_right(self.stamps, t) - 1
        if i > 0:
            del self.stamps[:i]
            del self.values[:i]

    def at(self, t: int, max_gap_ns: int) -> tuple[np.ndarray | None, str]:
        """Linear interpolation at ``t`` between the samples around it; (None, why) when there
        are none or they are more than ``max_gap_ns`` apart."""
        i = bisect.bisect_right(self.stamps, t) - 1
        if i < 0:
            return None, "no sample at or before the frame"
        if self.stamps[i] == t:
            return self.values[i], ""
        if i + 1 >= len(self.stamps):
            last = (t - self.stamps[i]) * 1e-9
            return None, f"no sample after the frame (last {last:.3f} s before it)"
        s0, s1 = self.stamps[i], self.stamps[i + 1]
        if s1 - s0 > max_gap_ns:
            return None, f"samples {(s1 - s0) * 1e-9:.3f} s apart around the frame"
        w = (t - s0) / (s1 - s0)
        return self.values[i] + w * (self.values[i + 1] - self.values[i]), ""


class _Commands:
    """One arm's recorded trajectories, executed as JointTrajectoryController would."""

    def __init__(self) -> None:
        self.trajs: list[TrajectoryCommand] = []
        self.befores: list[np.ndarray | None] = []
        self.first: int | None = None

    @property
    def latest(self) -> int | None:
        return self.trajs[-1].start_ns if self.trajs else None

    def add(self, traj: TrajectoryCommand) -> None:
        if self.first is None or traj.start_ns < self.first:
            self.first = traj.start_ns
        i = bisect.bisect_right([t.start_ns for t in self.trajs], traj.start_ns)
        self.trajs.insert(i, traj)
        self.befores.insert(i, None)
        for j in range(i, len(self.trajs)):  # each takes over from where its predecessor was
            self.befores[j] = self._value(j - 1, self.trajs[j].start_ns) if j else None

    def _value(self, j: int, t: int) -> np.ndarray | None:
        return self.trajs[j].sample(t, self.befores[j])

    def prune(self, t: int) -> None:
        i = bisect.bisect_right([x.start_ns for x in self.trajs], t) - 1
        if i > 0:
            del self.trajs[:i]
            del self.befores[:i]

    def at(self, t: int) -> tuple[np.ndarray | None, str]:
        i = bisect.bisect_right([x.start_ns for x in self.trajs], t) - 1
        if i < 0:
            return None, "no command started at or before the frame"
        v = self._value(i, t)
        if v is None:
            return None, "an empty trajectory (stop) before any command"
        return v, ""


class _StreamStats:
    """Counts, rate and the largest stamp gaps of one topic (bounded: a top-k heap)."""

    def __init__(self, topic: str, role: str, expected_hz: float | None) -> None:
        self.topic, self.role, self.expected_hz = topic, role, expected_hz
        self.count = 0
        self.bad = 0
        self.first: int | None = None
        self.last: int | None = None
        self._gaps: list[tuple[int, int]] = []  # min-heap of (length, start)

    def add(self, stamp: int) -> None:
        self.count += 1
        if self.first is None:
            self.first = stamp
        elif stamp > self.last:
            heapq.heappush(self._gaps, (stamp - self.last, self.last))
            if len(self._gaps) > GAPS_LISTED:
                heapq.heappop(self._gaps)
        self.last = stamp if self.last is None else max(self.last, stamp)

    def report(self, origin: int) -> dict:
        span = (self.last - self.first) * 1e-9 if self.count > 1 else 0.0
        rate = (self.count - 1) / span if span > 0 else None
        nominal = self.expected_hz or rate
        gaps = []
        if nominal:
            limit = GAP_FACTOR / nominal
            gaps = [
                [round((s - origin) * 1e-9, 4), round(g * 1e-9, 4)]
                for g, s in sorted(self._gaps, reverse=True)
                if g * 1e-9 > limit
            ]
        return {
            "role": self.role,
            "messages": self.count,
            "undecodable": self.bad,
            "rate_hz": None if rate is None else round(rate, 2),
            "expected_hz": self.expected_hz,
            "max_gap_s": round(max((g for g, _ in self._gaps), default=0) * 1e-9, 4),
            "gaps": gaps,
        }


# ---------------------------------------------------------------------------------------------
# one bag


def _safe_name(name: str) -> str:
    out = re.sub(r"[^A-Za-z0-9_.\-]", "_", name).strip(".")
    return out or "bag"


class _Converter:
    """Streams one bag through synchronisation, tf and resampling into an EpisodeWriter."""

    def __init__(self, bag: Bag, tmap: TopicsMap, cfg: FromBagConfig, out_dir: Path) -> None:
        self.bag, self.tmap, self.cfg, self.out_dir = bag, tmap, cfg, out_dir
        self.period_ns = 1e9 / cfg.fps
        self.tol_ns = _ns(cfg.sync_tolerance_s)
        self.max_age_ns = _ns(cfg.max_image_age_s)
        self.max_gap_ns = _ns(cfg.max_state_gap_s)
        self.late_ns = _ns(cfg.lateness_s)
        self.cams = tmap.camera_names
        self.report: dict = {
            "bag": str(bag.path),
            "status": "refused",
            "reason": None,
            "episode": None,
            "storage": bag.storage,
            "truncated": bag.truncation.as_dict() if bag.truncation else None,
        }
        self.drops: Counter = Counter()
        self.drop_examples: dict[str, str] = {}
        # drops since the last written frame: those past the end of the common data are not
        # part of the episode's span and are taken back at the end
        self.tail_drops: list[tuple[int, str]] = []
        self.bad_messages: dict[str, list] = {}  # topic -> [count, first reason]
        self.notes: list[str] = []
        self.writer: EpisodeWriter | None = None
        self.made_dirs: list[Path] = []
        self.offset_ns = 0  # recording clock -> stamps' time base (see _clock_offset)

    # -- set-up

    def prepare(self) -> None:
        """Everything that can be checked before reading messages: metadata, topics, types."""
        bag, tmap = self.bag, self.tmap
        self.meta_in = bag.episode_metadata() or {}
        self.meta = self._episode_meta()
        self.path = self.out_dir / self.meta.task / f"{_safe_name(bag.name)}.hdf5"
        self.report["episode"] = str(self.path)
        check_types(bag, tmap)
        have = {t for t, info in bag.topics.items() if info.count > 0}
        for c in tmap.cameras:
            for kind in ("color", "depth", "camera_info"):
                topic = getattr(c, kind)
                if topic not in have:
                    what = "images without camera_info" if kind == "camera_info" else kind
                    raise BagRefusedError(
                        f"camera '{c.name}': mapped {kind} topic {topic} "
                        f"{'has no messages' if topic in bag.topics else 'is not in the bag'}"
                        + (f" ({what})" if kind == "camera_info" else "")
                    )
        self.sources: dict[str, str] = {}
        for side in SIDES:
            arm = tmap.arms[side]
            if arm.follower not in have:
                raise BagRefusedError(
                    f"arm '{side}': mapped follower topic {arm.follower} "
                    f"{'has no messages' if arm.follower in bag.topics else 'is not in the bag'}"
                )
            if arm.leader and arm.leader in have:
                self.sources[side] = "leader"
            elif arm.command and arm.command in have:
                self.sources[side] = "command"
                self.notes.append(
                    f"{side} arm: no leader joint states; actions are the recorded commands "
                    f"on {arm.command}"
                )
            else:
                tried = [t for t in (arm.leader, arm.command) if t]
                raise BagRefusedError(
                    f"arm '{side}': no leader and no commands (no messages on "
                    f"{' or '.join(tried) if tried else 'any mapped action topic'}); a bag "
                    "needs one of them as the action source"
                )
        self.report["action_source"] = dict(self.sources)
        if tmap.tf not in have and tmap.tf_static not in have:
            raise BagRefusedError(
                f"no tf: neither {tmap.tf} nor {tmap.tf_static} has messages; camera poses "
                "come from tf"
            )
        self.leader_map = GripperMap.from_range(tmap.leader_gripper_range)
        self.follower_range = tmap.follower_gripper_range
        self.stats: dict[str, _StreamStats] = {}
        rates = tmap.expected_rates_hz
        for topic, (role, name, kind) in tmap.routes().items():
            if topic not in bag.topics:
                continue
            expected = None
            if kind in ("color", "depth"):
                expected = rates.get("camera")
            elif kind in ("follower", "leader"):
                expected = rates.get("joint_states")
            label = f"{role} {name} {kind}".replace("  ", " ") if name else kind
            self.stats[topic] = _StreamStats(topic, label, expected)

    def _episode_meta(self) -> EpisodeMeta:
        cfg, m = self.cfg, self.meta_in
        task = cfg.task or m.get("task") or ""
        instruction = cfg.instruction or m.get("instruction") or ""
        if not task or not instruction:
            missing = [n for n, v in (("task", task), ("instruction", instruction)) if not v]
            source = (
                "its clamp.episode metadata lacks it"
                if m
                else "the bag has no clamp.episode metadata"
            )
            raise BagRefusedError(
                f"no {' or '.join(missing)}: {source}; pass --{' and --'.join(missing)}"
            )
        success = cfg.success if cfg.success is not None else m.get("success", True)
        if success is None:
            raise BagRefusedError(
                "clamp.episode success is not set (the recording ended without a verdict); "
                "pass --success true or --success false"
            )
        if not isinstance(success, bool):
            raise BagRefusedError(f"clamp.episode success: needs true or false, got {success!r}")
        if m.get("error"):
            self.notes.append(f"the recorder reported: {str(m['error'])[:200]}")
        self.success = success
        joints = m.get("joint_names") or list(ALOHA_JOINT_NAMES)
        if list(joints) != list(ALOHA_JOINT_NAMES):
            self.notes.append(
                f"clamp.episode joint_names {list(joints)[:14]} differ from the ALOHA order; "
                "the episode uses the topics map's (ALOHA) order"
            )
        cams = m.get("camera_names")
        if cams is not None and list(cams) != self.cams:
            self.notes.append(
                f"clamp.episode camera_names {list(cams)} differ from the topics map's "
                f"{self.cams}; the episode has the map's cameras"
            )
        extra = {"source_bag": self.bag.name}
        for key in ("operator", "notes", "software_version", "start_ns", "stop_ns"):
            v = m.get(key)
            if v is not None and v != "":
                extra[key] = str(v)
        seed = m.get("seed", 0)
        try:
            meta = EpisodeMeta(
                task=str(task),
                instruction=str(instruction),
                sim=bool(m.get("sim", False)),
                fps=self.cfg.fps,
                seed=int(seed) if isinstance(seed, int) and seed >= 0 else 0,
                robot=str(m.get("robot") or "aloha"),
                joint_names=list(ALOHA_JOINT_NAMES),
                camera_names=list(self.cams),
                base_frame=self.tmap.base_frame,
                writer=WRITER,
                extra=extra,
            )
        except EpisodeError as e:
            raise BagRefusedError(f"episode metadata: {e}") from None
        self.report["metadata"] = {
            "task": meta.task,
            "instruction": meta.instruction,
            "success": success,
            "robot": meta.robot,
            "sim": meta.sim,
            **{k: v for k, v in extra.items()},
        }
        return meta

    # -- streaming

    def run(self, progress=None) -> None:
        cfg, tmap = self.cfg, self.tmap
        streams = [f"{c}/depth" for c in self.cams] + [f"{c}/color" for c in self.cams]
        self.sync = ApproximateTimeSync(streams, cfg.sync_tolerance_s, cfg.sync_queue_size)
        self.image_streams = streams
        self.sets: deque[SyncedSet] = deque()
        self.first_set: int | None = None
        self.last_set: int | None = None
        self.calib: dict = {}
        self.follower = {s: _Series() for s in SIDES}
        self.leader = {s: _Series() for s in SIDES}
        self.commands = {s: _Commands() for s in SIDES}
        self.missing_vel = {s: False for s in SIDES}
        self.missing_eff = {s: False for s in SIDES}
        self.tf = TfBuffer(
            cache_duration_s=max(10.0, 4 * cfg.lateness_s),
            extrapolation_tolerance_s=cfg.sync_tolerance_s,
        )
        self.tf_rejected = 0
        self.tf_rejected_first: str | None = None
        self.t0: int | None = None
        self.k = 0
        self.frames_written = 0
        self._depth_cache: dict[tuple[str, int], np.ndarray] = {}
        self.offset_ns = self._clock_offset()
        self._initial_calibration()
        for m in read_roles(self.bag, tmap):
            if progress is not None:
                progress.update(1)
            self._take(m)
            self._emit(m.log_ns + self.offset_ns)
        self._emit(None)

    def _clock_offset(self) -> int:
        """log time -> stamp time base: 0 when the recorder's clock is the stamps' (the usual
        case); else the offset seen on the first follower joint state (a simulation stamped with
        its own time, recorded on wall-clock time)."""
        topic = self.tmap.arms[SIDES[0]].follower
        for m in read_roles(self.bag, self.tmap, kinds={"follower"}):
            if m.topic == topic and m.error is None:
                d = m.stamp_ns - m.log_ns
                if abs(d) > 1_000_000_000:
                    self.notes.append(
                        f"header stamps are {d * 1e-9:+.1f} s from the recording clock; the "
                        "bag's clock is taken in the stamps' time base"
                    )
                    return d
                return 0
        return 0

    def _initial_calibration(self) -> None:
        """Each camera's first usable camera_info, read before the images: an episode has one
        calibration per camera (a camera_info that changes later refuses the bag), so it also
        serves images recorded a moment before the driver's first camera_info."""
        for m in read_roles(self.bag, self.tmap, kinds={"camera_info"}):
            if m.error is None and m.name not in self.calib:
                self.calib[m.name] = m.value.camera
                if len(self.calib) == len(self.cams):
                    return
        missing = [c for c in self.cams if c not in self.calib]
        topics = [self.tmap.cameras[self.cams.index(c)].camera_info for c in missing]
        raise BagRefusedError(
            f"camera '{missing[0]}': no usable camera_info on {topics[0]} (images without "
            "camera_info cannot be interpreted)"
        )

    def _take(self, m: RoleMessage) -> None:
        st = self.stats.get(m.topic)
        if m.error is not None:
            if st is not None:
                st.bad += 1
            self._bad_message(m.topic, m.error)
            return
        if st is not None:
            if m.kind == "tf_static":
                st.count += 1  # latched: stamps and rates mean nothing
            else:
                st.add(m.stamp_ns)
        clock = m.log_ns + self.offset_ns
        if m.role == "camera":
            self._take_camera(m)
        elif m.role == "arm":
            side = m.name
            if m.kind == "command":
                self.commands[side].add(m.value)
            elif m.kind == "follower":
                self.follower[side].add(m.stamp_ns, self._follower_row(side, m.value))
            else:
                pos = m.value.positions.copy()
                pos[6] = self.leader_map.to_follower(pos[6])
                self.leader[side].add(m.stamp_ns, pos)
            if self.t0 is None:  # before the span starts keep a bounded window only
                horizon = m.stamp_ns - self.late_ns - self.max_gap_ns
                self.follower[side].prune(horizon)
                self.leader[side].prune(horizon)
        else:
            for t in m.value:
                try:
                    self.tf.set_transform(
                        t.parent,
                        t.child,
                        t.stamp_ns,
                        t.transform,
                        static=m.kind == "tf_static",
                        now_ns=clock,
                    )
                except ValueError as e:
                    self.tf_rejected += 1
                    self.tf_rejected_first = self.tf_rejected_first or str(e)[:300]

    def _follower_row(self, side: str, js) -> np.ndarray:
        pos = js.positions.copy()
        if self.follower_range is not None:
            closed, open_ = self.follower_range
            pos[6] = (pos[6] - closed) / (open_ - closed)
        vel, eff = js.velocities, js.efforts
        if vel is None:
            self.missing_vel[side] = True
            vel = np.zeros(len(ARM_JOINT_NAMES))
        elif self.follower_range is not None:
            vel = vel.copy()
            vel[6] = vel[6] / (self.follower_range[1] - self.follower_range[0])
        if eff is None:
            self.missing_eff[side] = True
            eff = np.zeros(len(ARM_JOINT_NAMES))
        return np.stack([pos, vel, eff])

    def _take_camera(self, m: RoleMessage) -> None:
        cam = m.name
        if m.kind == "camera_info":
            if self.calib[cam] != m.value.camera:
                raise BagRefusedError(
                    f"camera '{cam}': camera_info changed during the recording (at "
                    f"{self._rel(m.stamp_ns)}); an episode has one calibration per camera"
                )
            return
        intr = self.calib[cam]
        img: DecodedImage = m.value
        if img.size != (intr.width, intr.height):
            raise BagRefusedError(
                f"camera '{cam}': {m.kind} image is {img.size[0]}x{img.size[1]} but its "
                f"camera_info says {intr.width}x{intr.height} (depth must be registered to "
                "colour)"
            )
        for s in self.sync.add(f"{cam}/{m.kind}", m.stamp_ns, img):
            if self.first_set is None:
                self.first_set = s.stamp_ns
            self.last_set = s.stamp_ns
            self.sets.append(s)
        if self.t0 is None and len(self.sets) > 1:
            # only the newest set at or before the earliest possible start can still be used
            bound = self._lower_bound()
            while len(self.sets) > 1 and self.sets[1].stamp_ns <= bound:
                self.sets.popleft()
        if len(self.sets) > self.cfg.max_pending_sets:
            lag = [
                f"{side} {what}"
                for side in SIDES
                for what, latest in (
                    ("follower", self.follower[side].latest),
                    (self.sources[side], self._source(side).latest),
                )
                if latest is None or latest < self.sets[0].stamp_ns
            ]
            raise BagRefusedError(
                f"{len(self.sets)} synchronised image sets wait for other streams "
                f"({', '.join(lag) or 'tf'}); the streams were recorded too far apart in time "
                f"(more than max_pending_sets={self.cfg.max_pending_sets})"
            )

    def _source(self, side: str):
        return self.leader[side] if self.sources[side] == "leader" else self.commands[side]

    def _firsts(self) -> list[int | None]:
        out = [self.first_set]
        for side in SIDES:
            out += [self.follower[side].first, self._source(side).first]
        return out

    def _lower_bound(self) -> int:
        known = [f for f in self._firsts() if f is not None]
        return max(known) if known else -(2**62)

    def _bad_message(self, topic: str, why: str) -> None:
        entry = self.bad_messages.setdefault(topic, [0, why[:300]])
        entry[0] += 1

    # -- frames

    def _emit(self, clock: int | None) -> None:
        final = clock is None
        if self.t0 is None:
            firsts = self._firsts()
            if any(f is None for f in firsts):
                if final:
                    self._refuse_no_overlap()
                return
            self.t0 = max(firsts)
            self.report["start_ns"] = self.t0
        while True:
            t = self.t0 + int(round(self.k * self.period_ns))
            if final:
                if t > self._span_end():
                    break
            elif not self._ready(t, clock):
                break
            try:
                self._frame(t, clock)
            except _NotReadyError:
                break
            self.k += 1

    def _refuse_no_overlap(self) -> None:
        names = ["synchronised images"]
        for side in SIDES:
            names += [f"{side} follower joint states", f"{side} {self.sources[side]}"]
        missing = [n for n, f in zip(names, self._firsts(), strict=True) if f is None]
        why = ""
        if self.first_set is None:
            why = (
                f" (cameras never within sync_tolerance_s={self.cfg.sync_tolerance_s:g} s of "
                f"each other: {self.sync.dropped_pivots} reference frames found no partners)"
            )
        raise BagRefusedError(f"no frame possible: no {', '.join(missing)}{why}")

    def _span_end(self) -> int:
        ends = [self.last_set + self.max_age_ns]
        for side in SIDES:
            ends.append(self.follower[side].latest)
            if self.sources[side] == "leader":
                ends.append(self.leader[side].latest)
        return min(ends)

    def _ready(self, t: int, clock: int) -> bool:
        if clock >= t + self.late_ns:
            return True  # whatever has not arrived by now is a gap
        for s in self.image_streams:
            latest = self.sync.latest_stamp(s)
            if latest is None or latest < t:
                return False
        for side in SIDES:
            for series in (self.follower[side], self._source(side)):
                if series.latest is None or series.latest < t:
                    return False
        return True

    def _drop(self, t: int, reason: str, why: str) -> None:
        self.drops[reason] += 1
        self.drop_examples.setdefault(reason, why[:300])
        self.tail_drops.append((t, reason))

    def _rel(self, t: int) -> str:
        return f"{(t - self.bag.start_ns - self.offset_ns) * 1e-9:.3f} s into the bag"

    def _frame(self, t: int, clock: int | None) -> None:
        final = clock is None
        while len(self.sets) > 1 and self.sets[1].stamp_ns <= t:
            self.sets.popleft()
        for side in SIDES:
            self.follower[side].prune(t)
            self._source(side).prune(t)
        if not self.sets or self.sets[0].stamp_ns > t:
            return self._drop(t, "no_images", f"no synchronised image set at or before {t}")
        synced = self.sets[0]
        age = t - synced.stamp_ns
        if age > self.max_age_ns:
            return self._drop(
                t,
                "stale_images",
                f"newest synchronised image set is {age * 1e-9:.3f} s older than the frame "
                f"({self._rel(t)}; max_image_age_s={self.cfg.max_image_age_s:g}); "
                f"{self.sync.dropped_pivots} reference frames found no partners so far",
            )
        images, depths, extrinsics = {}, {}, {}
        for cam in self.cams:
            stamp, depth = synced.items[f"{cam}/depth"]
            _, color = synced.items[f"{cam}/color"]
            frame_id = self._frame_id(cam, depth)
            base = self.tmap.base_frame
            # tf may reach the recorder after the images it poses: wait for it (up to lateness_s)
            may_wait = not final and clock < stamp + self.late_ns
            try:
                latest = self.tf.latest_common_time(base, frame_id)
                if may_wait and latest is not None and latest < stamp:
                    raise _NotReadyError
                T = self.tf.lookup_matrix(base, frame_id, stamp)
                gap = self.tf.sample_distance_ns(base, frame_id, stamp)
            except ExtrapolationError as e:
                if e.into_future and may_wait:
                    raise _NotReadyError from None
                return self._drop(t, "tf_gap", f"camera '{cam}': {e}")
            except TfError as e:
                if may_wait:
                    raise _NotReadyError from None
                return self._drop(t, "tf_missing", f"camera '{cam}': {e}")
            if gap > self.tol_ns:
                return self._drop(
                    t,
                    "tf_gap",
                    f"camera '{cam}': pose of '{frame_id}' at {self._rel(stamp)} would come "
                    f"from tf {gap * 1e-9:.3f} s away (sync_tolerance_s "
                    f"{self.cfg.sync_tolerance_s:g})",
                )
            extrinsics[cam] = T
            images[cam] = color.data
            depths[cam] = self._depth_mm(cam, stamp, depth)
        rows = []
        for side in SIDES:
            v, why = self.follower[side].at(t, self.max_gap_ns)
            if v is None:
                return self._drop(t, "joint_state_gap", f"{side} follower: {why} ({self._rel(t)})")
            rows.append(v)
        state = np.concatenate(rows, axis=1)  # (3, 14): position, velocity, effort
        actions = []
        for side in SIDES:
            if self.sources[side] == "leader":
                a, why = self.leader[side].at(t, self.max_gap_ns)
                reason = "leader_gap"
            else:
                a, why = self.commands[side].at(t)
                reason = "no_command"
            if a is None:
                return self._drop(t, reason, f"{side} {self.sources[side]}: {why} ({self._rel(t)})")
            actions.append(a)
        action = np.concatenate(actions)
        if self.writer is None:
            self._open_writer()
        try:
            self.writer.add_frame(
                stamp_ns=t,
                qpos=state[0],
                qvel=state[1],
                effort=state[2],
                action=action,
                images=images,
                depth_mm=depths,
                extrinsics=extrinsics,
            )
        except EpisodeError as e:
            raise BagRefusedError(f"frame at {self._rel(t)}: {e}") from None
        self.frames_written += 1
        self.tail_drops.clear()

    def _frame_id(self, cam: str, depth: DecodedImage) -> str:
        override = self.tmap.cameras[self.cams.index(cam)].frame_id
        return override or depth.frame_id

    def _depth_mm(self, cam: str, stamp: int, depth: DecodedImage) -> np.ndarray:
        key = (cam, stamp)
        hit = self._depth_cache.get(key)
        if hit is None:
            d = depth.data
            if d.dtype == np.uint16 and depth.scale_m == 1e-3:
                hit = d
            else:
                hit = encode_depth_mm(d.astype(np.float64) * depth.scale_m)
            if len(self._depth_cache) >= 4 * len(self.cams):
                self._depth_cache.clear()  # sets are used in stamp order: old ones are done
            self._depth_cache[key] = hit
        return hit

    def _open_writer(self) -> None:
        cams = [CameraCalib.from_pinhole(c, self.calib[c]) for c in self.cams]
        missing_dirs = []
        d = self.path.parent
        while not d.exists():
            missing_dirs.append(d)
            d = d.parent
        try:
            self.writer = EpisodeWriter(
                self.path,
                self.meta,
                cams,
                compression=self.cfg.compression,
                depth_compression=self.cfg.compression,
                overwrite=self.cfg.overwrite,
                create_dirs=True,
            )
        except EpisodeError as e:
            raise BagRefusedError(str(e)) from None
        self.made_dirs = missing_dirs

    # -- finishing

    def finish(self) -> Path:
        cfg = self.cfg
        end = self._span_end()
        past = [(t, reason) for t, reason in self.tail_drops if t > end]
        for _, reason in past:  # made on the lateness rule after a stream had ended
            self.drops[reason] -= 1
        self.drops = +self.drops  # without the zero counts
        if past:
            self.notes.append(f"{len(past)} frame(s) after the end of the common data ignored")
        dropped = sum(self.drops.values())
        grid = self.frames_written + dropped
        self.report["frames"] = {
            "grid": grid,
            "written": self.frames_written,
            "dropped": dict(self.drops),
            "drop_examples": {k: v for k, v in self.drop_examples.items()},
        }
        refused_tf = (
            f"; {self.tf_rejected} tf transform(s) were refused, e.g. {self.tf_rejected_first}"
            if self.tf_rejected
            else ""
        )
        if self.frames_written == 0:
            first = next(iter(self.drops), None)
            raise BagRefusedError(
                "no frame could be made"
                + (f": {first} ({self.drop_examples.get(first, '')})" if first else "")
                + refused_tf
            )
        if dropped > cfg.max_dropped_fraction * grid:
            worst = self.drops.most_common(1)[0][0]
            raise BagRefusedError(
                f"{dropped} of {grid} frames dropped ({100 * dropped / grid:.1f} %, more than "
                f"max_dropped_fraction={cfg.max_dropped_fraction:g}): "
                f"{dict(self.drops)}; e.g. {self.drop_examples.get(worst, worst)}{refused_tf}"
            )
        try:
            return self.writer.close(success=self.success)
        except EpisodeError as e:
            raise BagRefusedError(str(e)) from None

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.discard()
        for d in self.made_dirs:  # directories this bag created, innermost first
            try:
                d.rmdir()
            except OSError:
                break

    def finish_report(self, wall_s: float) -> dict:
        r = self.report
        origin = self.bag.start_ns + self.offset_ns
        stats = getattr(self, "stats", {})
        r["streams"] = {t: s.report(origin) for t, s in stats.items()}
        problems = []
        for topic, s in r["streams"].items():
            exp, rate = s["expected_hz"], s["rate_hz"]
            if exp and rate is not None and rate < 0.9 * exp:
                problems.append(f"{topic}: {rate:.1f} Hz, expected {exp:g} Hz")
            if s["gaps"]:
                g = s["gaps"][0]
                problems.append(
                    f"{topic}: {len(s['gaps'])} gap(s), longest {g[1]:.3f} s at {g[0]:.3f} s"
                )
        r["rate_problems"] = problems
        for side in SIDES:
            if getattr(self, "missing_vel", {}).get(side):
                self.notes.append(f"{side} follower joint states carry no velocities: qvel = 0")
            if getattr(self, "missing_eff", {}).get(side):
                self.notes.append(f"{side} follower joint states carry no efforts: effort = 0")
        if hasattr(self, "sync"):
            r["sync"] = {"reference_frames_without_partners": self.sync.dropped_pivots}
            r["tf_rejected"] = self.tf_rejected
            r["tf_rejected_first"] = self.tf_rejected_first
        r["undecodable_messages"] = {
            t: {"count": c, "first": why} for t, (c, why) in self.bad_messages.items()
        }
        r["notes"] = self.notes
        duration_s = max(self.bag.end_ns - self.bag.start_ns, 0) * 1e-9
        r["bag_duration_s"] = round(duration_s, 3)
        r["conversion_s"] = round(wall_s, 3)
        written = r.get("frames", {}).get("written", 0)
        r["frames_per_s"] = round(written / wall_s, 1) if wall_s > 0 else None
        r["real_time_factor"] = round(duration_s / wall_s, 2) if wall_s > 0 else None
        return r


def convert_bag(
    path, out_dir, tmap: TopicsMap, cfg: FromBagConfig | None = None, progress: bool = False
) -> dict:
    """Convert one bag into ``out_dir/<task>/<bag name>.hdf5``; returns its report (``status``
    written | skipped | refused, and ``reason`` when refused). Nothing is left at the episode's
    path unless the whole episode is written."""
    cfg = cfg or FromBagConfig()
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    try:
        bag = Bag(path)
    except BagError as e:
        return {"bag": str(path), "status": "refused", "reason": str(e)}
    with bag:
        conv = _Converter(bag, tmap, cfg, out_dir)
        bar = None
        try:
            conv.prepare()
            if is_complete(conv.path) and not cfg.overwrite:
                conv.report.update(status="skipped", reason="episode exists (--overwrite redoes)")
                return conv.report
            if progress:
                try:
                    from tqdm import tqdm

                    total = sum(bag.topics[t].count for t in tmap.routes() if t in bag.topics)
                    bar = tqdm(total=total, unit="msg", desc=bag.name, leave=False)
                except ImportError:
                    bar = None
            conv.run(bar)
            published = conv.finish()
            conv.report.update(status="written", reason=None, episode=str(published))
        except (BagRefusedError, BagError) as e:
            conv.abort()
            conv.report.update(status="refused", reason=str(e))
        except BaseException:
            conv.abort()
            raise
        finally:
            if bar is not None:
                bar.close()
        return conv.finish_report(time.perf_counter() - t_start)


def _bag_name(path) -> str:
    """The name a bag's episode gets (``Bag.name``), without opening it."""
    p = Path(path)
    if p.suffix in (".mcap", ".db3"):
        return _safe_name(p.stem)
    return _safe_name(p.name[: -len(".partial")] if p.name.endswith(".partial") else p.name)


def _convert_job(job: tuple) -> dict:
    path, out_dir, tmap, cfg = job
    return convert_bag(path, out_dir, tmap, cfg, progress=False)


def convert_bags(
    paths,
    out_dir,
    tmap: TopicsMap,
    cfg: FromBagConfig | None = None,
    progress: bool = False,
    workers: int = 1,
) -> dict:
    """Convert every bag in ``paths``, ``workers`` bags at a time (processes); returns {bags:
    [report, ...] in the order of ``paths``, written, skipped, refused}. Episodes are named
    after their bags, so two bags of the same name in one run are refused."""
    paths = [str(p) for p in paths]
    seen: dict[str, str] = {}
    reports: list[dict | None] = [None] * len(paths)
    jobs = []
    for i, p in enumerate(paths):
        name = _bag_name(p)
        if name in seen:
            reports[i] = {
                "bag": p,
                "status": "refused",
                "reason": f"another bag of this run, {seen[name]}, has the same name '{name}' "
                "(episodes are named after their bags); convert it in a run of its own",
            }
            continue
        seen[name] = p
        jobs.append(i)
    outer = None
    if progress and len(jobs) > 1:
        try:
            from tqdm import tqdm

            outer = tqdm(total=len(jobs), unit="bag")
        except ImportError:
            outer = None
    pool = None
    try:
        if workers > 1 and len(jobs) > 1:
            import multiprocessing as mp

            pool = mp.get_context("spawn").Pool(min(workers, len(jobs)))
            args = [(paths[i], out_dir, tmap, cfg) for i in jobs]
            results = pool.imap(_convert_job, args)
        else:
            results = (
                convert_bag(paths[i], out_dir, tmap, cfg, progress=progress and outer is None)
                for i in jobs
            )
        for i, r in zip(jobs, results, strict=True):
            reports[i] = r
            if outer is not None:
                outer.update(1)
    finally:
        if outer is not None:
            outer.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    counts = Counter(r["status"] for r in reports)
    return {
        "bags": reports,
        "written": counts["written"],
        "skipped": counts["skipped"],
        "refused": counts["refused"],
    }


# ---------------------------------------------------------------------------------------------
# command line


def add_command(data_sub) -> None:
    """Register ``clamp data from-bag`` under the ``data`` subcommand."""
    p = data_sub.add_parser(
        "from-bag",
        help="rosbag2 recordings (MCAP or sqlite3) -> episode HDF5 files; exit 1 if any bag "
        "is refused",
    )
    p.add_argument(
        "bags",
        nargs="+",
        metavar="BAG",
        help="bag directory (metadata.yaml + storage files) or a bare .mcap / .db3 file",
    )
    p.add_argument("--out", required=True, help="output folder (<out>/<task>/<bag>.hdf5)")
    p.add_argument(
        "--topics-map",
        default="clamp",
        help="YAML file mapping roles to topics, or a shipped map: clamp (default), "
        "trossen_realsense (see docs/episodes.md)",
    )
    p.add_argument("--task", default="", help="task id (overrides the bag's metadata)")
    p.add_argument(
        "--instruction", default="", help="language instruction (overrides the bag's metadata)"
    )
    p.add_argument(
        "--success",
        choices=["true", "false"],
        default=None,
        help="episode success flag (default: the bag's metadata, else true)",
    )
    p.add_argument("--fps", type=float, default=50.0, help="frame rate of the episodes (Hz)")
    p.add_argument(
        "--sync-tolerance",
        type=float,
        default=0.02,
        help="s: cameras within this of the reference camera form a set; camera poses from "
        "tf at most this far from a tf sample",
    )
    p.add_argument(
        "--max-dropped",
        type=float,
        default=0.05,
        help="refuse a bag when more than this fraction of its frames is dropped",
    )
    p.add_argument(
        "--compression",
        choices=["gzip", "lzf", "none"],
        default="gzip",
        help="of images and depth in the episodes (gzip: smallest, readable everywhere; most "
        "of the conversion time is spent here)",
    )
    p.add_argument("--overwrite", action="store_true", help="convert bags already converted")
    p.add_argument("--workers", type=int, default=1, help="bags converted at once (processes)")
    p.add_argument("--json", action="store_true", help="print the whole report as one JSON object")
    p.set_defaults(func=cmd_from_bag)


_FLAGS = {
    "fps": "--fps",
    "sync_tolerance_s": "--sync-tolerance",
    "max_dropped_fraction": "--max-dropped",
}


def cmd_from_bag(args) -> int:
    """Bad input (a wrong topics map or option, a path that is no bag) raises: the ``clamp``
    entry point answers it in one line with exit status 2. Refused bags are in the report and
    give exit status 1."""
    tmap = TopicsMap.load(topics_map_path(args.topics_map))
    try:
        cfg = FromBagConfig(
            fps=args.fps,
            sync_tolerance_s=args.sync_tolerance,
            max_dropped_fraction=args.max_dropped,
            overwrite=args.overwrite,
            compression=None if args.compression == "none" else args.compression,
            task=args.task,
            instruction=args.instruction,
            success=None if args.success is None else args.success == "true",
        )
    except ValueError as e:  # name the option, not the config field
        text = str(e)
        for field_name, flag in _FLAGS.items():
            text = text.replace(field_name, flag)
        raise ValueError(text) from None
    if args.workers < 1:
        raise ValueError(f"--workers needs an integer >= 1, got {args.workers}")
    missing = [b for b in args.bags if not Path(b).exists()]
    if missing:
        raise FileNotFoundError(f"{missing[0]}: no such bag (a folder or a .mcap / .db3 file)")
    result = convert_bags(
        args.bags, args.out, tmap, cfg, progress=not args.json, workers=args.workers
    )
    if args.json:
        print(json.dumps(result))
    else:
        print(format_report(result))
    return 1 if result["refused"] else 0


def format_report(result: dict) -> str:
    """The human-readable report of ``clamp data from-bag``."""
    lines = []
    for r in result["bags"]:
        status = r["status"].upper() if r["status"] == "refused" else r["status"]
        lines.append(f"{r['bag']}: {status}")
        if r.get("reason"):
            lines.append(f"  reason: {r['reason']}")
        if r.get("truncated"):
            t = r["truncated"]
            lines.append(
                f"  truncated MCAP: read {t['readable_bytes']} of {t['total_bytes']} bytes "
                f"({t['file']})"
            )
        f = r.get("frames")
        if f:
            dropped = sum(f["dropped"].values())
            lines.append(
                f"  frames: {f['written']} written of {f['grid']} on the grid, {dropped} dropped"
                + (f" {f['dropped']}" if dropped else "")
            )
        if r["status"] == "written":
            lines.append(f"  episode: {r['episode']}")
        if r.get("frames_per_s") is not None:
            lines.append(
                f"  {r['frames_per_s']:.1f} frames/s, {r['conversion_s']:.2f} s for "
                f"{r['bag_duration_s']:.2f} s of recording (real-time factor "
                f"{r['real_time_factor']:.2f})"
            )
        streams = r.get("streams") or {}
        if streams:
            width = max(len(t) for t in streams)
            lines.append(f"  {'topic':<{width}}  messages   rate Hz  expected  max gap s")
            for topic, s in streams.items():
                rate = "-" if s["rate_hz"] is None else f"{s['rate_hz']:.1f}"
                exp = "-" if s["expected_hz"] is None else f"{s['expected_hz']:g}"
                lines.append(
                    f"  {topic:<{width}}  {s['messages']:8d}  {rate:>8}  {exp:>8}  "
                    f"{s['max_gap_s']:9.3f}"
                )
        for p in r.get("rate_problems") or []:
            lines.append(f"  rate: {p}")
        for topic, bad in (r.get("undecodable_messages") or {}).items():
            lines.append(f"  {bad['count']} unusable message(s) on {topic}: {bad['first']}")
        for n in r.get("notes") or []:
            lines.append(f"  note: {n}")
    lines.append(
        f"{result['written']} written, {result['skipped']} skipped, {result['refused']} refused"
    )
    return "\n".join(lines)
