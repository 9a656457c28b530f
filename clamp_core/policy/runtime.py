"""The policy at run time: an exported model directory run with ONNX Runtime.

``OnnxPolicy.predict`` turns one timestamped observation into one timestamped action chunk
(encoders once, then the DDIM loop over the denoiser); chunk execution and safety live elsewhere.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .guidance import coherence_scores
from .metadata import MetadataError, PolicyMetadata
from .schedule import NoiseSchedule, ddim_sample

_ORT_TYPES = {np.float32: "tensor(float)", np.int64: "tensor(int64)", np.uint8: "tensor(uint8)"}


class PolicyLoadError(RuntimeError):
    """A model directory that cannot be run; the message names the file and what is wrong."""


class PolicyInputError(ValueError):
    """An observation that does not fit the model; the message names the field."""


class PolicyOutputError(RuntimeError):
    """The model produced non-finite actions; nothing was returned."""


@dataclass
class PolicyObservation:
    """One observation, in raw units, as the policy node assembles it."""

    stamp_ns: int
    """Time of the observation (the reference camera's stamp), ns."""
    views: np.ndarray
    """(V, H, W, 4) float32: rendered views (depth_m, x, y, z in metres; empty pixels 0)."""
    qpos: np.ndarray
    """(A,) joint positions, raw units (rad; grippers 0 closed .. 1 open)."""
    action_history: np.ndarray
    """(Ha, A) the last Ha commanded actions, raw units, oldest first, most recent last."""
    rgb: dict[str, np.ndarray] | None = None
    """Camera name -> (h, w, 3) uint8 RGB, for models with an RGB branch; else None."""
    prefix: np.ndarray | None = None
    """(F, A) raw units: the plan executing, at the new chunk's action times (seam-aware
    sampling, ``clamp_core.policy.guidance``); None: sample freely."""
    prefix_weights: np.ndarray | None = None
    """(F,) in [0, 1]: how much each action of ``prefix`` matters (``prefix_profile``)."""
    guidance_weight: float = 1.0
    """Scale of ``prefix_weights`` in the sampler (0: plain DDIM; candidates are still scored
    with ``prefix_weights``)."""


@dataclass
class ActionChunk:
    """Actions predicted from one observation, to run from that observation's stamp on."""

    stamp_ns: int
    """Stamp of the observation the chunk was computed from; action 0 is meant for it."""
    dt_s: float
    """Time between consecutive actions (1 / control_rate_hz), s."""
    actions: np.ndarray
    """(F, A) float64, raw units, in ``joint_names`` order."""
    joint_names: list[str]

    @property
    def times_ns(self) -> np.ndarray:
        """(F,) int64: stamp_ns + round(k * dt_s * 1e9) for k = 0..F-1."""
        k = np.arange(self.actions.shape[0], dtype=np.float64)
        return self.stamp_ns + np.round(k * self.dt_s * 1e9).astype(np.int64)


class OnnxPolicy:
    """Runs an exported model directory (metadata.json, encoders.onnx, denoiser.onnx).

    Not thread-safe: keeps preallocated input buffers and a noise generator; use one instance
    per thread."""

    def __init__(
        self,
        model_dir: str | Path,
        providers: list[str] | None = None,
        threads: int = 0,
        seed: int = 0,
        inference_steps: int | None = None,
    ):
        """``providers``: ONNX Runtime execution providers in order of preference (default:
        CUDA when available, then CPU); ``threads``: intra-op threads (0 = ORT's default);
        ``seed``: of the initial-noise generator; ``inference_steps``: DDIM steps (None = as
        exported)."""
        self.model_dir = Path(model_dir)
        try:
            self.metadata = PolicyMetadata.load(self.model_dir)
        except (FileNotFoundError, MetadataError) as e:
            raise PolicyLoadError(str(e)) from None
        meta = self.metadata
        sched_cfg = meta.schedule_config()
        if inference_steps is not None:  # replace() validates it against num_train_steps
            sched_cfg = dataclasses.replace(sched_cfg, inference_steps=inference_steps)
        self.schedule = NoiseSchedule(sched_cfg)
        self.qpos_normalizer = meta.qpos_normalizer()
        self.action_normalizer = meta.action_normalizer()

        if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 0:
            raise ValueError(f"threads must be an integer >= 0 (0 = ORT default), got {threads}")
        available = ort.get_available_providers()
        if providers is None:
            providers = [p for p in ("CUDAExecutionProvider",) if p in available]
            providers.append("CPUExecutionProvider")
        else:
            providers = list(providers)
            missing = [p for p in providers if p not in available]
            if missing or not providers:
                raise PolicyLoadError(
                    f"execution providers {missing or providers} are not available in this "
                    f"onnxruntime build; available: {available}"
                )
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads > 0:
            opts.intra_op_num_threads = int(threads)
        # Spinning worker threads halve throughput when perception and ROS share the cores
        # (measured: 2 threads 15.5 ms spinning vs 7.8 ms not, encoders, on a loaded 2-core box).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")

        V, H, W, C = meta.views_shape
        A, F, Ha = meta.action_dim, meta.action_horizon, meta.action_history
        Nc, D = meta.cond_tokens, meta.cond_dim
        cond = ((None, Nc, D), np.float32, f"cond_tokens {Nc}, cond_dim {D}")
        actions = ((None, F, A), np.float32, f"action_horizon {F}, action_dim {A}")
        enc_in = {
            "views": ((None, V, H, W, C), np.float32, f"{V} perception views of {W}x{H}"),
            "qpos": ((None, A), np.float32, f"action_dim {A}"),
            "action_history": ((None, Ha, A), np.float32, f"action_history {Ha}, action_dim {A}"),
        }
        if meta.rgb_cameras:
            w, h = meta.rgb_size
            n = len(meta.rgb_cameras)
            enc_in["rgb"] = ((None, n, h, w, 3), np.uint8, f"{n} rgb_cameras, rgb_size [{w}, {h}]")
        den_in = {
            "noisy_actions": actions,
            "timestep": ((None,), np.int64, "one timestep per batch row"),
            "cond": cond,
        }
        self._encoders = self._open("encoders", enc_in, {"cond": cond}, opts, providers)
        self._denoiser = self._open("denoiser", den_in, {"eps": actions}, opts, providers)

        # preallocated, batch of one: reused by every predict()
        self._feeds: dict[str, np.ndarray] = {
            name: np.zeros((1,) + shape[1:], dtype) for name, (shape, dtype, _) in enc_in.items()
        }
        self._rng = np.random.default_rng(seed)
        self.last_timings_ms: dict[str, float] = {}
        """encode_ms, denoise_ms and total_ms of the last ``predict``."""
        self.last_selection: dict | None = None
        """The last ``predict`` with candidates: their ``scores`` and the ``chosen`` index."""

    # ---------------------------------------------------------------------------------- load
    def _open(self, key, inputs, outputs, opts, providers) -> ort.InferenceSession:
        path = self.model_dir / self.metadata.files[key]
        if not path.is_file():
            raise PolicyLoadError(
                f"{path}: missing; the model directory must hold the {key} graph named in "
                f"metadata.json files.{key}"
            )
        try:
            sess = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as e:  # ORT raises several unrelated types for unreadable models
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise PolicyLoadError(
                f"{path}: not a loadable ONNX model ({type(e).__name__}: {reason[:300]}); "
                "export it again"
            ) from None
        problems = _io_mismatches("input", sess.get_inputs(), inputs)
        problems += _io_mismatches("output", sess.get_outputs(), outputs)
        if problems:
            raise PolicyLoadError(
                f"{path}: the graph does not match metadata.json:\n"
                + "\n".join(f"  - {p}" for p in problems)
            )
        return sess

    @property
    def providers(self) -> list[str]:
        """Execution providers the sessions actually use, in order of preference."""
        out: list[str] = []
        for sess in (self._encoders, self._denoiser):
            out += [p for p in sess.get_providers() if p not in out]
        return out

    # ------------------------------------------------------------------------------- predict
    def predict(self, obs: PolicyObservation, noise: np.ndarray | None = None) -> ActionChunk:
        """One action chunk (F, A) for ``obs``; ``noise`` (F, A) fixes the initial noise x_T,
        else x_T is ``standard_normal((1, F, A), float32)`` from ``default_rng(seed)``, advanced
        by each call. Invalid input raises ``PolicyInputError`` before anything changes.

        With ``obs.prefix`` the sampler is guided towards it (``ddim_sample``'s ``known``, with
        weights ``guidance_weight * prefix_weights``). ``noise`` (K, F, A) with K > 1 and a
        prefix: K candidates in one batched denoiser call, and the chunk returned is the one
        most coherent with the prefix (``coherence_scores``; ``last_selection`` has the scores);
        without a prefix only ``noise[0]`` is used."""
        t0 = time.perf_counter()
        meta = self.metadata
        F, A = meta.action_horizon, meta.action_dim
        feeds = self._feeds
        if isinstance(obs.stamp_ns, bool) or not isinstance(obs.stamp_ns, (int, np.integer)):
            raise PolicyInputError(f"stamp_ns: needs an integer (ns), got {obs.stamp_ns!r}")
        views = _checked("views", obs.views, meta.views_shape)
        qpos = _checked("qpos", obs.qpos, (A,))
        history = _checked("action_history", obs.action_history, (meta.action_history, A))
        rgb = self._checked_rgb(obs.rgb)
        prefix = weights = None
        if obs.prefix is not None:
            prefix = _checked("prefix", obs.prefix, (F, A))
            weights = _checked("prefix_weights", obs.prefix_weights, (F,)).astype(np.float64)
            g = obs.guidance_weight
            if isinstance(g, bool) or not isinstance(g, (int, float, np.integer, np.floating)):
                raise PolicyInputError(f"guidance_weight: needs a number in [0, 1], got {g!r}")
            if not (0.0 <= g <= 1.0) or not ((weights >= 0) & (weights <= 1)).all():
                raise PolicyInputError(
                    f"guidance_weight ({g}) and prefix_weights: need values in [0, 1]"
                )
        if noise is not None:
            if np.ndim(noise) == 3 and np.shape(noise)[0] >= 1:
                K = np.shape(noise)[0]
                x_T = _checked("noise", noise, (K, F, A)).astype(np.float32)
                if prefix is None:
                    x_T = x_T[:1]
            else:
                x_T = _checked("noise", noise, (F, A))[None].astype(np.float32)
        # validated: from here on the buffers are written
        np.copyto(feeds["views"][0], views, casting="unsafe")
        self.qpos_normalizer.normalize(qpos, out=feeds["qpos"][0])
        self.action_normalizer.normalize(history, out=feeds["action_history"][0])
        for i, image in enumerate(rgb):
            feeds["rgb"][0, i] = image
        if noise is None:
            x_T = self._rng.standard_normal((1, F, A), dtype=np.float32)

        t1 = time.perf_counter()
        cond = self._encoders.run(["cond"], feeds)[0]
        t2 = time.perf_counter()
        den = self._denoiser
        K = x_T.shape[0]
        den_feeds = {"cond": cond if K == 1 else np.repeat(cond, K, axis=0)}

        def eps_fn(x: np.ndarray, t: np.ndarray) -> np.ndarray:
            den_feeds["noisy_actions"] = x
            den_feeds["timestep"] = t
            return den.run(["eps"], den_feeds)[0]

        known = w = None
        if prefix is not None:
            known = self.action_normalizer.normalize(prefix.astype(np.float32))[None]
            w = float(obs.guidance_weight) * weights
        x0 = ddim_sample(eps_fn, x_T, self.schedule, known, w)
        t3 = time.perf_counter()
        best = 0
        if K > 1:
            cands = self.action_normalizer.unnormalize(x0).astype(np.float64)
            scores = coherence_scores(cands, prefix, weights)
            # a candidate with non-finite actions is never chosen over a finite one
            best = int(np.argmin(np.where(np.isfinite(scores), scores, np.inf)))
            self.last_selection = {"scores": scores.tolist(), "chosen": best}
        else:
            self.last_selection = None
        actions = self.action_normalizer.unnormalize(x0[best]).astype(np.float64)
        if not np.isfinite(actions).all():
            raise PolicyOutputError(
                f"model '{meta.name}' produced non-finite actions for the observation at "
                f"{obs.stamp_ns} ns (finite inputs); check the exported graphs"
            )
        t4 = time.perf_counter()
        self.last_timings_ms = {
            "encode_ms": (t2 - t1) * 1e3,
            "denoise_ms": (t3 - t2) * 1e3,
            "total_ms": (t4 - t0) * 1e3,
        }
        return ActionChunk(obs.stamp_ns, meta.dt_s, actions, list(meta.joint_names))

    def _checked_rgb(self, rgb: dict[str, np.ndarray] | None) -> list[np.ndarray]:
        names = self.metadata.rgb_cameras
        if not names:
            return []
        if rgb is None:
            raise PolicyInputError(f"rgb: the model needs color images from {names}, got None")
        missing = [n for n in names if n not in rgb]
        if missing:
            raise PolicyInputError(
                f"rgb: no image for cameras {missing}; the model needs {names}, got {sorted(rgb)}"
            )
        w, h = self.metadata.rgb_size
        out = []
        for n in names:
            image = rgb[n]
            if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
                raise PolicyInputError(
                    f"rgb['{n}']: needs a uint8 array, got "
                    f"{getattr(image, 'dtype', type(image).__name__)}"
                )
            if image.shape != (h, w, 3):
                raise PolicyInputError(
                    f"rgb['{n}']: needs shape {(h, w, 3)} (h, w, 3), got {image.shape}; "
                    "resize to the model's rgb_size"
                )
            out.append(image)
        return out

    def warmup(self, n: int = 2) -> None:
        """Run ``n`` predictions on an all-zero observation so that lazy allocation and kernel
        selection happen before the first real one; the noise generator is not consumed."""
        meta = self.metadata
        A = meta.action_dim
        w, h = meta.rgb_size or (0, 0)
        obs = PolicyObservation(
            0,
            np.zeros(meta.views_shape, np.float32),
            self.qpos_normalizer.unnormalize(np.zeros(A, np.float32)),
            self.action_normalizer.unnormalize(np.zeros((meta.action_history, A), np.float32)),
            {c: np.zeros((h, w, 3), np.uint8) for c in meta.rgb_cameras} or None,
        )
        for _ in range(n):
            self.predict(obs, noise=np.zeros((meta.action_horizon, A), np.float32))


def _checked(name: str, value, shape: tuple[int, ...]) -> np.ndarray:
    """Shape and finiteness check; returns the array (not copied when already an array)."""
    try:
        a = np.asarray(value)
    except Exception as e:  # noqa: BLE001 - ragged lists and the like
        raise PolicyInputError(f"{name}: not an array ({e})") from None
    if a.shape != shape:
        raise PolicyInputError(f"{name}: needs shape {shape}, got {a.shape}")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise PolicyInputError(f"{name}: needs real numbers, got dtype {a.dtype}")
    if not np.isfinite(a).all():
        bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
        raise PolicyInputError(f"{name}: {bad} non-finite values (NaN or inf)")
    return a


def _io_mismatches(kind: str, args, expected: dict) -> list[str]:
    """Differences between a session's inputs or outputs and the expected (shape, dtype,
    where the shape comes from in the metadata); None in a shape is the dynamic batch axis (a
    fixed 1 is accepted too)."""
    out = []
    got = {a.name: a for a in args}
    for name in sorted(set(got) - set(expected)):
        out.append(f"unexpected {kind} '{name}' (expected {kind}s {sorted(expected)})")
    for name, (shape, dtype, source) in expected.items():
        arg = got.get(name)
        if arg is None:
            out.append(
                f"missing {kind} '{name}' {_fmt(shape)} ({source}); the graph has {sorted(got)}"
            )
            continue
        if arg.type != _ORT_TYPES[dtype]:
            out.append(f"{kind} '{name}' is {arg.type}, expected {_ORT_TYPES[dtype]}")
        dims = list(arg.shape)
        ok = len(dims) == len(shape) and all(
            (d is None or isinstance(d, str) or d == 1) if e is None else d == e
            for d, e in zip(dims, shape)
        )
        if not ok:
            out.append(
                f"{kind} '{name}' has shape {dims} but metadata.json says {_fmt(shape)} ({source})"
            )
    return out


def _fmt(shape: tuple) -> str:
    return "[" + ", ".join("batch" if d is None else str(d) for d in shape) + "]"
