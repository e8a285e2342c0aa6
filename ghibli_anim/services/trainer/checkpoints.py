"""Checkpoints of a LoRA training run: finding and listing them, their state file, resuming.

A checkpoint is a folder ``checkpoint-N/`` under the run's work folder. It holds
accelerate's state (the LoRA weights, the optimizer and learning-rate scheduler
states, written by the run's save hook) and ``train_state.json``: the step and
the options that shape the result (``RESULT_FIELDS``). ``resume="latest"``
continues from the newest complete one at step N, and the run ends with the same
weights as an uninterrupted run of the same options (on the same device and
library versions). Options that shape the result must match the checkpoint's;
``steps``, checkpointing and validation may change.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, replace
from pathlib import Path

from ghibli_anim.services.trainer.options import TrainOptions

STATE_FILE = "train_state.json"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")

# Options that shape the weights: a resumed run must use the checkpoint's values.
RESULT_FIELDS = (
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


def write_state(folder: Path, step: int, opts: TrainOptions) -> Path:
    """Write ``folder``'s state file: the step and the options that shape the result."""
    options = asdict(opts)
    state = {"step": step, "options": {k: options[k] for k in RESULT_FIELDS}}
    path = folder / STATE_FILE
    path.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    return path


def checked_resume(opts: TrainOptions, checkpoint: Path) -> tuple[TrainOptions, int]:
    """Options of a resumed run (an unset seed taken from the checkpoint) and its step.

    Raises ValueError naming the flag whose value differs from the checkpoint's.
    """
    try:
        state = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
        saved, step = state["options"], int(state["step"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"--resume: unreadable {checkpoint / STATE_FILE} ({exc})") from None
    if opts.seed is None:
        opts = replace(opts, seed=saved.get("seed"))
    for name in RESULT_FIELDS:
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
