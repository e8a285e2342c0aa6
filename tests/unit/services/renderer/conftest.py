"""Fixtures of the renderer's tests: the tiny profile, a pipeline cache, and one LoRA written
in every layout SD-1.5 LoRAs come in (diffusers/PEFT, kohya/A1111, the old
attention-processor one)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ghibli_anim.contracts.config import Settings
from ghibli_anim.contracts.model_refs import locate
from ghibli_anim.contracts.pb import types_pb2
from ghibli_anim.contracts.profiles import load_profile
from ghibli_anim.services.renderer import lora_files
from ghibli_anim.services.renderer.pipelines import PipelineCache


@pytest.fixture(scope="module")
def cache(tiny_settings: Settings) -> PipelineCache:
    return PipelineCache(tiny_settings)


@pytest.fixture(scope="module")
def profile(tiny_settings: Settings) -> types_pb2.Profile:
    return load_profile("tiny", tiny_settings)


def to_kohya(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers keys (``unet.a.b.to_q.lora.down.weight``) -> kohya (``lora_unet_a_b_to_q...``)."""
    out = {}
    for key, tensor in state.items():
        module, half = re.fullmatch(r"unet\.(.+)\.lora\.(down|up)\.weight", key).groups()
        name = "lora_unet_" + module.replace(".", "_")
        out[f"{name}.lora_{half}.weight"] = tensor
        if half == "down":  # alpha = rank: a scale of 1, as in the diffusers file
            out[f"{name}.alpha"] = torch.tensor(float(tensor.shape[0]))
    return out


def to_attn_procs(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers keys -> the old ``...attn1.processor.to_q_lora.down.weight`` layout."""
    return {
        re.sub(
            r"\.(to_[qkv]|to_out)(?:\.0)?\.lora\.(down|up)\.",
            r".processor.\1_lora.\2.",
            key.removeprefix("unet."),
        ): tensor
        for key, tensor in state.items()
    }


@pytest.fixture(scope="module")
def lora_root(tmp_path_factory, tiny_settings: Settings) -> Path:
    """ANIM_MODEL_ROOTS with the same LoRA in three layouts, and two that fit nothing."""
    root = tmp_path_factory.mktemp("models")
    state = load_file(
        Path(locate("tiny:lcm_lora", tiny_settings)) / lora_files.DEFAULT_WEIGHT_NAMES[0]
    )
    save_file(state, root / "diffusers.safetensors")
    save_file(to_kohya(state), root / "kohya.safetensors")
    save_file(to_attn_procs(state), root / "attn_procs.safetensors")
    some = next(iter(state.values()))
    save_file(
        {
            "lora_unet_no_such_block_to_q.lora_down.weight": some,
            "lora_unet_no_such_block_to_q.lora_up.weight": some.T.contiguous(),
        },
        root / "elsewhere.safetensors",
    )
    save_file({"model.weight": some}, root / "not_a_lora.safetensors")
    return root
