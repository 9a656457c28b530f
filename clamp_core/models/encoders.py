"""The action-history, text and RGB encoders of CLAMP.

- action: Transformer over the normalised past actions a(t-H) .. a(t-1);
- text: Transformer over hashed instruction / object-name words, object positions injected at
  their POS slots and a task-progress embedding (see :mod:`.tokenizer`); trained from scratch,
  and replaceable by anything with the same ``forward`` signature;
- rgb: a ResNet-18-shaped CNN (GroupNorm, so few-shot fine-tuning with small batches is stable)
  whose feature map is pooled by learned queries to a few tokens per camera.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 - the usual torch alias

from .config import ActionEncoderConfig, RgbEncoderConfig, TextEncoderConfig
from .layers import SequenceEncoder
from .tokenizer import PAD, POS, PROGRESS


class ActionEncoder(nn.Module):
    """action_history (B, H, A) normalised -> (B, dim)."""

    def __init__(self, cfg: ActionEncoderConfig, action_dim: int):
        super().__init__()
        self.inp = nn.Linear(action_dim, cfg.dim)
        self.seq = SequenceEncoder(cfg.dim, cfg.layers, cfg.heads, max(cfg.history, 1))

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        summary, _ = self.seq(self.inp(history))
        return summary


class TextEncoder(nn.Module):
    """ids (B, L) int64, numbers (B, L, 3), progress (B,) int64 -> (B, dim)."""

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.tok = nn.Embedding(cfg.vocab_size, cfg.dim, padding_idx=PAD)
        self.num = nn.Sequential(nn.Linear(3, cfg.dim), nn.GELU(), nn.Linear(cfg.dim, cfg.dim))
        self.progress = nn.Embedding(cfg.max_progress, cfg.dim)
        self.seq = SequenceEncoder(cfg.dim, cfg.layers, cfg.heads, cfg.max_tokens)

    def forward(self, ids, numbers, progress) -> torch.Tensor:
        x = self.tok(ids)
        is_pos = (ids == POS).unsqueeze(-1).to(x.dtype)
        is_prog = (ids == PROGRESS).unsqueeze(-1).to(x.dtype)
        x = x + is_pos * self.num(numbers) + is_prog * self.progress(progress)[:, None]
        summary, _ = self.seq(x, pad_mask=ids == PAD)
        return summary


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.GroupNorm(min(8, cout // 4), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.GroupNorm(min(8, cout // 4), cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.GroupNorm(min(8, cout // 4), cout)
            )

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


TORCHVISION_ONLY = ("running_mean", "running_var", "num_batches_tracked")


def resnet_state(state: dict, where: str = "rgb weights") -> dict:
    """A state_dict for ``RgbEncoder``: its own, or torchvision's ResNet-18 (``conv1``,
    ``bn1``, ``layer1``..``layer4``, ``fc``). From torchvision's, the convolutions and the norm
    layers' affine weights load; BatchNorm's running statistics have no GroupNorm counterpart and
    the classifier ``fc`` no use here, so both are left out. Any other key is an error."""
    state = {
        k: v
        for k, v in state.items()
        if not k.startswith("fc.") and k.rsplit(".", 1)[-1] not in TORCHVISION_ONLY
    }
    ours = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.", "pool_queries")
    ours += ("proj.", "cam_emb")
    unexpected = sorted(k for k in state if not k.startswith(ours))
    if unexpected:
        raise ValueError(f"{where}: unexpected keys {unexpected[:5]}")
    return state


class RgbEncoder(nn.Module):
    """rgb (B, C, h, w, 3) uint8 -> (B, C * tokens_per_camera, out_dim).

    Layer names follow torchvision's ResNet-18 (conv1, bn1, layer1..4), GroupNorm in place of
    BatchNorm; ``cfg.weights`` loads a state_dict of this module.
    """

    MEAN = (0.485, 0.456, 0.406)
    STD = (0.229, 0.224, 0.225)

    def __init__(self, cfg: RgbEncoderConfig, out_dim: int):
        super().__init__()
        c = cfg.base_channels
        self.conv1 = nn.Conv2d(3, c, 7, 2, 3, bias=False)
        self.bn1 = nn.GroupNorm(min(8, c // 4), c)
        widths = [c, 2 * c, 4 * c, 8 * c]
        cin = c
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            setattr(
                self,
                f"layer{i + 1}",
                nn.Sequential(_BasicBlock(cin, w, stride), _BasicBlock(w, w, 1)),
            )
            cin = w
        # learned-query attention pooling: any feature-map size, exports to plain ONNX ops
        self.pool_queries = nn.Parameter(torch.randn(cfg.tokens_per_camera, cin) * cin**-0.5)
        self.proj = nn.Linear(cin, out_dim)
        self.cam_emb = nn.Parameter(torch.randn(len(cfg.cameras), 1, out_dim) * 0.02)
        self.register_buffer("mean", torch.tensor(self.MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.STD).view(1, 3, 1, 1), persistent=False)
        if cfg.weights:
            state = torch.load(cfg.weights, map_location="cpu", weights_only=True)
            self.load_state_dict(resnet_state(state, cfg.weights), strict=False)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        b, c, h, w, _ = rgb.shape
        x = rgb.reshape(b * c, h, w, 3).permute(0, 3, 1, 2).to(torch.float32) / 255.0
        x = (x - self.mean) / self.std
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = x.flatten(2).transpose(1, 2)  # (B*C, h'w', ch)
        attn = torch.softmax(torch.matmul(x, self.pool_queries.t()), dim=1)  # over positions
        x = torch.matmul(attn.transpose(1, 2), x)  # (B*C, t, ch)
        x = self.proj(x).reshape(b, c, -1, self.proj.out_features) + self.cam_emb
        return x.reshape(b, -1, self.proj.out_features)
