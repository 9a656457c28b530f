"""`clamp eval replay`: a model on recorded data, as the policy node would have run it.

Bags (through the bag reader and the converter's definition of the recorded actions) and HDF5
episodes become one stream of timestamped inputs for the live node's pieces: ApproximateTimeSync,
TfBuffer, the perception pipeline and the PolicyEngine, all on the recording's clock; the
predicted chunks are scored against the recorded actions (see :func:`replay`).
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..aloha import ARM_JOINT_NAMES, NODE_EXECUTION, SIDES
from .seams import (
    clips_by_reason,
    detect_loops,
    gripper_mask,
    inference_period,
    summarize_seams,
)

if TYPE_CHECKING:  # ONNX Runtime is loaded only when a replay runs
    from ..policy.execution import ExecutionConfig

OFFSETS = (0, 10, 25, 49)
"""Chunk offsets (steps) the per-joint errors are reported at (those below the horizon)."""
GRIPPER_MIN_RANGE = 0.05
"""A recorded gripper that moves less than this (normalised) has no open/close events."""
GRIPPER_MATCH_S = 1.0
"""A predicted gripper event counts for a recorded one of the same direction this close, s."""


class ReplayError(ValueError):
    """Input that cannot be replayed; ``str()`` is one line naming what to change."""


@dataclass
class ReplayConfig:
    """How recorded data is replayed (``clamp eval replay`` options)."""

    latency_s: float = 0.0
    """Inference latency in bag time: a chunk computed from the observation stamped t arrives
    at t + latency_s (never before the observation was complete in the recording), s."""
    every_frame: bool = False
    """Infer on every synchronised camera set, not only where the node would (the chunks the
    node would not have computed are scored but never executed)."""
    tf_wait_s: float = 0.2
    """How long (bag time) a synchronised set may wait for tf, as the node's tf_wait_s, s."""
    seed: int = 0
    """Run seed of the diffusion noise (the node's ``seed``): with each observation's stamp it
    fixes the noise, so a replay is reproducible."""
    safety: bool = True
    """Pass every plan through the node's safety filter (``aloha_defaults``)."""
    execution: ExecutionConfig | None = None
    """The chunk execution (the node's ``execution.*``); None: the robot config's
    (``NODE_EXECUTION``)."""
    threads: int = 0
    """ONNX Runtime threads (0: its default)."""
    inference_steps: int | None = None
    """DDIM steps (None: the model's)."""
    topics_map: str = "clamp"
    """Topics map of the bags (a shipped map's name or a YAML file, see docs/episodes.md)."""
    follow_node: str = ""
    """A policy node's name (e.g. ``/policy``) whose ``publish_chunks`` topics the bags hold:
    infer exactly on the observations that node inferred on, with the action history and
    guidance it used (the inputs its thread timing decided, ``clamp_core.policy.inference_log``),
    and compare each chunk with the node's bit for bit (the report's ``live``); "" = off."""

    def __post_init__(self) -> None:
        for name in ("latency_s", "tf_wait_s"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name}: needs a finite number >= 0 (s), got {v!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed: needs an integer, got {self.seed!r}")
        if not isinstance(self.threads, int) or self.threads < 0:
            raise ValueError(f"threads: needs an integer >= 0, got {self.threads!r}")
        if self.follow_node and self.every_frame:
            raise ValueError("follow_node and every_frame: choose one (the node chose its frames)")


@dataclass
class Recorded:
    """The recorded actions of one input on its frame grid."""

    times_ns: np.ndarray
    """(T,) int64, increasing."""
    actions: np.ndarray
    """(T, A) float64 in the model's joint order (leader arms, grippers normalised)."""

    def at(self, t_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """((Q, A) linear between frames, (Q,) bool inside the recording) at times ``t_ns``."""
        t = np.asarray(t_ns, np.float64)
        grid = self.times_ns.astype(np.float64)
        out = np.stack([np.interp(t, grid, col) for col in self.actions.T], axis=1)
        return out, (t >= grid[0]) & (t <= grid[-1])


# ---------------------------------------------------------------------------------------------
# the driver: the node's pieces on the recording's clock


@dataclass
class _Chunk:
    stamp_ns: int
    times_ns: np.ndarray
    actions: np.ndarray
    executed: bool


@dataclass
class _Episode:
    """What one replayed input produced (arrays, not JSON)."""

    source: str
    kind: str
    chunks: list[_Chunk] = field(default_factory=list)
    ticks: list[tuple[int, np.ndarray | None]] = field(default_factory=list)
    seams: list[np.ndarray] = field(default_factory=list)
    clipped: Counter = field(default_factory=Counter)
    drops: Counter = field(default_factory=Counter)
    drop_examples: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    observations: int = 0
    infer_ms: list[float] = field(default_factory=list)
    render_ms: list[float] = field(default_factory=list)
    first_clock: int | None = None
    last_clock: int | None = None
    recorded: Recorded | None = None
    truncated: dict | None = None
    live: _Live | None = None


@dataclass
class _Live:
    """The chunks a policy node published (``follow_node``) against the replay's."""

    node: dict = field(default_factory=dict)
    """Observation stamp -> the node's InferenceRecord."""
    identical: int = 0
    different: list = field(default_factory=list)
    """(stamp, max |difference|) of the chunks that differ."""
    compared: set = field(default_factory=set)

    def compare(self, stamp: int, node_actions: np.ndarray, actions: np.ndarray) -> None:
        self.compared.add(stamp)
        if node_actions.shape == actions.shape and np.array_equal(node_actions, actions):
            self.identical += 1
        else:
            diff = (
                np.abs(node_actions - actions).max()
                if node_actions.shape == actions.shape
                else np.inf
            )
            self.different.append((stamp, float(diff)))

    def report(self) -> dict:
        missing = sorted(set(self.node) - self.compared)
        return {
            "node_chunks": len(self.node),
            "compared": len(self.compared),
            "identical": self.identical,
            "different": len(self.different),
            "max_abs_difference": max((d for _, d in self.different), default=0.0),
            "different_stamps_ns": [t for t, _ in self.different[:20]],
            "missing": len(missing),
            "missing_stamps_ns": missing[:20],
        }


class _Driver:
    """Feeds one input's messages, in recording order, to the node's pieces."""

    def __init__(self, policy, pipeline, cfg: ReplayConfig, ep: _Episode, onnx: bool):
        from ..geometry.sync import ApproximateTimeSync
        from ..geometry.tf_buffer import TfBuffer
        from ..policy.engine import EngineConfig, PolicyEngine
        from ..policy.execution import ExecutionConfig
        from ..policy.safety import aloha_defaults

        self.policy, self.pipeline, self.cfg, self.ep, self.onnx = policy, pipeline, cfg, ep, onnx
        meta = policy.metadata
        self.meta = meta
        pc = pipeline.config
        self.tf = TfBuffer(pc.tf_cache_s, pc.tf_tolerance_s)
        streams = [f"{c.name}/depth" for c in pc.cameras]
        streams += [f"{c.name}/color" for c in pc.cameras if c.use_color]
        self.streams = set(streams)
        self.sync = ApproximateTimeSync(
            streams, pc.sync_tolerance_s, pc.sync_queue_size, reject_duplicates=True
        )
        joints = list(meta.joint_names)
        self.dt_ns = round(1e9 / meta.control_rate_hz)
        self.safety_cfg = aloha_defaults(joint_names=joints, control_period_s=self.dt_ns * 1e-9)
        exec_cfg = cfg.execution if cfg.execution is not None else ExecutionConfig(**NODE_EXECUTION)
        self.exec_cfg = exec_cfg
        index = {n: i for i, n in enumerate(joints)}
        self.engine = PolicyEngine(
            joints,
            {s: [(j, index[f"{s}_{j}"]) for j in ARM_JOINT_NAMES] for s in SIDES},
            self.safety_cfg,
            dataclasses.replace(exec_cfg, max_chunk_age_s=self.safety_cfg.max_chunk_age_s),
            EngineConfig(control_rate_hz=meta.control_rate_hz, seed=cfg.seed),
        )
        # enabled from the start of the recording: every observation may become a plan
        self.engine.restart(-(2**62))
        self.engine.vouch()
        self.engine.stopped()
        self.latency_ns = int(round(cfg.latency_s * 1e9))
        self.tf_wait_ns = int(round(cfg.tf_wait_s * 1e9))
        self.next_tick: int | None = None
        self.deliveries: list = []  # heap of (time, seq, chunk)
        self.seq = 0
        self.pending = None  # newest complete set not yet taken: (set, clock)
        self.waiting = None  # the set the worker is posing: (set, since)
        self.busy_until = -(2**62)
        self.last_obs_clock: int | None = None
        self.load_depth = None  # (RgbdFrame) -> depth, for sources that read it on demand
        self.load_color = None  # (RgbdFrame) -> (H, W, 3) uint8 RGB, likewise (RGB branch)

    # -- clock

    def advance(self, clock: int) -> None:
        """Run every delivery and control tick due before ``clock`` (deliveries first)."""
        ep = self.ep
        if ep.last_clock is not None and clock < ep.last_clock:
            raise ReplayError(
                f"{ep.source}: time goes backwards in the recording "
                f"({clock * 1e-9:.6f} s after {ep.last_clock * 1e-9:.6f} s)"
            )
        if self.next_tick is None:
            self.next_tick = clock
            ep.first_clock = clock
        ep.last_clock = clock
        while True:
            due = self.deliveries[0][0] if self.deliveries else None
            if due is not None and due <= self.next_tick and due < clock:
                _, _, chunk = heapq.heappop(self.deliveries)
                self._deliver(chunk, due)
            elif self.next_tick < clock:
                self._tick(self.next_tick)
                self.next_tick += self.dt_ns
            else:
                break
        self._work(clock)

    def finish(self) -> None:
        """The recording ended: deliver what is due up to the last message, no further."""
        end = self.ep.last_clock
        if end is None:
            return
        self.advance(end + 1)

    # -- inputs

    def joint_state(self, side: str, stamp: int, positions: np.ndarray, clock: int) -> None:
        self.advance(clock)
        check = self.engine.joint_state(side, ARM_JOINT_NAMES, positions, stamp, clock)
        if check.problem is not None:
            self._drop("rejected_joint_state", f"{side}: {check.problem}")

    def transforms(self, items, clock: int) -> None:
        """``items``: (parent, child, stamp_ns, Transform, static) tuples."""
        self.advance(clock)
        for parent, child, stamp, transform, static in items:
            try:
                self.tf.set_transform(parent, child, stamp, transform, static=static, now_ns=clock)
            except ValueError as e:
                self._drop("tf_rejected", str(e))
        self._work(clock)

    def image(self, stream: str, stamp: int, item, clock: int) -> None:
        from ..geometry.sync import DuplicateStampError, SyncError

        if stream not in self.streams:
            return
        self.advance(clock)
        try:
            sets = self.sync.add(stream, stamp, item)
        except DuplicateStampError as e:
            return self._drop("duplicate_stamp", str(e))
        except SyncError as e:
            raise ReplayError(f"{self.ep.source}: {e}") from None
        if sets:
            # the node's worker takes the newest complete set; older ones waiting are dropped
            busy = len(sets) - 1 + (self.pending is not None)
            if busy:
                self.ep.drops["busy"] += busy
            self.pending = (sets[-1], clock)
        self._work(clock)

    def _drop(self, reason: str, why: str) -> None:
        self.ep.drops[reason] += 1
        self.ep.drop_examples.setdefault(reason, why[:300])

    # -- the node's worker: pose the newest set (waiting for tf), infer when the engine wants

    def _work(self, clock: int) -> None:
        from ..geometry.tf_buffer import ExtrapolationError, TfError

        while True:
            if self.waiting is None:
                if self.pending is None or clock < self.busy_until:
                    return
                s, ready = self.pending
                self.pending = None
                self.waiting = (s, max(ready, self.busy_until))
            synced, since = self.waiting
            frames = [synced.items[f"{c.name}/depth"][1] for c in self.pipeline.config.cameras]
            for c, f in zip(self.pipeline.config.cameras, frames, strict=True):
                if c.use_color:
                    f.color = synced.items[f"{c.name}/color"][1]
            try:
                cam_poses = [self.pipeline.camera_pose(f, self.tf) for f in frames]
                view_poses = self.pipeline.view_poses(self.tf, synced.stamp_ns)
            except TfError as e:
                waited = clock - since
                if isinstance(e, ExtrapolationError) and e.into_future and waited < self.tf_wait_ns:
                    return  # tf may still come, as the node waits for it
                self.waiting = None
                self._drop("tf", self._tf_problem(frames, synced.stamp_ns, e))
                continue
            self.waiting = None
            self._observe(synced.stamp_ns, frames, cam_poses, view_poses, clock)

    def _tf_problem(self, frames, stamp: int, err) -> str:
        from ..geometry.tf_buffer import TfError

        for f in frames:
            try:
                self.pipeline.camera_pose(f, self.tf)
            except TfError as e:
                return (
                    f"camera '{f.camera}': no pose for frame '{f.frame_id}' at "
                    f"{stamp * 1e-9:.3f} s: {e}"
                )
        return f"attached view pose unavailable at {stamp * 1e-9:.3f} s: {err}"

    def _observe(self, stamp: int, frames, cam_poses, view_poses, clock: int) -> None:
        ep, engine, meta = self.ep, self.engine, self.meta
        self.last_obs_clock = clock
        ep.observations += 1
        wants, warning = engine.wants(stamp, clock)
        if warning:
            ep.notes.append(f"{warning} (at {stamp * 1e-9:.3f} s)")
        live = ep.live
        if live is not None:  # the node's choice, not the modelled one
            wants = stamp in live.node
        if not (wants or self.cfg.every_frame):
            return
        t0 = time.perf_counter()
        rgb = None
        if meta.rgb_cameras:  # the RGB branch's input, resized as the node does it
            from ..policy.rgb import RgbInputError, rgb_inputs

            images = {f.camera: f.color for f in frames}
            for f in frames:
                if f.color is None and f.camera in meta.rgb_cameras and self.load_color:
                    images[f.camera] = self.load_color(f)  # read on demand (episodes)
            try:
                rgb = rgb_inputs(images, meta.rgb_cameras, meta.rgb_size)
            except RgbInputError as e:
                return self._drop("bad_rgb", str(e))
        for f in frames:
            if f.depth is None:  # read on demand (episodes)
                f.depth = self.load_depth(f)
        views = self.pipeline.process_posed(frames, cam_poses, view_poses, stamp).views.images
        t1 = time.perf_counter()
        obs = engine.observation(
            stamp,
            views,
            meta.action_history,
            rgb=rgb,
            history_stride=meta.action_history_stride,
        )
        if obs is None:
            return self._drop("no_joint_state", engine.no_state_reason())
        if live is not None:
            live.node[stamp].apply(obs)
        if self.onnx:
            chunk = self.policy.predict(
                obs, noise=engine.noise(stamp, (meta.action_horizon, meta.action_dim))
            )
        else:  # a scripted policy samples nothing
            chunk = self.policy.predict(obs)
        t2 = time.perf_counter()
        if live is not None:
            live.compare(stamp, live.node[stamp].actions, np.asarray(chunk.actions, np.float64))
        ep.render_ms.append((t1 - t0) * 1e3)
        ep.infer_ms.append((t2 - t1) * 1e3)
        ep.chunks.append(
            _Chunk(int(stamp), chunk.times_ns, np.asarray(chunk.actions, np.float64), wants)
        )
        if not wants:
            return
        due = max(stamp + self.latency_ns, clock)
        self.busy_until = due
        if due <= clock:
            self._deliver(chunk, clock)
        else:
            heapq.heappush(self.deliveries, (due, self.seq, chunk))
            self.seq += 1

    # -- commanding, as the node

    def _inputs(self) -> dict[str, int]:
        far = -(2**62)
        out = {"observation": self.last_obs_clock if self.last_obs_clock is not None else far}
        for arm, rx in self.engine.qpos_rx.items():
            out[f"{arm} joint_states"] = rx if rx is not None else far
        return out

    def _deliver(self, chunk, now: int) -> None:
        from ..policy.engine import Plan

        engine = self.engine
        ok = engine.deliver(chunk, now)
        if engine.last_seam is not None:
            self.ep.seams.append(engine.last_seam.jump)
        if not ok:
            return
        times, positions = engine.executor.trajectory(now, engine.cfg.max_points)
        if len(times) == 0:
            return
        if self.cfg.safety:
            plan = engine.safe(times, positions, now, self._inputs(), enabled=True)
            self.ep.clipped.update(plan.clipped)
        else:
            plan = Plan(times, positions, None, {})
        if plan.ok:
            engine.sent(plan)
        else:
            self.ep.clipped["suppressed " + plan.stop.split(":")[0]] += 1
            engine.stopped()

    def _tick(self, now: int) -> None:
        engine = self.engine
        cmd = engine.tick(now)
        self.ep.ticks.append((now, cmd))
        plan = engine.last_plan
        if self.cfg.safety and plan is not None and now < int(plan[0][-1]):
            problem = engine.watchdog(now, self._inputs())
            if problem:  # the node's watchdog cuts a running trajectory
                self.ep.clipped["suppressed " + problem.split(":")[0].split(" (")[0]] += 1
                engine.executor.reset()
                engine.stopped()


# ---------------------------------------------------------------------------------------------
# sources


def _replay_bag(path, tmap, driver: _Driver, progress) -> None:
    """Stream a bag through the converter (which defines the recorded actions: leader arms, or
    the recorded commands) and, message by message, through the driver."""
    from ..data.bags import Bag, BagError
    from ..data.from_bag import BagRefusedError, FromBagConfig, _Converter

    ep = driver.ep

    class _Actions:
        """Stands in for the converter's episode writer: keeps stamps and actions only."""

        def __init__(self) -> None:
            self.stamps: list[int] = []
            self.actions: list[np.ndarray] = []

        def add_frame(self, stamp_ns, action, **_) -> None:
            self.stamps.append(int(stamp_ns))
            self.actions.append(np.asarray(action, np.float64))

        def close(self, success=None):
            return None

        def discard(self) -> None:
            pass

    class _Replay(_Converter):
        def _open_writer(self) -> None:
            self.writer = _Actions()

        def _take(self, m) -> None:
            super()._take(m)
            if progress is not None:
                progress.update(1)
            if m.error is not None:
                return
            clock = m.log_ns + self.offset_ns
            if m.role == "arm" and m.kind == "follower":
                driver.joint_state(
                    m.name, m.stamp_ns, self._follower_row(m.name, m.value)[0], clock
                )
            elif m.role == "tf":
                static = m.kind == "tf_static"
                driver.transforms(
                    [(t.parent, t.child, t.stamp_ns, t.transform, static) for t in m.value], clock
                )
            elif m.role == "camera" and m.kind in ("color", "depth"):
                from ..perception.pipeline import RgbdFrame

                item = m.value.data
                if m.kind == "depth":
                    cam = m.name
                    item = RgbdFrame(
                        cam,
                        m.stamp_ns,
                        self._frame_id(cam, m.value),
                        self.calib[cam],
                        m.value.data,
                        m.value.scale_m,
                    )
                driver.image(f"{m.name}/{m.kind}", m.stamp_ns, item, clock)

    cfg = FromBagConfig(
        max_dropped_fraction=1.0, task="replay", instruction="replay", compression=None
    )
    try:
        bag = Bag(path)
    except BagError as e:
        raise ReplayError(str(e)) from None
    with bag:
        if driver.cfg.follow_node:
            ep.live = _Live(node=_node_inferences(bag, driver.cfg.follow_node, path))
        conv = _Replay(bag, tmap, cfg, Path("."))
        try:
            conv.prepare()
            if progress is not None:
                progress.reset(
                    total=sum(bag.topics[t].count for t in tmap.routes() if t in bag.topics)
                )
            conv.run()
            driver.finish()
            if ep.observations == 0 and ep.drops.get("tf"):
                raise ReplayError(f"{path}: no observation: {ep.drop_examples['tf']}")
            conv.finish()
        except (BagRefusedError, BagError) as e:
            raise ReplayError(f"{path}: {' '.join(str(e).split())}") from None
        w = conv.writer
        ep.recorded = Recorded(
            np.array(w.stamps, np.int64),
            np.array(w.actions).reshape(-1, len(driver.meta.joint_names)),
        )
        if bag.truncation is not None:
            t = bag.truncation.as_dict()
            t["stopped_at_s"] = round((ep.last_clock - bag.start_ns - conv.offset_ns) * 1e-9, 3)
            ep.truncated = t
            ep.notes.append(
                f"truncated MCAP: evaluated up to {t['stopped_at_s']} s into the bag (read "
                f"{t['readable_bytes']} of {t['total_bytes']} bytes of {t['file']})"
            )
        ep.notes += conv.notes


def _node_inferences(bag, node: str, path) -> dict:
    """Observation stamp -> InferenceRecord of every chunk ``node`` published in ``bag``."""
    from ..policy.inference_log import InferenceLogError, InferenceRecord

    topics = (f"{node.rstrip('/')}/chunks", f"{node.rstrip('/')}/chunk_inputs")
    absent = [t for t in topics if t not in bag.topics]
    if absent:
        raise ReplayError(
            f"{path}: no {' or '.join(absent)} (record the node with publish_chunks: true, or "
            "drop follow_node)"
        )
    msgs: dict[str, dict[int, object]] = {t: {} for t in topics}
    for topic, _, _, msg in bag.messages(topics):
        msgs[topic][msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec] = msg
    chunks, inputs = msgs[topics[0]], msgs[topics[1]]
    try:  # a chunk whose inputs message was lost cannot be reproduced: left out
        return {
            t: InferenceRecord.from_messages(m, inputs[t]) for t, m in chunks.items() if t in inputs
        }
    except InferenceLogError as e:
        raise ReplayError(f"{path}: {topics[0]}: {e}") from None


def _replay_episode(path, driver: _Driver, progress) -> None:
    """An HDF5 episode as the node would have received it: each frame's joint states, camera
    poses (tf; tf_static for a camera that never moves), depth images at its stamp and, for the
    cameras whose colour the model's perception config subscribes to (``use_color``), colour
    images. Depth, and colour for the RGB branch, are read only for the sets the policy infers
    on (they change nothing else)."""
    import dataclasses as dc

    from ..data.episode import EpisodeError, EpisodeReader
    from ..geometry.transforms import Transform
    from ..training.data import optical_frame

    ep = driver.ep
    if driver.cfg.follow_node:
        raise ReplayError(f"{path}: follow_node needs a bag with the node's chunk topics")
    cams = [c.name for c in driver.pipeline.config.cameras]
    base = driver.pipeline.config.base_frame
    try:
        reader = EpisodeReader(path)
    except (EpisodeError, OSError) as e:
        raise ReplayError(f"{path}: {' '.join(str(e).split())}") from None
    with reader:
        low = reader.lowdim()
        stamps = low["stamp_ns"].astype(np.int64)
        ep.recorded = Recorded(stamps, low["action"].astype(np.float64))
        ext = reader.extrinsics(cams)
        fixed = {c for c in cams if (ext[c] == ext[c][:1]).all()}
        # the episode renderer's camera frames (intrinsics, frame ids), without their depth
        first, _ = driver.renderer.frames_and_tf(
            reader.frame(0, cams, images=False), reader.cameras, base
        )
        index = {int(t): k for k, t in enumerate(stamps)}
        driver.load_depth = lambda f: reader.depth_mm(index[f.stamp_ns], f.camera)
        driver.load_color = lambda f: reader.frame(index[f.stamp_ns], [f.camera], depth=False)[
            "images"
        ][f.camera]
        color = [c.name for c in driver.pipeline.config.cameras if c.use_color]
        if progress is not None:
            progress.reset(total=reader.num_frames)
        for k, t in enumerate(stamps.tolist()):
            q = np.asarray(low["qpos"][k], np.float64)
            for i, side in enumerate(SIDES):
                driver.joint_state(side, t, q[7 * i : 7 * i + 7], t)
            moving = [  # a fixed camera's pose once, latched (as tf_static)
                (base, optical_frame(c), t, Transform.from_matrix(ext[c][k]), c in fixed)
                for c in cams
                if k == 0 or c not in fixed
            ]
            driver.transforms(moving, t)
            for frame in first:
                driver.image(
                    f"{frame.camera}/depth", t, dc.replace(frame, stamp_ns=t, depth=None), t
                )
            for cam in color:  # the set is complete with them, as in the node; read on demand
                driver.image(f"{cam}/color", t, None, t)
            if progress is not None:
                progress.update(1)
        driver.finish()
    if ep.observations == 0 and ep.drops.get("tf"):
        raise ReplayError(f"{path}: no observation: {ep.drop_examples['tf']}")


# ---------------------------------------------------------------------------------------------
# metrics


def _offsets(horizon: int) -> list[int]:
    """OFFSETS within a chunk of ``horizon`` actions (the last action for those past it)."""
    return sorted({min(o, horizon - 1) for o in OFFSETS})


class _Errors:
    """Sums of |error| and error² per (offset, joint) over chunks."""

    def __init__(self, horizon: int, dims: int):
        self.abs = np.zeros((horizon, dims))
        self.sq = np.zeros((horizon, dims))
        self.n = np.zeros(horizon, np.int64)

    def add(self, err: np.ndarray, valid: np.ndarray) -> None:
        e = np.where(valid[:, None], err, 0.0)
        self.abs += np.abs(e)
        self.sq += e**2
        self.n += valid

    def merge(self, other: _Errors) -> None:
        self.abs += other.abs
        self.sq += other.sq
        self.n += other.n

    def report(self, joints: list[str]) -> dict:
        n = np.maximum(self.n, 1)[:, None]
        mae, rmse = self.abs / n, np.sqrt(self.sq / n)
        grip = gripper_mask(joints)
        offs = _offsets(len(self.n))
        return {
            "offsets": offs,
            "samples": [int(self.n[o]) for o in offs],
            "mae": {j: [float(mae[o, i]) for o in offs] for i, j in enumerate(joints)},
            "rmse": {j: [float(rmse[o, i]) for o in offs] for i, j in enumerate(joints)},
            "by_offset": {
                "arm_mae_rad": [float(v) for v in mae[:, ~grip].mean(axis=1)],
                "gripper_mae": [float(v) for v in mae[:, grip].mean(axis=1)],
                "samples": [int(v) for v in self.n],
            },
        }


def gripper_events(t_ns: np.ndarray, x: np.ndarray, threshold: float) -> list[tuple[float, int]]:
    """Where ``x`` (T,) at times ``t_ns`` (T,) crosses ``threshold``: (time s, +1 opening or -1
    closing), the time linear between the samples around the crossing."""
    t = np.asarray(t_ns, np.float64) * 1e-9
    above = np.asarray(x) > threshold
    out = []
    for i in np.flatnonzero(above[1:] != above[:-1]) + 1:
        x0, x1 = float(x[i - 1]), float(x[i])
        w = (threshold - x0) / (x1 - x0)
        out.append((float(t[i - 1] + w * (t[i] - t[i - 1])), 1 if x1 > x0 else -1))
    return out


def gripper_timing(rec_t, rec_x, pred_t, pred_x) -> dict:
    """Open/close timing of a predicted gripper trajectory against the recorded one: each
    recorded event is matched with the nearest unmatched predicted event of the same direction
    within GRIPPER_MATCH_S; ``errors_s`` are predicted minus recorded times (negative: early)."""
    lo, hi = float(np.min(rec_x)), float(np.max(rec_x))
    if hi - lo < GRIPPER_MIN_RANGE or len(pred_t) < 2:
        return {"recorded": 0, "matched": 0, "missed": 0, "extra": 0, "errors_s": []}
    thr = 0.5 * (lo + hi)
    rec = gripper_events(rec_t, rec_x, thr)
    pred = gripper_events(pred_t, pred_x, thr)
    used = [False] * len(pred)
    errors = []
    for te, d in rec:
        best = None
        for j, (tp, dp) in enumerate(pred):
            if used[j] or dp != d or abs(tp - te) > GRIPPER_MATCH_S:
                continue
            if best is None or abs(tp - te) < abs(pred[best][0] - te):
                best = j
        if best is not None:
            used[best] = True
            errors.append(pred[best][0] - te)
    return {
        "recorded": len(rec),
        "matched": len(errors),
        "missed": len(rec) - len(errors),
        "extra": len(pred) - len(errors),
        "errors_s": errors,
    }


def _timing_summary(per_gripper: dict) -> dict:
    errs = [e for g in per_gripper.values() for e in g["errors_s"]]
    return {
        "grippers": per_gripper,
        "events": sum(g["recorded"] for g in per_gripper.values()),
        "matched": len(errs),
        "mean_error_s": float(np.mean(errs)) if errs else None,
        "mean_abs_error_s": float(np.mean(np.abs(errs))) if errs else None,
    }


class _Consistency:
    """|difference| of consecutive chunks over the times both cover, per joint."""

    def __init__(self, dims: int):
        self.abs = np.zeros(dims)
        self.max = np.zeros(dims)
        self.n = 0
        self.pairs = 0

    def add(self, a: _Chunk, b: _Chunk) -> None:
        t = b.times_ns
        inside = (t >= a.times_ns[0]) & (t <= a.times_ns[-1])
        if not inside.any():
            return
        prev = Recorded(a.times_ns, a.actions).at(t[inside])[0]
        d = np.abs(b.actions[inside] - prev)
        self.abs += d.sum(axis=0)
        self.max = np.maximum(self.max, d.max(axis=0))
        self.n += int(inside.sum())
        self.pairs += 1

    def merge(self, other: _Consistency) -> None:
        self.abs += other.abs
        self.max = np.maximum(self.max, other.max)
        self.n += other.n
        self.pairs += other.pairs

    def report(self, joints: list[str]) -> dict:
        mean = self.abs / max(self.n, 1)
        grip = gripper_mask(joints)
        return {
            "pairs": self.pairs,
            "overlap_samples": self.n,
            "arm_mean_rad": float(mean[~grip].mean()),
            "arm_max_rad": float(self.max[~grip].max()),
            "gripper_mean": float(mean[grip].mean()),
            "per_joint_mean": {j: float(v) for j, v in zip(joints, mean, strict=True)},
        }


def _pct(values: list[float]) -> dict:
    if not values:
        return {"n": 0, "mean": None, "p50": None, "p95": None}
    v = np.asarray(values)
    return {
        "n": int(v.size),
        "mean": round(float(v.mean()), 3),
        "p50": round(float(np.percentile(v, 50)), 3),
        "p95": round(float(np.percentile(v, 95)), 3),
    }


def _predicted_track(ep: _Episode) -> tuple[np.ndarray, np.ndarray]:
    """(K,) times and (K, A) commands of the control ticks that had one (the executed plan)."""
    rows = [(t, c) for t, c in ep.ticks if c is not None]
    if not rows:
        return np.zeros(0, np.int64), np.zeros((0, 14))
    return np.array([t for t, _ in rows], np.int64), np.array([c for _, c in rows])


def _held_track(ep: _Episode) -> tuple[np.ndarray, np.ndarray]:
    """(K,) times and (K, A) commands of every control tick from the first one with a command
    on, a tick without one holding the last (the arm stays where it was sent): evenly spaced,
    as ``clamp eval sim`` records its commands."""
    first = next((i for i, (_, c) in enumerate(ep.ticks) if c is not None), None)
    if first is None:
        return np.zeros(0, np.int64), np.zeros((0, 0))
    times, rows, last = [], [], None
    for t, c in ep.ticks[first:]:
        last = c if c is not None else last
        times.append(t)
        rows.append(last)
    return np.array(times, np.int64), np.array(rows, np.float64)


def _loops(ep: _Episode, dt_s: float):
    """``detect_loops`` on the executed plan (``_held_track``), at the median period between
    the chunks the executor asked for; its windows count from the track's first tick."""
    _, q = _held_track(ep)
    dt_ns = dt_s * 1e9
    asked = [round(c.stamp_ns / dt_ns) for c in ep.chunks if c.executed]
    return detect_loops(q, inference_period(asked), dt_s)


def _loop_summary(episodes: list[dict]) -> dict:
    """Over the inputs: how many loop, how many of those return (the sawtooth), their time."""
    loops = [e["loops"] for e in episodes]
    return {
        "inputs": sum(x["loop"] for x in loops),
        "returning": sum(x["returning"] for x in loops),
        "loop_s": round(sum(x["loop_s"] for x in loops), 2),
    }


def _score(ep: _Episode, joints: list[str], horizon: int, dt_s: float):
    rec = ep.recorded
    errors = _Errors(horizon, len(joints))
    cons = _Consistency(len(joints))
    for c in ep.chunks:
        truth, valid = rec.at(c.times_ns)
        errors.add(c.actions - truth, valid)
    executed = [c for c in ep.chunks if c.executed]
    for a, b in zip(executed, executed[1:]):
        cons.add(a, b)
    pt, pq = _predicted_track(ep)
    timing = {}
    for i in np.flatnonzero(gripper_mask(joints)):
        timing[joints[i]] = gripper_timing(
            rec.times_ns, rec.actions[:, i], pt, pq[:, i] if len(pt) else pq
        )
    seams = np.array(ep.seams).reshape(-1, len(joints))
    dur = (ep.last_clock - ep.first_clock) * 1e-9 if ep.first_clock is not None else 0.0
    result = {
        "input": ep.source,
        "kind": ep.kind,
        "duration_s": round(dur, 6),
        "recorded_frames": int(len(rec.times_ns)),
        "observations": ep.observations,
        "inferences": len(ep.chunks),
        "executed_chunks": len(executed),
        **errors.report(joints),
        "gripper_timing": _timing_summary(timing),
        "consistency": cons.report(joints),
        "seams": summarize_seams(seams, joints),
        "loops": _loops(ep, dt_s).to_dict(),
        "clipped": clips_by_reason(dict(ep.clipped)),
        "drops": dict(sorted(ep.drops.items())),
        "drop_examples": dict(sorted(ep.drop_examples.items())),
        "truncated": ep.truncated,
        "notes": ep.notes,
    }
    return result, errors, cons, timing


# ---------------------------------------------------------------------------------------------
# the run


def _is_episode(path) -> bool:
    return Path(path).suffix in (".hdf5", ".h5")


def check_inputs(meta, inputs, tmap) -> None:
    """Refuse, before any work, inputs whose cameras or joints the model does not take; the
    message names every mismatch of every input."""
    from ..aloha import ALOHA_JOINT_NAMES
    from ..data.episode import EpisodeError, EpisodeReader
    from ..policy.metadata import MetadataMismatch, check_compatible

    problems = []
    for path in inputs:
        p = Path(path)
        if not p.exists():
            raise ReplayError(
                f"{path}: no such bag or episode (a bag folder, .mcap, .db3 or .hdf5)"
            )
        if _is_episode(p):
            try:
                with EpisodeReader(p) as r:
                    joints, cams = list(r.meta.joint_names), list(r.meta.camera_names)
            except (EpisodeError, OSError) as e:
                raise ReplayError(f"{path}: {' '.join(str(e).split())}") from None
        else:
            joints, cams = list(ALOHA_JOINT_NAMES), list(tmap.camera_names)
        try:
            check_compatible(meta, joint_names=joints, cameras=cams)
        except MetadataMismatch as e:
            problems.append(f"{path}: " + "; ".join(e.mismatches))
    if problems:
        raise ReplayError(
            f"model '{meta.name}' does not fit the recorded data: {' | '.join(problems)}"
        )


def replay(
    inputs,
    model_dir=None,
    cfg: ReplayConfig | None = None,
    policy=None,
    progress: bool = False,
    trace: bool = False,
) -> dict:
    """Replay every input (bag or ``.hdf5`` episode) through the node's pieces with the model
    in ``model_dir`` (or ``policy``: an object with ``metadata`` and ``predict(obs)``, e.g. a
    scripted policy; it draws no diffusion noise). Returns the report: ``episodes`` (one per
    input), ``overall``, the settings, and ``wall`` (measured on this machine, the only part
    that differs between two replays of the same input). ``trace``: each episode also holds
    ``trace`` (numpy arrays for the plots, not JSON): ``recorded_t_s`` (T,), ``recorded``
    (T, A), ``chunk_t_s`` (N, F), ``chunks`` (N, F, A), ``executed`` (N,) bool, and the
    executor's command at each control tick that had one, ``command_t_s`` (K,), ``commands``
    (K, A)."""
    from ..data.bags import TopicsMap, topics_map_path
    from ..policy.runtime import OnnxPolicy
    from ..training.data import EpisodeRenderer

    cfg = cfg or ReplayConfig()
    inputs = [str(p) for p in inputs]
    if not inputs:
        raise ReplayError("no input: pass bags or .hdf5 episodes")
    tmap = None
    if any(not _is_episode(p) for p in inputs):
        tmap = TopicsMap.load(topics_map_path(cfg.topics_map))
    if policy is None:
        from ..policy.metadata import PolicyMetadata

        if model_dir is None:
            raise ReplayError("no model: pass --model DIR")
        check_inputs(PolicyMetadata.load(Path(model_dir)), inputs, tmap)
        policy = OnnxPolicy(model_dir, threads=cfg.threads, inference_steps=cfg.inference_steps)
    else:
        check_inputs(policy.metadata, inputs, tmap)
    onnx = isinstance(policy, OnnxPolicy)
    meta = policy.metadata
    joints = list(meta.joint_names)
    renderer = EpisodeRenderer(meta.perception_config())
    renderer.pipeline.warmup()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(unit="msg", leave=False)
    episodes = []
    all_err = _Errors(meta.action_horizon, len(joints))
    all_cons = _Consistency(len(joints))
    all_timing: dict[str, dict] = {}
    all_jumps: list[np.ndarray] = []
    wall = {"inference_ms": [], "perception_ms": [], "replay_s": 0.0, "recorded_s": 0.0}
    try:
        for path in inputs:
            t0 = time.perf_counter()
            ep = _Episode(path, "episode" if _is_episode(path) else "bag")
            driver = _Driver(policy, renderer.pipeline, cfg, ep, onnx)
            driver.renderer = renderer
            if bar is not None:
                bar.reset(total=None)
                bar.unit = "frame" if ep.kind == "episode" else "msg"
                bar.set_description(Path(path).name)
            if ep.kind == "episode":
                _replay_episode(path, driver, bar)
            else:
                _replay_bag(path, tmap, driver, bar)
            wall["replay_s"] += time.perf_counter() - t0
            if not ep.chunks:
                why = ", ".join(f"{k} {v}" for k, v in sorted(ep.drops.items())) or "no camera set"
                top = max(ep.drops, key=ep.drops.get) if ep.drops else None
                example = ep.drop_examples.get(top, "")
                example = f": {' '.join(example.split())}" if example else ""
                raise ReplayError(
                    f"{path}: no inference ({ep.observations} observations; {why}){example}"
                )
            result, err, cons, timing = _score(ep, joints, meta.action_horizon, meta.dt_s)
            if ep.live is not None:
                result["live"] = ep.live.report()
            all_err.merge(err)
            all_cons.merge(cons)
            for g, v in timing.items():
                acc = all_timing.setdefault(
                    g, {"recorded": 0, "matched": 0, "missed": 0, "extra": 0, "errors_s": []}
                )
                for k in ("recorded", "matched", "missed", "extra"):
                    acc[k] += v[k]
                acc["errors_s"] += v["errors_s"]
            all_jumps += ep.seams
            wall["inference_ms"] += ep.infer_ms
            wall["perception_ms"] += ep.render_ms
            wall["recorded_s"] += result["duration_s"]
            episodes.append(result)
            if trace:
                pt, pq = _predicted_track(ep)
                result["trace"] = {
                    "recorded_t_s": ep.recorded.times_ns * 1e-9,
                    "recorded": ep.recorded.actions,
                    "chunk_t_s": np.array([c.times_ns for c in ep.chunks]) * 1e-9,
                    "chunks": np.array([c.actions for c in ep.chunks]),
                    "executed": np.array([c.executed for c in ep.chunks], bool),
                    "command_t_s": pt * 1e-9,
                    "commands": pq,
                }
    finally:
        if bar is not None:
            bar.close()
    jumps = [np.asarray(j).reshape(-1, len(joints)) for j in all_jumps]
    overall = {
        "inputs": len(episodes),
        "inferences": sum(e["inferences"] for e in episodes),
        **all_err.report(joints),
        "gripper_timing": _timing_summary(all_timing),
        "consistency": all_cons.report(joints),
        "seams": summarize_seams(np.concatenate(jumps or [np.zeros((0, len(joints)))]), joints),
        "loops": _loop_summary(episodes),
        "clipped": clips_by_reason(dict(sum((Counter(e["clipped"]) for e in episodes), Counter()))),
    }
    rt = wall["recorded_s"] / wall["replay_s"] if wall["replay_s"] > 0 else None
    return {
        "model": str(model_dir) if model_dir is not None else meta.name,
        "execution": dataclasses.asdict(driver.exec_cfg),
        "latency_s": cfg.latency_s,
        "every_frame": cfg.every_frame,
        "seed": cfg.seed,
        "safety": cfg.safety,
        "episodes": episodes,
        "overall": overall,
        "wall": {
            "note": "measured on this machine; everything else depends only on the inputs",
            "inference_ms": _pct(wall["inference_ms"]),
            "perception_ms": _pct(wall["perception_ms"]),
            "replay_s": round(wall["replay_s"], 3),
            "real_time_factor": None if rt is None else round(rt, 2),
        },
    }


# ---------------------------------------------------------------------------------------------
# report: plots and report.md


def _plot_joints(result: dict, path: Path, joints: list[str]) -> Path:
    """Each joint's recorded trajectory with the predicted chunks overlaid (executed ones solid,
    the rest dotted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..fileio import atomic_open

    tr = result["trace"]
    rows = (len(joints) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(12, 1.6 * rows), sharex=True, squeeze=False)
    t0 = tr["recorded_t_s"][0] if len(tr["recorded_t_s"]) else 0.0
    for i, name in enumerate(joints):
        ax = axes[i % rows, i // rows]
        ax.plot(tr["recorded_t_s"] - t0, tr["recorded"][:, i], color="black", lw=1.2)
        for ct, chunk, ex in zip(tr["chunk_t_s"], tr["chunks"], tr["executed"], strict=True):
            ax.plot(ct - t0, chunk[:, i], lw=0.6, alpha=0.6, ls="-" if ex else ":")
        if len(tr["command_t_s"]):
            ax.plot(tr["command_t_s"] - t0, tr["commands"][:, i], color="red", lw=0.8, ls="--")
            # loop windows count from the first tick with a command (``_held_track``)
            c0 = tr["command_t_s"][0] - t0
            for x0, x1 in result.get("loops", {}).get("windows", []):
                ax.axvspan(c0 + x0, c0 + x1, color="tab:red", alpha=0.08, lw=0)
        ax.set_ylabel(name, fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in axes[-1]:
        ax.set_xlabel("s (bag time)", fontsize=7)
    loop = _loop_words(result.get("loops", {}))
    fig.suptitle(
        f"{Path(result['input']).name}: recorded (black), predicted chunks, executed (red)"
        + (f"; shaded: {loop}" if loop else ""),
        fontsize=9,
    )
    fig.tight_layout()
    with atomic_open(path) as f:
        fig.savefig(f, format="png", dpi=90)
    plt.close(fig)
    return path


def _loop_words(loops: dict) -> str:
    """'a returning loop ...' of one input's loops, for its plot title and report line ('' without
    a loop)."""
    if not loops.get("loop"):
        return ""
    kind = "returning" if loops["returning"] else "stepping"
    return (
        f"a {kind} loop with the inference period ({loops['loop_s']:.1f} s, "
        f"{loops['speed']:.2f} rad/s, progress {loops['progress']:.2f})"
    )


def _plot_offsets(result: dict, path: Path) -> Path:
    """Mean absolute error vs chunk offset: arm joints (rad) and grippers, per input and overall."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..fileio import atomic_open

    fig, (arm, grip) = plt.subplots(1, 2, figsize=(10, 3.2))
    for ep in result["episodes"]:
        label = Path(ep["input"]).name
        arm.plot(ep["by_offset"]["arm_mae_rad"], lw=0.8, label=label)
        grip.plot(ep["by_offset"]["gripper_mae"], lw=0.8, label=label)
    arm.plot(result["overall"]["by_offset"]["arm_mae_rad"], color="black", lw=1.6, label="all")
    grip.plot(result["overall"]["by_offset"]["gripper_mae"], color="black", lw=1.6, label="all")
    arm.set(xlabel="chunk offset (steps)", ylabel="arm joints MAE (rad)")
    grip.set(xlabel="chunk offset (steps)", ylabel="grippers MAE (normalised)")
    arm.legend(fontsize=6)
    fig.tight_layout()
    with atomic_open(path) as f:
        fig.savefig(f, format="png", dpi=90)
    plt.close(fig)
    return path


def _loop_line(loops: dict) -> str:
    if "inputs" in loops:  # the summary over inputs
        return (
            f"{loops['inputs']} input(s) with motion repeating every inference period, "
            f"{loops['returning']} of them returning (the sawtooth), {loops['loop_s']:.1f} s in all"
        )
    return _loop_words(loops) or "none"


def _fmt(v, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def write_report(result: dict, out_dir) -> Path:
    """``out_dir/report.md`` with the tables of ``result`` (a ``replay(..., trace=True)``
    result), linking ``errors_by_offset.png`` and one ``joints_<n>_<input>.png`` per input;
    the traces are removed from ``result``. Returns the report's path."""
    from ..fileio import atomic_open

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    joints = list(next(iter(result["episodes"]))["mae"])
    lines = [
        "# Replay evaluation",
        "",
        f"Model `{result['model']}`, execution `{result['execution']['mode']}`, latency "
        f"{result['latency_s']} s (bag time), seed {result['seed']}, safety filter "
        f"{'on' if result['safety'] else 'off'}"
        + (", an inference at every camera set" if result["every_frame"] else "")
        + ".",
        "",
        "![error vs chunk offset](errors_by_offset.png)",
        "",
    ]
    _plot_offsets(result, out / "errors_by_offset.png")
    for n, ep in enumerate([result["overall"], *result["episodes"]]):
        title = "All inputs" if n == 0 else f"`{ep['input']}`"
        lines += [f"## {title}", ""]
        if n:
            png = f"joints_{n}_{Path(ep['input']).stem or 'input'}.png"
            _plot_joints(ep, out / png, joints)
            ep.pop("trace", None)
            lines += [
                f"{ep['duration_s']:.2f} s, {ep['observations']} observations, "
                f"{ep['inferences']} inferences ({ep['executed_chunks']} executed).",
                "",
                f"![joints]({png})",
                "",
            ]
        offs = ep["offsets"]
        lines += [
            "| joint | "
            + " | ".join(f"MAE +{o}" for o in offs)
            + " | "
            + " | ".join(f"RMSE +{o}" for o in offs)
            + " |",
            "|---" * (1 + 2 * len(offs)) + "|",
        ]
        for j in joints:
            lines.append(
                f"| {j} | "
                + " | ".join(_fmt(v) for v in ep["mae"][j])
                + " | "
                + " | ".join(_fmt(v) for v in ep["rmse"][j])
                + " |"
            )
        g, c = ep["gripper_timing"], ep["consistency"]
        clips = {k: v for k, v in ep["clipped"].items() if v}
        lines += [
            "",
            f"- gripper open/close timing: {g['matched']} of {g['events']} recorded events "
            f"matched, mean error {_fmt(g['mean_error_s'], 3)} s (negative: early), mean |error| "
            f"{_fmt(g['mean_abs_error_s'], 3)} s",
            f"- chunk-to-chunk consistency over {c['pairs']} overlaps: arm mean "
            f"{_fmt(c['arm_mean_rad'])} rad (max {_fmt(c['arm_max_rad'])}), grippers "
            f"{_fmt(c['gripper_mean'])}",
            f"- seams: {ep.get('seams', {}).get('n', 0)}, mean jump "
            f"{_fmt(ep.get('seams', {}).get('mean_jump_rad'))} rad",
            "- loops: " + _loop_line(ep.get("loops", {})),
            f"- safety filter: {clips or 'no interventions'}",
            "",
        ]
    w = result["wall"]
    lines += [
        "## Wall clock (this machine)",
        "",
        f"Inference {w['inference_ms']['p50']} ms p50 / {w['inference_ms']['p95']} ms p95, "
        f"perception {w['perception_ms']['p50']} ms p50; replay {w['replay_s']} s, "
        f"{w['real_time_factor']}x real time.",
        "",
    ]
    path = out / "report.md"
    with atomic_open(path, "w") as f:
        f.write("\n".join(lines))
    return path


# ---------------------------------------------------------------------------------------------
# command line


def add_command(eval_sub) -> None:
    """Register ``clamp eval replay`` under the ``eval`` subcommand."""
    p = eval_sub.add_parser(
        "replay",
        help="a model on recorded bags or HDF5 episodes, as the policy node would have run it, "
        "on the recording's clock; errors against the recorded actions",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="BAG_OR_EPISODE",
        help="rosbag2 bag (folder, .mcap or .db3) or HDF5 episode (.hdf5)",
    )
    p.add_argument("--model", required=True, help="model directory (clamp export output)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--report", metavar="DIR", help="write report.md and its plots (PNG) here")
    p.add_argument(
        "--latency-s",
        type=float,
        default=0.0,
        help="inference latency in bag time: a chunk from the observation at t arrives at "
        "t + this (s)",
    )
    p.add_argument(
        "--topics-map",
        default="clamp",
        help="YAML file mapping roles to topics, or a shipped map: clamp (default), "
        "trossen_realsense (see docs/episodes.md)",
    )
    p.add_argument(
        "--mode",
        # ExecutionConfig's modes, listed here: importing it would load ONNX Runtime for --help
        choices=["receding_horizon", "temporal_ensembling", "async", "seam_guided"],
        default=NODE_EXECUTION["mode"],
        help="chunk execution mode, as the policy node's execution.mode (default: the robot "
        "config's)",
    )
    p.add_argument(
        "--replan-remaining-steps",
        type=int,
        default=NODE_EXECUTION["replan_remaining_steps"],
        help="async, seam_guided: infer when fewer steps would remain (default: the robot "
        "config's)",
    )
    p.add_argument("--seed", type=int, default=0, help="run seed of the diffusion noise")
    p.add_argument(
        "--every-frame",
        action="store_true",
        help="infer on every camera set, not only where the node would",
    )
    p.add_argument("--no-safety", action="store_true", help="skip the node's safety filter")
    p.add_argument(
        "--follow-node",
        nargs="?",
        const="/policy",
        default="",
        metavar="NODE",
        help="infer where the recorded policy node NODE (default /policy, run with "
        "publish_chunks) inferred, with its action history and guidance, and compare each "
        "chunk with its own bit for bit",
    )
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: default)")
    p.set_defaults(func=cmd_replay)


def cmd_replay(args) -> int:
    import json

    from ..policy.execution import ExecutionConfig

    for path in args.inputs:
        if not Path(path).exists():
            raise ReplayError(
                f"{path}: no such bag or episode (a bag folder, .mcap, .db3 or .hdf5)"
            )
    if not Path(args.model).is_dir():
        raise ReplayError(f"--model {args.model}: no such model directory")
    try:
        cfg = ReplayConfig(
            latency_s=args.latency_s,
            every_frame=args.every_frame,
            seed=args.seed,
            safety=not args.no_safety,
            execution=ExecutionConfig(
                mode=args.mode, replan_remaining_steps=args.replan_remaining_steps
            ),
            threads=args.threads,
            topics_map=args.topics_map,
            follow_node=args.follow_node,
        )
    except ValueError as e:
        raise ReplayError(str(e).replace("latency_s", "--latency-s")) from None
    r = replay(args.inputs, args.model, cfg, progress=not args.json, trace=bool(args.report))
    if args.report:
        r["report"] = str(write_report(r, args.report))
    if args.json:
        print(json.dumps(r))
        return 0
    for ep in [*r["episodes"], {**r["overall"], "input": "all inputs"}]:
        offs = ep["offsets"]
        arm = [ep["by_offset"]["arm_mae_rad"][o] for o in offs]
        g = ep["gripper_timing"]
        print(
            f"{ep['input']}: {ep['inferences']} inferences; arm MAE "
            + ", ".join(f"+{o}: {v:.4f}" for o, v in zip(offs, arm, strict=True))
            + f" rad; gripper timing {_fmt(g['mean_error_s'], 3)} s ({g['matched']}/"
            f"{g['events']} events); consistency {ep['consistency']['arm_mean_rad']:.4f} rad"
        )
        if "live" in ep:
            lv = ep["live"]
            print(
                f"  live node: {lv['identical']}/{lv['node_chunks']} chunks identical bit for "
                f"bit, {lv['different']} different (max {lv['max_abs_difference']:.3g}), "
                f"{lv['missing']} not replayed"
            )
        for n in ep.get("notes", []):
            print(f"  note: {n}")
    w = r["wall"]
    print(
        f"wall: inference {w['inference_ms']['p50']} ms p50, replay {w['replay_s']} s "
        f"({w['real_time_factor']}x real time)"
    )
    if "report" in r:
        print(f"report: {r['report']}")
    return 0


# ---------------------------------------------------------------------------------------------
# benchmark


def bench_replay(
    model_dir, task: str = "drawer_open", seed: int = 0, width: int = 320, height: int = 240
) -> dict:
    """Replay speed, as a multiple of real time, of one recorded sim episode (an expert
    rollout written by ``clamp generate``'s job, uncompressed) with ``model_dir``: ``ours``
    with inferences where the live node runs them, and with an inference at every camera
    frame (``config``); ``baseline`` is real time (1.0)."""
    import platform
    import tempfile

    from ..sim.generate import Job, episode_path, run_job

    with tempfile.TemporaryDirectory() as tmp:
        job = Job(task, seed, tmp, width=width, height=height, compression=None)
        res = run_job(job)
        if res.status != "written":
            raise ReplayError(f"bench: the {task} expert did not record seed {seed}: {res.status}")
        path = episode_path(tmp, task, seed)
        live = replay([path], model_dir, ReplayConfig())
        every = replay([path], model_dir, ReplayConfig(every_frame=True))
    ep = live["episodes"][0]
    return {
        "name": "replay",
        "metric": f"clamp eval replay of a recorded {task} sim episode ({ep['duration_s']:.1f} s, "
        f"{ep['recorded_frames']} frames, 4 cameras {width}x{height}) with "
        f"{Path(model_dir).name}: speed as a multiple of real time",
        "unit": "x real time",
        "ours": live["wall"]["real_time_factor"],
        "baseline": 1.0,
        "baseline_name": "real time",
        "ratio": live["wall"]["real_time_factor"],
        "config": {
            "inferences": ep["inferences"],
            "every_frame_x_real_time": every["wall"]["real_time_factor"],
            "every_frame_inferences": every["episodes"][0]["inferences"],
            "inference_ms_p50": live["wall"]["inference_ms"]["p50"],
            "perception_ms_p50": live["wall"]["perception_ms"]["p50"],
            "execution": live["execution"]["mode"],
            "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
        },
    }


def add_bench(bench_sub) -> None:
    """Register ``clamp bench replay`` under the ``bench`` subcommand."""
    p = bench_sub.add_parser(
        "replay", help="clamp eval replay speed on a recorded sim episode (x real time)"
    )
    default = Path(__file__).resolve().parents[2] / "models" / "drawer_open"
    p.add_argument("--model", default=str(default), help="model directory (default: the demo's)")
    p.add_argument("--width", type=int, default=320, help="camera width of the recording")
    p.add_argument("--height", type=int, default=240, help="camera height of the recording")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_replay)


def cmd_bench_replay(args) -> int:
    import json

    if not Path(args.model).is_dir():
        raise ReplayError(f"--model {args.model}: no such model directory")
    if args.width < 16 or args.height < 16:
        raise ReplayError(
            f"--width/--height: need at least 16 pixels, got {args.width}x{args.height}"
        )
    r = bench_replay(args.model, width=args.width, height=args.height)
    if args.json:
        print(json.dumps(r))
    else:
        c = r["config"]
        print(
            f"{r['metric']}: {r['ours']}x real time ({c['inferences']} inferences); an inference "
            f"at every frame: {c['every_frame_x_real_time']}x ({c['every_frame_inferences']})"
        )
    return 0
