"""`clamp eval replay` feeds a model's RGB branch: with a model whose chunk is a known function
of the mean colour of its rgb cameras (``tiny_models.write_color_model``), every replayed chunk,
from an HDF5 episode (colour read on demand) and from its bag (colour synchronised with depth),
equals that function of the recorded colour images at the chunk's frame, resized by the one
resize every path uses. A colour image the model cannot take is a drop named in one line."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from clamp_core.data.episode import EpisodeReader
from clamp_core.eval.replay import ReplayConfig, ReplayError, replay
from clamp_core.policy.execution import ExecutionConfig
from clamp_core.policy.metadata import PolicyMetadata
from clamp_core.policy.rgb import rgb_inputs

from ..policy.tiny_models import color_chunk, write_color_model
from .test_replay import DT_NS, MODEL, STEPS, T0, recorded  # noqa: F401 - the fixture

RGB_CAMERAS = ["cam_left_wrist", "cam_high"]
"""A moving camera (its colour changes) and a fixed one, in a non-alphabetical order."""
# unguided sampling: a seam_guided prefix would blend the plan into the chunk
UNGUIDED = ExecutionConfig(mode="receding_horizon")


def color_model(tmp_path, size=(32, 24)):
    """drawer_open's interface (cameras, joints, views) with an RGB branch of colour only."""
    meta = dataclasses.replace(
        PolicyMetadata.load(MODEL), name="colour", rgb_cameras=RGB_CAMERAS, rgb_size=list(size)
    )
    return tmp_path / "colour", write_color_model(tmp_path / "colour", meta)


def expected_chunks(episode, meta, stamps_ns) -> np.ndarray:
    """(N, F, A) the model's chunk for the recorded colour at each stamp (independently of
    replay: the episode's images straight from the file)."""
    out = []
    with EpisodeReader(episode) as r:
        for stamp in stamps_ns:
            k = (int(stamp) - T0) // DT_NS
            images = r.frame(k, RGB_CAMERAS, depth=False)["images"]
            out.append(color_chunk(meta, rgb_inputs(images, meta.rgb_cameras, meta.rgb_size)))
    return np.array(out)


@pytest.mark.parametrize("source", ["episode", "bag"])
def test_replayed_chunks_follow_the_recorded_colour(recorded, tmp_path, source):  # noqa: F811
    model, meta = color_model(tmp_path)
    assert [c["use_color"] for c in meta.perception["cameras"].values()] == [
        name in RGB_CAMERAS for name in meta.perception["cameras"]
    ]
    r = replay(
        [recorded[source]],
        model,
        ReplayConfig(every_frame=True, execution=UNGUIDED),
        trace=True,
    )
    ep = r["episodes"][0]
    assert ep["inferences"] == STEPS and ep["drops"] == {}
    tr = ep["trace"]
    stamps = np.round(tr["chunk_t_s"][:, 0] * 1e9).astype(np.int64)
    np.testing.assert_array_equal(stamps, T0 + DT_NS * np.arange(STEPS))
    want = expected_chunks(recorded["episode"], meta, stamps)
    np.testing.assert_allclose(tr["chunks"], want, rtol=0, atol=1e-5)
    # the colour did change over the clip, and the chunks with it (far beyond the tolerance)
    assert np.abs(want - want[0]).max() > 1e-2


def test_an_episode_and_its_bag_give_the_same_rgb_chunks(recorded, tmp_path):  # noqa: F811
    model, _ = color_model(tmp_path)
    cfg = ReplayConfig(execution=UNGUIDED)
    a = replay([recorded["episode"]], model, cfg, trace=True)["episodes"][0]["trace"]
    b = replay([recorded["bag"]], model, cfg, trace=True)["episodes"][0]["trace"]
    np.testing.assert_array_equal(a["chunk_t_s"], b["chunk_t_s"])
    np.testing.assert_array_equal(a["chunks"], b["chunks"])


def test_colour_of_another_aspect_is_dropped_and_named(recorded, tmp_path):  # noqa: F811
    model, _ = color_model(tmp_path, size=(32, 32))  # the cameras are 64x48 (4:3)
    with pytest.raises(ReplayError) as err:
        replay([recorded["episode"]], model, ReplayConfig(execution=UNGUIDED))
    msg = str(err.value)
    assert len(msg.splitlines()) == 1
    assert "no inference" in msg
    assert "bad_rgb" in msg and "aspect" in msg and "cam_left_wrist" in msg
