"""Shapes, masks and invariances of the CLAMP encoders, the denoiser and the losses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clamp_core.models.clamp import ClampModel, info_nce
from clamp_core.models.config import PRESETS, ModelConfig, preset
from clamp_core.models.encoders import RgbEncoder, TextEncoder
from clamp_core.models.image_encoder import ImageEncoder, String3d
from clamp_core.models.tokenizer import CLS, PAD, POS, PROGRESS, SEP, tokenize, words
from clamp_core.perception.config import ConfigError


def tiny_config(**kw) -> ModelConfig:
    d = preset("cpu-small").to_dict()
    d.update(view_size=24)
    d["image"].update(patch_size=8, dim=48, layers=2, heads=2)
    d["denoiser"].update(dim=32, layers=1, cond_layers=1, heads=2)
    d["action"].update(dim=32, heads=2, history=4)
    d["text"].update(dim=32, heads=2, max_tokens=16)
    for k, v in kw.items():
        if isinstance(v, dict):
            d[k].update(v)
        else:
            d[k] = v
    return ModelConfig.from_dict(d)


def random_views(b, cfg, seed=0, empty_frac=0.3):
    g = torch.Generator().manual_seed(seed)
    s = cfg.view_size
    xyz = torch.rand(b, cfg.num_views, s, s, 3, generator=g) - 0.5
    depth = 0.3 + torch.rand(b, cfg.num_views, s, s, 1, generator=g)
    valid = (torch.rand(b, cfg.num_views, s, s, 1, generator=g) > empty_frac).float()
    return torch.cat([depth, xyz], -1) * valid


@pytest.mark.parametrize("name", ["default", *PRESETS])
def test_the_default_config_and_every_preset_build_a_model(name):
    """What a new user gets from ModelConfig() or --preset must construct (the default once did
    not: a head width that was not a multiple of 6)."""
    cfg = ModelConfig() if name == "default" else preset(name)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    model = ClampModel(cfg)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_presets_are_valid_and_differ():
    small, paper = preset("cpu-small"), preset("paper")
    assert small.view_size < paper.view_size == 224
    assert paper.rgb.enabled and not small.rgb.enabled
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("huge")


@pytest.mark.parametrize(
    "change, match",
    [
        ({"view_size": 25}, "multiple of image.patch_size"),
        ({"image": {"dim": 40, "heads": 2}}, "multiple of 6"),
        ({"image": {"dim": 50, "heads": 4}}, "not divisible"),
        ({"bogus": 1}, "unknown keys"),
        ({"action": {"history_stride": 0}}, "history_stride must be an integer >= 1"),
        ({"view_tokens": 0}, "view_tokens must be an integer in 1..3"),
        ({"view_tokens": 4}, "view_tokens must be an integer in 1..3"),
        ({"view_size": 32, "image": {"patch_size": 8}, "view_tokens": 3}, "must divide"),
    ],
)
def test_model_config_rejects_bad_values(change, match):
    d = tiny_config().to_dict()
    for k, v in change.items():
        if isinstance(v, dict):
            d[k].update(v)
        else:
            d[k] = v
    with pytest.raises(ConfigError, match=match):
        ModelConfig.from_dict(d)


def test_image_encoder_shapes_centroids_and_occupancy():
    cfg = tiny_config()
    enc = ImageEncoder(cfg).eval()
    views = random_views(2, cfg)
    views[0, 1] = 0  # an empty view
    cls, per_view, tokens, centroid = enc(views)
    g = cfg.view_size // cfg.image.patch_size
    n = cfg.num_views * g * g
    assert cls.shape == (2, cfg.image.dim)
    assert per_view.shape == (2, cfg.num_views, cfg.image.dim)
    assert tokens.shape == (2, n, cfg.image.dim)
    assert centroid.shape == (2, n, 3)
    # centroid oracle: mean XYZ of the valid pixels of each patch, computed with numpy loops
    v = views.numpy()
    p = cfg.image.patch_size
    for view in (0, 1, 3):
        for r in range(g):
            for c in range(g):
                patch = v[0, view, r * p : (r + 1) * p, c * p : (c + 1) * p]
                ok = patch[..., 0] > 0
                want = patch[ok][:, 1:].mean(0) if ok.any() else np.zeros(3)
                got = centroid[0, view * g * g + r * g + c].numpy()
                np.testing.assert_allclose(got, want, atol=1e-5)
    occ = enc.patchify(views)[2]
    assert torch.all(occ[0, g * g : 2 * g * g] == 0)  # the empty view
    assert torch.all(occ[1] > 0)


def test_encoder_output_depends_on_one_more_point():
    cfg = tiny_config()
    enc = ImageEncoder(cfg).eval()
    views = random_views(1, cfg)
    views[0, 0, 0, 0] = 0  # an empty pixel (all channels 0, as the renderer writes it)
    out1 = enc(views)[0]
    views2 = views.clone()
    views2[0, 0, 0, 0] = torch.tensor([0.5, 0.1, 0.1, 0.1])
    assert not torch.allclose(enc(views2)[0], out1)


def test_string_logits_depend_only_on_relative_position():
    torch.manual_seed(0)
    s = String3d(head_dim=12, min_wavelength_m=0.02, max_wavelength_m=4.0, reflections=2)
    p = s.basis()
    np.testing.assert_allclose((p @ p.t()).detach().numpy(), np.eye(12), atol=1e-5)
    q = torch.randn(1, 1, 5, 12)
    k = torch.randn(1, 1, 5, 12)
    pos = torch.rand(1, 5, 3)

    def logits(pos):
        cos, sin = s.angles(pos)
        return s.apply(q, cos, sin, p) @ s.apply(k, cos, sin, p).transpose(-1, -2)

    base = logits(pos)
    shifted = logits(pos + torch.tensor([0.3, -0.7, 0.25]))
    torch.testing.assert_close(base, shifted, atol=1e-4, rtol=1e-4)
    # and they do depend on the relative positions
    moved = pos.clone()
    moved[0, 2] += 0.1
    assert (logits(moved) - base).abs().max() > 1e-3


def test_tokenizer_layout_and_truncation():
    tok = tokenize(
        "Put the mug on the plate",
        ["mug", "plate"],
        np.array([[0.1, 0.2, 0.3], [-0.5, 0.0, 0.1]]),
        progress=3,
        max_tokens=20,
    )
    ids = tok["ids"]
    assert ids[0] == CLS
    assert list(ids).count(POS) == 2 and list(ids).count(PROGRESS) == 1
    assert ids[7] == SEP  # CLS + 6 instruction words
    pos_rows = tok["numbers"][ids == POS]
    np.testing.assert_allclose(pos_rows, [[0.1, 0.2, 0.3], [-0.5, 0.0, 0.1]], atol=1e-6)
    assert tok["progress"] == 3 and tok["mask"].sum() == (ids != PAD).sum()
    # deterministic across calls (stable hash, not Python's salted hash)
    again = tokenize(
        "Put the mug on the plate", ["mug", "plate"], np.zeros((2, 3)), 3, max_tokens=20
    )
    np.testing.assert_array_equal(again["ids"], ids)
    # a long instruction is cut, objects and progress survive
    long = tokenize(
        " ".join(["word"] * 50),
        ["can_opener"],
        np.zeros((1, 3)),
        99,
        max_tokens=12,
        max_progress=16,
    )
    assert list(long["ids"]).count(POS) == 1 and long["ids"][-1] == PROGRESS
    assert long["progress"] == 15
    assert words("can_opener") == ["can", "opener"]
    with pytest.raises(ValueError, match="2 object names but 1 positions"):
        tokenize("x", ["a", "b"], np.zeros((1, 3)), 0)


def test_text_encoder_ignores_padding_and_reads_positions():
    cfg = tiny_config()
    enc = TextEncoder(cfg.text).eval()
    tok = tokenize("pick up the cube", ["cube"], np.array([[0.1, 0.2, 0.0]]), 1, max_tokens=16)
    ids = torch.from_numpy(tok["ids"])[None]
    nums = torch.from_numpy(tok["numbers"])[None]
    prog = torch.tensor([1])
    out = enc(ids, nums, prog)
    assert out.shape == (1, cfg.text.dim)
    # numbers outside POS slots are ignored
    nums2 = nums.clone()
    nums2[0, ids[0] != POS] = 5.0
    torch.testing.assert_close(enc(ids, nums2, prog), out)
    # the object's position and the progress integer matter
    nums3 = nums.clone()
    nums3[0, ids[0] == POS] = torch.tensor([0.9, -0.9, 0.5])
    assert (enc(ids, nums3, prog) - out).abs().max() > 1e-4
    assert (enc(ids, nums, torch.tensor([5])) - out).abs().max() > 1e-4


def test_rgb_encoder_tokens_and_sizes():
    cfg = tiny_config(
        rgb={"enabled": True, "width": 64, "height": 48, "base_channels": 8, "tokens_per_camera": 3}
    )
    enc = RgbEncoder(cfg.rgb, 32)
    rgb = torch.randint(0, 256, (2, len(cfg.rgb.cameras), 48, 64, 3), dtype=torch.uint8)
    out = enc(rgb)
    assert out.shape == (2, len(cfg.rgb.cameras) * 3, 32)
    assert torch.isfinite(out).all()


def test_rgb_weights_load_and_bad_weights_fail(tmp_path):
    cfg = tiny_config(rgb={"enabled": True, "base_channels": 8})
    a = RgbEncoder(cfg.rgb, 32)
    torch.save(a.state_dict(), tmp_path / "rgb.pt")
    cfg2 = tiny_config(
        rgb={"enabled": True, "base_channels": 8, "weights": str(tmp_path / "rgb.pt")}
    )
    b = RgbEncoder(cfg2.rgb, 32)
    torch.testing.assert_close(b.conv1.weight, a.conv1.weight)
    torch.save({"junk.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    cfg3 = tiny_config(
        rgb={"enabled": True, "base_channels": 8, "weights": str(tmp_path / "bad.pt")}
    )
    with pytest.raises(ValueError, match="unexpected keys"):
        RgbEncoder(cfg3.rgb, 32)


def _batch(cfg, b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    tok = tokenize("reach the cube", ["cube"], np.zeros((1, 3)), 0, max_tokens=cfg.text.max_tokens)
    return {
        "views": random_views(b, cfg, seed),
        "qpos": torch.rand(b, 14, generator=g) * 2 - 1,
        "action_history": torch.rand(b, cfg.action.history, 14, generator=g) * 2 - 1,
        "actions": torch.rand(b, cfg.action_horizon, 14, generator=g) * 2 - 1,
        "actions_is_pad": torch.zeros(b, cfg.action_horizon, dtype=torch.bool),
        "text_ids": torch.from_numpy(tok["ids"]).repeat(b, 1),
        "text_numbers": torch.from_numpy(tok["numbers"]).repeat(b, 1, 1),
        "text_progress": torch.zeros(b, dtype=torch.int64),
    }


def test_model_losses_and_condition_shapes():
    cfg = tiny_config()
    m = ClampModel(cfg)
    alphas = torch.linspace(0.99, 0.01, 100)
    out = m.losses(_batch(cfg), alphas)
    for k in ("loss", "loss_image_action", "loss_image_text", "loss_diffusion"):
        assert torch.isfinite(out[k]), k
    b = _batch(cfg)
    cls, per_view, act = m.encode(b["views"], b["action_history"])
    memory = m.condition(cls, per_view, act, b["qpos"])
    assert memory.shape == (4, cfg.num_cond_tokens, cfg.denoiser.dim)
    eps = m.denoiser(b["actions"], torch.tensor([0, 5, 50, 99]), memory)
    assert eps.shape == b["actions"].shape


@pytest.mark.parametrize("k", [1, 2, 4])
def test_view_tokens_are_block_means_of_each_views_patch_tokens(k):
    """view_tokens k: each view gives k*k tokens, token (v, i, j) = mean of the patch tokens in
    block (i, j) of view v's g x g patch grid (checked against a loop over patches)."""
    cfg = tiny_config(view_size=32, view_tokens=k)
    m = ClampModel(cfg).eval()
    b = _batch(cfg, b=2)
    with torch.no_grad():
        _, per_view, _ = m.encode(b["views"], b["action_history"])
        cls, mean_per_view, tokens, _ = m.image(b["views"])
    g, v = m.image.grid, cfg.num_views
    assert per_view.shape == (2, v * k * k, cfg.image.dim)
    assert cfg.num_cond_tokens == 1 + v * k * k + 2
    grid = tokens.reshape(2, v, g, g, -1)
    s = g // k
    for vi in range(v):
        for i in range(k):
            for j in range(k):
                want = grid[:, vi, i * s : (i + 1) * s, j * s : (j + 1) * s].mean(dim=(1, 2))
                got = per_view[:, vi * k * k + i * k + j]
                torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    if k == 1:
        torch.testing.assert_close(per_view, mean_per_view, atol=1e-5, rtol=1e-5)
    memory = m.condition(cls, per_view, m.action(b["action_history"]), b["qpos"])
    assert memory.shape == (2, cfg.num_cond_tokens, cfg.denoiser.dim)


def test_sample_prediction_learns_the_chunk_not_the_noise():
    """prediction_type 'sample': the loss is the error on x0 (a denoiser that outputs x0 gets 0),
    'epsilon': the error on the noise."""
    cfg = tiny_config()
    m = ClampModel(cfg)
    b = _batch(cfg)
    alphas = torch.linspace(0.99, 0.01, 100)

    class Oracle(torch.nn.Module):
        def forward(self, xt, t, memory):
            return b["actions"]

    m.denoiser.forward = Oracle().forward
    with torch.no_grad():
        x0_loss = m.losses(b, alphas, contrastive=False, prediction_type="sample")
        eps_loss = m.losses(b, alphas, contrastive=False, prediction_type="epsilon")
    assert float(x0_loss["loss_diffusion"]) == 0.0
    assert float(eps_loss["loss_diffusion"]) > 0.1


def test_padded_actions_do_not_reach_the_diffusion_loss():
    cfg = tiny_config()
    m = ClampModel(cfg)
    alphas = torch.linspace(0.99, 0.01, 100)
    b = _batch(cfg)
    b["actions_is_pad"][:, 30:] = True

    def loss(batch):
        torch.manual_seed(7)  # same timesteps and noise for every call
        with torch.no_grad():
            return m.losses(batch, alphas, contrastive=False)["loss_diffusion"]

    base = loss(b)
    b2 = dict(b)
    b2["actions"] = b["actions"].clone()
    b2["actions"][:, 30:] += 10.0
    # padded rows' errors are not counted: a change to them reaches the loss only through
    # attention, while the same change to counted rows changes their own errors directly
    b3 = dict(b)
    b3["actions"] = b["actions"].clone()
    b3["actions"][:, :20] += 10.0
    assert abs(float(loss(b3) - base)) > abs(float(loss(b2) - base))
    # all padded: nothing to learn from, loss 0
    b4 = dict(b)
    b4["actions_is_pad"] = torch.ones_like(b["actions_is_pad"])
    assert float(loss(b4)) == 0.0


def test_policy_gradient_does_not_reach_encoders_unless_asked():
    cfg = tiny_config()
    m = ClampModel(cfg)
    alphas = torch.linspace(0.99, 0.01, 100)
    m.losses(_batch(cfg), alphas, contrastive=False)["loss"].backward()
    assert all(p.grad is None for p in m.image.parameters())
    assert any(p.grad is not None for p in m.denoiser.parameters())
    m.zero_grad(set_to_none=True)
    m.losses(_batch(cfg), alphas, train_encoders_with_policy=True, contrastive=False)[
        "loss"
    ].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.image.parameters())


def test_info_nce_perfect_and_random():
    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(16, 8), dim=-1)
    loss, acc = info_nce(a, a, torch.tensor(math.log(100.0)))
    assert acc == 1.0 and loss < 0.1
    b = torch.nn.functional.normalize(torch.randn(16, 8), dim=-1)
    loss_r, _ = info_nce(a, b, torch.tensor(0.0))
    assert abs(float(loss_r) - math.log(16)) < 0.3


def test_rgb_weights_load_from_a_torchvision_resnet18_state_dict(tmp_path):
    """torchvision's ResNet-18 key names (BatchNorm with running statistics, an fc classifier)
    load into the GroupNorm branch: convolutions and affine norm weights carry over, the
    statistics and fc are dropped, a wrong shape is refused."""
    cfg = tiny_config(rgb={"enabled": True, "base_channels": 64})
    g = torch.Generator().manual_seed(0)
    tv: dict[str, torch.Tensor] = {}

    def bn(prefix: str, c: int) -> None:
        tv[f"{prefix}.weight"] = torch.rand(c, generator=g)
        tv[f"{prefix}.bias"] = torch.rand(c, generator=g)
        tv[f"{prefix}.running_mean"] = torch.rand(c, generator=g)
        tv[f"{prefix}.running_var"] = torch.rand(c, generator=g)
        tv[f"{prefix}.num_batches_tracked"] = torch.tensor(7)

    tv["conv1.weight"] = torch.randn(64, 3, 7, 7, generator=g)
    bn("bn1", 64)
    cin = 64
    for i, w in enumerate((64, 128, 256, 512)):
        for b in range(2):
            p = f"layer{i + 1}.{b}"
            c_in = cin if b == 0 else w
            tv[f"{p}.conv1.weight"] = torch.randn(w, c_in, 3, 3, generator=g)
            bn(f"{p}.bn1", w)
            tv[f"{p}.conv2.weight"] = torch.randn(w, w, 3, 3, generator=g)
            bn(f"{p}.bn2", w)
            if b == 0 and i > 0:
                tv[f"{p}.downsample.0.weight"] = torch.randn(w, c_in, 1, 1, generator=g)
                bn(f"{p}.downsample.1", w)
        cin = w
    tv["fc.weight"] = torch.randn(1000, 512, generator=g)
    tv["fc.bias"] = torch.randn(1000, generator=g)
    torch.save(tv, tmp_path / "resnet18.pt")
    rgb = dict(cfg.rgb.__dict__, weights=str(tmp_path / "resnet18.pt"))
    enc = RgbEncoder(tiny_config(rgb=rgb).rgb, 32)
    torch.testing.assert_close(enc.conv1.weight, tv["conv1.weight"])
    torch.testing.assert_close(
        enc.layer3[0].downsample[0].weight, tv["layer3.0.downsample.0.weight"]
    )
    torch.testing.assert_close(enc.layer4[1].bn2.bias, tv["layer4.1.bn2.bias"])
    tv["layer1.0.conv1.weight"] = torch.randn(64, 3, 3, 3)
    torch.save(tv, tmp_path / "bad_shape.pt")
    with pytest.raises(RuntimeError, match="layer1.0.conv1.weight"):
        RgbEncoder(tiny_config(rgb=dict(rgb, weights=str(tmp_path / "bad_shape.pt"))).rgb, 32)


def test_bench_preset_variants_turn_the_rgb_branch_on_and_off():
    from clamp_core.eval.bench_policy import preset_variant

    assert preset_variant("cpu-small+rgb").rgb.enabled and not preset("cpu-small").rgb.enabled
    assert not preset_variant("paper+no-rgb").rgb.enabled and preset("paper").rgb.enabled
    assert preset_variant("paper+no-rgb").image == preset("paper").image
    with pytest.raises(ValueError, match=r"unknown variant 'rgbx'; use \+rgb or \+no-rgb"):
        preset_variant("paper+rgbx")
