"""Seam-aware sampling: a new chunk generated consistent with the plan that is executing.

While a chunk is computed the arm keeps following the plan it has: the new chunk's first
``delay`` actions (observation stamp to arrival) are in the past when it lands, and the ones
after should continue the plan rather than start over. The DDIM sampler is guided on that
prefix, inpainting-style (the idea of real-time chunking, Black et al. 2025, for flow policies,
applied to our DDIM loop; no retraining): at every denoising step the predicted clean chunk is
pulled towards the known actions with a per-action weight: ``guidance_weight`` up to and
including the switch step, then a decay to 0 over the rest of the plan's overlap with the new
chunk (the shape real-time chunking uses: ``c (e^c - 1) / (e - 1)`` with c falling linearly
from 1 to 0), 0 where no plan covers the action. See ``NoiseSchedule.ddim_step``.

Chunk selection: with several candidates sampled in one batched call, keep the one closest to
the plan over the overlap (the backward-coherence half of bidirectional decoding, Liu et al.,
ICLR 2025).
"""

from __future__ import annotations

import math

import numpy as np


def prefix_profile(horizon: int, delay_steps: int, overlap_steps: int) -> np.ndarray:
    """(horizon,) float64 in [0, 1]: 1 for actions 0..``delay_steps`` (the ones that run, or are
    past, before the new chunk takes over, and the switch itself), then decaying to 0 at
    ``overlap_steps`` (where the plan followed ends), 0 from there on."""
    k = np.arange(horizon, dtype=np.float64)
    n = int(min(max(overlap_steps, 0), horizon))
    d = int(max(delay_steps, 0))
    w = np.zeros(horizon)
    if n == 0:
        return w
    if d + 1 >= n:
        w[:n] = 1.0
        return w
    w[: d + 1] = 1.0
    c = (n - k[d + 1 : n]) / (n - d)
    w[d + 1 : n] = c * np.expm1(c) / (math.e - 1.0)
    return w


def coherence_scores(candidates: np.ndarray, prefix: np.ndarray, profile: np.ndarray) -> np.ndarray:
    """(K,) weighted squared distance of each candidate (K, F, A) from the plan ``prefix``
    (F, A) with per-action weights ``profile`` (F,) (same units as the actions): lower is more
    coherent with what is executing."""
    diff = np.asarray(candidates, np.float64) - np.asarray(prefix, np.float64)[None]
    return np.einsum("f,kfa->k", np.asarray(profile, np.float64), diff * diff)
