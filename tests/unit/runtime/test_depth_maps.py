"""runtime/depth_maps.py: depth maps from the tiny model, normalised and deterministic."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import DPTImageProcessorPil, GLPNImageProcessorPil

from ghibli_anim.devtools.standin import painting
from ghibli_anim.runtime.depth_maps import DepthEstimator, DevicePreprocess


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


# --- preprocessing on the model's device -----------------------------------------------------

DEPTH_ANYTHING = {
    "size": {"height": 518, "width": 518},
    "keep_aspect_ratio": True,
    "ensure_multiple_of": 14,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
}
"""Depth-Anything-V2's processor settings (its preprocessor_config.json)."""
TINY = {"size": {"height": 64, "width": 64}, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}


def _levels_apart(processor, ours: torch.Tensor, theirs: torch.Tensor) -> np.ndarray:
    std = torch.tensor(processor.image_std).view(1, 3, 1, 1)
    return ((ours - theirs) * std * 255).abs().numpy()


@pytest.mark.parametrize("settings", [TINY, DEPTH_ANYTHING], ids=["tiny", "depth-anything"])
@pytest.mark.parametrize("shape", [(512, 512), (512, 768), (333, 517), (48, 80)])
def test_device_preprocessing_is_the_processors(settings, shape) -> None:
    """The same sizes as transformers' DPT processor, and its pixel values: all but a few
    pixels in a thousand equal, none more than two levels apart."""
    processor = DPTImageProcessorPil(**settings)
    preprocess = DevicePreprocess.of(processor, "cpu")
    assert preprocess is not None and preprocess.eight_bit
    height, width = shape
    rgb = painting(width, height) if min(shape) >= 64 else _noise(shape)
    theirs = processor(images=Image.fromarray(rgb), return_tensors="pt")["pixel_values"]
    ours = preprocess(rgb)
    assert ours.shape == theirs.shape and ours.dtype == torch.float32
    apart = _levels_apart(processor, ours, theirs)
    assert apart.max() < 2.01 and (apart > 0.5).mean() < 0.01


def test_device_preprocessing_in_float_is_within_a_level() -> None:
    """The CUDA way (resize in float32, then rounded), run here on the CPU."""
    processor = DPTImageProcessorPil(**DEPTH_ANYTHING)
    preprocess = dataclasses.replace(DevicePreprocess.of(processor, "cpu"), eight_bit=False)
    rgb = painting(512, 512)
    theirs = processor(images=Image.fromarray(rgb), return_tensors="pt")["pixel_values"]
    assert _levels_apart(processor, preprocess(rgb), theirs).max() < 1.01


def test_device_preprocessing_same_size_is_only_normalised() -> None:
    processor = DPTImageProcessorPil(**{**TINY, "size": {"height": 64, "width": 96}})
    rgb = painting(96, 64)
    expected = (torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255 - 0.5) / 0.5
    assert torch.allclose(DevicePreprocess.of(processor, "cpu")(rgb), expected, atol=1e-6)


@pytest.mark.parametrize(
    "processor",
    [
        DPTImageProcessorPil(**TINY, do_pad=True, size_divisor=32),
        DPTImageProcessorPil(**TINY, resample=Image.Resampling.LANCZOS),
        DPTImageProcessorPil(**TINY, do_resize=False),
        GLPNImageProcessorPil(),
    ],
    ids=["padding", "lanczos", "no-resize", "glpn"],
)
def test_other_processors_stay_on_the_host(processor) -> None:
    assert DevicePreprocess.of(processor, "cpu") is None


def test_pixels_and_images_give_the_same_map(tiny_settings) -> None:
    estimator = DepthEstimator("tiny:depth", tiny_settings)
    assert estimator.preprocess is not None  # the tiny model is a DPT
    rgb = painting(96, 64)
    by_pixels = estimator.estimate_array(rgb)
    assert np.array_equal(by_pixels, np.asarray(estimator.estimate(Image.fromarray(rgb))))
    # The processor's own way gives the same map, give or take a level here and there.
    estimator.preprocess = None
    apart = np.abs(estimator.estimate_array(rgb).astype(int) - by_pixels)
    assert apart.max() <= 3 and (apart > 0).mean() < 0.05


def test_bad_pixels_are_refused(tiny_settings) -> None:
    estimator = DepthEstimator("tiny:depth", tiny_settings)
    with pytest.raises(ValueError, match=r"image: must be H x W x 3 uint8, got float32"):
        estimator.estimate_array(np.zeros((8, 8, 3), np.float32))


def _noise(shape: tuple[int, int]) -> np.ndarray:
    return (np.random.default_rng(0).random((*shape, 3)) * 255).astype(np.uint8)
