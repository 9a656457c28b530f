"""The training configurations in config/training load, and the pretrained init they start from
is in the repository and is the file models/pretrained/README.md describes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from clamp_core.training.config import TrainConfig
from clamp_core.training.train import load_checkpoint, state_digest

ROOT = Path(__file__).resolve().parents[3]
CONFIGS = sorted((ROOT / "config" / "training").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_training_configs_load_and_their_init_is_shipped(path):
    d = yaml.safe_load(path.read_text())
    cfg = TrainConfig.from_dict(d)
    if cfg.init_from:
        init = ROOT / cfg.init_from
        assert init.is_file(), f"{path.name}: init_from {cfg.init_from} is not in the repository"
        ck = load_checkpoint(init)
        assert "optimizer" not in ck and "rng" not in ck  # an init file, not a run's checkpoint


def test_the_shipped_init_is_the_one_documented():
    readme = (ROOT / "models" / "pretrained" / "README.md").read_text()
    files = sorted((ROOT / "models" / "pretrained").glob("*.pt"))
    assert files
    for f in files:
        assert f"## {f.name}" in readme
        ck = load_checkpoint(f)
        section = readme.split(f"## {f.name}", 1)[1].split("\n## ", 1)[0]
        sha = re.search(r"SHA-1 \(`state_digest`\) ([0-9a-f]{40})", section)
        assert sha and sha.group(1) == state_digest(ck["model"])
        for task in ck["tasks"]:
            assert re.search(rf"\b{task}\b", section), task
        assert "drawer_open" not in ck["tasks"]  # the demo's task is held out of it


def test_finetune_starts_from_the_shipped_pretraining_unless_told_otherwise(capsys):
    from clamp_core.cli import build_parser
    from clamp_core.training.cli import DEFAULT_INIT, train_config_from_args

    parser, _ = build_parser()

    def cfg(*extra):
        return train_config_from_args(parser.parse_args(["finetune", "--data", "d", *extra]))

    assert Path(cfg().init_from) == ROOT / DEFAULT_INIT
    assert "starting from the shipped CLAMP pretraining" in capsys.readouterr().err
    assert cfg("--init", "runs/pre").init_from == "runs/pre"
    scratch = cfg("--scratch")
    assert scratch.from_scratch and not scratch.init_from


def test_the_shipped_model_was_fine_tuned_from_the_shipped_init():
    from clamp_core.policy.metadata import PolicyMetadata

    meta = PolicyMetadata.load(ROOT / "models" / "drawer_open")
    init = load_checkpoint(ROOT / "models" / "pretrained" / "clamp_sim5_cpu_small.pt")
    assert meta.training["init"]["weights_sha1"] == state_digest(init["model"])
    assert meta.training["tasks"] == ["drawer_open"]
