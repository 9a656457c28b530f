"""The RGB branch end to end: colour images from the episodes into the training windows
(resized once, cached), trained with the policy, exported, fed by the runtime, and every
mismatch between a model's colour inputs and what it is given refused by name."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from clamp_core.data.episode import EpisodeReader
from clamp_core.perception.config import PerceptionConfig
from clamp_core.policy.metadata import MetadataMismatch, check_compatible
from clamp_core.policy.rgb import RgbInputError, resize_rgb, rgb_inputs
from clamp_core.policy.runtime import (
    OnnxPolicy,
    PolicyInputError,
    PolicyLoadError,
    PolicyObservation,
)
from clamp_core.training.data import cached_rgb, load_episodes
from clamp_core.training.export import export
from clamp_core.training.train import load_checkpoint, prepare_data, state_digest, train

from .test_training import make_cfg

RGB_CAMS = ["cam_high", "cam_left_wrist"]
RGB = {"enabled": True, "cameras": RGB_CAMS, "width": 32, "height": 32, "base_channels": 8}
# toy episodes are 64x48 (4:3): an RGB input of 48x36 keeps the aspect
RGB_43 = dict(RGB, width=48, height=36)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("rgb_cache")


@pytest.fixture(scope="module")
def rgb_run(toy_data, cache_dir, tmp_path_factory):
    """A pretrained toy model, then the policy fine-tuned with an RGB branch (frozen encoders,
    their features cached; the RGB images stay per-batch inputs)."""
    runs = tmp_path_factory.mktemp("rgb_runs")
    from .test_training import tiny_train_overrides

    pre = runs / "pre"
    train(make_cfg(toy_data, pre, cache_dir, steps=10, model=tiny_train_overrides()), False)
    ft = runs / "ft"
    cfg = make_cfg(
        toy_data,
        ft,
        cache_dir,
        steps=30,
        init_from=str(pre),
        contrastive=False,
        model={"rgb": RGB_43},
    )
    train(cfg, progress=False)
    return pre, ft


def test_resize_is_pixel_area_and_refuses_another_aspect():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (48, 64, 3), np.uint8)
    # the documented resize: OpenCV's pixel-area mean; a 2x downscale is the mean of 2x2 blocks
    out = resize_rgb(img, (32, 24))
    blocks = img.reshape(24, 2, 32, 2, 3).astype(np.float64).mean(axis=(1, 3))
    assert out.shape == (24, 32, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(np.float64) - blocks).max() <= 0.5 + 1e-9
    assert resize_rgb(img, (64, 48)) is not None and np.array_equal(resize_rgb(img, (64, 48)), img)
    with pytest.raises(RgbInputError, match=r"camera 'cam_high'.*64x48.*rgb_size is 48x48"):
        resize_rgb(img, (48, 48), "cam_high")
    with pytest.raises(RgbInputError, match=r"uint8 image, got float32"):
        resize_rgb(img.astype(np.float32), (32, 24))
    with pytest.raises(RgbInputError, match=r"\(H, W, 3\) image, got \(48, 64\)"):
        resize_rgb(img[..., 0], (32, 24))
    with pytest.raises(RgbInputError, match=r"camera 'cam_low'.*needs its color image"):
        rgb_inputs({"cam_high": img}, ["cam_high", "cam_low"], (32, 24))
    assert rgb_inputs({"cam_high": img}, [], (32, 24)) == {}


def test_training_windows_carry_the_episode_frames_after_the_resize(toy_data, cache_dir):
    """Every window's rgb equals the episode's colour frame at that window's time, resized by
    cv2.INTER_AREA to the model's rgb size (computed here from the HDF5 file directly)."""
    cfg = make_cfg(toy_data, cache_dir / "unused", cache_dir, model={"rgb": RGB_43})
    from clamp_core.models.config import ModelConfig

    from .test_training import tiny_train_overrides

    mc = ModelConfig.from_dict(dict(tiny_train_overrides(), rgb=RGB_43))
    data = prepare_data(cfg, mc, progress=False)
    ds = data.train
    used = {c.name: c.use_color for c in data.perception.cameras}
    assert used == {c: c in RGB_CAMS for c in used}
    checked = 0
    for i in range(0, len(ds), 7):
        ei, k = ds.index[i]
        ep = ds.episodes[ei]
        item = ds[i]
        assert item["rgb"].shape == (2, 36, 48, 3) and item["rgb"].dtype == np.uint8
        with EpisodeReader(ep.path) as r:
            frame = r.frame(int(k) * cfg.frame_stride, cameras=RGB_CAMS, depth=False)
        for j, cam in enumerate(RGB_CAMS):
            want = cv2.resize(frame["images"][cam], (48, 36), interpolation=cv2.INTER_AREA)
            np.testing.assert_array_equal(item["rgb"][j], want)
        checked += 1
    assert checked >= 5
    # a camera the episodes do not have is named
    bad = ModelConfig.from_dict(dict(tiny_train_overrides(), rgb=dict(RGB, cameras=["cam_top"])))
    with pytest.raises(Exception, match=r"model.rgb.cameras: \['cam_top'\]"):
        prepare_data(cfg, bad, progress=False)


def test_rgb_cache_is_reused_and_keyed_by_size(toy_data, tmp_path):
    path = load_episodes(toy_data)[0].path
    a = cached_rgb(path, RGB_CAMS, (32, 24), 2, tmp_path)
    files = sorted(tmp_path.iterdir())
    b = cached_rgb(path, RGB_CAMS, (32, 24), 2, tmp_path)
    assert sorted(tmp_path.iterdir()) == files and np.array_equal(a, b)
    c = cached_rgb(path, RGB_CAMS, (48, 36), 2, tmp_path)
    assert c.shape[2:] == (36, 48, 3) and len(list(tmp_path.iterdir())) == 2


def test_rgb_branch_trains_exports_and_runs_on_colour(rgb_run, toy_data, tmp_path):
    pre, ft = rgb_run
    ck, base = load_checkpoint(ft), load_checkpoint(pre)
    # frozen encoders stay bit-identical; the RGB branch (fresh) trained
    for prefix in ("image.", "action.", "text."):
        assert state_digest(ck["model"], prefix) == state_digest(base["model"], prefix)
    assert any(k.startswith("rgb.") for k in ck["init"]["reinitialised"])
    meta = export(ft, tmp_path / "m")
    assert meta.parity_max_abs_diff <= 1e-4
    assert meta.rgb_cameras == RGB_CAMS and meta.rgb_size == [48, 36]
    pc = meta.perception_config()
    assert {c.name: c.use_color for c in pc.cameras} == {
        c.name: c.name in RGB_CAMS for c in pc.cameras
    }
    policy = OnnxPolicy(tmp_path / "m")
    ep = load_episodes(toy_data)[0]
    from clamp_core.training.data import EpisodeRenderer

    renderer = EpisodeRenderer(pc)
    with EpisodeReader(ep.path) as r:
        views = renderer.render(r, 10).images
        frame = r.frame(10, cameras=RGB_CAMS, depth=False)
        low = r.lowdim()
    h = meta.action_history
    rgb = rgb_inputs(frame["images"], meta.rgb_cameras, meta.rgb_size)

    def predict(colour):
        obs = PolicyObservation(
            1_000, views, low["qpos"][10], low["action"][10 - h : 10], rgb=colour
        )
        return policy.predict(obs, noise=np.zeros((50, 14), np.float32)).actions

    a = predict(rgb)
    assert np.array_equal(a, predict(rgb))
    b = predict({c: 255 - v for c, v in rgb.items()})
    assert np.abs(a - b).max() > 1e-4  # the colour reaches the chunk
    # the runtime refuses colour it cannot use, naming it
    with pytest.raises(PolicyInputError, match=r"rgb: the model needs color images"):
        predict(None)
    with pytest.raises(PolicyInputError, match=r"no image for cameras \['cam_left_wrist'\]"):
        predict({"cam_high": rgb["cam_high"]})
    with pytest.raises(PolicyInputError, match=r"rgb\['cam_high'\]: needs shape \(36, 48, 3\)"):
        predict({c: np.zeros((24, 32, 3), np.uint8) for c in RGB_CAMS})


def test_colour_mismatches_are_refused_by_name(rgb_run, tmp_path):
    _, ft = rgb_run
    meta = export(ft, tmp_path / "m")
    node = meta.perception_config()
    check_compatible(meta, perception=node)  # the model's own config fits
    # the node does not subscribe to colour for an RGB camera
    d = node.to_dict()
    d["cameras"]["cam_left_wrist"]["use_color"] = False
    with pytest.raises(
        MetadataMismatch,
        match=r"RGB branch needs color images from "
        r"\['cam_left_wrist'\].*use_color false",
    ):
        check_compatible(meta, perception=PerceptionConfig.from_dict(d))
    # the node has no such camera
    with pytest.raises(MetadataMismatch, match=r"rgb_cameras: .* no camera \['cam_left_wrist'\]"):
        check_compatible(meta, cameras=["cam_high", "cam_low", "cam_right_wrist"])
    # metadata whose colour size or cameras disagree with the graph is refused at load
    for key, value, pattern in (
        ("rgb_size", [64, 48], r"rgb_size \[64, 48\]"),
        ("rgb_cameras", ["cam_high"], r"1 rgb_cameras"),
    ):
        bad = tmp_path / f"bad_{key}"
        shutil.copytree(tmp_path / "m", bad)
        m = json.loads((bad / "metadata.json").read_text())
        m[key] = value
        (bad / "metadata.json").write_text(json.dumps(m))
        with pytest.raises(PolicyLoadError, match=pattern):
            OnnxPolicy(bad)
