"""Rendering one frame with Stable Diffusion 1.5: the one module that calls diffusers.

* txt2img for a frame without a source image (frame 0 and cuts);
* img2img from the previous frame at low strength (default 0.15);
* ControlNet img2img when the spec names a depth map (``depth_key``).

Models load once per process: ``PipelineCache`` keeps the loaded base pipeline
of a profile (base model, LoRAs, tiny autoencoder) and derives the img2img and
ControlNet pipelines from it with ``from_pipe``, which shares every module. The
scheduler is the spec's (or the profile's), built from the base model's
scheduler config.

Every frame draws its noise from a CPU ``torch.Generator`` seeded with the
spec's seed, so the same spec gives the same PNG bytes on the same device.
The record returned with the PNG says what actually ran, including how many
denoising steps img2img ran (counted, not computed).
"""

from __future__ import annotations

import gc
import io
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from ghibli_anim.common import config, limits, logs
from ghibli_anim.common.config import Settings
from ghibli_anim.common.pb import types_pb2
from ghibli_anim.common.profiles import STORE_PREFIX, check_scheduler, locate

log = logging.getLogger(__name__)

TXT2IMG = "txt2img"
IMG2IMG = "img2img"
CONTROLNET_IMG2IMG = "controlnet_img2img"

# Scheduler name -> (diffusers class, extra config).
_SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "DDIM": ("DDIMScheduler", {}),
    "PNDM": ("PNDMScheduler", {}),
    "DDPM": ("DDPMScheduler", {}),
    "Euler": ("EulerDiscreteScheduler", {}),
    "EulerA": ("EulerAncestralDiscreteScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "DPM++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "DPM++ Karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True},
    ),
    "UniPC": ("UniPCMultistepScheduler", {}),
    "LCM": ("LCMScheduler", {}),
}

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}

StepCallback = Callable[[int, int], None]


# ---------------------------------------------------------------------------
# Device and dtype
# ---------------------------------------------------------------------------


def _settings(settings: Settings | None) -> Settings:
    return settings if settings is not None else config.load("client")


def choose_device(settings: Settings | None = None) -> tuple[str, torch.dtype]:
    """(device, dtype) from ANIM_DEVICE and ANIM_DTYPE.

    ``auto`` picks CUDA, then Apple's MPS, then the CPU; the dtype follows:
    float16 on CUDA, float32 elsewhere (float16 on MPS has given black frames on
    some macOS versions, and CPU kernels are slow or missing in float16).
    """
    settings = _settings(settings)
    device = settings["ANIM_DEVICE"]
    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise ValueError("ANIM_DEVICE: cuda requested, but torch sees no CUDA device")
    elif device == "mps" and not torch.backends.mps.is_available():
        raise ValueError("ANIM_DEVICE: mps requested, but torch sees no MPS device")
    dtype_name = settings["ANIM_DTYPE"]
    if dtype_name == "auto":
        dtype_name = "float16" if device == "cuda" else "float32"
    return device, _DTYPES[dtype_name]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ---------------------------------------------------------------------------
# Pipelines
# ---------------------------------------------------------------------------


def _lora_modules(pipe: Any, adapter: str) -> int:
    """Layers that hold the adapter (diffusers reports no matched-key count)."""
    count = 0
    for component in (pipe.unet, pipe.text_encoder):
        for module in component.modules():
            lora_a = getattr(module, "lora_A", None)
            if lora_a is not None and adapter in lora_a:
                count += 1
    return count


@dataclass
class LoadedModels:
    """A loaded profile: the base pipeline and what derives from it."""

    base: Any
    device: str
    dtype: torch.dtype
    lora_layers: dict[str, int]
    """Adapter name -> layers it reached, in the profile's LoRA order."""
    lora_scales: tuple[float, ...] = ()
    controlnet: Any = None
    pipes: dict[tuple[str, str], Any] = field(default_factory=dict)


class PipelineCache:
    """Loaded pipelines, keyed by profile (base model, LoRAs, autoencoder, ControlNet),
    device and dtype; within a profile, by mode and scheduler.

    ``max_entries`` profiles stay loaded (one by default: a GPU holds one SD
    pipeline comfortably); the least recently used one is dropped first. The
    ControlNet loads on the first frame that needs it. ``lora_resolver`` turns a
    ``store://loras/NAME`` source into a local file or folder (the renderer
    service downloads it); without one such sources are refused.

    Rendering holds ``lock``: a diffusers pipeline is not safe for concurrent calls.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        max_entries: int = 1,
        lora_resolver: Callable[[str], str] | None = None,
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries: must be >= 1, got {max_entries}")
        logs.quiet_ml_libraries()
        self.settings = settings
        self.max_entries = max_entries
        self.lora_resolver = lora_resolver
        self.lock = threading.RLock()
        self._entries: OrderedDict[tuple[Any, ...], LoadedModels] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Drop every loaded pipeline and free the accelerator's memory."""
        with self.lock:
            self._entries.clear()
            _free_memory()

    def pipeline(
        self,
        profile: types_pb2.Profile,
        mode: str,
        scheduler: str,
        settings: Settings | None = None,
    ) -> tuple[Any, LoadedModels]:
        """The pipeline for ``mode`` (txt2img, img2img, controlnet_img2img)."""
        settings = settings if settings is not None else self.settings
        with self.lock:
            models = self._models(profile, settings)
            key = (mode, scheduler)
            if key not in models.pipes:
                models.pipes[key] = self._derive(models, profile, mode, scheduler, settings)
            return models.pipes[key], models

    def _models(self, profile: types_pb2.Profile, settings: Settings | None) -> LoadedModels:
        device, dtype = choose_device(settings)
        key = (
            profile.base_model,
            # Scales are not part of the key: changing one needs no reload.
            tuple((lo.source, lo.weight_name) for lo in profile.loras),
            profile.tiny_autoencoder,
            profile.controlnet,
            device,
            dtype,
        )
        if key in self._entries:
            self._entries.move_to_end(key)
            models = self._entries[key]
        else:
            while len(self._entries) >= self.max_entries:
                self._entries.popitem(last=False)
                _free_memory()
            models = self._load(profile, settings, device, dtype)
            self._entries[key] = models
        scales = tuple(_f32(lo.scale) for lo in profile.loras)
        if scales != models.lora_scales:
            # Adapters live in the shared UNet/text encoder: every derived pipe follows.
            models.base.set_adapters(list(models.lora_layers), adapter_weights=list(scales))
            models.lora_scales = scales
        return models

    def _load(
        self, profile: types_pb2.Profile, settings: Settings | None, device: str, dtype: torch.dtype
    ) -> LoadedModels:
        from diffusers import AutoencoderTiny, StableDiffusionPipeline

        started = time.perf_counter()
        kwargs: dict[str, Any] = {}
        if profile.tiny_autoencoder:
            path = locate(profile.tiny_autoencoder, settings, field="profile.tiny_autoencoder")
            kwargs["vae"] = AutoencoderTiny.from_pretrained(path, dtype=dtype)
        base_path = locate(profile.base_model, settings, field="profile.base_model")
        base = StableDiffusionPipeline.from_pretrained(
            base_path,
            dtype=dtype,
            safety_checker=None,
            requires_safety_checker=False,
            **kwargs,
        )
        lora_layers = self._load_loras(base, profile, settings)
        base.to(device)
        base.set_progress_bar_config(disable=True)
        log.info(
            "pipeline loaded",
            extra={
                "profile": profile.name,
                "base_model": profile.base_model,
                "device": device,
                "dtype": _dtype_name(dtype),
                "seconds": round(time.perf_counter() - started, 3),
            },
        )
        return LoadedModels(base, device, dtype, lora_layers)

    def _load_loras(
        self, pipe: Any, profile: types_pb2.Profile, settings: Settings | None
    ) -> dict[str, int]:
        """Load the profile's LoRAs as adapters lora0, lora1... (scales: see _models)."""
        layers: dict[str, int] = {}
        for i, lora in enumerate(profile.loras):
            where = f"profile.loras[{i}].source"
            if lora.source.startswith(STORE_PREFIX) and self.lora_resolver is not None:
                source = self.lora_resolver(lora.source)
            else:
                source = locate(lora.source, settings, field=where, allow_store=True)
            weight_name = lora.weight_name or None
            if os.path.isfile(source):
                source, weight_name = os.path.dirname(source), os.path.basename(source)
            name = f"lora{i}"
            try:
                pipe.load_lora_weights(source, weight_name=weight_name, adapter_name=name)
                if _lora_modules(pipe, name) == 0:
                    # Files in the old attention-processor layout (the seed paper's
                    # load_attn_procs era) load above as a silent no-op.
                    if name in _adapters(pipe):
                        pipe.delete_adapters([name])
                    name = f"lora{i}_attn_procs"
                    state_dict = pipe.lora_state_dict(source, weight_name=weight_name)[0]
                    pipe.unet.load_lora_adapter(state_dict, prefix=None, adapter_name=name)
            except (ValueError, OSError, KeyError) as exc:
                raise ValueError(f"{where}: cannot load {lora.source!r} ({exc})") from exc
            count = _lora_modules(pipe, name)
            if count == 0:
                raise ValueError(f"{where}: {lora.source!r} matched no layer of the base model")
            layers[name] = count
        return layers

    def _derive(
        self,
        models: LoadedModels,
        profile: types_pb2.Profile,
        mode: str,
        scheduler: str,
        settings: Settings | None,
    ) -> Any:
        import diffusers

        class_name, extra = _SCHEDULERS[scheduler]
        # A scheduler per pipeline: some keep step state between calls.
        sched = getattr(diffusers, class_name).from_config(models.base.scheduler.config, **extra)
        # vae passed explicitly: from_pipe drops an AutoencoderTiny otherwise.
        common = {"scheduler": sched, "vae": models.base.vae}
        if mode == TXT2IMG:
            pipe = diffusers.StableDiffusionPipeline.from_pipe(models.base, **common)
        elif mode == IMG2IMG:
            pipe = diffusers.StableDiffusionImg2ImgPipeline.from_pipe(models.base, **common)
        else:
            if not profile.controlnet:
                raise ValueError(
                    f"depth_key: profile {profile.name!r} names no controlnet to use the depth map"
                )
            if models.controlnet is None:
                path = locate(profile.controlnet, settings, field="profile.controlnet")
                models.controlnet = diffusers.ControlNetModel.from_pretrained(
                    path, dtype=models.dtype
                ).to(models.device)
            pipe = diffusers.StableDiffusionControlNetImg2ImgPipeline.from_pipe(
                models.base, controlnet=models.controlnet, **common
            )
        pipe.set_progress_bar_config(disable=True)
        return pipe


def _adapters(pipe: Any) -> set[str]:
    return {name for names in pipe.get_list_adapters().values() for name in names}


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------
# One frame
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderResult:
    """A rendered frame: PNG bytes and the record of what ran.

    ``record`` keys: index, mode (txt2img | img2img | controlnet_img2img),
    prompt, negative_prompt, seed, strength (None for txt2img), guidance,
    steps_requested, steps_effective (denoising steps actually run), scheduler,
    scheduler_class, controlnet_scale (None without ControlNet), width, height,
    device, dtype, elapsed_s, profile, base_model, loras, controlnet,
    tiny_autoencoder.
    """

    png: bytes
    record: dict[str, Any]


def _f32(value: float) -> float:
    # Proto floats are float32: 0.7 arrives as 0.69999998..., and int(10 * that)
    # would be 6, not 7. Six decimals recover the value the user wrote.
    return round(float(value), 6)


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False, compress_level=6)  # no timestamps
    return out.getvalue()


def _mode(spec: types_pb2.FrameSpec) -> str:
    if not spec.source_key or spec.continuity == types_pb2.CONTINUITY_CUT:
        return TXT2IMG
    return CONTROLNET_IMG2IMG if spec.depth_key else IMG2IMG


def _fit(image: Image.Image, width: int, height: int) -> Image.Image:
    image = image.convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return image


def render_frame(
    spec: types_pb2.FrameSpec,
    *,
    source: Image.Image | None = None,
    depth: Image.Image | None = None,
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
    if not spec.profile.base_model:
        raise ValueError("profile.base_model: must name a model (the spec carries no profile)")

    call: dict[str, Any] = {}
    strength: float | None = None
    controlnet_scale: float | None = None
    if mode == TXT2IMG:
        call.update(width=width, height=height)
    else:
        strength = limits.STRENGTH.check("strength", _f32(spec.strength))
        if int(steps * strength) < 1:
            raise ValueError(
                f"steps: {steps} steps at strength {strength:g} run no denoising step; "
                f"use at least {math.ceil(1 / strength)}"
            )
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

    def count_step(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict:
        nonlocal steps_run
        steps_run += 1
        if on_step is not None:
            on_step(steps_run, int(pipe.num_timesteps))
        return tensors

    with cache.lock:
        pipe, models = cache.pipeline(spec.profile, mode, scheduler, settings)
        started = time.perf_counter()
        result = pipe(
            prompt=prompt,
            negative_prompt=negative or None,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=torch.Generator("cpu").manual_seed(spec.seed),
            callback_on_step_end=count_step,
            output_type="pil",
            **call,
        )
        elapsed = time.perf_counter() - started
    image = result.images[0]
    record = {
        "index": spec.index,
        "mode": mode,
        "prompt": prompt,
        "negative_prompt": negative,
        "seed": spec.seed,
        "strength": strength,
        "guidance": guidance,
        "steps_requested": steps,
        "steps_effective": steps_run,
        "scheduler": scheduler,
        "scheduler_class": type(pipe.scheduler).__name__,
        "controlnet_scale": controlnet_scale,
        "width": image.width,
        "height": image.height,
        "device": models.device,
        "dtype": _dtype_name(models.dtype),
        "elapsed_s": round(elapsed, 4),
        "profile": spec.profile.name,
        "base_model": spec.profile.base_model,
        "loras": [
            {"source": lo.source, "scale": _f32(lo.scale), "weight_name": lo.weight_name}
            for lo in spec.profile.loras
        ],
        "controlnet": spec.profile.controlnet if mode == CONTROLNET_IMG2IMG else None,
        "tiny_autoencoder": spec.profile.tiny_autoencoder or None,
    }
    return RenderResult(png=_png(image), record=record)
