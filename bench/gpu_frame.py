"""What one frame costs on a GPU, against its compute floor.

Random weights of Stable Diffusion 1.5's real shape (UNet, VAE, CLIP text
encoder, depth ControlNet): nothing is downloaded, and random weights cost what
trained ones do. float16, 512x512, DDIM; img2img at strength 0.15 of 50 steps
(7 denoising steps). Each line is printed as soon as it is measured:

  (a) txt2img, 50 steps, classifier-free guidance
  (b) one img2img frame at strength 0.15
  (c) (b) guided by a depth ControlNet
  (d) (c) with a fused rank-4 LoRA (the style LoRA)
  (e) the fast preset: (d) plus a fused LCM-LoRA stand-in (rank 64), LCMScheduler,
      4 steps asked, raised to ceil(1/0.15) = 7 so that one step runs, guidance 1.5
  then (c) and (e) again with channels_last + torch.compile.

Every line shows the median wall time over the repeats, the compute floor (the
floating-point operations of that frame, counted once with
``torch.utils.flop_counter``, at the GPU's dense fp16 peak: ~989 TFLOP/s on
H100 and H200) and the ratio of the two.

``--tiny`` runs the same code on the CPU with the tiny SD-1.5-shaped models in
seconds (a smoke test; its ratios are against a nominal 1 TFLOP/s, not a real
peak). The script does not import the project: copy it anywhere with torch,
diffusers, transformers and peft.

    python bench/gpu_frame.py                 # on a GPU machine
    python bench/gpu_frame.py --tiny --no-compile
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

STRENGTH = 0.15
STEPS = 50
GUIDANCE = 8.5
FAST_STEPS = 4
FAST_GUIDANCE = 1.5
PROMPT = "a small dragon glides over a quiet medieval town at dusk, ghibli style"
NEGATIVE = "lowres, blurry, low quality"

# Dense (no sparsity) fp16/bf16 tensor-core peaks, TFLOP/s, by device-name fragment.
PEAKS = (
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),
    ("A100", 312.0),
    ("L40S", 362.1),
    ("A10G", 125.0),
    ("L4", 121.0),
)
CPU_NOMINAL_TFLOPS = 1.0

_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "clip_sample": False,
}


@dataclass(frozen=True)
class Shape:
    """Model sizes: SD-1.5's, or the tiny test models'."""

    name: str
    size: int
    unet: dict[str, Any]
    vae: dict[str, Any]
    text: dict[str, Any]
    cond_channels: tuple[int, ...]
    lora_rank: int = 4
    lcm_rank: int = 64


SD15 = Shape(
    name="SD-1.5",
    size=512,
    unet={
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 2,
        "block_out_channels": (320, 640, 1280, 1280),
        "down_block_types": (
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        "up_block_types": (
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ),
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
    },
    vae={
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": (128, 256, 512, 512),
        "layers_per_block": 2,
        "latent_channels": 4,
        "sample_size": 512,
    },
    text={
        "vocab_size": 49408,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "projection_dim": 768,
    },
    cond_channels=(16, 32, 96, 256),
)

TINY = Shape(
    name="tiny",
    size=64,
    unet={
        "sample_size": 32,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 1,
        "block_out_channels": (32, 64),
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": 32,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    },
    vae={
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 2,
        "up_block_types": ("UpDecoderBlock2D",) * 2,
        "block_out_channels": (32, 64),
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": 64,
    },
    text={
        "vocab_size": 1000,
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "projection_dim": 32,
    },
    cond_channels=(16, 32),
    lcm_rank=8,
)


def say(text: str) -> None:
    print(text, flush=True)


def quiet_libraries() -> None:
    """Errors only from diffusers and transformers: the figures are the output."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=UserWarning)


# ---------------------------------------------------------------------------
# Models with random weights
# ---------------------------------------------------------------------------


def _tokenizer(folder: Path, vocab_size: int) -> Any:
    """A byte-level CLIP tokenizer that fits ``vocab_size`` (77 tokens, like CLIP's)."""
    from transformers import CLIPTokenizer

    byte_chars = [chr(c) for c in range(ord("!"), ord("~") + 1)]
    byte_chars += [chr(c) for c in range(ord("¡"), ord("¬") + 1)]
    byte_chars += [chr(c) for c in range(ord("®"), ord("ÿ") + 1)]
    extra = [chr(256 + i) for i in range(256 - len(byte_chars))]
    symbols = byte_chars + extra
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    if len(vocab) > vocab_size:
        raise ValueError(f"tokenizer: {len(vocab)} tokens do not fit a vocabulary of {vocab_size}")
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(
        str(folder / "vocab.json"),
        str(folder / "merges.txt"),
        model_max_length=77,
        pad_token="<|endoftext|>",
    )


def build_pipeline(shape: Shape, device: str, dtype: torch.dtype, folder: Path) -> Any:
    """StableDiffusionPipeline of random weights, made directly on ``device``."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = _tokenizer(folder, shape.text["vocab_size"])
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**shape.unet).to(dtype)
        vae = AutoencoderKL(**shape.vae).to(dtype)
        text = CLIPTextModel(CLIPTextConfig(**shape.text, **ids)).to(dtype).eval()
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(**_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_controlnet(pipe: Any, shape: Shape, dtype: torch.dtype) -> Any:
    from diffusers import ControlNetModel

    torch.manual_seed(1)
    with torch.device(pipe.device):  # made where it runs: no slow CPU initialisation
        controlnet = ControlNetModel.from_unet(
            pipe.unet, conditioning_embedding_out_channels=shape.cond_channels
        )
    return controlnet.to(pipe.device, dtype)


LORA_TARGETS = (".to_q", ".to_k", ".to_v", ".to_out.0")


def random_lora(unet: Any, rank: int, seed: int) -> dict[str, Any]:
    """A diffusers-format LoRA (``unet.<module>.lora.down/up.weight``) on every attention
    projection of the UNet, like the style LoRAs of train_text_to_image_lora.py."""
    generator = torch.Generator("cpu").manual_seed(seed)
    state = {}
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith(LORA_TARGETS):
            down = torch.randn(rank, module.in_features, generator=generator) * 0.01
            up = torch.randn(module.out_features, rank, generator=generator) * 0.01
            state[f"unet.{name}.lora.down.weight"] = down
            state[f"unet.{name}.lora.up.weight"] = up
    return state


def load_lora(pipe: Any, name: str, state: dict[str, Any]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft's note about several adapters
        pipe.load_lora_weights(dict(state), adapter_name=name)


def fuse_loras(pipe: Any, scales: dict[str, float]) -> None:
    """Activate adapters at their scales and fuse them, as the renderer does by default."""
    pipe.set_adapters(list(scales), adapter_weights=list(scales.values()))
    pipe.fuse_lora(adapter_names=list(scales))


def compile_models(*models: Any) -> None:
    for model in models:
        model.to(memory_format=torch.channels_last)
        model.compile()


# ---------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------


def img2img_steps(steps: int, strength: float) -> int:
    """The renderer's rule: at least one denoising step (int(steps * strength) >= 1)."""
    while int(steps * strength) < 1:
        steps += 1
    return steps


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def count_flops(run: Callable[[], Any]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        run()
    return float(counter.get_total_flops())


def time_runs(run: Callable[[], Any], device: str, repeats: int) -> list[float]:
    run()  # warm-up (and compilation)
    out = []
    for _ in range(repeats):
        _sync(device)
        started = time.perf_counter()
        run()
        _sync(device)
        out.append((time.perf_counter() - started) * 1000)
    return out


def report(
    label: str, times_ms: list[float], flops: float, peak_tflops: float, steps_run: int
) -> None:
    median = statistics.median(times_ms)
    floor_ms = flops / (peak_tflops * 1e12) * 1000
    ratio = median / floor_ms if floor_ms > 0 else math.inf
    say(
        f"{label:<58} median {median:9.1f} ms   floor {floor_ms:8.2f} ms   x{ratio:7.2f}   "
        f"({flops / 1e12:.3f} TFLOP, {steps_run} denoising steps, {len(times_ms)} runs)"
    )


def peak_for(device: str, override: float | None) -> tuple[float, str]:
    if override:
        return override, "given"
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name()
        for fragment, peak in PEAKS:
            if fragment in name:
                return peak, f"{name} dense fp16"
        return 989.4, f"{name}: unknown peak, H100's assumed (pass --peak-tflops)"
    return CPU_NOMINAL_TFLOPS, "nominal CPU figure (ratios are not meaningful)"


@dataclass
class Bench:
    """One measuring session: the shape, the device, what a frame is called with."""

    shape: Shape
    device: str
    dtype: torch.dtype
    folder: Path
    repeats: int
    peak: float
    steps: int = STEPS
    floors: dict[str, float] = field(default_factory=dict)
    steps_run: int = 0

    def __post_init__(self) -> None:
        from PIL import Image

        size = self.shape.size
        self.source = Image.new("RGB", (size, size), (180, 140, 90))
        self.depth = Image.new("RGB", (size, size), (128, 128, 128))

    def models(self, loras: dict[str, float] | None = None) -> tuple[Any, Any]:
        """(base pipeline, ControlNet); ``loras`` (style: rank 4, lcm: the LCM-LoRA
        stand-in) are loaded and fused at the given scales."""
        base = build_pipeline(self.shape, self.device, self.dtype, self.folder)
        controlnet = build_controlnet(base, self.shape, self.dtype)
        if loras:
            ranks = {"style": (self.shape.lora_rank, 2), "lcm": (self.shape.lcm_rank, 3)}
            # Made from the plain UNet: once a LoRA is in, its layers are wrapped.
            states = {name: random_lora(base.unet, *ranks[name]) for name in loras}
            for name, state in states.items():
                load_lora(base, name, state)
            fuse_loras(base, loras)
        return base, controlnet

    def call(self, steps: int, guidance: float) -> dict[str, Any]:
        self.steps_run = 0

        def count(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict:
            self.steps_run += 1  # denoising steps that really ran
            return tensors

        return {
            "prompt": PROMPT,
            "negative_prompt": NEGATIVE,
            "output_type": "np",
            "num_inference_steps": steps,
            "guidance_scale": guidance,
            "generator": torch.Generator("cpu").manual_seed(1234),
            "callback_on_step_end": count,
        }

    def guided(self, pipe: Any, steps: int, guidance: float) -> Callable[[], Any]:
        """One ControlNet img2img frame with ``pipe``."""

        def run() -> Any:
            return pipe(
                **self.call(steps, guidance),
                image=self.source,
                strength=STRENGTH,
                control_image=self.depth,
            )

        return run

    def measure(self, key: str, label: str, run: Callable[[], Any]) -> None:
        if key not in self.floors:  # compiled runs do the same arithmetic
            self.floors[key] = count_flops(run)
        times = time_runs(run, self.device, self.repeats)
        report(label, times, self.floors[key], self.peak, self.steps_run)


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def _controlnet_pipe(base: Any, controlnet: Any, **extra: Any) -> Any:
    from diffusers import StableDiffusionControlNetImg2ImgPipeline

    pipe = StableDiffusionControlNetImg2ImgPipeline.from_pipe(base, controlnet=controlnet, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_plain(bench: Bench) -> None:
    """(a) to (c): txt2img, img2img, img2img + ControlNet."""
    from diffusers import StableDiffusionImg2ImgPipeline

    size, steps = bench.shape.size, bench.steps
    base, controlnet = bench.models()
    img2img = StableDiffusionImg2ImgPipeline.from_pipe(base)
    img2img.set_progress_bar_config(disable=True)
    bench.measure(
        "a",
        f"(a) txt2img {steps} steps, guidance {GUIDANCE:g} (DDIM)",
        lambda: base(**bench.call(steps, GUIDANCE), height=size, width=size),
    )
    bench.measure(
        "b",
        f"(b) img2img at {STRENGTH:g} ({int(steps * STRENGTH)} of {steps} steps)",
        lambda: img2img(**bench.call(steps, GUIDANCE), image=bench.source, strength=STRENGTH),
    )
    guided = _controlnet_pipe(base, controlnet)
    bench.measure("c", "(c) (b) + depth ControlNet", bench.guided(guided, steps, GUIDANCE))


def run_lora(bench: Bench) -> None:
    """(d): (c) with a fused style LoRA."""
    base, controlnet = bench.models({"style": 0.8})
    bench.measure(
        "d",
        f"(d) (c) + fused rank-{bench.shape.lora_rank} LoRA",
        bench.guided(_controlnet_pipe(base, controlnet), bench.steps, GUIDANCE),
    )


def fast_frame(bench: Bench) -> tuple[Any, Callable[[], Any]]:
    """(pipeline, frame) of the fast preset: LCM-LoRA + style LoRA fused, LCMScheduler,
    ControlNet img2img."""
    from diffusers import LCMScheduler

    base, controlnet = bench.models({"style": 0.8, "lcm": 1.0})
    scheduler = LCMScheduler.from_config(base.scheduler.config)
    pipe = _controlnet_pipe(base, controlnet, scheduler=scheduler)
    return pipe, bench.guided(pipe, img2img_steps(FAST_STEPS, STRENGTH), FAST_GUIDANCE)


def run_fast(bench: Bench) -> None:
    steps = img2img_steps(FAST_STEPS, STRENGTH)
    bench.measure(
        "e",
        f"(e) fast: (d) + LCM-LoRA, LCM {FAST_STEPS}->{steps} steps, g {FAST_GUIDANCE:g}",
        fast_frame(bench)[1],
    )


def run_compiled(bench: Bench) -> None:
    """(c) and (e) again, on fresh models, with channels_last + torch.compile."""
    for key in ("c", "e"):
        if key == "c":
            base, controlnet = bench.models()
            pipe = _controlnet_pipe(base, controlnet)
            run = bench.guided(pipe, bench.steps, GUIDANCE)
        else:
            pipe, run = fast_frame(bench)
        compile_models(pipe.unet, pipe.controlnet)
        started = time.perf_counter()
        run()  # compiles
        compile_s = time.perf_counter() - started
        bench.measure(
            key, f"({key}) channels_last + torch.compile (compile {compile_s:.0f} s)", run
        )
        del run, pipe
        _free(bench.device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU (smoke test)")
    parser.add_argument("--repeats", type=int, help="timed runs per line (default 5, tiny 1)")
    parser.add_argument("--steps", type=int, default=STEPS, help=f"steps (default {STEPS})")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile lines")
    parser.add_argument("--peak-tflops", type=float, help="dense fp16 peak of this GPU")
    args = parser.parse_args(argv)
    if args.steps < 1 or (args.repeats is not None and args.repeats < 1):
        parser.error("--steps and --repeats must be >= 1")

    if args.tiny:
        shape, device, dtype = TINY, "cpu", torch.float32
    else:
        if not torch.cuda.is_available():
            print("error: no CUDA device; use --tiny for the CPU smoke run", file=sys.stderr)
            return 2
        shape, device, dtype = SD15, "cuda", torch.float16
    quiet_libraries()
    repeats = args.repeats or (1 if args.tiny else 5)
    peak, peak_note = peak_for(device, args.peak_tflops)
    versions = {m: __import__(m).__version__ for m in ("torch", "diffusers", "transformers")}
    say(
        f"gpu_frame: {shape.name} random weights, {shape.size}x{shape.size}, "
        f"{str(dtype).removeprefix('torch.')}, {device}; peak {peak:g} TFLOP/s ({peak_note}); "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
    )
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(shape, device, dtype, Path(tmp), repeats, peak, steps=args.steps)
        for step in (run_plain, run_lora, run_fast):
            step(bench)  # each on fresh models, freed before the next
            _free(device)
        if args.no_compile:
            say("(c), (e) with torch.compile: skipped (--no-compile)")
        else:
            run_compiled(bench)
    return 0


if __name__ == "__main__":
    sys.exit(main())
