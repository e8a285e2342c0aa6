"""services/renderer/pipelines.py: the device, LoRAs activated at their scales without a
reload, single-file checkpoints, and fused LoRAs that agree with unfused ones and unfuse
exactly."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support.frames import ddim_spec, frame_spec
from support.model_roots import roots_settings
from support.profiles import half_settings

from ghibli_anim.cli import main as cli
from ghibli_anim.contracts import config
from ghibli_anim.contracts.config import Settings
from ghibli_anim.contracts.pb import types_pb2
from ghibli_anim.contracts.profiles import load_profile
from ghibli_anim.devtools.tiny_models import SINGLE_FILE_NAME
from ghibli_anim.services.renderer.diffusion import render_frame
from ghibli_anim.services.renderer.pipelines import PipelineCache, choose_device

ROOT = Path(__file__).resolve().parents[4]


def test_device_choice_follows_settings(tiny_settings: Settings) -> None:
    assert choose_device(tiny_settings) == ("cpu", torch.float32)
    bf16 = config.load("client", {"ANIM_DEVICE": "cpu", "ANIM_DTYPE": "bfloat16"})
    assert choose_device(bf16) == ("cpu", torch.bfloat16)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"^ANIM_DEVICE: cuda requested"):
            choose_device(config.load("client", {"ANIM_DEVICE": "cuda"}))


def test_derived_pipelines_keep_the_chosen_dtype(tiny_cache_dir, profile) -> None:
    """from_pipe casts the shared modules to float32 unless given a dtype (diffusers issue
    12754): every pipeline of a float16 model set, and its modules, stay float16."""
    settings = half_settings(tiny_cache_dir)
    cache = PipelineCache(settings)
    for mode in ("txt2img", "img2img", "controlnet_img2img"):
        pipe, models = cache.pipeline(profile, mode, "DDIM")
        modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
        assert {p.dtype for m in modules for p in m.parameters()} == {torch.float16}, mode
        assert len(modules) == (4 if mode == "controlnet_img2img" else 3)
    assert models.dtype == torch.float16
    base = {
        p.dtype
        for m in models.base.components.values()
        if isinstance(m, torch.nn.Module)
        for p in m.parameters()
    }
    assert base == {torch.float16}


def test_lora_changes_the_frame(cache, profile, tiny_settings) -> None:
    lcm = types_pb2.Profile()
    lcm.CopyFrom(profile)
    spec = frame_spec(lcm, scheduler="LCM", steps=4, guidance=1.5)
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


# -- single-file checkpoints (ANIM_MODEL_ROOTS: tests/unit/conftest.py's `models`) -----------


def _write_profiles(models: Path, extra: str = "") -> None:
    base = (ROOT / "ghibli_anim/contracts/profiles.toml").read_text()
    tiny = base[base.index("[profiles.tiny]") :]
    single = (
        tiny.replace("[profiles.tiny]", "[profiles.single]")
        .replace(
            'base_model = "tiny:pipeline"',
            f'base_model = "{models}/tiny/{SINGLE_FILE_NAME}"\nconfig = "{models}/tiny/pipeline"',
        )
        .replace('tokenizer = "tiny:tokenizer"\n', "")
    )
    (models / "profiles.toml").write_text(tiny + "\n" + single + "\n" + extra)


def test_single_file_checkpoint_renders_the_folders_bytes(models, tiny_cache_dir) -> None:
    exported = models / "tiny" / SINGLE_FILE_NAME
    first = exported.read_bytes()
    assert cli.main(["models", "tiny", str(models / "tiny"), "--single-file"]) == 0
    assert exported.read_bytes() == first  # deterministic export
    from safetensors import safe_open

    with safe_open(exported, "pt") as f:  # the original (LDM) key layout
        names = set(f.keys())
    assert "model.diffusion_model.input_blocks.0.0.weight" in names
    assert "first_stage_model.decoder.up.0.block.0.conv1.weight" in names
    assert any(n.startswith("cond_stage_model.transformer.text_model.") for n in names)
    _write_profiles(models)
    settings = roots_settings(models, tiny_cache_dir)
    single = load_profile("single", settings)
    assert single.tokenizer == f"{models}/tiny/pipeline/tokenizer"  # the config's
    cache = PipelineCache(settings, max_entries=2)
    from_file = render_frame(ddim_spec(single), cache=cache, settings=settings)
    from_folder = render_frame(
        ddim_spec(load_profile("tiny", settings)), cache=cache, settings=settings
    )
    assert from_file.png == from_folder.png
    assert from_file.record["models"]["base_model"]["sha256"] == _sha256(exported)
    assert from_file.record["models"]["config"]["ref"] == f"{models}/tiny/pipeline"
    assert len(cache) == 2


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- fused LoRAs (lora_root: one LoRA in every layout, from this folder's conftest.py) ---------


@pytest.fixture(scope="module")
def settings(lora_root: Path, tiny_settings: Settings) -> Settings:
    env = {
        "ANIM_CACHE_DIR": str(tiny_settings["ANIM_CACHE_DIR"]),
        "ANIM_MODEL_ROOTS": str(lora_root),
        "ANIM_DEVICE": "cpu",
        "ANIM_DTYPE": "float32",
        "ANIM_STORE": "local",
    }
    return config.load("client", env)


def _spec_with_loras(
    profile: types_pb2.Profile, *sources: tuple[str, float]
) -> types_pb2.FrameSpec:
    spec = ddim_spec(profile, seed=7)
    del spec.profile.loras[:]
    for source, scale in sources:
        spec.profile.loras.add(source=source, scale=scale)
    return spec


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)), dtype=np.int16)


def test_fused_and_unfused_agree_and_unfusing_restores_the_weights(lora_root, settings) -> None:
    profile = load_profile("tiny", settings)
    kohya = (str(lora_root / "kohya.safetensors"), 0.7)
    unfused = PipelineCache(config.load("client", {**_env(settings), "ANIM_FUSE_LORA": "false"}))
    fused = PipelineCache(settings)
    plain = render_frame(_spec_with_loras(profile), cache=unfused, settings=unfused.settings)
    slow = render_frame(_spec_with_loras(profile, kohya), cache=unfused, settings=unfused.settings)
    fast = render_frame(_spec_with_loras(profile, kohya), cache=fused, settings=settings)
    assert (slow.record["lora_fused"], fast.record["lora_fused"]) == (False, True)
    assert slow.png != plain.png
    assert np.abs(_pixels(fast.png) - _pixels(slow.png)).max() <= 1  # rounding of the merge
    # Another scale, then none: the fused cache restores the saved weights exactly, so
    # a frame never depends on the jobs this process rendered before.
    render_frame(_spec_with_loras(profile, (kohya[0], 0.3)), cache=fused, settings=settings)
    assert render_frame(_spec_with_loras(profile), cache=fused, settings=settings).png == plain.png
    again = render_frame(_spec_with_loras(profile, kohya), cache=fused, settings=settings)
    assert again.png == fast.png and len(fused) == 1


def _env(settings: Settings) -> dict[str, str]:
    return {
        "ANIM_CACHE_DIR": str(settings["ANIM_CACHE_DIR"]),
        "ANIM_MODEL_ROOTS": os.pathsep.join(str(r) for r in settings["ANIM_MODEL_ROOTS"]),
        "ANIM_DEVICE": "cpu",
        "ANIM_DTYPE": "float32",
        "ANIM_STORE": "local",
    }
