"""LoRA training of the UNet on a captioned image dataset (`ghibli-anim train-lora`).

The recipe is the one of diffusers' ``train_text_to_image_lora.py`` example, which
the seed paper ran, written for this project:

* base model, tokenizer and defaults come from a profile; the VAE and the text
  encoder are frozen, the UNet's own weights too: only a LoRA (peft) on its
  attention projections ``to_q``, ``to_k``, ``to_v``, ``to_out.0`` trains;
* accelerate drives device placement and mixed precision (``fp16`` needs CUDA;
  ``bf16`` runs on CUDA and CPUs); under mixed precision the frozen weights are
  cast to half precision and the LoRA parameters stay float32;
* loss: MSE between the UNet's prediction and the noise (or the velocity, for a
  v-prediction base), optionally Min-SNR weighted (``snr_gamma``), with optional
  noise offset; AdamW, gradient clipping, gradient checkpointing on request.

Determinism and resuming: every random draw of step ``s`` (which images, flips,
caption choice, latent sample, noise, timesteps) comes from a CPU generator
seeded with ``sha256(seed, s)``, and the LoRA's initial values from the seed.
A checkpoint (``checkpoint-N/`` under the work folder) holds the LoRA weights,
the optimizer and learning-rate scheduler states and the options that shape the
result; ``resume="latest"`` continues from the newest one at step N, and the run
ends with the same weights as an uninterrupted run of the same options (on the
same device and library versions). Options that change the result must match
the checkpoint's; ``steps``, checkpointing and validation may change.

Output: ``pytorch_lora_weights.safetensors`` in the diffusers format (saved the
official way: ``get_peft_model_state_dict`` -> ``convert_state_dict_to_diffusers``
-> ``StableDiffusionPipeline.save_lora_weights``) and a model card ``README.md``,
written to a folder, or to the store at ``loras/NAME/`` (``store://loras/NAME``,
which renderers load), and optionally pushed to a hub model repository.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import math
import os
import re
import secrets
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ghibli_anim.contracts import keys, limits, model_refs, profiles, tokens
from ghibli_anim.contracts.config import Settings
from ghibli_anim.services.trainer import dataset as dataset_mod

log = logging.getLogger(__name__)

TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
MIXED_PRECISION = ("no", "fp16", "bf16")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
IMAGE_COLUMNS = ("image",)
CAPTION_COLUMNS = ("caption", "text", "prompt")
WEIGHT_NAME = keys.LORA_WEIGHT_NAME
MODEL_CARD = "README.md"
STATE_FILE = "train_state.json"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")

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

# Options that shape the weights: a resumed run must use the checkpoint's values.
_RESULT_FIELDS = (
    "dataset",
    "profile",
    "rank",
    "lr",
    "batch_size",
    "resolution",
    "mixed_precision",
    "seed",
    "snr_gamma",
    "noise_offset",
    "random_flip",
    "lr_scheduler",
    "lr_warmup_steps",
    "max_grad_norm",
    "image_column",
    "caption_column",
)


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
            dataset_mod.check_hub_repo(self.push_to_hub, "--push-to-hub")
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
    if not value or not value.strip():
        raise ValueError("--output: required (a folder or store://loras/NAME)")
    if value.startswith(model_refs.STORE_PREFIX):
        model_refs.check_ref(value, settings, "--output", allow_store=True)
        return Target(lora_name=value.rsplit("/", 1)[1])
    if "://" in value:
        raise ValueError(f"--output: must be a folder or store://loras/NAME, got {value!r:.200}")
    return Target(folder=Path(value).expanduser())


def lora_readme_key(name: str) -> str:
    """The model card's key beside the weights."""
    return keys.lora_key(name).rsplit("/", 1)[0] + "/" + MODEL_CARD


@dataclass
class TrainResult:
    """What a run did and where its files are."""

    target: str
    weights: Path
    """The local weights file (in the output folder, or the work folder's ``final/``)."""
    model_card: Path
    seed: int
    start_step: int
    """0, or the step of the checkpoint it resumed from."""
    steps: int
    losses: list[float] = field(default_factory=list)
    """Training loss of each step this run took."""
    checkpoints: list[Path] = field(default_factory=list)
    validation_images: list[Path] = field(default_factory=list)
    store_keys: list[str] = field(default_factory=list)
    pushed_to: str = ""
    elapsed_s: float = 0.0

    @property
    def final_loss(self) -> float | None:
        tail = self.losses[-10:]
        return sum(tail) / len(tail) if tail else None


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed for one purpose (e.g. step 17) of a run seeded with ``seed``."""
    digest = hashlib.sha256(":".join(str(p) for p in (seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def find_checkpoint(work_dir: Path, resume: str) -> Path | None:
    """The checkpoint ``resume`` names: "latest" (None if there is none) or a folder."""
    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(work_dir)
        return found[-1] if found else None
    path = Path(resume).expanduser()
    if not (path / STATE_FILE).is_file():
        raise ValueError(f"--resume: {resume!r:.200} is not a checkpoint folder (no {STATE_FILE})")
    return path


def list_checkpoints(work_dir: Path) -> list[Path]:
    """Complete checkpoints (``checkpoint-N`` with a state file), oldest first."""
    if not work_dir.is_dir():
        return []
    found = []
    for path in work_dir.iterdir():
        match = CHECKPOINT_RE.match(path.name)
        if match and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return [p for _, p in sorted(found)]


def _checked_resume(opts: TrainOptions, checkpoint: Path) -> tuple[TrainOptions, int]:
    """Options of a resumed run (an unset seed taken from the checkpoint) and its step."""
    try:
        state = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
        saved, step = state["options"], int(state["step"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"--resume: unreadable {checkpoint / STATE_FILE} ({exc})") from None
    if opts.seed is None:
        opts = replace(opts, seed=saved.get("seed"))
    for name in _RESULT_FIELDS:
        mine = getattr(opts, name)
        if saved.get(name) != mine:
            flag = "--" + name.replace("_", "-")
            raise ValueError(
                f"{flag}: the checkpoint {checkpoint.name} was trained with "
                f"{saved.get(name)!r}, this run asks for {mine!r} (same options to resume)"
            )
    if step > opts.steps:
        raise ValueError(f"--steps: {opts.steps} is below the checkpoint's step {step}")
    return opts, step


def _accelerator(mixed_precision: str, settings: Settings) -> Any:
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    device = settings["ANIM_DEVICE"]
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("ANIM_DEVICE: cuda requested, but torch sees no CUDA device")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ValueError("ANIM_DEVICE: mps requested, but torch sees no MPS device")
    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if mixed_precision == "fp16" and (cpu or device == "mps"):
        raise ValueError("--mixed-precision: fp16 needs a CUDA device; use bf16 or no here")
    # Each run chooses its own precision (a process may train more than once).
    AcceleratorState._reset_state()
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=device == "cpu")
    if accelerator.num_processes > 1:
        raise ValueError("train-lora runs in one process (one device); launch it without workers")
    return accelerator


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


class _Progress:
    """A progress bar on a terminal (loss, step rate, ETA); log lines elsewhere."""

    def __init__(self, total: int, initial: int, enabled: bool, echo: Callable[[str], None]):
        from tqdm import tqdm

        self.total, self.enabled, self.echo = total, enabled, echo
        self.started, self.initial = time.perf_counter(), initial
        self.bar = None
        if enabled and sys.stderr.isatty():
            self.bar = tqdm(total=total, initial=initial, desc="training", unit="step")
        self.every = max(1, total // 20)

    def update(self, step: int, loss: float, lr: float) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            return
        if step % self.every and step != self.total:
            return
        rate = (step - self.initial) / max(time.perf_counter() - self.started, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        self.echo(
            f"step {step}/{self.total}  loss {loss:.4f}  lr {lr:.2e}  "
            f"{rate:.2f} step/s  eta {_duration(eta)}"
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


def train_lora(
    options: TrainOptions,
    *,
    settings: Settings,
    store: Any = None,
    progress: bool = False,
    echo: Callable[[str], None] = print,
) -> TrainResult:
    """Train a LoRA as ``options`` say; return where it went and how it went.

    ``store`` receives a ``store://`` output (default: the store ANIM_STORE
    names). ``progress`` shows a bar (or log lines when stderr is no terminal);
    ``echo`` prints status lines.
    """
    from ghibli_anim.runtime import logs

    started = time.perf_counter()
    options.check()
    target = parse_output(options.output, settings)
    prof = profiles.load_profile(options.profile or None, settings)
    folder = Path(options.dataset).expanduser()
    # A folder is recorded absolute, so a resumed run may name it from anywhere.
    dataset = str(folder.resolve()) if folder.is_dir() else options.dataset
    opts = replace(
        options,
        dataset=dataset,
        profile=prof.name,
        resolution=options.resolution or prof.width,
    )
    RESOLUTION.check("--resolution", opts.resolution)
    trigger = prof.style if opts.trigger is None else opts.trigger
    if target.folder is not None:
        work_dir = Path(opts.work_dir).expanduser() if opts.work_dir else target.folder
    else:
        default = Path(settings["ANIM_CACHE_DIR"]).expanduser() / "trainer" / target.lora_name
        work_dir = Path(opts.work_dir).expanduser() if opts.work_dir else default
    checkpoint = find_checkpoint(work_dir, opts.resume)
    if opts.push_to_hub and not settings["HF_TOKEN"]:
        raise ValueError("HF_TOKEN: required for --push-to-hub (a token with write access)")
    if target.lora_name and store is None:
        from ghibli_anim.runtime.store import open_store

        store = open_store(settings)  # before training: a bad store config fails now

    ds = dataset_mod.load_image_dataset(
        opts.dataset, Path(settings["ANIM_CACHE_DIR"]).expanduser() / "datasets", quiet=not progress
    )
    if ds.num_rows == 0:
        raise ValueError(f"--dataset: {opts.dataset} has no rows")
    image_column, caption_column = dataset_columns(ds, opts.image_column, opts.caption_column)
    opts = replace(opts, image_column=image_column, caption_column=caption_column)
    start_step = 0
    if checkpoint is not None:
        opts, start_step = _checked_resume(opts, checkpoint)
        echo(f"resuming from {checkpoint} at step {start_step}")
    else:
        if opts.resume == "latest":
            echo(f"no checkpoint in {work_dir}: starting a new run")
        stale = list_checkpoints(work_dir)
        if stale:
            raise ValueError(
                f"--work-dir: {work_dir} holds checkpoints of an earlier run "
                f"({stale[-1].name}); pass --resume latest to continue it, or remove them"
            )
        if opts.seed is None:
            opts = replace(opts, seed=secrets.randbelow(2**32))
    seed = int(opts.seed)  # type: ignore[arg-type]

    accelerator = _accelerator(opts.mixed_precision, settings)
    logs.quiet_ml_libraries()
    run = _Run(opts, prof, settings, accelerator, ds, seed, work_dir, echo)
    try:
        if checkpoint is not None:
            accelerator.load_state(str(checkpoint))
        result = run.loop(start_step, progress)
        final_dir = target.folder if target.folder is not None else work_dir / "final"
        weights, card = run.save_final(final_dir, trigger, result.losses, target)
    finally:
        run.release()
    result.weights, result.model_card = weights, card
    result.target = target.description
    if target.lora_name:
        result.store_keys = _upload_to_store(store, target.lora_name, weights, card)
        echo(f"LoRA written to the store: {result.store_keys[0]}")
    else:
        echo(f"LoRA written to {weights}")
    if opts.push_to_hub:
        result.pushed_to = _push_to_hub(final_dir, opts.push_to_hub, settings)
        echo(f"LoRA pushed to {result.pushed_to}")
    result.elapsed_s = time.perf_counter() - started
    return result


def _upload_to_store(store: Any, name: str, weights: Path, card: Path) -> list[str]:
    weights_key = keys.lora_key(name)
    card_key = lora_readme_key(name)
    # Card first: a reader that finds the weights finds their card too.
    store.put(card_key, card.read_bytes(), "text/markdown; charset=utf-8")
    store.put(weights_key, weights.read_bytes(), "application/octet-stream")
    return [weights_key, card_key]


def _push_to_hub(folder: Path, repo: str, settings: Settings) -> str:
    from huggingface_hub import HfApi

    api = HfApi(token=settings["HF_TOKEN"])
    api.create_repo(repo, repo_type="model", exist_ok=True)
    api.upload_folder(
        repo_id=repo,
        folder_path=str(folder),
        allow_patterns=[WEIGHT_NAME, MODEL_CARD],
        commit_message="LoRA trained with ghibli-anim train-lora",
    )
    return f"https://huggingface.co/{repo}"


class _Run:
    """The models, optimizer and data of one run (split out of ``train_lora`` to stay readable)."""

    def __init__(
        self,
        opts: TrainOptions,
        prof: Any,
        settings: Settings,
        accelerator: Any,
        ds: Any,
        seed: int,
        work_dir: Path,
        echo: Callable[[str], None],
    ) -> None:
        import diffusers
        import torch
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import cast_training_params
        from peft import LoraConfig
        from transformers import CLIPTextModel

        self.opts, self.prof, self.settings = opts, prof, settings
        self.accelerator, self.ds, self.seed = accelerator, ds, seed
        self.work_dir, self.echo = work_dir, echo
        self.device = accelerator.device
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
            opts.mixed_precision, torch.float32
        )
        self.checkpoints: list[Path] = []
        self.validation_images: list[Path] = []
        self._perms: dict[int, list[int]] = {}

        base = model_refs.locate(prof.base_model, settings, field="profile.base_model")
        self.base = base
        try:
            scheduler_config = DDPMScheduler.load_config(base, subfolder="scheduler")
            self.noise_scheduler = DDPMScheduler.from_config(scheduler_config)
            inference_class = getattr(
                diffusers, scheduler_config.get("_class_name", ""), diffusers.PNDMScheduler
            )
            self.inference_scheduler = (inference_class, scheduler_config)
            self.tokenizer = tokens.load_tokenizer(prof, settings)
            self.text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder")
            self.vae = AutoencoderKL.from_pretrained(base, subfolder="vae")
            unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
        except OSError as exc:
            raise OSError(f"profile.base_model: cannot load {prof.base_model!r} ({exc})") from exc
        if self.noise_scheduler.config.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(
                f"profile.base_model: prediction type "
                f"{self.noise_scheduler.config.prediction_type!r} is not supported"
            )
        for frozen in (self.vae, self.text_encoder, unet):
            frozen.requires_grad_(False)
        # The LoRA's initial values come from the seed (made on the CPU, in float32).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "lora-init"))
            unet.add_adapter(
                LoraConfig(
                    r=opts.rank,
                    lora_alpha=opts.rank,
                    init_lora_weights="gaussian",
                    target_modules=list(TARGET_MODULES),
                )
            )
        self.vae.to(self.device, dtype=self.weight_dtype)
        self.text_encoder.to(self.device, dtype=self.weight_dtype)
        unet.to(self.device, dtype=self.weight_dtype)
        if self.weight_dtype != torch.float32:
            cast_training_params(unet, dtype=torch.float32)  # the LoRA trains in float32
        if opts.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        self.lora_params = [p for p in unet.parameters() if p.requires_grad]
        if not self.lora_params:
            raise ValueError("profile.base_model: its UNet has no to_q/to_k/to_v/to_out.0 layer")
        optimizer = torch.optim.AdamW(
            self.lora_params, lr=opts.lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8
        )
        lr_scheduler = get_scheduler(
            opts.lr_scheduler,
            optimizer=optimizer,
            num_warmup_steps=opts.lr_warmup_steps,
            num_training_steps=opts.steps,
        )
        self.unet, self.optimizer, self.lr_scheduler = accelerator.prepare(
            unet, optimizer, lr_scheduler
        )
        accelerator.register_save_state_pre_hook(self._save_hook)
        accelerator.register_load_state_pre_hook(self._load_hook)
        first = ds.select_columns([opts.caption_column])[0][opts.caption_column]
        if isinstance(first, list):
            first = first[0] if first else ""
        self.validation_prompt = opts.validation_prompt or str(first) or "ghibli style"

    # -- checkpoint hooks: the LoRA only, never the whole UNet ----------------

    def _lora_state(self) -> dict[str, Any]:
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        unet = self.accelerator.unwrap_model(self.unet)
        return convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))

    def _save_hook(self, models: list[Any], weights: list[Any], output_dir: str) -> None:
        from diffusers import StableDiffusionPipeline

        if not self.accelerator.is_main_process:
            return
        for _ in models:
            weights.pop()  # accelerate must not write the frozen UNet
        StableDiffusionPipeline.save_lora_weights(
            output_dir,
            unet_lora_layers=self._lora_state(),
            weight_name=WEIGHT_NAME,
            safe_serialization=True,
        )

    def _load_hook(self, models: list[Any], input_dir: str) -> None:
        import torch
        from diffusers import StableDiffusionPipeline
        from diffusers.training_utils import cast_training_params
        from diffusers.utils import convert_unet_state_dict_to_peft
        from peft.utils import set_peft_model_state_dict

        while models:
            models.pop()  # loaded below, LoRA only
        state = StableDiffusionPipeline.lora_state_dict(input_dir, weight_name=WEIGHT_NAME)[0]
        unet_state = {k.removeprefix("unet."): v for k, v in state.items() if k.startswith("unet.")}
        unet = self.accelerator.unwrap_model(self.unet)
        result = set_peft_model_state_dict(
            unet, convert_unet_state_dict_to_peft(unet_state), adapter_name="default"
        )
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise ValueError(f"--resume: checkpoint has keys this LoRA lacks: {unexpected[:3]}")
        if self.weight_dtype != torch.float32:
            cast_training_params(unet, dtype=torch.float32)

    # -- data ---------------------------------------------------------------

    def _index(self, position: int) -> int:
        """The dataset row at ``position`` of the run's endless, epoch-shuffled stream."""
        import torch

        n = self.ds.num_rows
        epoch, offset = divmod(position, n)
        if epoch not in self._perms:
            gen = torch.Generator().manual_seed(derive_seed(self.seed, "epoch", epoch))
            self._perms = {epoch: torch.randperm(n, generator=gen).tolist()}
        return self._perms[epoch][offset]

    def batch(self, step: int, gen: Any) -> tuple[Any, Any]:
        """Pixel values in [-1, 1] and token ids of step ``step``'s batch."""
        import numpy as np
        import torch

        size = self.opts.batch_size
        rows = self.ds[[self._index(step * size + j) for j in range(size)]]
        pixels, texts = [], []
        for image, caption in zip(
            rows[self.opts.image_column], rows[self.opts.caption_column], strict=True
        ):
            square = dataset_mod.square_crop(dataset_mod.to_rgb(image), self.opts.resolution)
            array = torch.from_numpy(np.asarray(square, dtype=np.float32) / 127.5 - 1.0)
            array = array.permute(2, 0, 1)
            if self.opts.random_flip and torch.rand(1, generator=gen).item() < 0.5:
                array = array.flip(-1)
            pixels.append(array)
            if isinstance(caption, list):
                caption = (
                    caption[torch.randint(len(caption), (1,), generator=gen).item()]
                    if caption
                    else ""
                )
            texts.append(caption or "")
        ids = self.tokenizer(
            texts,
            max_length=self.tokenizer.model_max_length,
            padding="max_length",
            truncation=True,
            return_tensors="pt",
        ).input_ids
        return torch.stack(pixels), ids

    # -- the loop -------------------------------------------------------------

    def loss(self, pixels: Any, ids: Any, gen: Any) -> Any:
        """The (optionally Min-SNR weighted) denoising loss of one batch."""
        import torch
        import torch.nn.functional as F
        from diffusers.training_utils import compute_snr
        from diffusers.utils.torch_utils import randn_tensor

        device, dtype = self.device, self.weight_dtype
        with torch.no_grad():
            posterior = self.vae.encode(pixels.to(device, dtype)).latent_dist
            latents = posterior.sample(generator=gen)
            shift = getattr(self.vae.config, "shift_factor", None) or 0.0
            latents = (latents - shift) * self.vae.config.scaling_factor
            hidden = self.text_encoder(ids.to(device), return_dict=False)[0]
        noise = randn_tensor(latents.shape, generator=gen, device=device, dtype=latents.dtype)
        if self.opts.noise_offset:
            offset = randn_tensor(
                (latents.shape[0], latents.shape[1], 1, 1),
                generator=gen,
                device=device,
                dtype=latents.dtype,
            )
            noise = noise + self.opts.noise_offset * offset
        steps = self.noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (latents.shape[0],), generator=gen).to(device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        if self.noise_scheduler.config.prediction_type == "epsilon":
            target = noise
        else:
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        pred = self.unet(noisy, timesteps, hidden, return_dict=False)[0]
        if self.opts.snr_gamma is None:
            return F.mse_loss(pred.float(), target.float(), reduction="mean")
        # Min-SNR weighting (Hang et al., 2023), as diffusers' example computes it.
        snr = compute_snr(self.noise_scheduler, timesteps)
        clipped = torch.minimum(snr, torch.full_like(snr, self.opts.snr_gamma))
        if self.noise_scheduler.config.prediction_type == "epsilon":
            weights = clipped / snr
        else:
            weights = clipped / (snr + 1)
        per_item = F.mse_loss(pred.float(), target.float(), reduction="none")
        per_item = per_item.mean(dim=list(range(1, per_item.ndim))) * weights
        return per_item.mean()

    def loop(self, start_step: int, progress: bool) -> TrainResult:
        import torch

        opts = self.opts
        result = TrainResult(
            target="",
            weights=Path(),
            model_card=Path(),
            seed=self.seed,
            start_step=start_step,
            steps=opts.steps,
        )
        bar = _Progress(opts.steps, start_step, progress, self.echo)
        self.unet.train()
        try:
            for step in range(start_step, opts.steps):
                gen = torch.Generator().manual_seed(derive_seed(self.seed, "step", step))
                pixels, ids = self.batch(step, gen)
                loss = self.loss(pixels, ids, gen)
                self.accelerator.backward(loss)
                if self.accelerator.sync_gradients:
                    self.accelerator.clip_grad_norm_(self.lora_params, opts.max_grad_norm)
                self.optimizer.step()
                self.lr_scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                value = float(loss.detach().item())
                if not math.isfinite(value):
                    raise FloatingPointError(
                        f"training loss is {value} at step {step + 1}: lower --lr, or use "
                        "--mixed-precision bf16/no"
                    )
                result.losses.append(value)
                done = step + 1
                bar.update(done, value, self.lr_scheduler.get_last_lr()[0])
                if opts.checkpoint_every and (
                    done % opts.checkpoint_every == 0 or done == opts.steps
                ):
                    self.checkpoint(done)
        finally:
            bar.close()
        result.checkpoints = list(self.checkpoints)
        result.validation_images = list(self.validation_images)
        return result

    def checkpoint(self, step: int) -> Path:
        """checkpoint-STEP/: accelerate's state (LoRA, optimizer, scheduler) + validation."""
        final = self.work_dir / f"checkpoint-{step}"
        partial = self.work_dir / f".checkpoint-{step}.tmp"
        shutil.rmtree(partial, ignore_errors=True)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.accelerator.save_state(str(partial))
        options = asdict(self.opts)
        state = {"step": step, "options": {k: options[k] for k in _RESULT_FIELDS}}
        (partial / STATE_FILE).write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
        images = self.validate(partial)
        shutil.rmtree(final, ignore_errors=True)
        os.rename(partial, final)  # "latest" never sees half a checkpoint
        self.checkpoints.append(final)
        self.validation_images += [final / p.name for p in images]
        self.echo(f"checkpoint {final}" + (f" ({len(images)} validation images)" if images else ""))
        return final

    def validate(self, folder: Path) -> list[Path]:
        """Validation images of the LoRA as it is now, written into ``folder``."""
        import torch
        from diffusers import StableDiffusionPipeline

        count = self.opts.validation_images
        if not count:
            return []
        unet = self.accelerator.unwrap_model(self.unet)
        was_training = unet.training
        unet.eval()
        scheduler_class, config = self.inference_scheduler
        pipe = StableDiffusionPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=unet,
            scheduler=scheduler_class.from_config(config),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        autocast = (
            torch.autocast(self.device.type, dtype=self.weight_dtype)
            if self.weight_dtype != torch.float32
            else contextlib.nullcontext()
        )
        paths = []
        try:
            for i in range(count):
                gen = torch.Generator().manual_seed(derive_seed(self.seed, "validation", i))
                with torch.inference_mode(), autocast:
                    image = pipe(
                        self.validation_prompt,
                        num_inference_steps=self.prof.steps,
                        guidance_scale=self.prof.guidance,
                        height=self.opts.resolution,
                        width=self.opts.resolution,
                        generator=gen,
                    ).images[0]
                path = folder / f"validation-{i}.png"
                image.save(path)
                paths.append(path)
        finally:
            unet.train(was_training)
        return paths

    def save_final(
        self, folder: Path, trigger: str, losses: list[float], target: Target
    ) -> tuple[Path, Path]:
        from diffusers import StableDiffusionPipeline

        folder.mkdir(parents=True, exist_ok=True)
        StableDiffusionPipeline.save_lora_weights(
            str(folder),
            unet_lora_layers=self._lora_state(),
            weight_name=WEIGHT_NAME,
            safe_serialization=True,
        )
        card = folder / MODEL_CARD
        card.write_text(self.model_card(trigger, losses, target), encoding="utf-8")
        return folder / WEIGHT_NAME, card

    def model_card(self, trigger: str, losses: list[float], target: Target) -> str:
        opts, prof = self.opts, self.prof
        base = prof.base_model
        is_hub = model_refs.check_ref(base, self.settings, "profile.base_model") == "hub"
        tail = losses[-10:]
        loss = f"{sum(tail) / len(tail):.4f} (mean of the last {len(tail)} steps)" if tail else "-"
        front = ["---"]
        if is_hub:
            front.append(f"base_model: {base}")
        front += [
            "library_name: diffusers",
            "tags:",
            "- stable-diffusion",
            "- text-to-image",
            "- diffusers",
            "- lora",
            "- ghibli-anim",
        ]
        if trigger:
            front.append(f"instance_prompt: {json.dumps(trigger)}")
        front.append("---")
        rows = [
            ("base model", base),
            ("trigger phrase", trigger or "(none)"),
            ("dataset", f"{opts.dataset} ({self.ds.num_rows} images)"),
            ("steps", f"{opts.steps} (batch size {opts.batch_size})"),
            ("rank", f"{opts.rank} (alpha {opts.rank}) on {', '.join(TARGET_MODULES)}"),
            ("learning rate", f"{opts.lr:g} ({opts.lr_scheduler}, warmup {opts.lr_warmup_steps})"),
            ("resolution", f"{opts.resolution}x{opts.resolution}"),
            ("mixed precision", opts.mixed_precision),
            ("Min-SNR gamma", "off" if opts.snr_gamma is None else f"{opts.snr_gamma:g}"),
            ("noise offset", f"{opts.noise_offset:g}"),
            ("seed", str(self.seed)),
            ("final training loss", loss),
        ]
        table = ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
        prompt = f"{trigger}, a quiet village at dusk" if trigger else "a quiet village at dusk"
        # A profile names a store LoRA by its store:// reference, a local one by its file.
        if target.lora_name:
            source = target.description
        else:
            source = str(target.folder.resolve() / WEIGHT_NAME) if target.folder else WEIGHT_NAME
        usage = [
            "## Use",
            "",
            "In ghibli-anim, name it as a LoRA of a profile, "
            f"`{{ source = {json.dumps(source)}, scale = 0.8 }}`, or load it in diffusers:",
            "",
            "```python",
            f'pipe.load_lora_weights(FOLDER_OR_REPO, weight_name="{WEIGHT_NAME}")',
            f"image = pipe({json.dumps(prompt)}).images[0]",
            "```",
        ]
        title = f"# LoRA for {base}"
        intro = (
            "Trained with `ghibli-anim train-lora` (LoRA on the UNet's attention projections; "
            "VAE and text encoder frozen)."
        )
        return "\n".join([*front, "", title, "", intro, "", *table, "", *usage, ""])

    def release(self) -> None:
        """Free the models (a long-lived process may train again)."""
        import torch

        self.accelerator.free_memory()
        for name in ("unet", "vae", "text_encoder", "optimizer", "lr_scheduler"):
            if hasattr(self, name):
                delattr(self, name)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
