"""Rendering one frame with Stable Diffusion 1.5: the diffusers call and its record.

* txt2img for a frame without a source image (frame 0 and cuts);
* img2img from the previous frame (or the job's init image) at low strength;
* ControlNet img2img when the spec names a depth map (``depth_key``).

The pipelines come from :class:`~ghibli_anim.services.renderer.pipelines.PipelineCache`
(models loaded once per process, the spec's LoRAs activated per frame).

Every frame draws its noise from a CPU ``torch.Generator`` seeded with the
spec's seed, so the same spec gives the same PNG bytes on the same device and
dtype. The record returned with the PNG says what actually ran: the requested
and effective steps (counted, not computed), the scheduler, the models with
their revisions or hashes, each LoRA's file hash, format and attached layers,
the library versions and the device.

A frame that comes out with NaN/inf pixels or black (float16 overflow: GTX 16xx
cards, some VAEs) must not seed the next one. Normal frames pay for the check
only with one pass over the decoded pixels, already on the CPU. A failed frame
is re-rendered once in float32, from the same seed: only the VAE decode when the
final latents are finite, else the whole pipeline. The modules are cast to
float32 for that and back afterwards (exact: every float16 or bfloat16 value is
a float32), so later frames keep their bytes. The record says what ran
(``float32_retry``) and the frame.rendered event carries a notice suggesting
``ANIM_DTYPE=float32``. A frame still NaN or black in float32 fails with
:class:`FrameFailed`, which a retry of the same spec would not change.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from itertools import chain
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from ghibli_anim.contracts import limits
from ghibli_anim.contracts.config import Settings
from ghibli_anim.contracts.pb import types_pb2
from ghibli_anim.contracts.profiles import PRESETS, check_scheduler
from ghibli_anim.contracts.tokens import TokenCounter
from ghibli_anim.runtime.png import encode_png
from ghibli_anim.services.renderer import provenance
from ghibli_anim.services.renderer.pipelines import (
    CONTROLNET_IMG2IMG,
    IMG2IMG,
    TXT2IMG,
    LoadedModels,
    PipelineCache,
    dtype_name,
)

StepCallback = Callable[[int, int], None]

BLACK_MAX = 2 / 255
"""A decoded frame (0..1) whose brightest pixel is below this (at most 1/255 everywhere
in the PNG) is black: nothing is left for img2img to continue from. Black frames are
also how float16 NaN decodes usually show once cast to 8 bits."""


class FrameFailed(ValueError):
    """The rendered image is NaN/inf or black in float32 (the models' dtype, or the
    re-render after a float16/bfloat16 one): the same spec would give the same image,
    so the frame fails instead of seeding the next one."""


@dataclass(frozen=True)
class RenderResult:
    """A rendered frame: its pixels (``H x W x 3`` uint8 RGB) and the record of what ran.

    ``record`` keys: index, mode (txt2img | img2img | controlnet_img2img),
    prompt, negative_prompt, prompt_tokens, prompt_dropped (text cut at 77 CLIP
    tokens when the spec allows truncation, else None), negative_prompt_dropped,
    seed, strength (None for txt2img), guidance, steps_requested, steps (what
    the pipeline was called with: raised so img2img runs at least one step),
    steps_effective (denoising steps actually run), scheduler, scheduler_class,
    preset, controlnet_scale (None without ControlNet), width, height, source_key,
    device, device_name, dtype, attention, low_vram, compile, elapsed_s (the
    pipeline call, a float32 re-render included), load_s (getting the pipeline:
    loading models the first time), profile,
    base_model, loras (source, scale, weight_name, file, sha256, revision,
    format, pairs, modules, adapter, active), lora_fused, controlnet,
    tiny_autoencoder, models (provenance of each model), versions, float32_retry
    (None, or how a NaN/black frame was re-rendered in float32: part vae | pipeline,
    from_dtype, reason nan | black, latents_finite, elapsed_s). ``dtype`` is the models' dtype
    (what ``ANIM_DTYPE`` chose), also for a frame re-rendered in float32.

    ``notice`` is for the user (the frame.rendered event's reason): empty unless the
    frame was re-rendered in float32.
    """

    pixels: np.ndarray
    record: dict[str, Any]
    notice: str = ""

    @cached_property
    def png(self) -> bytes:
        """The pixels as the PNG the renderer stores (encoded on first use: the renderer
        itself encodes only after colour matching)."""
        return encode_png(self.pixels)


def _f32(value: float) -> float:
    # Proto floats are float32: 0.7 arrives as 0.69999998..., and int(10 * that)
    # would be 6, not 7. Six decimals recover the value the user wrote.
    return round(float(value), 6)


def _mode(spec: types_pb2.FrameSpec) -> str:
    if not spec.source_key or spec.continuity == types_pb2.CONTINUITY_CUT:
        return TXT2IMG
    return CONTROLNET_IMG2IMG if spec.depth_key else IMG2IMG


def _fit(image: Image.Image | np.ndarray, width: int, height: int) -> Image.Image:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    image = image if image.mode == "RGB" else image.convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return image


def img2img_steps(steps: int, strength: float, field: str = "steps") -> int:
    """Steps to call img2img with so that at least one denoising step runs.

    diffusers runs int(steps * strength) steps (LCM crashes on zero): 4 steps at
    strength 0.15 become 7. Raises ValueError when that exceeds the steps limit.
    """
    needed = steps
    while int(needed * strength) < 1:
        needed += 1
        if needed > limits.STEPS.hi:
            raise ValueError(
                f"{field}: strength {strength:g} runs no denoising step within "
                f"{limits.STEPS.hi} steps; use a strength of at least {1 / limits.STEPS.hi:.4g}"
            )
    return needed


def _lora_record(models: LoadedModels, profile: types_pb2.Profile, pipe: Any) -> list[dict]:
    active = set(pipe.get_active_adapters()) if models.active else set()
    out = []
    for lo in profile.loras:
        loaded = models.loras[(lo.source, lo.weight_name)]
        out.append(
            {
                "source": lo.source,
                "scale": _f32(lo.scale),
                "weight_name": lo.weight_name,
                **loaded.record(),
                "active": loaded.adapter in active,
            }
        )
    return out


_ATTENTION: weakref.WeakKeyDictionary[torch.nn.Module, str] = weakref.WeakKeyDictionary()


def _attention(pipe: Any) -> str:
    """The attention processor classes of the pipeline's UNet, for the record. Nothing in
    this package changes them after loading (LoRAs are PEFT layers, not processors), and
    finding them walks every module (~1 ms a frame): once per UNet."""
    unet = pipe.unet
    if unet not in _ATTENTION:
        _ATTENTION[unet] = ",".join(
            sorted({type(p).__name__ for p in unet.attn_processors.values()})
        )
    return _ATTENTION[unet]


def _blended_embeds(
    pipe: Any, prompt: str, blend: str, negative: str, weight: float, guidance: float
) -> dict[str, Any]:
    """Text embeddings of ``prompt`` mixed with ``blend``'s at ``weight`` (prompt keyframes)."""
    cfg = guidance > 1.0  # as the pipeline decides for SD-1.5 UNets
    device = pipe._execution_device
    ours, negative_embeds = pipe.encode_prompt(prompt, device, 1, cfg, negative or None)
    theirs, _ = pipe.encode_prompt(blend, device, 1, False)
    mixed = torch.lerp(ours, theirs, float(weight))
    out: dict[str, Any] = {"prompt_embeds": mixed}
    if cfg:
        out["negative_prompt_embeds"] = negative_embeds
    return out


FLAWS = {"nan": "has NaN or inf pixels", "black": "is black"}
"""What :func:`image_flaw` returns, and how messages say it."""


def image_flaw(images: np.ndarray) -> str | None:
    """Why decoded frames (floats in 0..1, as ``output_type="np"`` gives them) are
    unusable: ``"nan"`` (NaN or inf pixels), ``"black"``, or None when they are fine."""
    # NaN propagates through min and max, and an inf is one of them: two reductions
    # instead of a mask of the whole frame (0.21 ms instead of 0.27 at 512 x 512).
    low, high = float(images.min()), float(images.max())
    if not (np.isfinite(low) and np.isfinite(high)):
        return "nan"
    if high < BLACK_MAX:
        return "black"
    return None


@contextmanager
def in_float32(modules: Iterable[torch.nn.Module]) -> Iterator[None]:
    """Run with every float16/bfloat16 parameter and buffer of ``modules`` in float32;
    each is put back in its own dtype afterwards, bit for bit."""
    changed: list[tuple[torch.Tensor, torch.dtype]] = []
    with torch.no_grad():
        for module in modules:
            for tensor in chain(module.parameters(), module.buffers()):
                if tensor.dtype in (torch.float16, torch.bfloat16):
                    changed.append((tensor, tensor.dtype))
                    tensor.data = tensor.data.float()
    try:
        yield
    finally:
        with torch.no_grad():
            for tensor, dtype in changed:
                tensor.data = tensor.data.to(dtype)


def _modules(pipe: Any) -> list[torch.nn.Module]:
    return [c for c in pipe.components.values() if isinstance(c, torch.nn.Module)]


@torch.no_grad()
def _decode(pipe: Any, latents: torch.Tensor) -> np.ndarray:
    """Final latents to images as the pipeline decodes them (``output_type="np"``)."""
    vae = pipe.vae
    decoded = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
    images = pipe.image_processor.postprocess(decoded, output_type="np")
    pipe.maybe_free_model_hooks()  # with model CPU offload: the VAE back to the CPU
    return images


_PARTS = {"vae": "its VAE decode", "pipeline": "the whole frame"}  # float32_retry.part


def _retry_float32(
    pipe: Any,
    dtype: torch.dtype,
    flaw: str,
    latents: torch.Tensor | None,
    run: Callable[[], tuple[np.ndarray, torch.Tensor | None]],
    spec: types_pb2.FrameSpec,
) -> tuple[np.ndarray, dict[str, Any], str]:
    """Re-render a frame whose image is ``flaw`` once in float32: the images, the
    record's ``float32_retry`` and the notice. Raises FrameFailed when that cannot help."""
    blame = f"the base model, VAE or a LoRA of profile {spec.profile.name!r} produces it"
    if dtype == torch.float32:
        raise FrameFailed(
            f"frame {spec.index}: the rendered image {FLAWS[flaw]} in float32; {blame}"
        )
    # Only checked here: on the normal path this would be an extra device sync.
    latents_finite = latents is not None and bool(torch.isfinite(latents).all())
    part = "vae" if latents_finite else "pipeline"
    started = time.perf_counter()
    if latents_finite:
        with in_float32([pipe.vae]):
            images = _decode(pipe, latents)
    else:
        with in_float32(_modules(pipe)):
            images, _ = run()
    again = image_flaw(images)
    name = dtype_name(dtype)
    if again is not None:
        raise FrameFailed(
            f"frame {spec.index}: the rendered image {FLAWS[flaw]} in {name}, and still "
            f"{FLAWS[again]} after re-rendering {_PARTS[part]} in float32; {blame}"
        )
    retry = {
        "part": part,
        "from_dtype": name,
        "reason": flaw,
        "latents_finite": latents_finite,
        "elapsed_s": round(time.perf_counter() - started, 4),
    }
    notice = (
        f"frame {spec.index}: the rendered image {FLAWS[flaw]} in {name}, so {_PARTS[part]} "
        "was re-rendered in float32; set ANIM_DTYPE=float32 if this keeps happening"
    )
    return images, retry, notice


def render_frame(
    spec: types_pb2.FrameSpec,
    *,
    source: Image.Image | np.ndarray | None = None,
    depth: Image.Image | np.ndarray | None = None,
    cache: PipelineCache,
    settings: Settings | None = None,
    on_step: StepCallback | None = None,
) -> RenderResult:
    """Render ``spec`` and return the PNG and its record.

    Mode: txt2img when the spec has no ``source_key`` or is a cut; otherwise
    img2img from ``source`` (resized to the spec's size), or ControlNet img2img
    with ``depth`` as the control image when the spec has a ``depth_key``.
    ``on_step(done, total)`` is called after every denoising step.
    Raises ValueError naming the field for a bad spec or a missing image.
    """
    mode = _mode(spec)
    prompt = limits.check_text("prompt", spec.prompt, limits.PROMPT_CHARS, required=True)
    negative = limits.check_text(
        "negative_prompt", spec.negative_prompt, limits.NEGATIVE_PROMPT_CHARS, required=False
    )
    width = limits.WIDTH.check("width", spec.width)
    height = limits.HEIGHT.check("height", spec.height)
    steps = limits.STEPS.check("steps", spec.steps)
    guidance = limits.GUIDANCE.check("guidance", _f32(spec.guidance))
    scheduler = check_scheduler(spec.scheduler or spec.profile.scheduler or "PNDM")
    if spec.preset not in PRESETS:
        raise ValueError(f"preset: must be empty or fast, got {spec.preset!r:.40}")
    if not spec.profile.base_model:
        raise ValueError("profile.base_model: must name a model (the spec carries no profile)")

    call: dict[str, Any] = {}
    strength: float | None = None
    controlnet_scale: float | None = None
    steps_called = steps
    if mode == TXT2IMG:
        call.update(width=width, height=height)
    else:
        strength = limits.STRENGTH.check("strength", _f32(spec.strength))
        steps_called = img2img_steps(steps, strength)
        if source is None:
            raise ValueError(f"source: frame {spec.index} starts from {spec.source_key!r}")
        call.update(image=_fit(source, width, height), strength=strength)
        if mode == CONTROLNET_IMG2IMG:
            if depth is None:
                raise ValueError(f"depth: frame {spec.index} is guided by {spec.depth_key!r}")
            controlnet_scale = limits.CONTROLNET_SCALE.check(
                "controlnet_scale", _f32(spec.controlnet_scale)
            )
            call.update(
                control_image=_fit(depth, width, height),
                controlnet_conditioning_scale=controlnet_scale,
                width=width,
                height=height,
            )

    steps_run = 0
    final: dict[str, Any] = {}

    def count_step(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict:
        nonlocal steps_run
        steps_run += 1
        # A reference, no copy: the last step's latents, for a float32 VAE retry.
        final["latents"] = tensors.get("latents")
        if on_step is not None:
            on_step(steps_run, int(pipe.num_timesteps))
        return tensors

    loading = time.perf_counter()
    with cache.lock:
        pipe, models = cache.pipeline(spec.profile, mode, scheduler, settings)
        load_s = time.perf_counter() - loading  # waiting for the lock and loading models
        counter = TokenCounter(pipe.tokenizer)
        prompt_tokens, prompt_dropped = counter.fit(prompt, "prompt", spec.truncate_prompt)
        negative_dropped = None
        if negative:
            _, negative_dropped = counter.fit(negative, "negative_prompt", spec.truncate_prompt)
        blend = None
        if spec.blend_prompt and spec.blend_weight > 0:
            blend = limits.check_text(
                "blend_prompt", spec.blend_prompt, limits.PROMPT_CHARS, required=True
            )
            counter.fit(blend, "blend_prompt", spec.truncate_prompt)

        def run() -> tuple[np.ndarray, torch.Tensor | None]:
            nonlocal steps_run
            steps_run = 0
            final.clear()
            if blend is not None:  # embedded per run: a float32 retry re-encodes in float32
                text = _blended_embeds(pipe, prompt, blend, negative, spec.blend_weight, guidance)
            else:
                text = {"prompt": prompt, "negative_prompt": negative or None}
            # "np", not "pil": the same pixels, still floats, so NaN can be told from black.
            result = pipe(
                num_inference_steps=steps_called,
                guidance_scale=guidance,
                generator=torch.Generator("cpu").manual_seed(spec.seed),
                callback_on_step_end=count_step,
                output_type="np",
                **call,
                **text,
            )
            return result.images, final.get("latents")

        started = time.perf_counter()
        images, latents = run()
        float32_retry: dict[str, Any] | None = None
        notice = ""
        flaw = image_flaw(images)
        if flaw is not None:
            images, float32_retry, notice = _retry_float32(
                pipe, models.dtype, flaw, latents, run, spec
            )
        final.clear()
        elapsed = time.perf_counter() - started
        loras = _lora_record(models, spec.profile, pipe)
        described = dict(models.models)
        if mode == CONTROLNET_IMG2IMG:
            described["controlnet"] = models.controlnets[spec.profile.controlnet][1]
        attention = _attention(pipe)
    # What the pipeline's numpy_to_pil gives ((x * 255).round() as uint8, half to even; the
    # values are in 0..1), in one OpenCV pass instead of three numpy ones.
    pixels = cv2.addWeighted(images[0], 255.0, images[0], 0.0, 0.0, dtype=cv2.CV_8U)
    height_px, width_px = pixels.shape[:2]
    record = {
        "index": spec.index,
        "mode": mode,
        "prompt": prompt,
        "negative_prompt": negative,
        "blend_prompt": blend,
        "blend_weight": round(float(spec.blend_weight), 6) if blend else None,
        "prompt_tokens": prompt_tokens,
        "prompt_dropped": prompt_dropped,
        "negative_prompt_dropped": negative_dropped,
        "seed": spec.seed,
        "strength": strength,
        "guidance": guidance,
        "steps_requested": steps,
        "steps": steps_called,
        "steps_effective": steps_run,
        "scheduler": scheduler,
        "scheduler_class": type(pipe.scheduler).__name__,
        "preset": spec.preset,
        "controlnet_scale": controlnet_scale,
        "width": width_px,
        "height": height_px,
        "source_key": spec.source_key if mode != TXT2IMG else None,
        "device": models.device,
        "device_name": provenance.device_name(models.device),
        "dtype": dtype_name(models.dtype),
        "attention": attention,
        "low_vram": models.low_vram,
        "compile": models.compiled,
        "elapsed_s": round(elapsed, 4),
        "load_s": round(load_s, 4),
        "profile": spec.profile.name,
        "base_model": spec.profile.base_model,
        "loras": loras,
        "lora_fused": models.fused,
        "controlnet": spec.profile.controlnet if mode == CONTROLNET_IMG2IMG else None,
        "tiny_autoencoder": spec.profile.tiny_autoencoder or None,
        "models": described,
        "versions": provenance.versions(),
        "float32_retry": float32_retry,
    }
    return RenderResult(pixels=pixels, record=record, notice=notice)
