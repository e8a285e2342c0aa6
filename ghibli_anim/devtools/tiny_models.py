"""Tiny random-weight models of the SD-1.5 shape, for tests and offline demos.

``write_tiny_models(DIR)`` (the CLI's ``ghibli-anim models tiny DIR``) writes every
component the ``tiny`` profile names, each in its own folder:

=============  ==================================================================
``pipeline``   StableDiffusionPipeline folder: unet, vae, text_encoder, tokenizer,
               scheduler (PNDM, SD-1.5's config), model_index.json
``tokenizer``  the CLIP tokenizer alone (same files as ``pipeline/tokenizer``)
``controlnet`` ControlNetModel made from the tiny UNet (depth-style conditioning)
``depth``      DPTForDepthEstimation + DPTImageProcessor
``taesd``      AutoencoderTiny (TAESD shape) matching the tiny VAE's scale factor
``lcm_lora``   a random LoRA for the tiny UNet in diffusers format
               (``pytorch_lora_weights.safetensors``): an LCM-LoRA stand-in
``blip``       BlipForConditionalGeneration + BlipProcessor (captioner)
=============  ==================================================================

This module installs components; the builders live beside it: ``tiny_tokenizer``
(the tokenizer, pure Python), ``tiny_diffusion`` (pipeline, ControlNet, TAESD,
LoRA), ``tiny_vision`` (depth, BLIP) and ``tiny_single_file`` (the pipeline as one
checkpoint in the original key layout, re-exported here).

Guarantees:

* **Deterministic**: every builder seeds its own RNG (inside ``torch.random.fork_rng``,
  so callers' RNG state is untouched) and every config is fixed, so the same
  library versions write the same bytes on every run and in every process.
* **Atomic per component**: a component is written into a hidden temporary folder
  beside its final place and renamed into place, so readers never see half a
  component. When two processes build the same component at once, the first
  rename wins and the loser discards its copy.
* **Tokenizer without torch**: the tokenizer files are plain JSON and text written
  by ``tiny_tokenizer``; the planner (no torch installed) can build them.

Bump ``model_refs.TINY_VERSION`` whenever the bytes written change: the model cache keeps
one folder per version (``<ANIM_CACHE_DIR>/tiny-v<N>``).

torch, diffusers and transformers are imported inside the builders only.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ghibli_anim.contracts.model_refs import TINY_COMPONENTS as COMPONENTS
from ghibli_anim.contracts.model_refs import TINY_VERSION
from ghibli_anim.devtools.tiny_diffusion import (
    write_controlnet,
    write_lcm_lora,
    write_pipeline,
    write_taesd,
)
from ghibli_anim.devtools.tiny_single_file import SINGLE_FILE_NAME, write_single_file
from ghibli_anim.devtools.tiny_tokenizer import write_tokenizer
from ghibli_anim.devtools.tiny_vision import write_blip, write_depth

__all__ = [
    "COMPONENTS",
    "SINGLE_FILE_NAME",
    "TINY_VERSION",
    "check_components",
    "write_single_file",
    "write_tiny_models",
]

_BUILDERS: dict[str, Callable[[Path], None]] = {
    "pipeline": write_pipeline,
    "tokenizer": write_tokenizer,
    "controlnet": write_controlnet,
    "depth": write_depth,
    "taesd": write_taesd,
    "lcm_lora": write_lcm_lora,
    "blip": write_blip,
}


def check_components(components: Iterable[str] | None) -> tuple[str, ...]:
    """Validate component names; None means all of them."""
    if components is None:
        return COMPONENTS
    names = tuple(dict.fromkeys(components))
    unknown = [c for c in names if c not in COMPONENTS]
    if unknown:
        got = ", ".join(map(repr, unknown))
        raise ValueError(f"components: must be among {', '.join(COMPONENTS)}, got {got}")
    return names


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Hide transformers' progress bar of every save_pretrained (noise in CLI output)."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _install(out_dir: Path, name: str, overwrite: bool) -> None:
    """Build component ``name`` beside ``out_dir/name`` and rename it into place."""
    final = out_dir / name
    if final.exists() and not overwrite:
        return
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=out_dir))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared
        if name == "tokenizer":
            write_tokenizer(tmp)  # pure Python: no torch, no transformers
        else:
            with _no_progress_bars():
                _BUILDERS[name](tmp)
        if overwrite and final.exists():
            old = out_dir / f".{name}.{uuid.uuid4().hex}.old"
            os.rename(final, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            # Another writer renamed its copy first (a non-empty folder cannot be
            # replaced by rename): theirs has the same bytes, keep it.
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a rename


def write_tiny_models(
    out_dir: Path, components: Iterable[str] | None = None, *, overwrite: bool = False
) -> Path:
    """Write the tiny components into ``out_dir/<component>/`` and return ``out_dir``.

    ``components``: a subset of ``COMPONENTS`` (default: all). A component folder
    that already exists is kept unless ``overwrite`` is true: the bytes are
    deterministic, so an existing copy from the same version is the same.
    Only ``tokenizer`` can be written without torch installed.
    """
    names = check_components(components)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        _install(out_dir, name, overwrite)
    return out_dir
