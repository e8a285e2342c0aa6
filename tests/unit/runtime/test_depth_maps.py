"""runtime/depth_maps.py: depth maps from the tiny model, normalised and deterministic."""

from __future__ import annotations

import numpy as np
import pytest
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


def test_scaling_to_0_255_for_relative_metric_flat_and_nan(tiny_settings, monkeypatch) -> None:
    """What the model says, scaled to 0..255 (rounded half to even), near = bright: relative
    depth rises with nearness, metric depth (a distance) falls with it."""
    estimator = DepthEstimator("tiny:depth", tiny_settings)
    image = Image.new("RGB", (3, 2))
    raw = np.array([[0.0, 0.5, 1.0], [0.25, 0.75, 2.0]], np.float32)  # max 2: 255 / 2 a unit
    monkeypatch.setattr(estimator, "predict", lambda _: raw.copy())
    expected = np.round((raw - 0.0) / 2.0 * 255.0).astype(np.uint8)
    assert np.array_equal(estimator.estimate_array(image), expected)
    assert np.array_equal(np.asarray(estimator.estimate(image)), expected)
    estimator.metric = True
    nearness = np.round((2.0 - raw) / 2.0 * 255.0).astype(np.uint8)  # 127.5 -> 128 both ways
    assert np.array_equal(estimator.estimate_array(image), nearness)
    monkeypatch.setattr(estimator, "predict", lambda _: np.full((2, 3), 7.0, np.float32))
    flat = estimator.estimate_array(image)
    assert flat.dtype == np.uint8 and flat.shape == (2, 3) and not flat.any()
    bad = raw.copy()
    bad[1, 1] = np.nan
    monkeypatch.setattr(estimator, "predict", lambda _: bad)
    with pytest.raises(ValueError, match="non-finite depth"):
        estimator.estimate_array(image)
