"""Rendering frames with the tiny models: modes, determinism, counted steps, LoRAs."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ghibli_anim.contracts import config
from ghibli_anim.contracts.config import Settings
from ghibli_anim.contracts.model_refs import locate
from ghibli_anim.contracts.pb import types_pb2
from ghibli_anim.contracts.profiles import load_profile
from ghibli_anim.services.depth.estimate import DepthEstimator
from ghibli_anim.services.renderer.diffusion import RenderResult, render_frame
from ghibli_anim.services.renderer.pipelines import PipelineCache, choose_device

PROMPT = "a small dragon glides over a quiet medieval town at dusk, ghibli style"


@pytest.fixture(scope="module")
def cache(tiny_settings: Settings) -> PipelineCache:
    return PipelineCache(tiny_settings)


@pytest.fixture(scope="module")
def profile(tiny_settings: Settings) -> types_pb2.Profile:
    return load_profile("tiny", tiny_settings)


def _spec(profile: types_pb2.Profile, **fields) -> types_pb2.FrameSpec:
    spec = types_pb2.FrameSpec(
        index=0,
        prompt=PROMPT,
        negative_prompt=profile.negative_prompt,
        seed=1234,
        strength=0.15,
        guidance=profile.guidance,
        steps=profile.steps,
        scheduler=profile.scheduler,
        width=profile.width,
        height=profile.height,
        continuity=types_pb2.CONTINUITY_CUT,
        controlnet_scale=1.0,
        profile=profile,
    )
    for name, value in fields.items():
        setattr(spec, name, value)
    return spec


def _next(profile: types_pb2.Profile, **fields) -> types_pb2.FrameSpec:
    """Frame 1, continuing from frame 0."""
    base = {
        "index": 1,
        "continuity": types_pb2.CONTINUITY_CONTINUE,
        "source_key": "jobs/" + "0" * 32 + "/frames/0000.png",
    }
    return _spec(profile, **{**base, **fields})


def _image(result: RenderResult) -> Image.Image:
    return Image.open(io.BytesIO(result.png))


@pytest.fixture(scope="module")
def frame0(cache: PipelineCache, profile: types_pb2.Profile, tiny_settings) -> RenderResult:
    return render_frame(_spec(profile), cache=cache, settings=tiny_settings)


def test_txt2img_same_spec_same_bytes(cache, profile, tiny_settings, frame0) -> None:
    again = render_frame(_spec(profile), cache=cache, settings=tiny_settings)
    assert again.png == frame0.png
    other_seed = render_frame(_spec(profile, seed=1235), cache=cache, settings=tiny_settings)
    assert other_seed.png != frame0.png
    record = frame0.record
    assert record["mode"] == "txt2img" and record["strength"] is None
    assert record["steps_requested"] == 10 and record["steps_effective"] >= 10
    assert record["scheduler_class"] == "PNDMScheduler"
    assert (record["device"], record["dtype"], record["seed"]) == ("cpu", "float32", 1234)
    assert record["controlnet_scale"] is None and record["elapsed_s"] > 0


def test_txt2img_size_is_the_specs(cache, profile, tiny_settings) -> None:
    result = render_frame(_spec(profile, width=96, height=64), cache=cache, settings=tiny_settings)
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


def test_depth_map_is_normalised_and_deterministic(profile, tiny_settings) -> None:
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


def test_lora_changes_the_frame(cache, profile, tiny_settings) -> None:
    lcm = types_pb2.Profile()
    lcm.CopyFrom(profile)
    spec = _spec(lcm, scheduler="LCM", steps=4, guidance=1.5)
    without = render_frame(spec, cache=cache, settings=tiny_settings)
    spec.profile.loras.add(source="tiny:lcm_lora", scale=1.0)
    with_lora = render_frame(spec, cache=cache, settings=tiny_settings)
    assert with_lora.png != without.png
    (entry,) = with_lora.record["loras"]
    assert {k: entry[k] for k in ("source", "scale", "weight_name", "format", "active")} == {
        "source": "tiny:lcm_lora",
        "scale": 1.0,
        "weight_name": "",
        "format": "diffusers",
        "active": True,
    }
    assert entry["modules"] == entry["pairs"] == 32 and len(entry["sha256"]) == 64
    assert with_lora.record["scheduler_class"] == "LCMScheduler"
    assert len(cache) == 1  # one profile loaded at a time by default
    # A new scale applies to the loaded adapter (no reload) and can be undone.
    loaded = cache.pipeline(spec.profile, "txt2img", "LCM", tiny_settings)[1]
    spec.profile.loras[0].scale = 0.5
    half = render_frame(spec, cache=cache, settings=tiny_settings)
    assert cache.pipeline(spec.profile, "txt2img", "LCM", tiny_settings)[1] is loaded
    assert half.png not in (with_lora.png, without.png)
    spec.profile.loras[0].scale = 1.0
    assert render_frame(spec, cache=cache, settings=tiny_settings).png == with_lora.png


def test_attention_processor_lora_loads_too(tmp_path: Path, tiny_settings, profile) -> None:
    """The seed paper's LoRA era saved keys like ``...processor.to_q_lora.down.weight``."""
    from safetensors.torch import load_file, save_file

    lora_dir = Path(locate("tiny:lcm_lora", tiny_settings))
    state = load_file(lora_dir / "pytorch_lora_weights.safetensors")

    def old_key(key: str) -> str:
        key = key.removeprefix("unet.")
        return re.sub(
            r"\.(to_[qkv]|to_out)(?:\.0)?\.lora\.(down|up)\.",
            r".processor.\1_lora.\2.",
            key,
        )

    root = tmp_path / "models"
    (root / "old").mkdir(parents=True)
    save_file({old_key(k): v for k, v in state.items()}, root / "old" / "lora.safetensors")
    env = {
        "ANIM_CACHE_DIR": str(tiny_settings["ANIM_CACHE_DIR"]),
        "ANIM_MODEL_ROOTS": str(root),
        "ANIM_DEVICE": "cpu",
        "ANIM_STORE": "local",
    }
    settings = config.load("client", env)
    cache = PipelineCache(settings)
    new_style, old_style = types_pb2.Profile(), types_pb2.Profile()
    new_style.CopyFrom(profile)
    old_style.CopyFrom(profile)
    new_style.loras.add(source="tiny:lcm_lora", scale=0.7)
    old_style.loras.add(source=str(root / "old" / "lora.safetensors"), scale=0.7)
    a = render_frame(_spec(new_style, steps=3), cache=cache, settings=settings)
    b = render_frame(_spec(old_style, steps=3), cache=cache, settings=settings)
    assert a.png == b.png  # same weights, either layout


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


def test_device_choice_follows_settings(tiny_settings: Settings) -> None:
    import torch

    assert choose_device(tiny_settings) == ("cpu", torch.float32)
    bf16 = config.load("client", {"ANIM_DEVICE": "cpu", "ANIM_DTYPE": "bfloat16"})
    assert choose_device(bf16) == ("cpu", torch.bfloat16)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"^ANIM_DEVICE: cuda requested"):
            choose_device(config.load("client", {"ANIM_DEVICE": "cuda"}))


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
