"""The options of a LoRA training run (`ghibli-anim train-lora`) and their checks.

* ``TrainOptions``: every option of one run, one field per CLI flag, with the
  allowed ranges; ``check`` names the flag of the first bad value;
* ``parse_output`` / ``Target``: where the trained LoRA goes (a folder, or the
  store at ``loras/NAME/``);
* ``dataset_columns``: the image and caption columns of the loaded dataset,
  named by ``--image-column`` / ``--caption-column`` or found by their type;
* ``TARGET_MODULES``: the UNet layers the LoRA adapts (fixed, not an option).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ghibli_anim.contracts import limits, model_refs
from ghibli_anim.contracts.config import Settings
from ghibli_anim.services.trainer.dataset import check_hub_repo

TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
MIXED_PRECISION = ("no", "fp16", "bf16")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
IMAGE_COLUMNS = ("image",)
CAPTION_COLUMNS = ("caption", "text", "prompt")

RANK = limits.IntRange(1, 256)
LEARNING_RATE = limits.FloatRange(0.0, 1.0, lo_open=True)
STEPS = limits.IntRange(1, 1_000_000)
BATCH_SIZE = limits.IntRange(1, 64)
RESOLUTION = limits.IntRange(64, 2048, multiple_of=8)
CHECKPOINT_EVERY = limits.IntRange(0, 1_000_000)
VALIDATION_IMAGES = limits.IntRange(0, 16)
SNR_GAMMA = limits.FloatRange(0.0, 100.0, lo_open=True)
NOISE_OFFSET = limits.FloatRange(0.0, 1.0)
WARMUP_STEPS = limits.IntRange(0, 1_000_000)
MAX_GRAD_NORM = limits.FloatRange(0.0, 1000.0, lo_open=True)


@dataclass(frozen=True)
class TrainOptions:
    """Everything one training run needs; the CLI flags map onto these fields."""

    dataset: str
    """A dataset folder (``dataset build`` output, read as imagefolder) or a hub dataset id."""
    output: str
    """A folder, or ``store://loras/NAME``."""
    profile: str = ""
    rank: int = 4
    lr: float = 1e-4
    steps: int = 3000
    batch_size: int = 1
    resolution: int = 0
    """0: the profile's width."""
    mixed_precision: str = "no"
    checkpoint_every: int = 500
    """0: no checkpoints (and no validation images)."""
    resume: str = ""
    """"" (start fresh), "latest", or a checkpoint folder."""
    validation_prompt: str = ""
    """"": the first caption of the dataset."""
    validation_images: int = 2
    seed: int | None = None
    """None: a random seed, recorded (a resumed run takes the checkpoint's)."""
    push_to_hub: str = ""
    trigger: str | None = None
    """For the model card; None: the profile's style."""
    snr_gamma: float | None = None
    noise_offset: float = 0.0
    gradient_checkpointing: bool = False
    random_flip: bool = False
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    max_grad_norm: float = 1.0
    image_column: str = ""
    caption_column: str = ""
    work_dir: str = ""
    """Checkpoints go here; "": the output folder, or <ANIM_CACHE_DIR>/trainer/NAME."""

    def check(self) -> None:
        """Raise ValueError naming the flag of the first bad option."""
        if not self.dataset.strip():
            raise ValueError("--dataset: required (a folder or a hub dataset id)")
        RANK.check("--rank", self.rank)
        LEARNING_RATE.check("--lr", self.lr)
        STEPS.check("--steps", self.steps)
        BATCH_SIZE.check("--batch-size", self.batch_size)
        if self.resolution:
            RESOLUTION.check("--resolution", self.resolution)
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(
                f"--mixed-precision: must be one of {', '.join(MIXED_PRECISION)}, "
                f"got {self.mixed_precision!r:.20}"
            )
        CHECKPOINT_EVERY.check("--checkpoint-every", self.checkpoint_every)
        VALIDATION_IMAGES.check("--validation-images", self.validation_images)
        limits.check_text(
            "--validation-prompt", self.validation_prompt, limits.PROMPT_CHARS, required=False
        )
        if self.seed is not None:
            limits.SEED.check("--seed", self.seed)
        if self.push_to_hub:
            check_hub_repo(self.push_to_hub, "--push-to-hub")
        if self.trigger is not None:
            limits.check_text("--trigger", self.trigger, limits.STYLE_CHARS, required=False)
        if self.snr_gamma is not None:
            SNR_GAMMA.check("--snr-gamma", self.snr_gamma)
        NOISE_OFFSET.check("--noise-offset", self.noise_offset)
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ValueError(
                f"--lr-scheduler: must be one of {', '.join(LR_SCHEDULERS)}, "
                f"got {self.lr_scheduler!r:.40}"
            )
        WARMUP_STEPS.check("--lr-warmup-steps", self.lr_warmup_steps)
        MAX_GRAD_NORM.check("--max-grad-norm", self.max_grad_norm)


@dataclass(frozen=True)
class Target:
    """Where the trained LoRA goes: a folder, or the store under ``loras/NAME/``."""

    folder: Path | None = None
    lora_name: str = ""

    @property
    def description(self) -> str:
        return f"store://loras/{self.lora_name}" if self.lora_name else str(self.folder)


def parse_output(value: str, settings: Settings) -> Target:
    """The ``Target`` that ``--output`` names; ValueError naming the flag otherwise."""
    if not value or not value.strip():
        raise ValueError("--output: required (a folder or store://loras/NAME)")
    if value.startswith(model_refs.STORE_PREFIX):
        model_refs.check_ref(value, settings, "--output", allow_store=True)
        return Target(lora_name=value.rsplit("/", 1)[1])
    if "://" in value:
        raise ValueError(f"--output: must be a folder or store://loras/NAME, got {value!r:.200}")
    return Target(folder=Path(value).expanduser())


def dataset_columns(ds: Any, image_column: str, caption_column: str) -> tuple[str, str]:
    """The image and caption columns of ``ds``; ValueError naming the flag otherwise."""
    import datasets

    names = list(ds.column_names)
    feats = ds.features
    listed = ", ".join(names) or "none"

    def is_image(name: str) -> bool:
        return isinstance(feats[name], datasets.Image)

    def is_text(name: str) -> bool:
        feature = feats[name]
        inner = getattr(feature, "feature", None)  # List / Sequence of strings
        candidate = inner if inner is not None else feature
        return isinstance(candidate, datasets.Value) and candidate.dtype in (
            "string",
            "large_string",
        )

    if image_column:
        if image_column not in names:
            raise ValueError(f"--image-column: no column {image_column!r} (columns: {listed})")
    else:
        image_column = next((n for n in IMAGE_COLUMNS if n in names), "") or next(
            (n for n in names if is_image(n)), ""
        )
        if not image_column:
            raise ValueError(
                f"--dataset: no image column (columns: {listed}); name one with --image-column"
            )
    if not is_image(image_column):
        raise ValueError(f"--image-column: {image_column!r} does not hold images")
    if caption_column:
        if caption_column not in names:
            raise ValueError(f"--caption-column: no column {caption_column!r} (columns: {listed})")
    else:
        caption_column = next((n for n in CAPTION_COLUMNS if n in names), "")
        if not caption_column:
            raise ValueError(
                f"--dataset: no caption column (looked for {', '.join(CAPTION_COLUMNS)}; "
                f"columns: {listed}); name one with --caption-column"
            )
    if not is_text(caption_column):
        raise ValueError(f"--caption-column: {caption_column!r} does not hold text")
    return image_column, caption_column
