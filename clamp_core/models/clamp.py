"""The whole network: CLAMP encoders + contrastive heads + the Diffusion Policy denoiser.

Training uses :meth:`ClampModel.losses`; export splits the network into the two graphs the
robot runs (:class:`EncodersGraph` once per observation, :class:`DenoiserGraph` per DDIM step).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 - the usual torch alias

from .config import ModelConfig
from .denoiser import Denoiser
from .encoders import ActionEncoder, RgbEncoder, TextEncoder
from .image_encoder import ImageEncoder


def info_nce(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor):
    """Symmetric InfoNCE between L2-normalised (B, E) embeddings whose row i are a pair.
    Returns (loss, top-1 retrieval accuracy a->b)."""
    logits = logit_scale.exp().clamp(max=100.0) * a @ b.t()
    target = torch.arange(a.shape[0], device=a.device)
    loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
    acc = (logits.argmax(dim=1) == target).float().mean()
    return loss, acc


class ClampModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.denoiser.dim
        e = cfg.embed_dim
        self.image = ImageEncoder(cfg)
        self.action = ActionEncoder(cfg.action, cfg.action_dim)
        self.text = TextEncoder(cfg.text)
        self.rgb = RgbEncoder(cfg.rgb, d) if cfg.rgb.enabled else None
        # contrastive heads (CLIP-style, temperature learned per pair of modalities)
        self.image_head = nn.Linear(cfg.image.dim, e)
        self.action_head = nn.Linear(cfg.action.dim, e)
        self.text_head = nn.Linear(cfg.text.dim, e)
        self.scale_image_action = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.scale_image_text = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        # condition tokens of the policy
        self.cond_cls = nn.Linear(cfg.image.dim, d)
        self.cond_views = nn.Linear(cfg.image.dim, d)
        self.cond_action = nn.Linear(cfg.action.dim, d)
        self.cond_qpos = nn.Linear(cfg.action_dim, d)
        self.denoiser = Denoiser(cfg)  # its cond_type embedding tells the tokens apart

    # ------------------------------------------------------------------ pieces
    def encoder_modules(self) -> list[nn.Module]:
        """The CLAMP encoders and their contrastive heads (what fine-tuning may freeze)."""
        mods = [
            self.image,
            self.action,
            self.text,
            self.image_head,
            self.action_head,
            self.text_head,
        ]
        return mods

    def policy_modules(self) -> list[nn.Module]:
        mods = [self.cond_cls, self.cond_views, self.cond_action, self.cond_qpos, self.denoiser]
        if self.rgb is not None:
            mods.append(self.rgb)
        return mods

    def encode(self, views, action_history):
        """-> cls (B, D), per-view tokens (B, V * view_tokens^2, D), action embedding."""
        cls, per_view, tokens, _ = self.image(views)
        k = self.cfg.view_tokens
        if k > 1:
            b, v, d = tokens.shape[0], self.cfg.num_views, tokens.shape[-1]
            g = self.image.grid
            # (B, V, g, g, D) -> mean over (g/k x g/k) blocks -> (B, V*k*k, D), row-major
            x = tokens.reshape(b, v, k, g // k, k, g // k, d).mean(dim=(3, 5))
            per_view = x.reshape(b, v * k * k, d)
        act = self.action(action_history)
        return cls, per_view, act

    def condition(self, cls, per_view, act, qpos, rgb=None) -> torch.Tensor:
        """(B, Nc, dim) memory of the denoiser."""
        parts = [
            self.cond_cls(cls)[:, None],
            self.cond_views(per_view),
            self.cond_action(act)[:, None],
            self.cond_qpos(qpos)[:, None],
        ]
        if self.rgb is not None:
            if rgb is None:
                raise ValueError("this model has an RGB branch: rgb images are required")
            parts.append(self.rgb(rgb))
        return self.denoiser.encode_condition(torch.cat(parts, dim=1))

    # ------------------------------------------------------------------ training
    def forward(self, batch, alphas_cumprod, *args, **kwargs):
        """Same as :meth:`losses` (DistributedDataParallel synchronises through forward)."""
        return self.losses(batch, alphas_cumprod, *args, **kwargs)

    def losses(
        self,
        batch: dict[str, torch.Tensor],
        alphas_cumprod: torch.Tensor,
        train_encoders_with_policy: bool = False,
        contrastive: bool = True,
        text: bool = True,
        policy: bool = True,
        prediction_type: str = "epsilon",
    ) -> dict[str, torch.Tensor]:
        """Loss terms and metrics of one batch.

        batch: views (B, V, S, S, 4), qpos (B, A), action_history (B, H, A), actions (B, F, A)
        (all normalised), actions_is_pad (B, F) bool, text_ids (B, L), text_numbers (B, L, 3),
        text_progress (B,); or, with frozen encoders, their precomputed outputs cls, per_view and
        act in place of views and text. ``train_encoders_with_policy`` lets the diffusion loss
        reach the encoders (training from scratch); otherwise the policy sees them detached, as
        in CLAMP (encoders learn only from the contrastive objectives). ``prediction_type``: the
        denoiser learns the noise ('epsilon') or the clean chunk ('sample'), as the schedule says.
        """
        out: dict[str, torch.Tensor] = {}
        total = torch.zeros((), device=batch["qpos"].device)
        if "cls" in batch:  # precomputed outputs of frozen encoders
            if contrastive:
                raise ValueError("precomputed encoder features: the encoders cannot train")
            cls, per_view, act = batch["cls"], batch["per_view"], batch["act"]
        else:
            cls, per_view, act = self.encode(batch["views"], batch["action_history"])
        if contrastive:
            img_e = F.normalize(self.image_head(cls), dim=-1)
            act_e = F.normalize(self.action_head(act), dim=-1)
            loss, acc = info_nce(img_e, act_e, self.scale_image_action)
            out["loss_image_action"], out["acc_image_action"] = loss, acc
            total = total + loss
            if text:
                txt = self.text(batch["text_ids"], batch["text_numbers"], batch["text_progress"])
                txt_e = F.normalize(self.text_head(txt), dim=-1)
                loss, acc = info_nce(img_e, txt_e, self.scale_image_text)
                out["loss_image_text"], out["acc_image_text"] = loss, acc
                total = total + loss
        if policy:
            if not train_encoders_with_policy:
                cls, per_view, act = cls.detach(), per_view.detach(), act.detach()
            memory = self.condition(cls, per_view, act, batch["qpos"], batch.get("rgb"))
            x0 = batch["actions"]
            b = x0.shape[0]
            t = torch.randint(0, len(alphas_cumprod), (b,), device=x0.device)
            a = alphas_cumprod.to(x0.device)[t].to(x0.dtype).view(b, 1, 1)
            noise = torch.randn_like(x0)
            xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
            out_pred = self.denoiser(xt, t, memory)
            target = x0 if prediction_type == "sample" else noise
            keep = (~batch["actions_is_pad"]).to(x0.dtype).unsqueeze(-1)
            err = ((out_pred - target) ** 2 * keep).sum()
            loss = err / (keep.sum() * x0.shape[-1]).clamp(min=1)
            out["loss_diffusion"] = loss
            total = total + loss
        out["loss"] = total
        return out


class EncodersGraph(nn.Module):
    """views, qpos, action_history (+ rgb) -> cond: what runs once per observation."""

    def __init__(self, model: ClampModel):
        super().__init__()
        self.model = model

    def forward(self, views, qpos, action_history, rgb=None):
        cls, per_view, act = self.model.encode(views, action_history)
        return self.model.condition(cls, per_view, act, qpos, rgb)


class DenoiserGraph(nn.Module):
    """noisy_actions, timestep, cond -> eps: what runs every DDIM step."""

    def __init__(self, model: ClampModel):
        super().__init__()
        self.denoiser = model.denoiser

    def forward(self, noisy_actions, timestep, cond):
        return self.denoiser(noisy_actions, timestep, cond)
