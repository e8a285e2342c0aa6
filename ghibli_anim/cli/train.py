"""`ghibli-anim dataset build` and `ghibli-anim train-lora`: flags and dispatch.

Importing this module costs argparse only: the dataset and training modules
(torch, diffusers, datasets) load when a command runs.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

DATASET_CAPTION_MODES = ("keep", "blip", "both")
MIXED_PRECISION = ("no", "fp16", "bf16")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")


COMMANDS = ("dataset", "train-lora")


def add_parsers(sub: Any) -> None:
    """Add the `dataset` and `train-lora` commands to the CLI's subparsers."""
    dataset = sub.add_parser("dataset", help="captioned image datasets for LoRA training")
    dataset_sub = dataset.add_subparsers(dest="dataset_command", required=True)
    p = dataset_sub.add_parser(
        "build",
        help="check, dedupe, crop and caption a folder of images into a dataset folder",
        description="Writes OUT with square PNG crops and metadata.csv (file_name,caption), "
        "the layout datasets' imagefolder reads. The originals are never changed.",
    )
    p.add_argument("images_dir", type=Path, metavar="IMAGES_DIR", help="PNG, JPEG or WebP files")
    p.add_argument("--out", type=Path, required=True, help="the dataset folder to write")
    p.add_argument(
        "--caption",
        choices=DATASET_CAPTION_MODES,
        default="blip",
        help="keep: the captions in IMAGES_DIR/metadata.csv or NAME.txt; blip: the "
        "profile's BLIP model; both: yours, then BLIP's (default blip)",
    )
    p.add_argument(
        "--trigger",
        default=None,
        help="phrase put first in every caption (default: the profile's style; '' for none)",
    )
    p.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="side of the square crops, 64..2048, a multiple of 8 (default: the profile's "
        "width); 0 copies the originals unchanged",
    )
    p.add_argument("--profile", default="", help="model profile (default: ANIM_PROFILE)")
    p.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        help="refuse images with more pixels (decompression-bomb guard; default 8192x8192)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument(
        "--push-to-hub", default="", metavar="REPO", help="push to a hub dataset (HF_TOKEN)"
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="do every check, print what would be written and pushed, keep nothing",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser(
        "train-lora",
        help="train a style LoRA on a dataset (to a folder, the store or the hub)",
        description="LoRA on the UNet's attention projections (to_q, to_k, to_v, to_out.0); "
        "VAE and text encoder frozen. Writes pytorch_lora_weights.safetensors (diffusers "
        "format) and README.md; checkpoints (with validation images) every N steps.",
    )
    p.add_argument("--dataset", required=True, help="a `dataset build` folder or a hub dataset id")
    p.add_argument(
        "--output", required=True, help="a folder, or store://loras/NAME (renderers load it)"
    )
    p.add_argument("--profile", default="", help="base model profile (default: ANIM_PROFILE)")
    p.add_argument("--rank", type=int, default=4, help="LoRA rank, 1..256 (default 4)")
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate (default 1e-4)")
    p.add_argument("--steps", type=int, default=3000, help="training steps (default 3000)")
    p.add_argument("--batch-size", type=int, default=1, help="images per step, 1..64")
    p.add_argument(
        "--resolution",
        type=int,
        default=0,
        help="training side, 64..2048, a multiple of 8 (default: the profile's width)",
    )
    p.add_argument("--mixed-precision", choices=MIXED_PRECISION, default="no")
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=500,
        help="steps between checkpoints with validation images (0: none; default 500)",
    )
    p.add_argument(
        "--resume",
        default="",
        help="'latest' (the newest checkpoint of the work folder) or a checkpoint folder",
    )
    p.add_argument("--validation-prompt", default="", help="default: the dataset's first caption")
    p.add_argument("--validation-images", type=int, default=2, help="images per checkpoint, 0..16")
    p.add_argument("--seed", type=int, default=None, help="default: random, recorded")
    p.add_argument("--push-to-hub", default="", metavar="REPO", help="hub model repo (HF_TOKEN)")
    p.add_argument(
        "--trigger",
        default=None,
        help="trigger phrase for the model card (default: the profile's style)",
    )
    p.add_argument(
        "--snr-gamma", type=float, default=None, help="Min-SNR loss weighting (e.g. 5.0)"
    )
    p.add_argument("--noise-offset", type=float, default=0.0, help="0..1 (e.g. 0.05)")
    p.add_argument(
        "--gradient-checkpointing", action="store_true", help="less memory, ~30%% slower"
    )
    p.add_argument("--random-flip", action="store_true", help="mirror images at random")
    p.add_argument("--lr-scheduler", choices=LR_SCHEDULERS, default="constant")
    p.add_argument("--lr-warmup-steps", type=int, default=0)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--image-column", default="", help="default: image")
    p.add_argument("--caption-column", default="", help="default: caption, text or prompt")
    p.add_argument(
        "--work-dir",
        default="",
        help="checkpoints folder (default: --output's folder, or "
        "$ANIM_CACHE_DIR/trainer/NAME for the store)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run `dataset build` or `train-lora`; ValueError means a bad flag (exit 2), an
    OSError or a diverged loss (FloatingPointError) exit 1 (cli/errors.py)."""
    from ghibli_anim.contracts import config

    settings = config.load("trainer", os.environ)
    if args.command == "dataset":
        return _dataset_build(args, settings)
    return _train(args, settings)


def _dataset_build(args: argparse.Namespace, settings: Any) -> int:
    from ghibli_anim.services.trainer import dataset

    kwargs: dict[str, Any] = {}
    if args.max_pixels is not None:
        kwargs["max_pixels"] = args.max_pixels
    report = dataset.build_dataset(
        args.images_dir,
        args.out,
        settings=settings,
        profile=args.profile,
        caption=args.caption,
        trigger=args.trigger,
        resolution=args.resolution,
        overwrite=args.overwrite,
        dry_run=args.dry_run,
        push_to_hub=args.push_to_hub,
        progress=not args.quiet,
        **kwargs,
    )
    print("\n".join(report.lines()))
    return 0


def _train(args: argparse.Namespace, settings: Any) -> int:
    from ghibli_anim.services.trainer.options import TrainOptions
    from ghibli_anim.services.trainer.train import train_lora

    options = TrainOptions(
        dataset=args.dataset,
        output=args.output,
        profile=args.profile,
        rank=args.rank,
        lr=args.lr,
        steps=args.steps,
        batch_size=args.batch_size,
        resolution=args.resolution,
        mixed_precision=args.mixed_precision,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        validation_prompt=args.validation_prompt,
        validation_images=args.validation_images,
        seed=args.seed,
        push_to_hub=args.push_to_hub,
        trigger=args.trigger,
        snr_gamma=args.snr_gamma,
        noise_offset=args.noise_offset,
        gradient_checkpointing=args.gradient_checkpointing,
        random_flip=args.random_flip,
        lr_scheduler=args.lr_scheduler,
        lr_warmup_steps=args.lr_warmup_steps,
        max_grad_norm=args.max_grad_norm,
        image_column=args.image_column,
        caption_column=args.caption_column,
        work_dir=args.work_dir,
    )
    result = train_lora(options, settings=settings, progress=not args.quiet)
    loss = result.final_loss
    print(
        f"trained steps {result.start_step}..{result.steps} (seed {result.seed}) in "
        f"{result.elapsed_s:.1f} s; final loss "
        f"{'-' if loss is None else f'{loss:.4f}'}; LoRA at {result.target}"
    )
    return 0
