"""The numba fast path must agree bit for bit with the numpy reference."""

from __future__ import annotations

import numpy as np
import pytest

from clamp_core.perception import PerceptionConfig, PerceptionPipeline
from clamp_core.perception.kernels import HAVE_NUMBA
from test.conftest import scene_frames, scene_tf

pytestmark = pytest.mark.skipif(not HAVE_NUMBA, reason="numba not installed")


@pytest.mark.parametrize("float_depth", [False, True])
def test_numba_matches_numpy_bit_for_bit(scene, float_depth):
    stamp = 2_000_000_000
    frames = scene_frames(scene, stamp, float_depth)
    tf = scene_tf(scene, stamp)
    out = {}
    for backend in ("numba", "numpy"):
        pipe = PerceptionPipeline(PerceptionConfig(backend=backend))
        out[backend] = pipe.process(frames, tf, want_cloud=True, want_colors=True)
    a, b = out["numba"], out["numpy"]
    assert a.cloud.xyz.shape[0] > 100_000
    np.testing.assert_array_equal(a.cloud.xyz, b.cloud.xyz)
    np.testing.assert_array_equal(a.cloud.rgb, b.cloud.rgb)
    np.testing.assert_array_equal(a.cloud.camera_index, b.cloud.camera_index)
    np.testing.assert_array_equal(a.views.mask, b.views.mask)
    np.testing.assert_array_equal(a.views.images, b.views.images)


def test_numba_explicit_cloud_render_matches_numpy(rng):
    pts = rng.uniform([-0.5, -0.4, 0.0], [0.5, 0.4, 0.3], size=(50_000, 3)).astype(np.float32)
    # duplicate some points exactly so ties must go to the lower index in both paths
    pts[1000:2000] = pts[:1000]
    outs = []
    for backend in ("numba", "numpy"):
        config = PerceptionConfig(backend=backend)
        config.views = [v for v in config.views if not v.attached]
        pipe = PerceptionPipeline(config)
        outs.append(pipe.render(pts, pipe.view_poses(None, 0)))
    assert outs[0].mask.sum() > 10_000
    np.testing.assert_array_equal(outs[0].images, outs[1].images)
    np.testing.assert_array_equal(outs[0].mask, outs[1].mask)
