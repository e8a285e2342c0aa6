"""services/renderer/diffusion.py: one frame with the tiny models in every mode, its record,
determinism, counted steps, prompt blends, the fast preset, prompts over 77 tokens, and
frames that come out NaN or black in float16 (re-rendered once in float32) or in float32
(failed)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support.frames import ddim_spec, frame_spec
from support.model_roots import roots_settings
from support.profiles import half_settings

from ghibli_anim.contracts import limits
from ghibli_anim.contracts.config import Settings
from ghibli_anim.contracts.pb import animation_pb2, types_pb2
from ghibli_anim.contracts.profiles import load_profile, resolve_profile
from ghibli_anim.contracts.storyboard import parse_storyboard
from ghibli_anim.runtime.depth_maps import DepthEstimator
from ghibli_anim.services.planner.frame_specs import resolve_frames
from ghibli_anim.services.renderer.diffusion import (
    BLACK_MAX,
    FrameFailed,
    RenderResult,
    image_flaw,
    img2img_steps,
    in_float32,
    render_frame,
)
from ghibli_anim.services.renderer.pipelines import PipelineCache


def _next(profile: types_pb2.Profile, **fields) -> types_pb2.FrameSpec:
    """Frame 1, continuing from frame 0."""
    base = {
        "index": 1,
        "continuity": types_pb2.CONTINUITY_CONTINUE,
        "source_key": "jobs/" + "0" * 32 + "/frames/0000.png",
    }
    return frame_spec(profile, **{**base, **fields})


def _image(result: RenderResult) -> Image.Image:
    return Image.open(io.BytesIO(result.png))


@pytest.fixture(scope="module")
def frame0(cache: PipelineCache, profile: types_pb2.Profile, tiny_settings) -> RenderResult:
    return render_frame(frame_spec(profile), cache=cache, settings=tiny_settings)


def test_txt2img_same_spec_same_bytes(cache, profile, tiny_settings, frame0) -> None:
    again = render_frame(frame_spec(profile), cache=cache, settings=tiny_settings)
    assert again.png == frame0.png
    other_seed = render_frame(frame_spec(profile, seed=1235), cache=cache, settings=tiny_settings)
    assert other_seed.png != frame0.png
    record = frame0.record
    assert record["mode"] == "txt2img" and record["strength"] is None
    assert record["steps_requested"] == 10 and record["steps_effective"] >= 10
    assert record["scheduler_class"] == "PNDMScheduler"
    assert (record["device"], record["dtype"], record["seed"]) == ("cpu", "float32", 1234)
    assert record["controlnet_scale"] is None and record["elapsed_s"] > 0


def test_txt2img_size_is_the_specs(cache, profile, tiny_settings) -> None:
    result = render_frame(
        frame_spec(profile, width=96, height=64), cache=cache, settings=tiny_settings
    )
    assert _image(result).size == (96, 64)
    assert (result.record["width"], result.record["height"]) == (96, 64)


@pytest.mark.parametrize(("scheduler", "expected"), [("PNDM", 8), ("DDIM", 7)])
def test_img2img_records_the_steps_it_ran(
    cache, profile, tiny_settings, frame0, scheduler: str, expected: int
) -> None:
    """int(50 * 0.15) = 7 denoising steps; PNDM's first step runs twice."""
    seen: list[tuple[int, int]] = []
    spec = _next(profile, steps=50, scheduler=scheduler)
    result = render_frame(
        spec,
        source=_image(frame0),
        cache=cache,
        settings=tiny_settings,
        on_step=lambda done, total: seen.append((done, total)),
    )
    record = result.record
    assert record["mode"] == "img2img"
    assert record["steps_requested"] == 50
    assert record["steps_effective"] == expected < 50
    assert record["strength"] == 0.15  # float32 0.15 recorded as written
    assert record["scheduler_class"] == f"{scheduler}Scheduler"
    assert seen == [(i, expected) for i in range(1, expected + 1)]


def test_img2img_resizes_the_source(cache, profile, tiny_settings, frame0) -> None:
    big = _image(frame0).resize((128, 96))
    result = render_frame(_next(profile), source=big, cache=cache, settings=tiny_settings)
    assert _image(result).size == (64, 64)


def test_controlnet_with_a_real_depth_map(cache, profile, tiny_settings, frame0) -> None:
    source = _image(frame0)
    depth = DepthEstimator(profile, tiny_settings).estimate(source)
    assert depth.mode == "L" and depth.size == source.size
    depth_key = "jobs/" + "0" * 32 + "/depth/0000.png"
    spec = _next(profile, steps=50, depth_key=depth_key, controlnet_scale=0.5)
    guided = render_frame(spec, source=source, depth=depth, cache=cache, settings=tiny_settings)
    assert guided.record["mode"] == "controlnet_img2img"
    assert guided.record["controlnet_scale"] == 0.5
    assert guided.record["controlnet"] == "tiny:controlnet"
    assert guided.record["steps_effective"] == 8
    again = render_frame(spec, source=source, depth=depth, cache=cache, settings=tiny_settings)
    assert again.png == guided.png
    plain = render_frame(
        _next(profile, steps=50), source=source, cache=cache, settings=tiny_settings
    )
    assert plain.png != guided.png  # the control image reaches the UNet


def test_tiny_autoencoder(cache, profile, tiny_settings, frame0) -> None:
    taesd = types_pb2.Profile()
    taesd.CopyFrom(profile)
    taesd.tiny_autoencoder = "tiny:taesd"
    result = render_frame(
        _next(taesd, steps=20), source=_image(frame0), cache=cache, settings=tiny_settings
    )
    assert result.record["tiny_autoencoder"] == "tiny:taesd"
    assert _image(result).size == (64, 64)


@pytest.mark.parametrize(
    ("fields", "images", "message"),
    [
        ({}, {}, r"^source: frame 1 starts from 'jobs/"),
        ({"depth_key": "jobs/x/depth/0000.png"}, {"source": 1}, r"^depth: frame 1 is guided"),
        ({"strength": 0.005}, {"source": 1}, r"^steps: strength 0\.005 runs no denoising step"),
        ({"strength": 0.0}, {"source": 1}, r"^strength: must be a number in \(0, 1\]"),
        ({"width": 60}, {"source": 1}, r"^width: must be an integer in 64\.\.1024"),
        ({"prompt": " "}, {"source": 1}, r"^prompt: must not be empty"),
        ({"scheduler": "k_lms"}, {"source": 1}, r"^scheduler: must be one of DDIM, PNDM"),
    ],
)
def test_bad_specs_name_the_field(cache, profile, tiny_settings, fields, images, message) -> None:
    given = {name: Image.new("RGB", (64, 64)) for name in images}
    with pytest.raises(ValueError, match=message):
        render_frame(_next(profile, **fields), cache=cache, settings=tiny_settings, **given)


def test_blended_prompt_embeddings(cache, profile, tiny_settings, frame0) -> None:
    """Prompt keyframes: a blend with another prompt changes the frame; a blend with the
    frame's own prompt is the plain frame, byte for byte (same embeddings)."""
    source = _image(frame0)
    plain = render_frame(_next(profile), source=source, cache=cache, settings=tiny_settings)
    own = _next(profile)
    own.blend_prompt, own.blend_weight = own.prompt, 0.35
    same = render_frame(own, source=source, cache=cache, settings=tiny_settings)
    other = _next(profile)
    other.blend_prompt, other.blend_weight = "a storm at sea with towering waves", 0.35
    blended = render_frame(other, source=source, cache=cache, settings=tiny_settings)
    assert same.png == plain.png
    assert blended.png != plain.png
    assert blended.record["blend_prompt"] == other.blend_prompt
    assert blended.record["blend_weight"] == pytest.approx(0.35)
    assert plain.record["blend_prompt"] is None


def test_fast_preset_stacks_lcm_on_the_style_lora(models, tiny_cache_dir) -> None:
    settings = roots_settings(models, tiny_cache_dir)
    req = animation_pb2.CreateAnimationRequest(
        idea="a fox",
        frames=2,
        profile="tiny",
        preset="fast",
        loras=[f"{models}/lcm/pytorch_lora_weights.safetensors:0.6"],
        strength=0.15,
    )
    profile = resolve_profile(req, settings)
    board = parse_storyboard(
        {"title": "t", "frames": [{"prompt": "a fox in a field"}, {"prompt": "a fox by a river"}]}
    )
    specs = resolve_frames("0" * 32, req, 5, board, profile)
    assert (specs[1].preset, specs[1].scheduler, specs[1].steps) == ("fast", "LCM", 4)
    assert round(specs[1].guidance, 6) == 1.5
    cache = PipelineCache(settings)
    frame0 = render_frame(specs[0], cache=cache, settings=settings)
    source = Image.open(io.BytesIO(frame0.png))
    result = render_frame(specs[1], source=source, cache=cache, settings=settings)
    record = result.record
    assert record["scheduler_class"] == "LCMScheduler" and record["preset"] == "fast"
    assert (record["steps_requested"], record["steps"]) == (4, img2img_steps(4, 0.15)) == (4, 7)
    assert record["steps_effective"] >= 1
    assert [(lo["scale"], lo["active"]) for lo in record["loras"]] == [(0.6, True), (1.0, True)]
    assert all(lo["modules"] > 0 for lo in record["loras"])
    assert record["lora_fused"] is True


def test_prompts_over_77_tokens_are_refused_or_cut_and_recorded(tiny_settings) -> None:
    long_prompt = ", ".join(["a small red fox under a tall old tree"] * 12)
    profile = load_profile("tiny", tiny_settings)
    cache = PipelineCache(tiny_settings)
    with pytest.raises(ValueError, match=r"^prompt: \d+ CLIP tokens, the limit is 77"):
        render_frame(ddim_spec(profile, prompt=long_prompt), cache=cache, settings=tiny_settings)
    cut = render_frame(
        ddim_spec(profile, prompt=long_prompt, truncate_prompt=True),
        cache=cache,
        settings=tiny_settings,
    )
    assert cut.record["prompt_tokens"] > limits.CLIP_MAX_TOKENS
    dropped = cut.record["prompt_dropped"].replace(" ,", ",")  # CLIP decodes "tree ,"
    assert dropped and long_prompt.endswith(dropped)


# --- frames that come out NaN or black ------------------------------------------------------
#
# These run the tiny models in real float16 on the CPU (torch runs their kernels there).
# float16 is made to fail the way it fails on GPUs: a first convolution whose largest
# weight is 6e4, still a float16 number, makes sums past float16's 65504, so the activations
# overflow (inf, then NaN further on); the same weights in float32 give finite values. A NaN
# weight fails in every dtype. Forward hooks only watch: which module ran, how often, in
# which dtype. What this cannot show: that a given GPU's float16 kernels fail this way.


def _half_cache(tiny_cache_dir: Path) -> tuple[PipelineCache, Settings]:
    settings = half_settings(tiny_cache_dir)
    return PipelineCache(settings), settings


def _base(cache: PipelineCache, profile, settings):
    """The loaded models (every pipeline of the cache shares their modules)."""
    return cache.pipeline(profile, "txt2img", "DDIM", settings)[1].base


def _overflow_in_float16(conv: torch.nn.Conv2d) -> None:
    with torch.no_grad():
        scale = 6e4 / conv.weight.abs().max().item()  # a Python float: no float16 overflow
        conv.weight.copy_((conv.weight.float() * scale).to(conv.weight.dtype))
    assert torch.isfinite(conv.weight).all() and conv.weight.abs().max() == 6e4


def _nan_weight(conv: torch.nn.Conv2d) -> None:
    with torch.no_grad():
        conv.weight[0, 0, 0, 0] = float("nan")


@contextmanager
def _calls(**modules: torch.nn.Module) -> Iterator[dict[str, list[torch.dtype]]]:
    """For each module, the dtype of its weights at each forward call."""
    seen: dict[str, list[torch.dtype]] = {name: [] for name in modules}
    handles = [
        module.register_forward_hook(
            lambda m, args, out, name=name: seen[name].append(next(m.parameters()).dtype)
        )
        for name, module in modules.items()
    ]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same_weights(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> bool:
    now = module.state_dict()
    return now.keys() == before.keys() and all(
        now[k].dtype == v.dtype and torch.equal(now[k], v) for k, v in before.items()
    )


def _pixels(result: RenderResult) -> np.ndarray:
    return np.asarray(_image(result), dtype=np.float64) / 255.0


F16 = torch.float16
F32 = torch.float32


@pytest.mark.parametrize(
    ("images", "flaw"),
    [
        (np.full((1, 4, 4, 3), 0.5), None),
        (np.zeros((1, 4, 4, 3)), "black"),
        (np.full((1, 4, 4, 3), BLACK_MAX * 0.99), "black"),
        (np.full((1, 4, 4, 3), BLACK_MAX), None),  # dark, not black
        (np.where(np.arange(48).reshape(1, 4, 4, 3) == 7, np.nan, 0.5), "nan"),
        (np.where(np.arange(48).reshape(1, 4, 4, 3) == 7, np.inf, 0.5), "nan"),
        (np.where(np.arange(48).reshape(1, 4, 4, 3) == 7, np.nan, 0.0), "nan"),
    ],
)
def test_image_flaw(images: np.ndarray, flaw: str | None) -> None:
    assert image_flaw(images.astype(np.float32)) == flaw


def test_in_float32_restores_every_tensor_bit_for_bit() -> None:
    module = torch.nn.Sequential(
        torch.nn.Linear(3, 3), torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)
    )
    module[0].half()
    module[1].bfloat16()
    module.register_buffer("steps", torch.arange(3))
    module.register_buffer("scale", torch.tensor([1 / 3], dtype=torch.float64))
    before = _weights(module)
    with in_float32([module]):
        assert {p.dtype for p in module.parameters()} == {F32}
        assert module.steps.dtype == torch.int64 and module.scale.dtype == torch.float64
    assert _same_weights(module, before)
    assert [module[i].weight.dtype for i in range(3)] == [F16, torch.bfloat16, F32]
    with pytest.raises(RuntimeError, match="inside"), in_float32([module]):
        raise RuntimeError("inside")
    assert _same_weights(module, before)


def test_a_normal_float16_frame_runs_once(tiny_cache_dir, profile) -> None:
    cache, settings = _half_cache(tiny_cache_dir)
    base = _base(cache, profile, settings)
    with _calls(unet=base.unet, decoder=base.vae.decoder) as seen:
        result = render_frame(ddim_spec(profile), cache=cache, settings=settings)
    assert result.record["dtype"] == "float16" and result.record["float32_retry"] is None
    assert result.notice == ""
    assert seen == {"unet": [F16] * 3, "decoder": [F16]}


def test_a_vae_overflowing_float16_is_decoded_again_in_float32(tiny_cache_dir, profile) -> None:
    """Finite latents, NaN decode: only the VAE runs again, in float32, once; the UNet's
    float16 latents are kept. The VAE is float16 again afterwards, bit for bit."""
    cache, settings = _half_cache(tiny_cache_dir)
    base = _base(cache, profile, settings)
    _overflow_in_float16(base.vae.decoder.conv_in)
    vae = _weights(base.vae)
    with _calls(unet=base.unet, decoder=base.vae.decoder) as seen:
        result = render_frame(ddim_spec(profile), cache=cache, settings=settings)
    assert seen == {"unet": [F16] * 3, "decoder": [F16, F32]}
    retry = result.record["float32_retry"]
    assert retry.pop("elapsed_s") > 0
    assert retry == {
        "part": "vae",
        "from_dtype": "float16",
        "reason": "nan",
        "latents_finite": True,
    }
    assert result.record["dtype"] == "float16" and result.record["steps_effective"] == 3
    assert result.notice == (
        "frame 0: the rendered image has NaN or inf pixels in float16, so its VAE decode was "
        "re-rendered in float32; set ANIM_DTYPE=float32 if this keeps happening"
    )
    pixels = _pixels(result)
    assert pixels.max() >= BLACK_MAX and pixels.std() > 0
    assert _same_weights(base.vae, vae)
    again = render_frame(ddim_spec(profile), cache=cache, settings=settings)
    assert again.png == result.png and again.record["float32_retry"]["part"] == "vae"


@pytest.mark.parametrize("blend", [False, True])
def test_a_unet_overflowing_float16_reruns_the_frame_in_float32(
    tiny_cache_dir, profile, blend: bool
) -> None:
    """NaN latents: the whole frame runs again in float32 from the same seed (text encoder
    too, blended prompts included), once; every module is float16 again afterwards."""
    cache, settings = _half_cache(tiny_cache_dir)
    base = _base(cache, profile, settings)
    _overflow_in_float16(base.unet.conv_in)
    modules = {"unet": base.unet, "vae": base.vae, "text_encoder": base.text_encoder}
    before = {name: _weights(m) for name, m in modules.items()}
    spec = ddim_spec(profile)
    if blend:
        spec.blend_prompt, spec.blend_weight = "a storm at sea", 0.4
    watched = {"unet": base.unet, "decoder": base.vae.decoder, "text": base.text_encoder}
    with _calls(**watched) as seen:
        result = render_frame(spec, cache=cache, settings=settings)
    texts = 3 if blend else 2  # prompt, negative prompt (and the blend's prompt)
    assert seen == {
        "unet": [F16] * 3 + [F32] * 3,
        "decoder": [F16, F32],
        "text": [F16] * texts + [F32] * texts,
    }
    retry = result.record["float32_retry"]
    assert (retry["part"], retry["reason"], retry["latents_finite"]) == ("pipeline", "nan", False)
    assert result.record["steps_effective"] == 3
    assert "so the whole frame was re-rendered in float32" in result.notice
    assert _pixels(result).max() >= BLACK_MAX
    assert all(_same_weights(m, before[name]) for name, m in modules.items())
    assert render_frame(spec, cache=cache, settings=settings).png == result.png


def test_a_controlnet_frame_reruns_with_its_controlnet_in_float32(tiny_cache_dir, profile) -> None:
    """ControlNet img2img: the ControlNet and the VAE encoder of the source image run in
    float32 too on the rerun, and are float16 again afterwards."""
    cache, settings = _half_cache(tiny_cache_dir)
    spec = _next(profile, steps=20, depth_key="jobs/" + "0" * 32 + "/depth/0000.png")
    spec.scheduler = "DDIM"
    pipe, models = cache.pipeline(profile, "controlnet_img2img", "DDIM", settings)
    _overflow_in_float16(models.base.unet.conv_in)
    rng = np.random.default_rng(5)
    source = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    depth = Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8))
    watched = {"controlnet": pipe.controlnet, "encoder": pipe.vae.encoder, "unet": pipe.unet}
    with _calls(**watched) as seen:
        result = render_frame(spec, source=source, depth=depth, cache=cache, settings=settings)
    steps = result.record["steps_effective"]
    assert result.record["mode"] == "controlnet_img2img" and steps == 3
    assert seen == {
        "controlnet": [F16] * steps + [F32] * steps,
        "encoder": [F16, F32],
        "unet": [F16] * steps + [F32] * steps,
    }
    assert result.record["float32_retry"]["part"] == "pipeline"
    assert _dtypes(models.base) | {p.dtype for p in pipe.controlnet.parameters()} == {F16}


def _dtypes(base) -> set[torch.dtype]:
    modules = [m for m in base.components.values() if isinstance(m, torch.nn.Module)]
    return {p.dtype for m in modules for p in m.parameters()}


@pytest.mark.parametrize(
    ("where", "part", "unet"),
    [("vae", "its VAE decode", [F16] * 3), ("unet", "the whole frame", [F16] * 3 + [F32] * 3)],
)
def test_still_nan_in_float32_fails_the_frame(
    tiny_cache_dir, profile, where: str, part: str, unet: list[torch.dtype]
) -> None:
    """One float32 retry, then a failure naming both attempts; no loop."""
    cache, settings = _half_cache(tiny_cache_dir)
    base = _base(cache, profile, settings)
    _nan_weight(base.vae.decoder.conv_in if where == "vae" else base.unet.conv_in)
    watched = _calls(unet=base.unet, decoder=base.vae.decoder)
    with watched as seen, pytest.raises(FrameFailed) as failed:
        render_frame(ddim_spec(profile), cache=cache, settings=settings)
    assert str(failed.value) == (
        "frame 0: the rendered image has NaN or inf pixels in float16, and still has NaN or "
        f"inf pixels after re-rendering {part} in float32; the base model, VAE or a LoRA of "
        "profile 'tiny' produces it"
    )
    assert seen == {"unet": unet, "decoder": [F16, F32]}
    assert _dtypes(base) == {F16}


def _black_vae(vae) -> None:
    with torch.no_grad():
        vae.decoder.conv_out.weight.zero_()
        vae.decoder.conv_out.bias.fill_(-2.0)  # (x + 1) / 2 clamped: every pixel 0


def test_a_black_frame_fails_in_float32_without_a_retry(tiny_settings, profile) -> None:
    cache = PipelineCache(tiny_settings)  # its own: the VAE is broken below
    base = _base(cache, profile, tiny_settings)
    _black_vae(base.vae)
    with _calls(decoder=base.vae.decoder) as seen, pytest.raises(FrameFailed) as failed:
        render_frame(ddim_spec(profile), cache=cache, settings=tiny_settings)
    assert str(failed.value) == (
        "frame 0: the rendered image is black in float32; the base model, VAE or a LoRA of "
        "profile 'tiny' produces it"
    )
    assert seen == {"decoder": [F32]}


def test_a_black_float16_frame_is_decoded_again_then_fails(tiny_cache_dir, profile) -> None:
    cache, settings = _half_cache(tiny_cache_dir)
    base = _base(cache, profile, settings)
    _black_vae(base.vae)
    with _calls(decoder=base.vae.decoder) as seen, pytest.raises(FrameFailed) as failed:
        render_frame(ddim_spec(profile), cache=cache, settings=settings)
    assert str(failed.value) == (
        "frame 0: the rendered image is black in float16, and still is black after "
        "re-rendering its VAE decode in float32; the base model, VAE or a LoRA of profile "
        "'tiny' produces it"
    )
    assert seen == {"decoder": [F16, F32]}
