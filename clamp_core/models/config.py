"""Model configuration: one dataclass per module, grouped in :class:`ModelConfig`, with the
``cpu-small`` and ``paper`` presets. Plain data (no torch), so the runtime and the CLI can read
it without importing the training stack.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..perception.config import ConfigError


@dataclass
class ImageEncoderConfig:
    """ViT over the rendered 4-channel views with a 3D relative position term (STRING)."""

    patch_size: int = 16
    """Square patch side (px); the view size must be a multiple of it."""
    dim: int = 384
    """Token width (the paper preset's; dim / heads a multiple of 6)."""
    layers: int = 6
    """Transformer blocks."""
    heads: int = 8
    """Attention heads; dim / heads must be a multiple of 6 (3 axes x sin/cos pairs)."""
    mlp_ratio: float = 4.0
    """Hidden width of each block's MLP relative to dim."""
    string_min_wavelength_m: float = 0.02
    """Shortest wavelength of the 3D rotary frequencies (m): finest resolved offset."""
    string_max_wavelength_m: float = 4.0
    """Longest wavelength (m): larger than the workspace so far tokens stay distinguishable."""
    string_reflections: int = 2
    """Householder reflections forming STRING's learned orthogonal basis change (0 = plain 3D
    RoPE)."""

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ConfigError(
                f"image encoder: dim {self.dim} is not divisible by heads {self.heads}"
            )
        if (self.dim // self.heads) % 6:
            raise ConfigError(
                f"image encoder: head width {self.dim // self.heads} must be a multiple of 6 "
                "(x, y, z rotary pairs); change dim or heads"
            )
        if not 0 < self.string_min_wavelength_m < self.string_max_wavelength_m:
            raise ConfigError("image encoder: need 0 < string_min_wavelength_m < max")


@dataclass
class ActionEncoderConfig:
    """Transformer over the history of past actions a(t-H) .. a(t-1)."""

    history: int = 10
    """Past actions encoded (H)."""
    history_stride: int = 1
    """Control steps between consecutive history samples: the history spans history x
    history_stride steps (e.g. 10 x 5 = the last second at 50 Hz)."""
    dim: int = 128
    layers: int = 2
    heads: int = 4

    def __post_init__(self) -> None:
        if not (isinstance(self.history_stride, int) and self.history_stride >= 1):
            raise ConfigError(
                f"action encoder: history_stride must be an integer >= 1, got "
                f"{self.history_stride!r}"
            )


@dataclass
class TextEncoderConfig:
    """Small Transformer over instruction words, object names + positions and task progress."""

    vocab_size: int = 4096
    """Hashed word vocabulary (no download: words map to ids by a stable hash)."""
    max_tokens: int = 48
    """Sequence length after padding / truncation."""
    max_progress: int = 16
    """Task progress integers 0 .. max_progress-1 get their own embedding."""
    dim: int = 128
    layers: int = 2
    heads: int = 4


@dataclass
class RgbEncoderConfig:
    """ResNet-18-shaped encoder of the real cameras' colour images (optional branch)."""

    enabled: bool = False
    """Feed RGB features to the policy; off, the model needs no colour images."""
    cameras: list[str] = field(
        default_factory=lambda: ["cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist"]
    )
    """Cameras whose colour image the branch consumes, in this order."""
    width: int = 128
    """Colour images are resized to width x height before the encoder (px)."""
    height: int = 96
    base_channels: int = 32
    """Channels of the first stage (64 = ResNet-18's widths)."""
    tokens_per_camera: int = 4
    """Feature map pooled (learned attention queries) to this many tokens per camera."""
    weights: str = ""
    """Optional state_dict (.pt) to initialise the branch from (e.g. pretrained elsewhere)."""

    def __post_init__(self) -> None:
        if self.tokens_per_camera < 1 or self.width < 32 or self.height < 32:
            raise ConfigError("rgb: need tokens_per_camera >= 1 and images of at least 32x32")


@dataclass
class DenoiserConfig:
    """ALOHA-Unleashed-style transformer: an observation encoder over the condition tokens,
    then a decoder over the noisy action chunk that cross-attends to them."""

    dim: int = 256
    cond_layers: int = 2
    """Encoder blocks over the condition tokens (run once per inference, not per DDIM step)."""
    layers: int = 4
    """Decoder blocks (run every DDIM step)."""
    heads: int = 8
    mlp_ratio: float = 4.0
    dropout: float = 0.0


@dataclass
class ModelConfig:
    """Everything that shapes the network; stored in checkpoints and model metadata."""

    view_size: int = 224
    """Rendered view side (px); views are square."""
    num_views: int = 5
    action_dim: int = 14
    action_horizon: int = 50
    """Actions per predicted chunk (F)."""
    embed_dim: int = 128
    """Width of the shared contrastive embedding space."""
    view_tokens: int = 1
    """Each view gives the policy a view_tokens x view_tokens grid of its patch tokens, average
    pooled (1: one mean token per view). More tokens keep where things are in each view."""
    workspace_min: list[float] = field(default_factory=lambda: [-0.6, -0.45, -0.05])
    """Box the views' XYZ values come from (m; the perception crop box), for example inputs."""
    workspace_max: list[float] = field(default_factory=lambda: [0.6, 0.45, 0.6])
    image: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    action: ActionEncoderConfig = field(default_factory=ActionEncoderConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    rgb: RgbEncoderConfig = field(default_factory=RgbEncoderConfig)
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)

    def __post_init__(self) -> None:
        for name, cls in (
            ("image", ImageEncoderConfig),
            ("action", ActionEncoderConfig),
            ("text", TextEncoderConfig),
            ("rgb", RgbEncoderConfig),
            ("denoiser", DenoiserConfig),
        ):
            v = getattr(self, name)
            if isinstance(v, dict):
                setattr(self, name, _from_dict(cls, v, f"model.{name}"))
        if self.view_size % self.image.patch_size:
            raise ConfigError(
                f"view_size {self.view_size} is not a multiple of image.patch_size "
                f"{self.image.patch_size}"
            )
        if self.action_horizon < 1 or self.action_dim < 1:
            raise ConfigError("action_horizon and action_dim must be >= 1")
        if self.denoiser.dim % self.denoiser.heads:
            raise ConfigError("denoiser: dim must be divisible by heads")
        grid = self.view_size // self.image.patch_size
        if not (isinstance(self.view_tokens, int) and 1 <= self.view_tokens <= grid):
            raise ConfigError(
                f"view_tokens must be an integer in 1..{grid} (the patch grid side), "
                f"got {self.view_tokens}"
            )
        if grid % self.view_tokens:
            raise ConfigError(
                f"view_tokens {self.view_tokens} must divide the patch grid side {grid} "
                f"(view_size / patch_size)"
            )

    @property
    def num_cond_tokens(self) -> int:
        """CLS + view_tokens^2 pooled tokens per view + action embedding + proprio (+ RGB)."""
        n = 1 + self.num_views * self.view_tokens**2 + 1 + 1
        if self.rgb.enabled:
            n += len(self.rgb.cameras) * self.rgb.tokens_per_camera
        return n

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> ModelConfig:
        return _from_dict(ModelConfig, d, "model")


def _from_dict(cls, d: dict[str, Any], where: str):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    return cls(**d)


def preset(name: str) -> ModelConfig:
    """``cpu-small`` (trains and runs on 2 CPU cores) or ``paper`` (the paper's view size)."""
    if name == "cpu-small":
        return ModelConfig(
            view_size=96,
            embed_dim=64,
            image=ImageEncoderConfig(patch_size=12, dim=96, layers=3, heads=4),
            action=ActionEncoderConfig(history=10, dim=64, layers=2, heads=4),
            text=TextEncoderConfig(dim=64, layers=2, heads=4),
            rgb=RgbEncoderConfig(enabled=False, width=96, height=72, base_channels=16),
            denoiser=DenoiserConfig(dim=128, cond_layers=2, layers=3, heads=4),
        )
    if name == "paper":
        return ModelConfig(
            view_size=224,
            embed_dim=256,
            image=ImageEncoderConfig(patch_size=16, dim=384, layers=8, heads=8),
            action=ActionEncoderConfig(history=10, dim=256, layers=4, heads=8),
            text=TextEncoderConfig(dim=256, layers=4, heads=8),
            rgb=RgbEncoderConfig(enabled=True, width=224, height=168, base_channels=64),
            denoiser=DenoiserConfig(dim=512, cond_layers=4, layers=6, heads=8),
        )
    raise ConfigError(f"unknown preset '{name}'; choose from {PRESETS}")


PRESETS = ("cpu-small", "paper")
