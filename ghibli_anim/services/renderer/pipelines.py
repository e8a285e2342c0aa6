"""Loading and caching the Stable Diffusion 1.5 pipelines that the renderer runs.

Models load once per process. ``PipelineCache`` keeps the base pipeline of a
model set (base model, tiny autoencoder, device, dtype) in a small LRU and
derives the txt2img, img2img and ControlNet pipelines from it with
``from_pipe``, which shares every module. The base model is a hub id, a
diffusers folder, or one ``.safetensors`` checkpoint (``from_single_file`` with
the profile's config folder, so nothing is fetched). LoRAs (any of the formats
of :mod:`ghibli_anim.services.renderer.lora_files`) load once as named adapters of that base;
the spec's LoRAs and scales are activated per frame and fused into the weights
for inference (``ANIM_FUSE_LORA``). Fusing is undone by restoring the saved
weights, not by subtracting, so a frame's bytes never depend on which jobs ran
before it in this process.

Also here: the device and dtype choice (``ANIM_DEVICE``, ``ANIM_DTYPE``), the
profiles' scheduler names mapped to diffusers classes, ``torch.compile``
(``ANIM_COMPILE``), model CPU offload (``ANIM_LOW_VRAM``) and freeing the
accelerator's memory when a model set is dropped.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ghibli_anim.contracts import config
from ghibli_anim.contracts.config import Settings
from ghibli_anim.contracts.model_refs import is_single_file, locate
from ghibli_anim.contracts.pb import types_pb2
from ghibli_anim.contracts.profiles import single_file_config
from ghibli_anim.runtime import devices, image_processors, logs
from ghibli_anim.services.renderer import lora_files, provenance

log = logging.getLogger(__name__)

# Pipeline modes: which diffusers pipeline a frame runs.
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


# LoRA adapters kept loaded per base model beyond the ones a frame uses.
MAX_ADAPTERS = 8


# ---------------------------------------------------------------------------
# Device and dtype
# ---------------------------------------------------------------------------


def _settings(settings: Settings | None) -> Settings:
    return settings if settings is not None else config.load("client")


def choose_device(settings: Settings | None = None) -> tuple[str, torch.dtype]:
    """(device, dtype) from ANIM_DEVICE and ANIM_DTYPE (rules in runtime/devices.py)."""
    settings = _settings(settings)
    device = devices.pick_device(settings)
    return device, devices.pick_dtype(settings, device)


def dtype_name(dtype: torch.dtype) -> str:
    """A torch dtype as the records name it: ``float16``, ``bfloat16``, ``float32``."""
    return str(dtype).removeprefix("torch.")


# ---------------------------------------------------------------------------
# Pipelines
# ---------------------------------------------------------------------------


@dataclass
class LoadedModels:
    """A loaded base pipeline, what derives from it, and its LoRA state."""

    base: Any
    device: str
    dtype: torch.dtype
    models: dict[str, Any]
    """Provenance of what was loaded: base model (and config), tiny autoencoder."""
    low_vram: bool = False
    offload: bool = False
    """Model CPU offload is on (low_vram with an accelerator)."""
    compiled: bool = False
    fuse: bool = True
    loras: OrderedDict[tuple[str, str], lora_files.LoadedLora] = field(default_factory=OrderedDict)
    """(source, weight_name) -> loaded adapter, least recently used first."""
    active: tuple[tuple[str, float], ...] = ()
    """(adapter, scale) of the LoRAs in use, in the spec's order."""
    fused: bool = False
    pristine: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = field(default_factory=dict)
    """Pre-fusion weight and bias of every layer fused into, on the CPU."""
    adapters_made: int = 0
    controlnets: dict[str, tuple[Any, dict[str, Any]]] = field(default_factory=dict)
    pipes: dict[tuple[str, str, str], Any] = field(default_factory=dict)
    offload_owner: Any = None


class PipelineCache:
    """Loaded pipelines, keyed by base model, tiny autoencoder, device and dtype;
    within one, by mode, scheduler and ControlNet.

    ``max_entries`` base models stay loaded (one by default: a GPU holds one SD
    pipeline comfortably); the least recently used one is dropped first. A job
    with other LoRAs or scales reuses the loaded base: LoRAs are adapters,
    loaded once (up to ``MAX_ADAPTERS`` kept), switched per frame. A ControlNet
    loads on the first frame that needs it. ``lora_resolver`` turns a
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
        """The pipeline for ``mode`` (txt2img, img2img, controlnet_img2img), with the
        profile's LoRAs active at their scales."""
        settings = settings if settings is not None else self.settings
        with self.lock:
            models = self._models(profile, settings)
            self._activate_loras(models, profile, settings)
            controlnet = profile.controlnet if mode == CONTROLNET_IMG2IMG else ""
            key = (mode, scheduler, controlnet)
            if key not in models.pipes:
                models.pipes[key] = self._derive(models, profile, mode, scheduler, settings)
            pipe = models.pipes[key]
            if models.offload and models.offload_owner is not pipe:
                # Offload hooks belong to one pipeline; the derived ones share modules.
                pipe.enable_model_cpu_offload(device=models.device)
                models.offload_owner = pipe
            return pipe, models

    # -- base models ---------------------------------------------------------

    def _models(self, profile: types_pb2.Profile, settings: Settings | None) -> LoadedModels:
        device, dtype = choose_device(settings)
        opts = _settings(settings)
        key = (
            profile.base_model,
            # A single file takes its configs (and tokenizer) from this folder.
            profile.tokenizer if is_single_file(profile.base_model) else "",
            profile.tiny_autoencoder,
            device,
            dtype,
            opts["ANIM_LOW_VRAM"],
            opts["ANIM_COMPILE"],
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
        models.fuse = opts["ANIM_FUSE_LORA"]
        return models

    def _load(
        self, profile: types_pb2.Profile, settings: Settings | None, device: str, dtype: torch.dtype
    ) -> LoadedModels:
        image_processors.use_pil_classes()  # before diffusers' pipelines import them
        from diffusers import AutoencoderTiny, StableDiffusionPipeline

        opts = _settings(settings)
        started = time.perf_counter()
        kwargs: dict[str, Any] = {
            "dtype": dtype,
            # No safety checker, hence no use for its CLIP feature extractor: neither loads.
            "safety_checker": None,
            "feature_extractor": None,
            "requires_safety_checker": False,
        }
        described: dict[str, Any] = {}
        if profile.tiny_autoencoder:
            path = locate(profile.tiny_autoencoder, settings, field="profile.tiny_autoencoder")
            kwargs["vae"] = AutoencoderTiny.from_pretrained(path, dtype=dtype)
            described["tiny_autoencoder"] = provenance.describe_model(
                profile.tiny_autoencoder, path
            )
        base_path = locate(profile.base_model, settings, field="profile.base_model")
        if Path(base_path).is_file():
            if not is_single_file(base_path):
                raise ValueError(
                    f"profile.base_model: {profile.base_model!r} is a file but not a "
                    ".safetensors checkpoint"
                )
            config_ref = single_file_config(profile)
            config_path = locate(config_ref, settings, field="profile.tokenizer (config)")
            base = StableDiffusionPipeline.from_single_file(base_path, config=config_path, **kwargs)
            described["config"] = provenance.describe_model(config_ref, config_path)
        else:
            base = StableDiffusionPipeline.from_pretrained(base_path, **kwargs)
        described["base_model"] = provenance.describe_model(profile.base_model, base_path)
        low_vram = opts["ANIM_LOW_VRAM"]
        offload = low_vram and device != "cpu"
        if low_vram:
            base.vae.enable_slicing()
        if not offload:
            base.to(device)
        compiled = opts["ANIM_COMPILE"]
        if compiled:
            _compile(base.unet)
        base.set_progress_bar_config(disable=True)
        log.info(
            "pipeline loaded",
            extra={
                "profile": profile.name,
                "base_model": profile.base_model,
                "device": device,
                "dtype": dtype_name(dtype),
                "low_vram": low_vram,
                "compile": compiled,
                "seconds": round(time.perf_counter() - started, 3),
            },
        )
        return LoadedModels(
            base,
            device,
            dtype,
            described,
            low_vram=low_vram,
            offload=offload,
            compiled=compiled,
        )

    # -- LoRAs ---------------------------------------------------------------

    def _activate_loras(
        self, models: LoadedModels, profile: types_pb2.Profile, settings: Settings | None
    ) -> None:
        """Make exactly the profile's LoRAs active at their scales (fused if enabled)."""
        wanted: list[tuple[str, float]] = []
        for i, lora in enumerate(profile.loras):
            field_name = f"profile.loras[{i}].source"
            key = (lora.source, lora.weight_name)
            loaded = models.loras.get(key)
            if loaded is None:
                _unfuse(models)  # never inject into merged layers
                lora_file = lora_files.find_file(
                    lora.source, lora.weight_name, settings, field_name, self.lora_resolver
                )
                models.adapters_made += 1
                adapter = f"lora{models.adapters_made}"
                loaded = lora_files.load_lora(models.base, lora_file, adapter, field_name)
                models.loras[key] = loaded
            models.loras.move_to_end(key)
            if any(name == loaded.adapter for name, _ in wanted):
                raise ValueError(f"{field_name}: {lora.source!r:.200} is listed twice")
            wanted.append((loaded.adapter, _f32(lora.scale)))
        target = tuple(wanted)
        if target == models.active and models.fused == (models.fuse and bool(target)):
            return
        _unfuse(models)
        base = models.base
        if target:
            base.enable_lora()
            base.set_adapters([n for n, _ in target], adapter_weights=[s for _, s in target])
            if models.fuse:
                _fuse(models, [n for n, _ in target])
        elif models.loras:
            base.disable_lora()
        models.active = target
        self._evict_adapters(models)

    def _evict_adapters(self, models: LoadedModels) -> None:
        in_use = {name for name, _ in models.active}
        for key in list(models.loras):
            if len(models.loras) <= MAX_ADAPTERS:
                break
            if models.loras[key].adapter not in in_use:
                was_fused = models.fused
                _unfuse(models)
                models.base.delete_adapters([models.loras.pop(key).adapter])
                if was_fused:
                    _fuse(models, [name for name, _ in models.active])

    # -- derived pipelines ---------------------------------------------------

    def _controlnet(
        self, models: LoadedModels, profile: types_pb2.Profile, settings: Settings | None
    ) -> Any:
        import diffusers

        ref = profile.controlnet
        if ref not in models.controlnets:
            path = locate(ref, settings, field="profile.controlnet")
            model = diffusers.ControlNetModel.from_pretrained(path, dtype=models.dtype)
            if not models.offload:
                model.to(models.device)
            if models.compiled:
                _compile(model)
            models.controlnets[ref] = (model, provenance.describe_model(ref, path))
        return models.controlnets[ref][0]

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
        # vae passed explicitly: from_pipe drops an AutoencoderTiny otherwise. dtype too:
        # without it from_pipe casts the shared modules to float32 (diffusers issue 12754).
        common = {"scheduler": sched, "vae": models.base.vae, "dtype": models.dtype}
        if mode == TXT2IMG:
            pipe = diffusers.StableDiffusionPipeline.from_pipe(models.base, **common)
        elif mode == IMG2IMG:
            pipe = diffusers.StableDiffusionImg2ImgPipeline.from_pipe(models.base, **common)
        else:
            if not profile.controlnet:
                raise ValueError(
                    f"depth_key: profile {profile.name!r} names no controlnet to use the depth map"
                )
            pipe = diffusers.StableDiffusionControlNetImg2ImgPipeline.from_pipe(
                models.base, controlnet=self._controlnet(models, profile, settings), **common
            )
        pipe.set_progress_bar_config(disable=True)
        return pipe


def _f32(value: float) -> float:
    # Proto floats are float32: a LoRA scale of 0.7 arrives as 0.69999998...; six
    # decimals recover the value the user wrote.
    return round(float(value), 6)


def _compile(model: Any) -> None:
    """channels_last + torch.compile in place (the module keeps its class for from_pipe)."""
    model.to(memory_format=torch.channels_last)
    model.compile()


def _fuse(models: LoadedModels, adapters: list[str]) -> None:
    """Merge the active adapters into the base weights, saving the weights first."""
    for name, layer in lora_files.lora_layers(models.base):
        present = [a for a in adapters if a in layer.lora_A]
        if not present:
            continue
        if name not in models.pristine:
            base = layer.base_layer
            bias = base.bias.detach().to("cpu", copy=True) if base.bias is not None else None
            models.pristine[name] = (base.weight.detach().to("cpu", copy=True), bias)
        layer.merge(adapter_names=present)
    models.fused = True


def _unfuse(models: LoadedModels) -> None:
    """Undo ``_fuse`` exactly: restore the saved weights (subtracting would leave
    rounding errors that make later frames depend on earlier jobs)."""
    if not models.fused:
        return
    for name, layer in lora_files.lora_layers(models.base):
        if not layer.merged:
            continue
        weight, bias = models.pristine[name]
        with torch.no_grad():
            layer.base_layer.weight.copy_(weight)
            if bias is not None:
                layer.base_layer.bias.copy_(bias)
        layer.merged_adapters.clear()
    models.fused = False


def _free_memory() -> None:
    """Collect dropped pipelines and hand their cached blocks back to the accelerator."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


__all__ = [
    "CONTROLNET_IMG2IMG",
    "IMG2IMG",
    "MAX_ADAPTERS",
    "TXT2IMG",
    "LoadedModels",
    "PipelineCache",
    "choose_device",
    "dtype_name",
]
