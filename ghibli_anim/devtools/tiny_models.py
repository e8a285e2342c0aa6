"""Tiny random-weight models of the SD-1.5 shape, for tests and offline demos.

``write_tiny_models(DIR)`` (the CLI's ``ghibli-anim models tiny DIR``) writes every
component the ``tiny`` profile names, each in its own folder:

=============  ==================================================================
``pipeline``   StableDiffusionPipeline folder: unet, vae, text_encoder, tokenizer,
               scheduler (PNDM, SD-1.5's config), model_index.json
``tokenizer``  the CLIP tokenizer alone (same files as ``pipeline/tokenizer``)
``controlnet`` ControlNetModel made from the tiny UNet (depth-style conditioning)
``depth``      DPTForDepthEstimation + DPTImageProcessor
``taesd``      AutoencoderTiny (TAESD shape) matching the tiny VAE's scale factor
``lcm_lora``   a random LoRA for the tiny UNet in diffusers format
               (``pytorch_lora_weights.safetensors``): an LCM-LoRA stand-in
``blip``       BlipForConditionalGeneration + BlipProcessor (captioner)
=============  ==================================================================

Guarantees:

* **Deterministic**: every builder seeds its own RNG (inside ``torch.random.fork_rng``,
  so callers' RNG state is untouched) and every config is fixed, so the same
  library versions write the same bytes on every run and in every process.
* **Atomic per component**: a component is written into a hidden temporary folder
  beside its final place and renamed into place, so readers never see half a
  component. When two processes build the same component at once, the first
  rename wins and the loser discards its copy.
* **Tokenizer without torch**: the tokenizer files are plain JSON and text written
  by this module; the planner (no torch installed) can build them.

Bump ``model_refs.TINY_VERSION`` whenever the bytes written change: the model cache keeps
one folder per version (``<ANIM_CACHE_DIR>/tiny-v<N>``).

torch, diffusers and transformers are imported inside the builders only.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import cache
from itertools import pairwise
from pathlib import Path
from typing import Any

from ghibli_anim.contracts.model_refs import TINY_COMPONENTS as COMPONENTS
from ghibli_anim.contracts.model_refs import TINY_VERSION

__all__ = ["COMPONENTS", "TINY_VERSION", "write_single_file", "write_tiny_models"]

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"

# Image side the tiny models are made for (the tiny profile's width and height).
IMAGE_SIZE = 64
# Text hidden size shared by the text encoder and the UNet's cross-attention.
_TEXT_HIDDEN = 32
CLIP_MAX_LENGTH = 77

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"

# Words that become whole tokens (and stems that take suffixes): enough for the
# prompts a storyboard writes, so realistic prompts fit CLIP's 77 tokens under the
# tiny tokenizer too. Order matters a little: BPE applies the lowest-ranked merge
# first, so the commonest words come first.
_WORDS = [
    word
    for line in (
        "a the of and in on at to with from by for over under into through across above below is",
        "are was be it its this that his her their they he she we you i one two three an as or",
        "not no all some many few more most very so but up down out off near far ghibli style",
        "studio anime animation art painting illustration detailed cinematic film small little",
        "big large huge tiny tall long short wide old new young ancient quiet calm soft warm cool",
        "cold bright dark light gentle golden silver green blue red yellow white black orange",
        "pink purple brown grey gray colorful pastel vivid misty foggy rainy sunny dragon girl",
        "boy cat dog bird birds fox wolf spirit spirits forest tree trees town city village",
        "castle house houses home roof roofs tower street streets road bridge river lake sea",
        "ocean wave waves beach island mountain mountains hill hills valley field fields meadow",
        "garden flower flowers grass sky skies cloud clouds sun moon star stars rain snow wind",
        "fire water smoke light lights shadow shadows window windows door train airship ship boat",
        "plane car bicycle market shop lantern lanterns station temple shrine cottage farm",
        "medieval countryside landscape scene view background foreground sunset sunrise dusk dawn",
        "night evening morning day afternoon twilight summer winter spring autumn fall season",
        "flying flies fly glide glides gliding soar soars soaring walk walks walking run runs",
        "running sit sits sitting stand stands standing look looks looking float floats floating",
        "drift drifts drifting sail sails sailing fall falls falling rise rises rising move moves",
        "moving turn turns turning pass passes passing watch watches watching sleep sleeps camera",
        "pan pans zoom zooms slowly slow fast gently toward towards behind between around beneath",
        "beyond along against among inside outside left right center middle top bottom close far",
        "distant wide shot scale view frame frames motion still blurry blurred lowres low quality",
        "worst bad ugly deformed distorted extra missing text watermark signature jpeg artifacts",
        "cropped duplicate disfigured mutated poorly drawn hands face faces eyes hair body people",
        "person man woman child children friends family high resolution masterpiece best sharp",
        "focus lighting atmosphere atmospheric mood peaceful magical fantasy dream dreamy",
        "whimsical nostalgic serene lush green overgrown anatomy limbs fingers realistic photo",
        "photorealistic render noise grainy oversaturated",
    )
    for word in line.split()
]

# Endings that follow a word stem ("glide" + "s", "walk" + "ing").
_SUFFIXES = ("s", "es", "ed", "ing", "ly", "er", "y", "ness", "ful")


# ---------------------------------------------------------------------------
# Tokenizer (pure Python: no torch, no transformers)
# ---------------------------------------------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def _learn_merges(corpus: dict[tuple[str, ...], int]) -> list[tuple[str, str]]:
    """Byte-pair encoding training: merge the most frequent pair until words are whole.

    Ties go to the smallest pair, so the result depends on the corpus only. BPE
    replays merges in rank order, so every corpus word encodes to one token.
    """
    words = [list(symbols) for symbols in corpus]
    freqs = list(corpus.values())
    counts: dict[tuple[str, str], int] = defaultdict(int)
    where: dict[tuple[str, str], set[int]] = defaultdict(set)  # pair -> word indices
    for i, symbols in enumerate(words):
        for pair in pairwise(symbols):
            counts[pair] += freqs[i]
            where[pair].add(i)
    merges: list[tuple[str, str]] = []
    while counts:
        best = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        merges.append(best)
        a, b = best
        for i in sorted(where.pop(best)):
            old = words[i]
            for pair in pairwise(old):
                counts[pair] -= freqs[i]
                if counts[pair] == 0:
                    del counts[pair]
            new: list[str] = []
            j = 0
            while j < len(old):
                if j + 1 < len(old) and old[j] == a and old[j + 1] == b:
                    new.append(a + b)
                    j += 2
                else:
                    new.append(old[j])
                    j += 1
            words[i] = new
            for pair in pairwise(new):
                counts[pair] += freqs[i]
                where[pair].add(i)
    return merges


@cache
def clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The tiny CLIP vocabulary and merge list, laid out like CLIP's own.

    Vocabulary: the 256 byte characters, the same with ``</w>`` (end of word),
    one entry per merge, then ``<|startoftext|>`` and ``<|endoftext|>`` last.
    Merges: learnt from ``_WORDS`` (each whole, with ``</w>``, and as a bare stem
    that a suffix may follow) and ``_SUFFIXES``; earlier words count as more
    frequent. Every listed word becomes one token; other text still tokenizes,
    byte by byte at worst.
    """
    words = list(dict.fromkeys(_WORDS))
    corpus: dict[tuple[str, ...], int] = defaultdict(int)
    for rank, word in enumerate(words):
        freq = len(words) - rank
        corpus[(*word[:-1], word[-1] + "</w>")] += freq
        if len(word) > 1:
            corpus[tuple(word)] += freq
    for suffix in _SUFFIXES:
        corpus[(*suffix[:-1], suffix[-1] + "</w>")] += len(words)
    merges = _learn_merges(dict(corpus))

    byte_chars = list(_bytes_to_unicode().values())
    vocab_list = [*byte_chars, *(c + "</w>" for c in byte_chars)]
    vocab_list += [a + b for a, b in merges]
    vocab_list += [BOS_TOKEN, EOS_TOKEN]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    if len(vocab) != len(vocab_list):  # cannot happen: every merge makes a new symbol
        raise AssertionError("tiny tokenizer: duplicate vocabulary entries")
    return vocab, merges


def _json_bytes(obj: Any) -> bytes:
    """Stable JSON: sorted keys, fixed indent, trailing newline."""
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def tokenizer_files() -> dict[str, bytes]:
    """File name -> bytes of the tiny CLIP tokenizer folder.

    Loadable by ``CLIPTokenizer.from_pretrained`` and ``AutoTokenizer``; the
    pipeline's text encoder is sized to this vocabulary.
    """
    vocab, merges = clip_vocab_and_merges()
    merges_txt = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    special = {
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
    }
    config = {
        **special,
        "tokenizer_class": "CLIPTokenizer",
        # Without an explicit length the pipeline fails with OverflowError.
        "model_max_length": CLIP_MAX_LENGTH,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
    }
    return {
        "vocab.json": _json_bytes(vocab),
        "merges.txt": merges_txt.encode(),
        "tokenizer_config.json": _json_bytes(config),
        "special_tokens_map.json": _json_bytes(special),
    }


def write_tokenizer(folder: Path) -> None:
    """Write the tiny CLIP tokenizer files into ``folder`` (created if needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in tokenizer_files().items():
        (folder / name).write_bytes(data)


def clip_vocab_size() -> int:
    return len(clip_vocab_and_merges()[0])


# ---------------------------------------------------------------------------
# torch builders (each seeds itself, so any subset gives the same bytes)
# ---------------------------------------------------------------------------

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
def _seeded(name: str) -> Iterator[None]:
    """Run with torch's CPU RNG seeded for this component; restore it afterwards."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEEDS[name])
        yield


def _unet() -> Any:
    from diffusers import UNet2DConditionModel

    with _seeded("unet"):
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

    with _seeded("vae"):
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
    with _seeded("text_encoder"):
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


def _write_pipeline(folder: Path) -> None:
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
    (folder / "scheduler" / "scheduler_config.json").write_bytes(_json_bytes(scheduler))
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
    (folder / "model_index.json").write_bytes(_json_bytes(model_index))


def _randomize(modules: Iterable[Any], std: float) -> None:
    """Fill parameters with seeded noise (in a fixed order) instead of zeros."""
    import torch

    with torch.no_grad():
        for module in modules:
            for _, param in sorted(module.named_parameters()):
                param.copy_(torch.randn(param.shape) * std)


def _write_controlnet(folder: Path) -> None:
    from diffusers import ControlNetModel

    unet = _unet()
    with _seeded("controlnet"):
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


def _write_depth(folder: Path) -> None:
    from transformers import DPTConfig, DPTForDepthEstimation

    with _seeded("depth"):
        config = DPTConfig(
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=37,
            image_size=IMAGE_SIZE,
            patch_size=8,
            backbone_out_indices=(0, 1, 2, 3),
            neck_hidden_sizes=(16, 16, 32, 32),
            reassemble_factors=(4, 2, 1, 0.5),
            fusion_hidden_size=32,
            is_hybrid=False,
            use_auxiliary_head=False,
        )
        model = DPTForDepthEstimation(config).eval()
    model.save_pretrained(folder)
    processor = {
        "image_processor_type": "DPTImageProcessor",
        "do_resize": True,
        "size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        "keep_aspect_ratio": False,
        "ensure_multiple_of": 1,
        "resample": 3,  # bicubic
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "do_pad": False,
    }
    (folder / "preprocessor_config.json").write_bytes(_json_bytes(processor))


def _write_taesd(folder: Path) -> None:
    from diffusers import AutoencoderTiny

    with _seeded("taesd"):
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


def _write_lcm_lora(folder: Path) -> None:
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = _unet()
    with _seeded("lcm_lora"):
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


_BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]")


def _blip_vocab() -> list[str]:
    """A WordPiece vocabulary: specials, characters, ``##`` pieces, whole words."""
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789") + list(".,!?'\"-:;()")
    pieces = ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    words = [w for w in dict.fromkeys(_WORDS) if len(w) > 1]
    return [*_BERT_SPECIALS, *chars, *pieces, *words]


def _write_blip(folder: Path) -> None:
    from transformers import BlipConfig, BlipForConditionalGeneration

    vocab = _blip_vocab()
    ids = {tok: i for i, tok in enumerate(vocab)}
    with _seeded("blip"):
        config = BlipConfig(
            text_config={
                "vocab_size": len(vocab),
                "hidden_size": 32,
                "encoder_hidden_size": 32,
                "intermediate_size": 37,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "max_position_embeddings": 64,
                "bos_token_id": ids["[DEC]"],
                "sep_token_id": ids["[SEP]"],
                "eos_token_id": ids["[SEP]"],
                "pad_token_id": ids["[PAD]"],
            },
            vision_config={
                "hidden_size": 32,
                "intermediate_size": 37,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "image_size": 32,
                "patch_size": 8,
            },
            projection_dim=32,
        )
        model = BlipForConditionalGeneration(config).eval()
    model.save_pretrained(folder)
    # Processor files by hand: stable bytes, and the same layout as BLIP's own.
    (folder / "vocab.txt").write_text("".join(tok + "\n" for tok in vocab))
    tokenizer_config = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": True,
        "model_max_length": 64,
        "unk_token": "[UNK]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
        "bos_token": "[DEC]",
        "processor_class": "BlipProcessor",
    }
    (folder / "tokenizer_config.json").write_bytes(_json_bytes(tokenizer_config))
    image_processor = {
        "image_processor_type": "BlipImageProcessor",
        "processor_class": "BlipProcessor",
        "do_resize": True,
        "size": {"height": 32, "width": 32},
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "do_convert_rgb": True,
    }
    (folder / "preprocessor_config.json").write_bytes(_json_bytes(image_processor))


_BUILDERS: dict[str, Callable[[Path], None]] = {
    "pipeline": _write_pipeline,
    "tokenizer": write_tokenizer,
    "controlnet": _write_controlnet,
    "depth": _write_depth,
    "taesd": _write_taesd,
    "lcm_lora": _write_lcm_lora,
    "blip": _write_blip,
}


# ---------------------------------------------------------------------------
# Atomic writing
# ---------------------------------------------------------------------------


def check_components(components: Iterable[str] | None) -> tuple[str, ...]:
    """Validate component names; None means all of them."""
    if components is None:
        return COMPONENTS
    names = tuple(dict.fromkeys(components))
    unknown = [c for c in names if c not in COMPONENTS]
    if unknown:
        got = ", ".join(map(repr, unknown))
        raise ValueError(f"components: must be among {', '.join(COMPONENTS)}, got {got}")
    return names


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Hide transformers' progress bar of every save_pretrained (noise in CLI output)."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _install(out_dir: Path, name: str, overwrite: bool) -> None:
    """Build component ``name`` beside ``out_dir/name`` and rename it into place."""
    final = out_dir / name
    if final.exists() and not overwrite:
        return
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=out_dir))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared
        if name == "tokenizer":
            write_tokenizer(tmp)  # pure Python: no torch, no transformers
        else:
            with _no_progress_bars():
                _BUILDERS[name](tmp)
        if overwrite and final.exists():
            old = out_dir / f".{name}.{uuid.uuid4().hex}.old"
            os.rename(final, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            # Another writer renamed its copy first (a non-empty folder cannot be
            # replaced by rename): theirs has the same bytes, keep it.
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a rename


def write_tiny_models(
    out_dir: Path, components: Iterable[str] | None = None, *, overwrite: bool = False
) -> Path:
    """Write the tiny components into ``out_dir/<component>/`` and return ``out_dir``.

    ``components``: a subset of ``COMPONENTS`` (default: all). A component folder
    that already exists is kept unless ``overwrite`` is true: the bytes are
    deterministic, so an existing copy from the same version is the same.
    Only ``tokenizer`` can be written without torch installed.
    """
    names = check_components(components)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        _install(out_dir, name, overwrite)
    return out_dir


# ---------------------------------------------------------------------------
# Single-file export in the original (LDM) key layout
# ---------------------------------------------------------------------------

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
