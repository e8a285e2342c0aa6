"""LoRA training of the UNet on a captioned image dataset (`ghibli-anim train-lora`).

``train_lora`` runs one training from its options to its published result:

1. the options are checked and completed from the profile (``options``), and the
   run resumes from a checkpoint when asked (``checkpoints``);
2. accelerate is set up for the device and mixed precision (``fp16`` needs CUDA;
   ``bf16`` runs on CUDA and CPUs);
3. the run trains, writing checkpoints with validation images (``run``), with a
   progress bar on a terminal or log lines elsewhere;
4. the LoRA and its model card are written to a folder, or to the store at
   ``loras/NAME/``, and optionally pushed to a hub model repository (``publish``).
"""

from __future__ import annotations

import math
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ghibli_anim.contracts import profiles
from ghibli_anim.contracts.config import Settings
from ghibli_anim.runtime import devices
from ghibli_anim.services.trainer import publish
from ghibli_anim.services.trainer.checkpoints import (
    checked_resume,
    find_checkpoint,
    list_checkpoints,
)
from ghibli_anim.services.trainer.dataset import load_image_dataset
from ghibli_anim.services.trainer.options import (
    RESOLUTION,
    TrainOptions,
    dataset_columns,
    parse_output,
)
from ghibli_anim.services.trainer.run import TrainingRun, TrainResult


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
        from ghibli_anim.runtime.store.open import open_store

        store = open_store(settings)  # before training: a bad store config fails now

    ds = load_image_dataset(
        opts.dataset, Path(settings["ANIM_CACHE_DIR"]).expanduser() / "datasets", quiet=not progress
    )
    if ds.num_rows == 0:
        raise ValueError(f"--dataset: {opts.dataset} has no rows")
    image_column, caption_column = dataset_columns(ds, opts.image_column, opts.caption_column)
    opts = replace(opts, image_column=image_column, caption_column=caption_column)
    start_step = 0
    if checkpoint is not None:
        opts, start_step = checked_resume(opts, checkpoint)
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
    run = TrainingRun(opts, prof, settings, accelerator, ds, seed, work_dir, echo)
    try:
        if checkpoint is not None:
            accelerator.load_state(str(checkpoint))
        bar = _Progress(opts.steps, start_step, progress, echo)
        try:
            result = run.loop(start_step, bar.update)
        finally:
            bar.close()
        final_dir = target.folder if target.folder is not None else work_dir / "final"
        weights, card = run.save_final(final_dir, trigger, result.losses, target)
    finally:
        run.release()
    result.weights, result.model_card = weights, card
    result.target = target.description
    if target.lora_name:
        result.store_keys = publish.upload_to_store(store, target.lora_name, weights, card)
        echo(f"LoRA written to the store: {result.store_keys[0]}")
    else:
        echo(f"LoRA written to {weights}")
    if opts.push_to_hub:
        result.pushed_to = publish.push_to_hub(final_dir, opts.push_to_hub, settings)
        echo(f"LoRA pushed to {result.pushed_to}")
    result.elapsed_s = time.perf_counter() - started
    return result


def _accelerator(mixed_precision: str, settings: Settings) -> Any:
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    device = settings["ANIM_DEVICE"]
    devices.pick_device(settings)  # a named device must exist; a GPU torch cannot use is reported
    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if mixed_precision == "fp16" and (cpu or device == "mps"):
        raise ValueError("--mixed-precision: fp16 needs a CUDA device; use bf16 or no here")
    # Each run chooses its own precision (a process may train more than once).
    AcceleratorState._reset_state()
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=device == "cpu")
    if accelerator.num_processes > 1:
        raise ValueError("train-lora runs in one process (one device); launch it without workers")
    return accelerator


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
