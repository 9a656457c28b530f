"""Training data: episodes -> rendered views (cached) + normalised windows + text fields
(+ the RGB branch's colour images, resized once and cached).

Views are rendered by the same :class:`PerceptionPipeline.process` call the live node makes:
each recorded frame becomes RgbdFrames plus a TfBuffer holding that frame's camera extrinsics,
so training inputs and robot inputs cannot drift apart. Rendering every epoch would dominate
CPU training, so views are cached once per (episode, perception config, stride) as float16
``.npy`` files that are memory-mapped for random access. Colour images for a model's RGB
branch go through the same ``rgb_inputs`` as the node's and are cached the same way (uint8).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.episode import CameraCalib, EpisodeReader, find_episodes
from ..fileio import atomic_open
from ..geometry.camera import PinholeCamera
from ..geometry.tf_buffer import TfBuffer
from ..geometry.transforms import Transform
from ..models.tokenizer import tokenize
from ..perception.config import CameraConfig, PerceptionConfig
from ..perception.pipeline import PerceptionPipeline, RenderedViews, RgbdFrame
from ..policy.engine import action_history
from ..policy.normalize import MinMax, compute_minmax
from ..policy.rgb import rgb_inputs

CACHE_VERSION = 1


def optical_frame(camera: str) -> str:
    """The tf frame a recorded camera's extrinsics describe (RealSense naming)."""
    return f"{camera}_color_optical_frame"


def perception_for_episodes(
    camera_names: list[str],
    view_size: int,
    base: PerceptionConfig | None = None,
    color_cameras=(),
) -> PerceptionConfig:
    """The perception config that renders training views: ``base`` (default: the node's
    defaults) with the episodes' cameras and the model's view size; ``color_cameras`` (the RGB
    branch's) subscribe to colour (``use_color``), which the views never use."""
    d = (base or PerceptionConfig()).to_dict()
    d["camera_names"] = list(camera_names)
    d["cameras"] = {c: {"use_color": c in color_cameras} for c in camera_names}
    d["image_width"] = d["image_height"] = int(view_size)
    d["threads"] = 1
    return PerceptionConfig.from_dict(d)


def _pinhole(c: CameraCalib) -> PinholeCamera:
    return PinholeCamera.from_camera_info(
        c.width, c.height, c.K.reshape(-1).tolist(), c.D.tolist(), c.distortion_model
    )


class EpisodeRenderer:
    """Renders recorded frames of episodes with one PerceptionPipeline."""

    def __init__(self, config: PerceptionConfig):
        self.config = config
        self.pipeline = PerceptionPipeline(config)
        self._intrinsics: dict[tuple, PinholeCamera] = {}

    def frames_and_tf(self, frame: dict, cameras: dict[str, CameraCalib], base_frame: str):
        """One recorded frame -> (RgbdFrames, TfBuffer with its camera extrinsics)."""
        tf = TfBuffer(cache_duration_s=1.0)
        stamp = int(frame["stamp_ns"])
        frames = []
        for cam in (c.name for c in self.config.cameras):
            calib = cameras[cam]
            key = (cam, calib.width, calib.height, calib.K.tobytes(), calib.D.tobytes())
            if key not in self._intrinsics:
                self._intrinsics[key] = _pinhole(calib)
            T = np.asarray(frame["extrinsics"][cam], np.float64)
            tf.set_transform(
                base_frame, optical_frame(cam), stamp, Transform.from_matrix(T), static=True
            )
            frames.append(
                RgbdFrame(
                    cam,
                    stamp,
                    optical_frame(cam),
                    self._intrinsics[key],
                    frame["depth_mm"][cam],
                    1e-3,
                )
            )
        return frames, tf

    def render(self, reader: EpisodeReader, t: int) -> RenderedViews:
        frame = reader.frame(t, cameras=[c.name for c in self.config.cameras], images=False)
        return self.render_frame(frame, reader.cameras)

    def render_frame(self, frame: dict, cameras: dict[str, CameraCalib]) -> RenderedViews:
        """Views of one frame given as ``EpisodeReader.frame`` returns it (stamp_ns,
        extrinsics, depth_mm), e.g. straight from the simulator."""
        frames, tf = self.frames_and_tf(frame, cameras, self.config.base_frame)
        return self.pipeline.process(frames, tf).views


def cache_key(path: Path, config: PerceptionConfig, stride: int) -> str:
    st = path.stat()
    d = config.to_dict()
    for cam in d.get("cameras", {}).values():  # colour never reaches the views
        cam["use_color"] = False
    blob = json.dumps(
        [CACHE_VERSION, str(path.resolve()), st.st_size, st.st_mtime_ns, d, stride],
        sort_keys=True,
    )
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def cached_views(
    path: Path,
    config: PerceptionConfig,
    stride: int,
    cache_dir: Path,
    renderer: EpisodeRenderer | None = None,
) -> np.ndarray:
    """(ceil(T / stride), V, S, S, 4) float16 memory-map of the episode's views at frames
    0, stride, 2*stride, ...; rendered and written atomically on first use."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    out = cache_dir / f"{path.stem}-{cache_key(path, config, stride)}.npy"
    if not out.exists():
        renderer = renderer or EpisodeRenderer(config)
        with EpisodeReader(path) as reader:
            ts = range(0, reader.num_frames, stride)
            s = config.image_width
            arr = np.zeros((len(ts), len(config.views), s, s, 4), np.float16)
            for i, t in enumerate(ts):
                arr[i] = renderer.render(reader, t).images
        with atomic_open(out) as f:
            np.save(f, arr)
    return np.load(out, mmap_mode="r")


RGB_CACHE_VERSION = 1


def cached_rgb(path: Path, cameras: list[str], size, stride: int, cache_dir: Path) -> np.ndarray:
    """(ceil(T / stride), C, h, w, 3) uint8 memory-map of the colour images of ``cameras`` at
    frames 0, stride, ..., each resized to ``size`` = [w, h] by ``rgb_inputs`` (the node's
    resize); written atomically on first use."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    st = path.stat()
    w, h = int(size[0]), int(size[1])
    blob = json.dumps(
        [
            RGB_CACHE_VERSION,
            str(path.resolve()),
            st.st_size,
            st.st_mtime_ns,
            list(cameras),
            w,
            h,
            stride,
        ],
    )
    key = hashlib.sha1(blob.encode()).hexdigest()[:16]
    out = cache_dir / f"{path.stem}-rgb-{key}.npy"
    if not out.exists():
        with EpisodeReader(path) as reader:
            missing = [c for c in cameras if c not in reader.meta.camera_names]
            if missing:
                raise ValueError(
                    f"{path}: the RGB branch needs cameras {missing}; the episode has "
                    f"{list(reader.meta.camera_names)} (model.rgb.cameras)"
                )
            ts = range(0, reader.num_frames, stride)
            arr = np.zeros((len(ts), len(cameras), h, w, 3), np.uint8)
            for i, t in enumerate(ts):
                images = reader.frame(t, cameras=list(cameras), depth=False)["images"]
                arr[i] = list(rgb_inputs(images, cameras, (w, h)).values())
        with atomic_open(out) as f:
            np.save(f, arr)
    return np.load(out, mmap_mode="r")


@dataclass
class EpisodeData:
    path: Path
    task: str
    instruction: str
    object_names: list[str]
    lowdim: dict[str, np.ndarray]
    views: np.ndarray | None = None
    """Memory-mapped cached views (frames 0, stride, ...)."""
    rgb: np.ndarray | None = None
    """Memory-mapped cached RGB-branch images (frames 0, stride, ...; (C, h, w, 3) uint8 each),
    None for a model without an RGB branch."""

    @property
    def num_frames(self) -> int:
        return len(self.lowdim["action"])


def load_episodes(paths_or_dirs, successful_only: bool = True) -> list[EpisodeData]:
    """Metadata and low-dimensional series of every episode (images stay on disk)."""
    paths: list[Path] = []
    for p in [paths_or_dirs] if isinstance(paths_or_dirs, (str, os.PathLike)) else paths_or_dirs:
        paths += find_episodes(p)
    if not paths:
        raise FileNotFoundError(f"no *.hdf5 episodes found in {paths_or_dirs}")
    out = []
    for p in sorted(set(paths)):
        with EpisodeReader(p) as r:
            if successful_only and not r.success:
                continue
            m = r.meta
            out.append(EpisodeData(p, m.task, m.instruction, list(m.object_names), r.lowdim()))
    if not out:
        raise ValueError(f"no successful episodes among {len(paths)} files in {paths_or_dirs}")
    return out


def camera_names_of(paths: list[Path]) -> list[str]:
    with EpisodeReader(paths[0]) as r:
        return list(r.meta.camera_names)


def compute_norm_stats(episodes: list[EpisodeData]) -> dict[str, MinMax]:
    """qpos: over the measured positions; action: over the commands AND the measured positions,
    because the action-history input holds measured positions before an episode's first command
    (training and the node pad with them). Over the commands alone, a joint the experts never
    turn (forearm_roll: +-0.0004 rad) maps a resting arm's 0.003 rad of sag to -6."""
    return {
        "qpos": compute_minmax(e.lowdim["qpos"] for e in episodes),
        "action": compute_minmax(
            a for e in episodes for a in (e.lowdim["action"], e.lowdim["qpos"])
        ),
    }


class WindowDataset:
    """(frame, history, future) training samples at the cached frames of many episodes.

    Item (numpy; the default torch collate stacks them): views (V, S, S, 4) float32, qpos (A,),
    action_history (H, A) = actions t-H .. t-1, actions (F, A) = actions t .. t+F-1 (all
    normalised to [-1, 1], edges padded with the first / last action), actions_is_pad (F,),
    text_ids (L,), text_numbers (L, 3), text_progress (), task_index (), and rgb (C, h, w, 3)
    uint8 when the episodes carry RGB-branch images (``attach_rgb``).
    """

    def __init__(
        self,
        episodes: list[EpisodeData],
        norm: dict[str, MinMax],
        history: int,
        horizon: int,
        stride: int,
        text_cfg=None,
        tasks: list[str] | None = None,
        history_stride: int = 1,
    ):
        if any(e.views is None for e in episodes):
            raise ValueError("WindowDataset: attach cached views to every episode first")
        self.episodes = episodes
        self.norm = norm
        self.history, self.horizon, self.stride = int(history), int(horizon), int(stride)
        self.history_stride = int(history_stride)
        self.text_cfg = text_cfg
        self.tasks = tasks or sorted({e.task for e in episodes})
        self.index = np.array(
            [(i, k) for i, e in enumerate(episodes) for k in range(len(e.views))], np.int64
        ).reshape(-1, 2)
        # normalised series, once
        self._qpos = [norm["qpos"].normalize(e.lowdim["qpos"].astype(np.float32)) for e in episodes]
        self._act = [
            norm["action"].normalize(e.lowdim["action"].astype(np.float32)) for e in episodes
        ]
        self._qpos_as_action = [
            norm["action"].normalize(e.lowdim["qpos"].astype(np.float32)) for e in episodes
        ]

        self.features: dict[str, np.ndarray] | None = None
        self.history_dropout = 0.0
        """Probability of the start-of-episode history in place of the true one (training)."""

    def __len__(self) -> int:
        return len(self.index)

    def _history(self, ei: int, t: int) -> np.ndarray:
        """Actions t-H*s .. t-s (s = history_stride frames apart); before the episode's start,
        the measured position at t, as the policy node fills what it has not commanded yet
        (padding with the first action instead would tell the model what the demonstrator did
        first: which arm, for one)."""
        act = self._act[ei]
        # the policy engine's own function: an episode's actions at its frame rate are the
        # commands in force at each frame (time in frames here)
        out = action_history(
            np.arange(len(act)),
            act,
            t,
            self.history,
            self.history_stride,
            self._qpos_as_action[ei][t],
        )
        return out.astype(act.dtype, copy=False)

    def start_history(self, i: int) -> np.ndarray:
        """(H, A) what the policy node feeds before it has commanded anything: the measured
        position at the window's frame, repeated (normalised as actions)."""
        ei, k = self.index[i]
        return np.tile(self._qpos_as_action[ei][int(k) * self.stride], (self.history, 1))

    def _drop_history(self) -> bool:
        # torch's generator: DataLoader workers get distinct seeds for it, not for numpy's
        if self.history_dropout <= 0:
            return False
        import torch

        return float(torch.rand(())) < self.history_dropout

    def item_inputs(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The encoders' inputs of window ``i``: views (V, S, S, 4), action history (H, A)."""
        ei, k = self.index[i]
        views = np.asarray(self.episodes[ei].views[k], np.float32)
        return views, self._history(int(ei), int(k) * self.stride)

    def with_features(self, features: dict[str, np.ndarray]) -> WindowDataset:
        """The same windows with precomputed encoder outputs (frozen encoders: ``cls``,
        ``per_view``, ``act``, one row per window) in place of views and text."""
        n = {len(v) for v in features.values()}
        if n != {len(self)}:
            raise ValueError(f"features for {n} windows, dataset has {len(self)}")
        out = copy.copy(self)
        out.features = features
        return out

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        ei, k = self.index[i]
        e = self.episodes[ei]
        t = int(k) * self.stride
        T = e.num_frames
        act = self._act[ei]
        fut = np.arange(t, t + self.horizon)
        dropped = self._drop_history()
        item = {
            "qpos": self._qpos[ei][t],
            "action_history": self.start_history(i) if dropped else self._history(int(ei), t),
            "actions": act[np.clip(fut, 0, T - 1)],
            "actions_is_pad": fut >= T,
            "task_index": np.int64(self.tasks.index(e.task) if e.task in self.tasks else -1),
        }
        if e.rgb is not None:  # the RGB branch trains with the policy: never a cached feature
            item["rgb"] = np.array(e.rgb[k])  # a copy: torch wants writable arrays
        if self.features is not None:
            item.update({name: f[i] for name, f in self.features.items() if name != "act_start"})
            if dropped:
                item["act"] = self.features["act_start"][i]
            return item
        item["views"] = np.asarray(e.views[k], np.float32)
        if self.text_cfg is not None:
            tc = self.text_cfg
            tok = tokenize(
                e.instruction,
                e.object_names,
                e.lowdim["object_positions_normalized"][t],
                int(e.lowdim["task_progress"][t]),
                tc.vocab_size,
                tc.max_tokens,
                tc.max_progress,
            )
            item.update(
                text_ids=tok["ids"], text_numbers=tok["numbers"], text_progress=tok["progress"]
            )
        return item


def attach_views(
    episodes: list[EpisodeData],
    config: PerceptionConfig,
    stride: int,
    cache_dir: Path,
    progress: bool = True,
) -> None:
    """Render (or load from the cache) the views of every episode."""
    from tqdm import tqdm

    renderer = EpisodeRenderer(config)
    for e in tqdm(episodes, desc="render views", unit="ep", disable=not progress):
        e.views = cached_views(e.path, config, stride, Path(cache_dir), renderer)


def attach_rgb(
    episodes: list[EpisodeData],
    cameras: list[str],
    size,
    stride: int,
    cache_dir: Path,
    progress: bool = True,
) -> None:
    """Resize (or load from the cache) the RGB branch's colour images of every episode."""
    from tqdm import tqdm

    for e in tqdm(episodes, desc="resize rgb", unit="ep", disable=not progress):
        e.rgb = cached_rgb(e.path, list(cameras), size, stride, Path(cache_dir))
        if e.views is not None and len(e.rgb) != len(e.views):
            raise ValueError(f"{e.path}: {len(e.rgb)} rgb frames but {len(e.views)} views")


__all__ = [
    "CameraConfig",
    "EpisodeData",
    "EpisodeRenderer",
    "WindowDataset",
    "attach_rgb",
    "attach_views",
    "cached_rgb",
    "cached_views",
    "compute_norm_stats",
    "load_episodes",
    "perception_for_episodes",
]
