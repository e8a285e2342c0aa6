"""services/renderer/lora_files.py: LoRA files in every layout load to the same weights, and
failures name the file.

The tiny LCM-LoRA stand-in's matrices are written in the three layouts SD-1.5 LoRAs come
in (diffusers/PEFT, kohya/A1111, the old attention-processor one: ``lora_root`` in this
folder's conftest.py) and loaded through the renderer's own code."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from support.frames import PROMPT, frame_spec

from ghibli_anim.contracts import config
from ghibli_anim.contracts.config import Settings
from ghibli_anim.contracts.model_refs import locate
from ghibli_anim.contracts.pb import types_pb2
from ghibli_anim.services.renderer import lora_files
from ghibli_anim.services.renderer.diffusion import render_frame
from ghibli_anim.services.renderer.pipelines import PipelineCache


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


@pytest.fixture(scope="module")
def pipe(tiny_settings: Settings):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        locate("tiny:pipeline", tiny_settings), safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run(pipe) -> np.ndarray:
    return pipe(
        PROMPT,
        num_inference_steps=2,
        height=64,
        width=64,
        generator=torch.Generator("cpu").manual_seed(3),
        output_type="np",
    ).images[0]


def test_formats_are_told_apart_by_their_keys(lora_root: Path) -> None:
    found = {
        name: lora_files.detect_format(load_file(lora_root / f"{name}.safetensors").keys())
        for name in ("diffusers", "kohya", "attn_procs")
    }
    assert found == {"diffusers": "diffusers", "kohya": "kohya", "attn_procs": "attn_procs"}
    with pytest.raises(ValueError, match=r"cannot tell the LoRA format .*model\.weight"):
        lora_files.detect_format(["model.weight"])


def test_same_matrices_in_every_format_give_the_same_frame(pipe, lora_root, settings) -> None:
    baseline = _run(pipe)
    outputs = {}
    for name in ("diffusers", "kohya", "attn_procs"):
        path = str(lora_root / f"{name}.safetensors")
        found = lora_files.find_file(path, "", settings, f"loras[{name}]")
        loaded = lora_files.load_lora(pipe, found, name, f"loras[{name}]")
        assert (loaded.format, loaded.modules, loaded.pairs) == (name, 32, 32)
        assert loaded.file.sha256 == found.sha256 and len(found.sha256) == 64
        pipe.set_adapters([name])
        outputs[name] = _run(pipe)
    assert np.abs(outputs["diffusers"] - baseline).max() > 1e-3  # the LoRA does something
    assert np.abs(outputs["kohya"] - outputs["diffusers"]).max() <= 1e-5
    assert np.abs(outputs["attn_procs"] - outputs["diffusers"]).max() <= 1e-5
    pipe.delete_adapters(list(outputs))


@pytest.mark.parametrize(
    ("name", "message"),
    [
        # peft refuses targets it cannot find; a file that loads silently is counted.
        ("elsewhere", r"elsewhere\.safetensors.*(matched no layer|not found in the base model)"),
        ("not_a_lora", r"not_a_lora\.safetensors\): cannot tell the LoRA format"),
    ],
)
def test_a_lora_that_fits_nothing_is_an_error_naming_the_file(
    pipe, lora_root, settings, name: str, message: str
) -> None:
    found = lora_files.find_file(str(lora_root / f"{name}.safetensors"), "", settings, "loras[0]")
    with pytest.raises(ValueError, match=rf"^loras\[0\].*{message}"):
        lora_files.load_lora(pipe, found, "bad", "loras[0]")
    assert "bad" not in {a for names in pipe.get_list_adapters().values() for a in names}


def test_attention_processor_lora_loads_too(tmp_path: Path, tiny_settings, profile) -> None:
    """The seed paper's LoRA era saved keys like ``...processor.to_q_lora.down.weight``."""
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
    a = render_frame(frame_spec(new_style, steps=3), cache=cache, settings=settings)
    b = render_frame(frame_spec(old_style, steps=3), cache=cache, settings=settings)
    assert a.png == b.png  # same weights, either layout
