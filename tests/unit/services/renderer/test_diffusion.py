"""services/renderer/diffusion.py: one frame with the tiny models in every mode, its record,
determinism, counted steps, prompt blends, the fast preset and prompts over 77 tokens."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from support.frames import ddim_spec, frame_spec
from support.model_roots import roots_settings

from ghibli_anim.contracts import limits
from ghibli_anim.contracts.pb import animation_pb2, types_pb2
from ghibli_anim.contracts.profiles import load_profile, resolve_profile
from ghibli_anim.contracts.storyboard import parse_storyboard
from ghibli_anim.services.depth.estimate import DepthEstimator
from ghibli_anim.services.planner.frame_specs import resolve_frames
from ghibli_anim.services.renderer.diffusion import RenderResult, img2img_steps, render_frame
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
