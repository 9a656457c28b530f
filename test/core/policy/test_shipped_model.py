"""The model shipped in models/ (what `make demo` runs): small enough, loadable by the runtime,
compatible with the demo's parameter file, and producing actions inside the robot's limits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clamp_core.data.episode import ALOHA_JOINT_NAMES
from clamp_core.perception.config import PerceptionConfig
from clamp_core.policy.metadata import check_compatible
from clamp_core.policy.runtime import OnnxPolicy, PolicyObservation
from clamp_core.policy.safety import aloha_defaults

REPO = Path(__file__).resolve().parents[3]
MODELS = sorted(p for p in (REPO / "models").glob("*") if (p / "metadata.json").is_file())


def test_a_model_is_shipped_for_the_demo():
    import yaml

    cfg = yaml.safe_load((REPO / "config" / "sim_demo.yaml").read_text())
    name = cfg["policy"]["ros__parameters"]["model"]
    assert (REPO / "models" / name / "metadata.json").is_file(), f"models/{name} is missing"


@pytest.mark.parametrize("model", MODELS, ids=[p.name for p in MODELS])
def test_shipped_model_is_small_compatible_and_sane(model):
    size = sum(p.stat().st_size for p in model.iterdir())
    assert size <= 30e6, f"{model.name}: {size / 1e6:.1f} MB > 30 MB"
    policy = OnnxPolicy(model, threads=1)
    meta = policy.metadata
    assert meta.parity_max_abs_diff is not None and meta.parity_max_abs_diff <= 1e-4
    demo = PerceptionConfig.from_yaml(REPO / "config" / "sim_demo.yaml", "policy")
    check_compatible(meta, joint_names=list(ALOHA_JOINT_NAMES), perception=demo, action_dim=14)
    # an observation of an empty table at the start pose: finite actions inside the limits
    rng = np.random.default_rng(0)
    v, h, w, _ = meta.views_shape
    views = np.zeros((v, h, w, 4), np.float32)
    views[..., 0] = 0.8
    views[..., 1:3] = rng.uniform(-0.3, 0.3, (v, h, w, 2))
    qn = meta.qpos_normalizer()
    qpos = qn.unnormalize(np.zeros(14, np.float32))
    # colour for an RGB branch: a mid-grey frame of each camera's shape at the model's size
    rgb = None
    if meta.rgb_cameras:
        gw, gh = meta.rgb_size
        rgb = {c: np.full((gh, gw, 3), 128, np.uint8) for c in meta.rgb_cameras}
    obs = PolicyObservation(0, views, qpos, np.tile(qpos, (meta.action_history, 1)), rgb=rgb)
    chunk = policy.predict(obs)
    safety = aloha_defaults()
    lo = np.array(safety.position_min) - 0.05
    hi = np.array(safety.position_max) + 0.05
    assert np.isfinite(chunk.actions).all()
    assert np.all(chunk.actions >= lo) and np.all(chunk.actions <= hi)
