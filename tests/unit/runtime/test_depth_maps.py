"""runtime/depth_maps.py: depth maps from the tiny model, normalised and deterministic."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ghibli_anim.runtime.depth_maps import DepthEstimator


def test_depth_map_is_normalised_and_deterministic(tiny_settings) -> None:
    estimator = DepthEstimator("tiny:depth", tiny_settings)
    rng = np.random.default_rng(0)
    image = Image.fromarray((rng.random((48, 80, 3)) * 255).astype(np.uint8))
    depth = estimator.estimate(image)
    values = np.asarray(depth)
    assert depth.mode == "L" and depth.size == (80, 48)
    assert (values.min(), values.max()) == (0, 255)
    assert estimator.estimate(image).tobytes() == depth.tobytes()
    # Near = bright: the map rises with the model's (inverse-depth) output.
    raw = estimator.predict(image)
    assert np.corrcoef(raw.ravel(), values.ravel().astype(np.float32))[0, 1] > 0.99


def test_preprocessing_is_the_pil_backend(tiny_settings) -> None:
    """Asked for by name: the same depth maps whether torchvision is installed or not."""
    assert DepthEstimator("tiny:depth", tiny_settings).processor.backend == "pil"
