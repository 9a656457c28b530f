"""Transformer building blocks shared by the encoders and the denoiser.

Attention is written out with plain matmuls (no fused kernels) so the ONNX export is the same
graph on every exporter version, and so a rotary position term can be applied to q and k.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class Attention(nn.Module):
    """Multi-head attention; ``rotate(q, k)`` (optional) applies a relative position term to
    queries and keys shaped (B, heads, N, head_dim)."""

    def __init__(self, dim: int, heads: int, kv_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention: dim {dim} not divisible by heads {heads}")
        self.heads = heads
        self.head_dim = dim // heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(kv_dim or dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.reshape(b, n, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x, context=None, key_padding_mask=None, rotate=None) -> torch.Tensor:
        """x (B, N, dim); context (B, M, kv_dim) or None (self-attention); key_padding_mask
        (B, M) bool, True = ignore."""
        ctx = x if context is None else context
        q = self._split(self.q(x))
        k, v = self.kv(ctx).chunk(2, dim=-1)
        k, v = self._split(k), self._split(v)
        if rotate is not None:
            q, k = rotate(q, k)
        logits = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(self.head_dim))
        if key_padding_mask is not None:
            logits = logits.masked_fill(key_padding_mask[:, None, None, :], -1e9)
        attn = self.drop(torch.softmax(logits, dim=-1))
        y = torch.matmul(attn, v).transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
        return self.out(y)


class Mlp(nn.Sequential):
    def __init__(self, dim: int, ratio: float, dropout: float = 0.0):
        hidden = int(dim * ratio)
        super().__init__(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )


class Block(nn.Module):
    """Pre-norm transformer block: self-attention (+ optional cross-attention) + MLP."""

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float = 4.0,
        cross: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout=dropout)
        self.cross = cross
        if cross:
            self.norm_x = nn.LayerNorm(dim)
            self.cross_attn = Attention(dim, heads, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_ratio, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, context=None, key_padding_mask=None, rotate=None) -> torch.Tensor:
        x = x + self.drop(
            self.attn(self.norm1(x), key_padding_mask=key_padding_mask, rotate=rotate)
        )
        if self.cross:
            x = x + self.drop(self.cross_attn(self.norm_x(x), context=context))
        return x + self.drop(self.mlp(self.norm2(x)))


def sinusoidal(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(B,) numbers -> (B, dim) sin/cos features (diffusion timestep embedding)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class SequenceEncoder(nn.Module):
    """Learned-position Transformer over a token sequence with a prepended summary token."""

    def __init__(self, dim: int, layers: int, heads: int, max_len: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, max_len + 1, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor, pad_mask: torch.Tensor | None = None):
        """tokens (B, N, dim), pad_mask (B, N) True = padding -> (summary (B, dim), (B, N, dim))."""
        b, n, _ = tokens.shape
        x = torch.cat([self.cls.expand(b, -1, -1), tokens], dim=1) + self.pos[:, : n + 1]
        mask = None
        if pad_mask is not None:
            mask = torch.cat([torch.zeros_like(pad_mask[:, :1]), pad_mask], dim=1)
        for blk in self.blocks:
            x = blk(x, key_padding_mask=mask)
        x = self.norm(x)
        return x[:, 0], x[:, 1:]
