from __future__ import annotations

import pytest

from .toy_data import write_toy_episodes


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory):
    """12 toy episodes (one cube each, 24 frames, 4 cameras at 64x48)."""
    root = tmp_path_factory.mktemp("toy_episodes")
    write_toy_episodes(root, 12, frames=24)
    return root


def tiny_train_overrides() -> dict:
    """A model small enough to train in seconds on 2 cores."""
    return {
        "view_size": 48,
        "image": {"patch_size": 12, "dim": 48, "layers": 2, "heads": 2},
        "action": {"dim": 32, "heads": 2, "history": 4},
        "text": {"dim": 32, "heads": 2, "max_tokens": 16},
        "denoiser": {"dim": 48, "layers": 2, "cond_layers": 1, "heads": 2},
        "embed_dim": 32,
    }
