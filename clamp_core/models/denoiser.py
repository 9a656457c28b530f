"""Diffusion Policy denoiser (ALOHA-Unleashed style): an encoder over the observation condition
tokens, run once per inference, and a decoder over the noisy 50 x 14 action chunk that
cross-attends to them, run once per DDIM step. Predicts the noise (epsilon) or the clean chunk
(sample), as the noise schedule's ``prediction_type`` says."""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .layers import Block, sinusoidal


class Denoiser(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        dc = cfg.denoiser
        d = dc.dim
        self.dim = d
        self.cond_type = nn.Parameter(torch.randn(1, cfg.num_cond_tokens, d) * 0.02)
        self.cond_blocks = nn.ModuleList(
            Block(d, dc.heads, dc.mlp_ratio, dropout=dc.dropout) for _ in range(dc.cond_layers)
        )
        self.cond_norm = nn.LayerNorm(d)
        self.act_in = nn.Linear(cfg.action_dim, d)
        self.act_pos = nn.Parameter(torch.randn(1, cfg.action_horizon, d) * 0.02)
        self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.blocks = nn.ModuleList(
            Block(d, dc.heads, dc.mlp_ratio, cross=True, dropout=dc.dropout)
            for _ in range(dc.layers)
        )
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.action_dim)

    def encode_condition(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, Nc, dim) condition tokens -> (B, Nc, dim) memory the decoder attends to."""
        x = tokens + self.cond_type
        for blk in self.cond_blocks:
            x = blk(x)
        return self.cond_norm(x)

    def forward(self, noisy: torch.Tensor, timestep: torch.Tensor, memory: torch.Tensor):
        """noisy (B, F, A), timestep (B,) int64, memory (B, Nc, dim) -> eps or x0 (B, F, A)."""
        temb = self.time_mlp(sinusoidal(timestep, self.dim))[:, None]
        x = self.act_in(noisy) + self.act_pos + temb
        context = torch.cat([memory, temb], dim=1)
        for blk in self.blocks:
            x = blk(x, context=context)
        return self.head(self.norm(x))
