"""Tiny image-reading models: the DPT depth estimator and the BLIP captioner.

Each is seeded like the diffusion parts (``tiny_diffusion.seeded``) and writes its
processor files by hand, so the bytes are the same in every run and process.
transformers is imported inside the builders only.
"""

from __future__ import annotations

from pathlib import Path

from ghibli_anim.devtools.tiny_diffusion import IMAGE_SIZE, seeded
from ghibli_anim.devtools.tiny_tokenizer import WORDS, json_bytes

__all__ = ["write_blip", "write_depth"]


def write_depth(folder: Path) -> None:
    """Write a DPTForDepthEstimation and its DPTImageProcessor config into ``folder``."""
    from transformers import DPTConfig, DPTForDepthEstimation

    with seeded("depth"):
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
    (folder / "preprocessor_config.json").write_bytes(json_bytes(processor))


# BERT's special tokens plus BLIP's decoder start token.
_BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]")


def _blip_vocab() -> list[str]:
    """A WordPiece vocabulary: specials, characters, ``##`` pieces, whole words."""
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789") + list(".,!?'\"-:;()")
    pieces = ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    words = [w for w in dict.fromkeys(WORDS) if len(w) > 1]
    return [*_BERT_SPECIALS, *chars, *pieces, *words]


def write_blip(folder: Path) -> None:
    """Write a BlipForConditionalGeneration and its BlipProcessor files into ``folder``."""
    from transformers import BlipConfig, BlipForConditionalGeneration

    vocab = _blip_vocab()
    ids = {tok: i for i, tok in enumerate(vocab)}
    with seeded("blip"):
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
    (folder / "tokenizer_config.json").write_bytes(json_bytes(tokenizer_config))
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
    (folder / "preprocessor_config.json").write_bytes(json_bytes(image_processor))
