"""Instant stand-ins for the model forward calls, so a benchmark measures the chain's own cost.

A benchmark of what the chain adds around the GPU's work (``bench/chain_host.py``) runs the
production code path everywhere except where a model computes: there it needs answers that
cost nothing and still look like frames, so that decoding, colour matching and PNG encoding
cost what they cost on real frames (noise compresses badly, a flat picture too well).

:func:`install` replaces, in this process only:

* the ``__call__`` of diffusers' three SD-1.5 pipelines the renderer runs (text-to-image,
  img2img, ControlNet img2img). The stand-in keeps the pipeline's contract as the renderer
  uses it: it calls ``callback_on_step_end`` once per denoising step that the real pipeline
  would run (``int(steps * strength)`` for img2img), sets ``num_timesteps`` and returns
  ``images`` as ``output_type="np"`` does (floats in 0..1). Text-to-image returns a fixed,
  painting-like picture (soft gradients, shapes, a little brush texture); img2img returns its
  input image slightly changed (a small warm cast and a faint seeded texture, so colour
  coherence has a cast to remove and consecutive frames differ);
* the forward of every depth model loaded through ``AutoModelForDepthEstimation``: a fixed
  map (near at the bottom centre) at the resolution the image processor produced.

Everything else (prompt checks, tokenizers, LoRA bookkeeping, the depth model's pre- and
post-processing, every byte of I/O) is the production code. Nothing in production imports
this module (devtools is outside the layers, see ARCHITECTURE.md); service processes get it
only when started as ``python -m ghibli_anim.devtools.standin serve NAME``, which
:class:`~ghibli_anim.devtools.stack.LocalStack` does when a benchmark asks for it.
"""

from __future__ import annotations

import functools
import runpy
from types import SimpleNamespace
from typing import Any

import numpy as np

WARM_CAST = (1.5, 0.0, -1.0)
"""What each img2img stand-in adds to R, G and B: the drift colour coherence removes."""

_installed = False


@functools.lru_cache(maxsize=4)
def painting(width: int, height: int) -> np.ndarray:
    """A fixed ``height x width x 3`` uint8 picture with the statistics of a painted frame:
    smooth sky and hill gradients, soft-edged shapes, a faint brush texture."""
    import cv2

    rng = np.random.default_rng(1234)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    sx, sy = x / max(width, 1), y / max(height, 1)
    img = np.empty((height, width, 3), np.float32)
    img[..., 0] = 150 + 70 * np.sin(sx * 5.0) + 30 * np.cos(sy * 7.0)
    img[..., 1] = 160 + 50 * np.cos(sx * 3.0 + sy * 4.0)
    img[..., 2] = 200 - 90 * sy
    horizon = (0.6 + 0.08 * np.sin(sx * 9.0)) * height
    hills = y > horizon
    img[hills] = img[hills] * 0.45 + np.array([40, 110, 50], np.float32) * 0.55
    for _ in range(30):
        cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
        radius = int(rng.integers(max(2, width // 50), max(3, width // 7)))
        colour = rng.integers(30, 230, 3).tolist()
        cv2.circle(img, (cx, cy), radius, colour, -1, lineType=cv2.LINE_AA)
    img = cv2.GaussianBlur(img, (0, 0), max(0.5, width / 170))
    texture = rng.normal(0.0, 5.0, (height, width, 3)).astype(np.float32)
    img += cv2.GaussianBlur(texture, (0, 0), 0.8)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=4)
def _texture(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The seeded texture with the warm cast, as what it adds and what it takes away (uint8,
    stacked twice in height so that a shifted copy is a slice, not a new array)."""
    rng = np.random.default_rng(99)
    cast = np.asarray(WARM_CAST, np.float32)
    texture = np.rint(rng.normal(0.0, 1.5, (height, width, 1)) + cast).astype(np.int16)
    twice = np.concatenate([texture, texture])
    return np.clip(twice, 0, 255).astype(np.uint8), np.clip(-twice, 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=1)
def _unit_floats() -> np.ndarray:
    """``x / 255`` as float32 for x in 0..255, per channel: the pipeline's 0..1 output."""
    return np.repeat(np.arange(256, dtype=np.float32)[:, None] / np.float32(255.0), 3, axis=1)[None]


def next_frame(previous: np.ndarray, seed: int) -> np.ndarray:
    """``previous`` (uint8 RGB) slightly changed: the warm cast and a faint texture, shifted
    down by ``seed`` rows, clipped to 0..255. Two saturating OpenCV passes over textures made
    once per size: the stand-in itself should cost next to nothing."""
    import cv2

    height = previous.shape[0]
    adds, takes = _texture(*previous.shape[:2])
    start = height - seed % height  # rows [start, start + height) of the doubled texture
    # Only one of the two is non-zero at any pixel: add then subtract clips as one sum would.
    return cv2.subtract(
        cv2.add(previous, adds[start : start + height]), takes[start : start + height]
    )


def _pipeline_call(
    self: Any,
    *args: Any,
    num_inference_steps: int = 50,
    strength: float = 1.0,
    image: Any = None,
    width: int | None = None,
    height: int | None = None,
    generator: Any = None,
    callback_on_step_end: Any = None,
    **kwargs: Any,
) -> SimpleNamespace:
    import torch

    if image is not None:
        source = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
        height, width = source.shape[:2]
        steps = int(num_inference_steps * strength)
        seed = int(generator.initial_seed()) if generator is not None else 0
        pixels = next_frame(source, seed)
    else:
        width, height = width or 512, height or 512
        steps = num_inference_steps
        pixels = painting(width, height)
    self._num_timesteps = steps
    latents = torch.zeros(1, 4, height // 8, width // 8)
    for step in range(steps):
        if callback_on_step_end is not None:
            callback_on_step_end(self, step, 0, {"latents": latents})
    import cv2

    return SimpleNamespace(images=cv2.LUT(pixels, _unit_floats())[None])


@functools.lru_cache(maxsize=4)
def _depth_map(height: int, width: int) -> Any:
    """The fixed map, made once per size (making it costs ~0.7 ms at 384 x 384: a stand-in
    should cost next to nothing)."""
    import torch

    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    near = (y / max(height - 1, 1)) - 0.5 * np.abs(x / max(width - 1, 1) - 0.5)
    return torch.from_numpy(near[None].copy())


def _depth_forward(pixel_values: Any = None, **kwargs: Any) -> SimpleNamespace:
    height, width = pixel_values.shape[-2:]
    # A copy, as a model returns a new tensor each call: the caller may write to it.
    return SimpleNamespace(predicted_depth=_depth_map(int(height), int(width)).clone())


def install() -> None:
    """Swap the model forward calls of this process for the stand-ins (idempotent)."""
    global _installed
    if _installed:
        return
    import diffusers
    import transformers

    for name in (
        "StableDiffusionPipeline",
        "StableDiffusionImg2ImgPipeline",
        "StableDiffusionControlNetImg2ImgPipeline",
    ):
        getattr(diffusers, name).__call__ = _pipeline_call
    auto = transformers.AutoModelForDepthEstimation
    real = auto.from_pretrained

    def from_pretrained(*args: Any, **kwargs: Any) -> Any:
        model = real(*args, **kwargs)
        model.forward = _depth_forward  # nn.Module.__call__ calls the instance's forward
        return model

    auto.from_pretrained = from_pretrained
    _installed = True


def main() -> None:
    """``python -m ghibli_anim.devtools.standin ARGS``: ``ghibli-anim ARGS`` with stand-ins."""
    install()
    # Run as a module, not imported: the dev tools sit below the CLI, which imports them.
    runpy.run_module("ghibli_anim.cli", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
