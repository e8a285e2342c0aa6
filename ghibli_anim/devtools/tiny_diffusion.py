"""Tiny Stable Diffusion parts: UNet, VAE, text encoder, pipeline, ControlNet, TAESD, LoRA.

Every builder seeds torch's CPU RNG for its own component (``seeded``), so any
subset of components gives the same bytes in any order and in any process.
torch, diffusers, transformers and peft are imported inside the builders only.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ghibli_anim.devtools.tiny_tokenizer import (
    CLIP_MAX_LENGTH,
    clip_vocab_size,
    json_bytes,
    write_tokenizer,
)

__all__ = [
    "IMAGE_SIZE",
    "LORA_WEIGHT_NAME",
    "seeded",
    "write_controlnet",
    "write_lcm_lora",
    "write_pipeline",
    "write_taesd",
]

# The file name diffusers' load_lora_weights looks for in a LoRA folder.
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"

# Image side the tiny models are made for (the tiny profile's width and height).
IMAGE_SIZE = 64
# Text hidden size shared by the text encoder and the UNet's cross-attention.
_TEXT_HIDDEN = 32

# One seed per component, the tiny_vision ones included, so no two components
# share random weights.
_SEEDS = {
    "unet": 1,
    "vae": 2,
    "text_encoder": 3,
    "controlnet": 4,
    "depth": 5,
    "taesd": 6,
    "lcm_lora": 7,
    "blip": 8,
}

# SD-1.5's own scheduler config (PNDM); other schedulers derive from it.
_SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
    "trained_betas": None,
}


@contextmanager
def seeded(name: str) -> Iterator[None]:
    """Run with torch's CPU RNG seeded for this component; restore it afterwards."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEEDS[name])
        yield


def _unet() -> Any:
    from diffusers import UNet2DConditionModel

    with seeded("unet"):
        # Cross-attention only at the lower resolution (and in the mid block):
        # attention over 32x32 latents would make every step 3x slower.
        return UNet2DConditionModel(
            sample_size=IMAGE_SIZE // 2,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=_TEXT_HIDDEN,
            attention_head_dim=8,
            norm_num_groups=32,
        )


def _vae() -> Any:
    from diffusers import AutoencoderKL

    with seeded("vae"):
        # Two blocks: a scale factor of 2, so 64 px images have 32 px latents.
        return AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(32, 64),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=32,
            sample_size=IMAGE_SIZE,
            scaling_factor=0.18215,
        )


def _text_encoder() -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    vocab_size = clip_vocab_size()
    with seeded("text_encoder"):
        config = CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=_TEXT_HIDDEN,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=CLIP_MAX_LENGTH,
            projection_dim=_TEXT_HIDDEN,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
        )
        return CLIPTextModel(config).eval()


def write_pipeline(folder: Path) -> None:
    """Write a StableDiffusionPipeline folder (no safety checker) into ``folder``."""
    import diffusers

    _unet().save_pretrained(folder / "unet")
    _vae().save_pretrained(folder / "vae")
    _text_encoder().save_pretrained(folder / "text_encoder")
    write_tokenizer(folder / "tokenizer")
    # Written like SD-1.5's own file; PNDM ignores clip_sample, DDIM reads it.
    scheduler = {
        "_class_name": "PNDMScheduler",
        "_diffusers_version": diffusers.__version__,
        **_SCHEDULER_CONFIG,
    }
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_bytes(json_bytes(scheduler))
    # Written by hand (not StableDiffusionPipeline.save_pretrained) so the
    # tokenizer keeps the files above and the safety checker stays absent.
    model_index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (folder / "model_index.json").write_bytes(json_bytes(model_index))


def _randomize(modules: Iterable[Any], std: float) -> None:
    """Fill parameters with seeded noise (in a fixed order) instead of zeros."""
    import torch

    with torch.no_grad():
        for module in modules:
            for _, param in sorted(module.named_parameters()):
                param.copy_(torch.randn(param.shape) * std)


def write_controlnet(folder: Path) -> None:
    """Write a ControlNetModel made from the tiny UNet, with random (not zero) outputs."""
    from diffusers import ControlNetModel

    unet = _unet()
    with seeded("controlnet"):
        # As many conditioning stages as the VAE downsamples (2), or shapes clash.
        controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32))
        # A fresh ControlNet's zero convolutions make it a no-op; random ones let
        # tests see that the control image actually reaches the UNet.
        _randomize(
            [
                controlnet.controlnet_cond_embedding.conv_out,
                controlnet.controlnet_down_blocks,
                controlnet.controlnet_mid_block,
            ],
            std=0.05,
        )
    controlnet.save_pretrained(folder)


def write_taesd(folder: Path) -> None:
    """Write an AutoencoderTiny (TAESD shape) matching the tiny VAE's scale factor."""
    from diffusers import AutoencoderTiny

    with seeded("taesd"):
        # Two blocks each way: the tiny VAE's scale factor of 2.
        model = AutoencoderTiny(
            in_channels=3,
            out_channels=3,
            encoder_block_out_channels=(32, 32),
            decoder_block_out_channels=(32, 32),
            num_encoder_blocks=(1, 1),
            num_decoder_blocks=(1, 1),
            latent_channels=4,
        )
    model.save_pretrained(folder)


def write_lcm_lora(folder: Path) -> None:
    """Write a random LoRA on the tiny UNet's attention, in diffusers format."""
    from ghibli_anim.runtime import image_processors

    image_processors.use_pil_classes()  # before diffusers' pipelines import them
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = _unet()
    with seeded("lcm_lora"):
        unet.add_adapter(
            LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
        )
        # peft starts lora_B at zero (a no-op LoRA); make every factor random.
        lora_layers = [m for _, m in sorted(unet.named_modules()) if hasattr(m, "lora_A")]
        _randomize(
            [getattr(m, part) for m in lora_layers for part in ("lora_A", "lora_B")],
            std=0.1,
        )
    # The official training script's way of saving a LoRA.
    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(
        save_directory=folder,
        unet_lora_layers=state,
        weight_name=LORA_WEIGHT_NAME,
        safe_serialization=True,
    )
