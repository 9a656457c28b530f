"""The diffusion noise schedule and the deterministic DDIM sampler, in numpy.

Training (q_sample) and inference (ONNX Runtime or torch, through ``ddim_sample``) both take
their betas and alphas from ``NoiseSchedule``, so the two sides cannot disagree.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..perception.config import ConfigError

BETA_SCHEDULES = ("squaredcos_cap_v2", "linear")
PREDICTION_TYPES = ("epsilon", "sample")


@dataclass
class ScheduleConfig:
    """Noise schedule of training and the number of DDIM steps at inference."""

    num_train_steps: int = 100
    """Diffusion steps T of training; timesteps run 0..T-1."""
    beta_schedule: str = "squaredcos_cap_v2"
    """'squaredcos_cap_v2' (cosine, as in diffusers) or 'linear'."""
    beta_start: float = 1e-4
    """First beta of the 'linear' schedule (unused by the cosine one)."""
    beta_end: float = 0.02
    """Last beta of the 'linear' schedule (unused by the cosine one)."""
    prediction_type: str = "epsilon"
    """What the denoiser predicts: 'epsilon' (the added noise, as in DDPM / Diffusion Policy) or
    'sample' (the clean action chunk x0). With few training steps 'sample' learns far faster:
    an epsilon error at the noisiest timesteps is amplified by 1 / sqrt(alpha_bar) in x0."""
    clip_sample: bool = True
    """Clip each step's predicted x0 to [-clip_range, clip_range] (actions are normalised)."""
    clip_range: float = 1.0
    """Bound of the x0 clipping (> 0)."""
    inference_steps: int = 10
    """DDIM steps at inference, 1..num_train_steps ('leading' spacing, step = T // n)."""

    def __post_init__(self) -> None:
        T = self.num_train_steps
        if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 1:
            raise ConfigError(
                f"schedule.num_train_steps must be an integer >= 1, got {self.num_train_steps}"
            )
        self.num_train_steps = int(self.num_train_steps)
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ConfigError(
                f"schedule.beta_schedule '{self.beta_schedule}' is not supported; "
                f"use one of {list(BETA_SCHEDULES)}"
            )
        self.beta_start, self.beta_end = float(self.beta_start), float(self.beta_end)
        if self.beta_schedule == "linear" and not 0.0 < self.beta_start <= self.beta_end < 1.0:
            raise ConfigError(
                f"schedule: the linear schedule needs 0 < beta_start ({self.beta_start}) <= "
                f"beta_end ({self.beta_end}) < 1"
            )
        if self.prediction_type not in PREDICTION_TYPES:
            raise ConfigError(
                f"schedule.prediction_type '{self.prediction_type}' is not supported; "
                f"use one of {list(PREDICTION_TYPES)}"
            )
        self.clip_sample = bool(self.clip_sample)
        self.clip_range = float(self.clip_range)
        if not (math.isfinite(self.clip_range) and self.clip_range > 0):
            raise ConfigError(f"schedule.clip_range must be finite and > 0, got {self.clip_range}")
        n = self.inference_steps
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= T:
            raise ConfigError(
                f"schedule.inference_steps must be an integer in 1..num_train_steps "
                f"({self.num_train_steps}), got {n}"
            )
        self.inference_steps = int(n)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> ScheduleConfig:
        """Build from ``to_dict``'s output; unknown keys are errors."""
        known = {f.name for f in dataclasses.fields(ScheduleConfig)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown schedule parameters {unknown}; known: {sorted(known)}")
        return ScheduleConfig(**d)


def _alpha_bar_cos(t: np.ndarray) -> np.ndarray:
    return np.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


class NoiseSchedule:
    """Betas, cumulative alphas, forward noising and the DDIM (eta = 0) reverse step."""

    def __init__(self, cfg: ScheduleConfig):
        self.cfg = cfg
        T = cfg.num_train_steps
        if cfg.beta_schedule == "linear":
            betas = np.linspace(cfg.beta_start, cfg.beta_end, T, dtype=np.float64)
        else:  # squaredcos_cap_v2, as diffusers' betas_for_alpha_bar
            i = np.arange(T, dtype=np.float64)
            betas = np.minimum(1.0 - _alpha_bar_cos((i + 1) / T) / _alpha_bar_cos(i / T), 0.999)
        self.betas: np.ndarray = betas
        """(T,) float64."""
        self.alphas_cumprod: np.ndarray = np.cumprod(1.0 - betas)
        """(T,) float64: alpha_bar_t = prod_{i <= t} (1 - beta_i)."""

    @property
    def step_size(self) -> int:
        """Training timesteps between two DDIM steps (T // inference_steps)."""
        return self.cfg.num_train_steps // self.cfg.inference_steps

    def ddim_timesteps(self) -> np.ndarray:
        """(n,) int64, descending, 'leading' spacing: (arange(n) * (T // n))[::-1]."""
        n = self.cfg.inference_steps
        return (np.arange(n, dtype=np.int64) * self.step_size)[::-1].copy()

    def add_noise(self, x0: np.ndarray, noise: np.ndarray, t: int | np.ndarray) -> np.ndarray:
        """q_sample: sqrt(a_t) x0 + sqrt(1 - a_t) noise. ``t`` is a scalar or (B,) per batch row
        (leading axis of ``x0``); the result has ``x0``'s shape and dtype."""
        t = np.asarray(t, dtype=np.int64)
        a = self.alphas_cumprod[t].reshape(t.shape + (1,) * (np.ndim(x0) - t.ndim))
        out = np.sqrt(a) * x0 + np.sqrt(1.0 - a) * noise
        return out.astype(np.asarray(x0).dtype, copy=False)

    def ddim_step(
        self,
        x: np.ndarray,
        eps: np.ndarray,
        t: int,
        t_prev: int,
        known: np.ndarray | None = None,
        weights: np.ndarray | None = None,
    ) -> np.ndarray:
        """One deterministic DDIM step from timestep ``t`` to ``t_prev`` (< 0: to x0, where
        alpha_bar is 1), given the denoiser's output ``eps`` (the predicted x0 when
        ``prediction_type`` is 'sample'). Computed in float64, returned in ``x``'s dtype.

        When x0 is clipped, eps is recomputed from the clipped x0 (diffusers'
        ``use_clipped_model_output=True``): x_prev then lies on the line through the clipped x0
        that the next step would predict, instead of mixing a clipped x0 with the raw eps.

        Guidance (``known`` broadcastable to x, ``weights`` (F,) in [0, 1] over axis 1): the
        predicted x0 becomes ``x0 + w (known - x0)`` before the step, i.e. x_prev's prefix is
        blended with ``known`` noised forward to ``t_prev`` with the step's own eps (the
        deterministic form of inpainting); at the last step (alpha_bar 1) a weight of 1 gives
        ``known`` itself. Weights of 0 change no bit of the result."""
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[t_prev] if t_prev >= 0 else 1.0
        x64 = np.asarray(x, dtype=np.float64)
        sample = self.cfg.prediction_type == "sample"
        if sample:
            x0 = np.asarray(eps, dtype=np.float64)
        else:
            eps64 = np.asarray(eps, dtype=np.float64)
            x0 = (x64 - math.sqrt(1.0 - a_t) * eps64) / math.sqrt(a_t)
        if self.cfg.clip_sample:
            r = self.cfg.clip_range
            x0 = np.clip(x0, -r, r)
        if sample or self.cfg.clip_sample:
            eps64 = (x64 - math.sqrt(a_t) * x0) / math.sqrt(1.0 - a_t)
        if known is not None:
            w = np.asarray(weights, np.float64).reshape((1, -1) + (1,) * (x64.ndim - 2))
            x0 = x0 + w * (np.asarray(known, np.float64) - x0)
        x_prev = math.sqrt(a_prev) * x0 + math.sqrt(1.0 - a_prev) * eps64
        return x_prev.astype(np.asarray(x).dtype, copy=False)


EpsFn = Callable[[np.ndarray, np.ndarray], Any]
"""eps_fn(x (B, ...) in x_T's dtype, t (B,) int64) -> eps, anything ``np.asarray`` takes."""


def ddim_sample(
    eps_fn: EpsFn,
    x_T: np.ndarray,
    cfg: ScheduleConfig | NoiseSchedule,
    known: np.ndarray | None = None,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Run the full DDIM loop from noise ``x_T`` (B, ...) to x0 (same shape and dtype).

    ``eps_fn`` may wrap an ONNX Runtime session or a torch module (return ``.cpu().numpy()``),
    so the exporter can run the same loop both ways to check parity. ``known`` (B or 1, F, ...)
    and ``weights`` (F,) in [0, 1]: guide every step towards ``known`` (see ``ddim_step``;
    ``clamp_core.policy.guidance`` makes them from the plan executing)."""
    sched = cfg if isinstance(cfg, NoiseSchedule) else NoiseSchedule(cfg)
    x = np.ascontiguousarray(x_T)
    if x.ndim < 1:
        raise ValueError("x_T needs a leading batch axis, got a scalar")
    if known is not None:
        if x.ndim < 2 or weights is None or np.shape(weights) != (x.shape[1],):
            raise ValueError(
                f"weights: needs shape ({x.shape[1] if x.ndim > 1 else '?'},), one per action "
                f"of x_T {x.shape}, got {None if weights is None else np.shape(weights)}"
            )
        w = np.asarray(weights, np.float64)
        if not (np.isfinite(w).all() and (w >= 0).all() and (w <= 1).all()):
            raise ValueError("weights: need finite values in [0, 1]")
        np.broadcast_shapes(np.shape(known), x.shape)
    step = sched.step_size
    t_batch = np.empty((x.shape[0],), dtype=np.int64)
    for t in sched.ddim_timesteps():
        t_batch.fill(t)
        eps = np.asarray(eps_fn(x, t_batch))
        if eps.shape != x.shape:
            raise ValueError(f"eps_fn returned shape {eps.shape}, expected {x.shape}")
        x = sched.ddim_step(x, eps, int(t), int(t) - step, known, weights)
    return x
