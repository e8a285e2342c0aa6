"""A diffusers SD-1.x pipeline folder as one checkpoint in the original (LDM) key layout.

``write_single_file`` writes what ``StableDiffusionPipeline.from_single_file`` reads,
so the single-file loading path can be tested with the tiny pipeline. The key
tables follow the original SD-1.x layout for any UNet/VAE depth, and every export
is checked by converting it back with diffusers' own converters.
torch, safetensors and diffusers are imported inside the functions only.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["SINGLE_FILE_NAME", "pipeline_to_ldm", "write_single_file"]

SINGLE_FILE_NAME = "pipeline.safetensors"

# Prefixes of the three models inside an original SD-1.x checkpoint.
_LDM_UNET = "model.diffusion_model."
_LDM_VAE = "first_stage_model."
_LDM_CLIP = "cond_stage_model.transformer."

_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}


def _rename(state: dict[str, Any], table: dict[str, str], prefix: str) -> dict[str, Any]:
    """Rename every key by the longest module prefix it starts with (which must exist)."""
    out: dict[str, Any] = {}
    for key, tensor in state.items():
        parts = key.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            module = ".".join(parts[:cut])
            if module in table:
                out[prefix + table[module] + "." + ".".join(parts[cut:])] = tensor
                break
        else:
            raise ValueError(f"single-file export: no original name for {key!r}")
    return out


def _unet_to_ldm(state: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """Diffusers UNet2DConditionModel keys -> ``model.diffusion_model.*`` (SD-1.x layout)."""
    per_block = config["layers_per_block"]
    n_blocks = len(config["block_out_channels"])
    table = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
        "mid_block.attentions.0": "middle_block.1",
    }
    for j in range(2):
        for new, old in _UNET_RESNET.items():
            table[f"mid_block.resnets.{j}.{new}"] = f"middle_block.{2 * j}.{old}"
    for b in range(n_blocks):
        # Input blocks: conv_in, then per down block its layers and a downsampler.
        for j in range(per_block):
            k = (per_block + 1) * b + j + 1
            for new, old in _UNET_RESNET.items():
                table[f"down_blocks.{b}.resnets.{j}.{new}"] = f"input_blocks.{k}.0.{old}"
            table[f"down_blocks.{b}.attentions.{j}"] = f"input_blocks.{k}.1"
        if b < n_blocks - 1:
            k = (per_block + 1) * (b + 1)
            table[f"down_blocks.{b}.downsamplers.0.conv"] = f"input_blocks.{k}.0.op"
        # Output blocks: per up block one layer more; the upsampler follows the
        # attention when the block has one (index 2), else the resnet (index 1).
        for j in range(per_block + 1):
            k = (per_block + 1) * b + j
            for new, old in _UNET_RESNET.items():
                table[f"up_blocks.{b}.resnets.{j}.{new}"] = f"output_blocks.{k}.0.{old}"
            table[f"up_blocks.{b}.attentions.{j}"] = f"output_blocks.{k}.1"
        if b < n_blocks - 1:
            k = (per_block + 1) * b + per_block
            slot = 2 if "CrossAttn" in config["up_block_types"][b] else 1
            table[f"up_blocks.{b}.upsamplers.0.conv"] = f"output_blocks.{k}.{slot}.conv"
    return _rename(state, table, _LDM_UNET)


def _vae_to_ldm(state: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """Diffusers AutoencoderKL keys -> ``first_stage_model.*`` (SD-1.x layout)."""
    n_blocks = len(config["block_out_channels"])
    table: dict[str, str] = {}
    for side in ("encoder", "decoder"):
        for name in ("conv_in", "conv_out"):
            table[f"{side}.{name}"] = f"{side}.{name}"
        table[f"{side}.conv_norm_out"] = f"{side}.norm_out"
        for j in range(2):
            for part in ("norm1", "conv1", "norm2", "conv2"):
                table[f"{side}.mid_block.resnets.{j}.{part}"] = f"{side}.mid.block_{j + 1}.{part}"
        for new, old in _VAE_ATTENTION.items():
            table[f"{side}.mid_block.attentions.0.{new}"] = f"{side}.mid.attn_1.{old}"
    for i in range(n_blocks):
        up = n_blocks - 1 - i  # the original numbers decoder blocks from the bottom
        for j in range(config["layers_per_block"] + 1):
            for part in ("norm1", "conv1", "norm2", "conv2"):
                table[f"encoder.down_blocks.{i}.resnets.{j}.{part}"] = (
                    f"encoder.down.{i}.block.{j}.{part}"
                )
                table[f"decoder.up_blocks.{i}.resnets.{j}.{part}"] = (
                    f"decoder.up.{up}.block.{j}.{part}"
                )
            table[f"encoder.down_blocks.{i}.resnets.{j}.conv_shortcut"] = (
                f"encoder.down.{i}.block.{j}.nin_shortcut"
            )
            table[f"decoder.up_blocks.{i}.resnets.{j}.conv_shortcut"] = (
                f"decoder.up.{up}.block.{j}.nin_shortcut"
            )
        table[f"encoder.down_blocks.{i}.downsamplers.0.conv"] = f"encoder.down.{i}.downsample.conv"
        table[f"decoder.up_blocks.{i}.upsamplers.0.conv"] = f"decoder.up.{up}.upsample.conv"
    for name in ("quant_conv", "post_quant_conv"):
        table[name] = name
    out = _rename(state, table, _LDM_VAE)
    for key, tensor in out.items():
        # The original's attention projections are 1x1 convolutions.
        if ".mid.attn_1." in key and key.endswith(".weight") and tensor.ndim == 2:
            out[key] = tensor[:, :, None, None].contiguous()
    return out


def _clip_to_ldm(state: dict[str, Any]) -> dict[str, Any]:
    """CLIPTextModel keys -> ``cond_stage_model.transformer.text_model.*``."""
    return {
        _LDM_CLIP + (key if key.startswith("text_model.") else "text_model." + key): tensor
        for key, tensor in state.items()
    }


def _check_round_trip(
    ldm: dict[str, Any], parts: dict[str, tuple[dict[str, Any], dict[str, Any]]]
) -> None:
    """Convert back with diffusers' own single-file converters: every tensor must match."""
    import torch
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    back = {
        "unet": convert_ldm_unet_checkpoint(ldm, parts["unet"][1]),
        "vae": convert_ldm_vae_checkpoint(ldm, parts["vae"][1]),
        "text_encoder": convert_ldm_clip_checkpoint(ldm),
    }
    for name, (state, _) in parts.items():
        converted = back[name]
        if name == "text_encoder":
            converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
            state = {k.removeprefix("text_model."): v for k, v in state.items()}
        if set(converted) != set(state):
            diff = sorted(set(converted) ^ set(state))[:3]
            raise ValueError(f"single-file export: {name} keys do not round-trip ({diff})")
        for key, tensor in state.items():
            if not torch.equal(converted[key], tensor):
                raise ValueError(f"single-file export: {name} tensor {key} does not round-trip")


def pipeline_to_ldm(pipeline_dir: Path) -> dict[str, Any]:
    """A diffusers SD-1.x pipeline folder as one state dict in the original key layout.

    Works for any UNet/VAE depth (the tiny models and SD-1.5 alike) and is checked by
    converting it back with diffusers' loader: what ``from_single_file`` reads is
    exactly the folder's weights.
    """
    from safetensors.torch import load_file

    pipeline_dir = Path(pipeline_dir)
    parts: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for name, weights in (
        ("unet", "diffusion_pytorch_model.safetensors"),
        ("vae", "diffusion_pytorch_model.safetensors"),
        ("text_encoder", "model.safetensors"),
    ):
        folder = pipeline_dir / name
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        parts[name] = (load_file(folder / weights), config)
    ldm = {
        **_unet_to_ldm(*parts["unet"]),
        **_vae_to_ldm(*parts["vae"]),
        **_clip_to_ldm(parts["text_encoder"][0]),
    }
    _check_round_trip(ldm, parts)
    return ldm


def write_single_file(pipeline_dir: Path, out_file: Path) -> Path:
    """Write ``pipeline_dir`` as one ``.safetensors`` checkpoint (LDM keys), atomically.

    Load it back with ``StableDiffusionPipeline.from_single_file(out_file,
    config=pipeline_dir)``: the same weights, so the same frames.
    """
    from safetensors.torch import save_file

    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    state = pipeline_to_ldm(pipeline_dir)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_file.name}.", suffix=".tmp", dir=out_file.parent)
    os.close(fd)
    try:
        save_file(state, tmp, metadata={"format": "pt"})
        os.chmod(tmp, 0o644)
        os.replace(tmp, out_file)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out_file
