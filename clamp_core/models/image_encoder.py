"""CLAMP's multi-view 3D image encoder: a ViT over the five rendered depth + XYZ views.

Each patch token also gets the 3D centroid (base frame, metres) of the points its pixels see.
Attention between two tokens then depends on the vector between their centroids through a
STRING-style relative position term: queries and keys are multiplied by a learned orthogonal
matrix P (a product of Householder reflections) and rotated by angles proportional to the
centroid's x, y, z at log-spaced frequencies (3D rotary embedding). Because
``(R(p_i) P q)^T (R(p_j) P k) = (P q)^T R(p_j - p_i) (P k)``, the logits depend only on the
*relative* 3D position, across views as well as within one: the same table point seen by two
cameras attends to itself wherever it appears in the tiled image.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import ModelConfig
from .layers import Block


class String3d(nn.Module):
    """Rotary 3D position term with a learned orthogonal basis change (per layer)."""

    def __init__(
        self, head_dim: int, min_wavelength_m: float, max_wavelength_m: float, reflections: int
    ):
        super().__init__()
        self.head_dim = head_dim
        self.n_freq = head_dim // 6
        wl = torch.logspace(math.log10(min_wavelength_m), math.log10(max_wavelength_m), self.n_freq)
        self.register_buffer("freqs", 2 * math.pi / wl, persistent=False)
        self.reflect = nn.Parameter(torch.randn(reflections, head_dim) / math.sqrt(head_dim))

    def basis(self) -> torch.Tensor:
        """(head_dim, head_dim) orthogonal P = H_1 ... H_r (identity when r = 0)."""
        p = torch.eye(self.head_dim, device=self.reflect.device)
        for v in self.reflect:
            v = v / (v.norm() + 1e-8)
            p = p - 2.0 * torch.outer(p @ v, v)
        return p

    def angles(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pos (B, N, 3) metres -> cos, sin (B, 1, N, 3 * n_freq)."""
        a = (pos[..., None] * self.freqs).flatten(-2)
        return torch.cos(a)[:, None], torch.sin(a)[:, None]

    def apply(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, p: torch.Tensor):
        """Rotate (x_i, x_{i+h/2}) pairs of P x by the angles (the pairing is arbitrary since P
        is learned; split halves need fewer graph ops than interleaved pairs)."""
        x = torch.matmul(x, p.t())
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class ImageEncoder(nn.Module):
    """views (B, V, S, S, 4) [depth_m, x, y, z; empty = 0] -> (cls (B, D), per-view (B, V, D),
    tokens (B, N, D), centroids (B, N, 3))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        ic = cfg.image
        self.cfg = cfg
        self.p = ic.patch_size
        self.grid = cfg.view_size // ic.patch_size
        self.num_views = cfg.num_views
        n_patch = self.grid * self.grid
        self.embed = nn.Linear(self.p * self.p * 5, ic.dim)
        self.view_emb = nn.Parameter(torch.randn(cfg.num_views, 1, ic.dim) * 0.02)
        self.patch_emb = nn.Parameter(torch.randn(1, n_patch, ic.dim) * 0.02)
        self.empty_emb = nn.Parameter(torch.zeros(ic.dim))
        self.cls = nn.Parameter(torch.zeros(1, 1, ic.dim))
        head_dim = ic.dim // ic.heads
        self.blocks = nn.ModuleList(Block(ic.dim, ic.heads, ic.mlp_ratio) for _ in range(ic.layers))
        self.string = nn.ModuleList(
            String3d(
                head_dim,
                ic.string_min_wavelength_m,
                ic.string_max_wavelength_m,
                ic.string_reflections,
            )
            for _ in range(ic.layers)
        )
        self.norm = nn.LayerNorm(ic.dim)

    def patchify(self, views: torch.Tensor):
        """-> patch features (B, V*g*g, p*p*5), centroids (B, V*g*g, 3) m, occupancy (B, N, 1)."""
        b, v, s, _, _ = views.shape
        g, p = self.grid, self.p
        # metric depth and XYZ are O(1) in a tabletop workspace and empty pixels are 0 in every
        # channel, so the raw values plus a validity channel feed the (linear) patch embedding
        # directly: any per-channel scale or offset is one the embedding can learn, and the
        # graph skips five full-resolution elementwise passes.
        xyz = views[..., 1:4]
        valid = (views[..., :1] > 0).to(views.dtype)
        feats = torch.cat([views, valid], dim=-1)
        feats = feats.reshape(b, v, g, p, g, p, 5).permute(0, 1, 2, 4, 3, 5, 6)
        feats = feats.reshape(b, v * g * g, p * p * 5)
        vx = xyz.reshape(b, v, g, p, g, p, 3).sum(dim=(3, 5)).reshape(b, -1, 3)
        cnt = valid.reshape(b, v, g, p, g, p, 1).sum(dim=(3, 5)).reshape(b, -1, 1)
        centroid = vx / cnt.clamp(min=1.0)
        return feats, centroid, cnt / (p * p)

    def forward(self, views: torch.Tensor):
        b = views.shape[0]
        feats, centroid, occ = self.patchify(views)
        x = self.embed(feats)
        x = x.reshape(b, self.num_views, -1, x.shape[-1]) + self.view_emb + self.patch_emb
        x = x.reshape(b, -1, x.shape[-1])
        x = x + (occ <= 0).to(x.dtype) * self.empty_emb
        x = torch.cat([self.cls.expand(b, -1, -1), x], dim=1)
        # the summary token sits at the origin of the 3D term
        pos = torch.cat([torch.zeros_like(centroid[:, :1]), centroid], dim=1)
        cos, sin = self.string[0].angles(pos)  # same frequencies in every layer
        for blk, string in zip(self.blocks, self.string, strict=True):
            pmat = string.basis()

            def rotate(q, k, cos=cos, sin=sin, pmat=pmat, string=string):
                return string.apply(q, cos, sin, pmat), string.apply(k, cos, sin, pmat)

            x = blk(x, rotate=rotate)
        x = self.norm(x)
        tokens = x[:, 1:]
        per_view = tokens.reshape(b, self.num_views, -1, tokens.shape[-1]).mean(dim=2)
        return x[:, 0], per_view, tokens, centroid
