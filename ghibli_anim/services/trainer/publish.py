"""Publishing a trained LoRA: its model card, the store upload and the hub push.

The weights file is ``pytorch_lora_weights.safetensors`` in the diffusers
format, with a model card ``README.md`` beside it, in a folder or in the store
at ``loras/NAME/`` (``store://loras/NAME``, which renderers load); a hub model
repository receives those two files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ghibli_anim.contracts import keys, model_refs
from ghibli_anim.contracts.config import Settings
from ghibli_anim.services.trainer.options import TARGET_MODULES, Target, TrainOptions

WEIGHT_NAME = keys.LORA_WEIGHT_NAME
MODEL_CARD = "README.md"


def lora_readme_key(name: str) -> str:
    """The model card's key beside the weights."""
    return keys.lora_key(name).rsplit("/", 1)[0] + "/" + MODEL_CARD


def model_card(
    opts: TrainOptions,
    prof: Any,
    settings: Settings,
    *,
    rows: int,
    seed: int,
    trigger: str,
    losses: list[float],
    target: Target,
) -> str:
    """The ``README.md`` of a LoRA trained on ``rows`` images as ``opts`` say."""
    base = prof.base_model
    is_hub = model_refs.check_ref(base, settings, "profile.base_model") == "hub"
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
    table_rows = [
        ("base model", base),
        ("trigger phrase", trigger or "(none)"),
        ("dataset", f"{opts.dataset} ({rows} images)"),
        ("steps", f"{opts.steps} (batch size {opts.batch_size})"),
        ("rank", f"{opts.rank} (alpha {opts.rank}) on {', '.join(TARGET_MODULES)}"),
        ("learning rate", f"{opts.lr:g} ({opts.lr_scheduler}, warmup {opts.lr_warmup_steps})"),
        ("resolution", f"{opts.resolution}x{opts.resolution}"),
        ("mixed precision", opts.mixed_precision),
        ("Min-SNR gamma", "off" if opts.snr_gamma is None else f"{opts.snr_gamma:g}"),
        ("noise offset", f"{opts.noise_offset:g}"),
        ("seed", str(seed)),
        ("final training loss", loss),
    ]
    table = ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in table_rows)]
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


def upload_to_store(store: Any, name: str, weights: Path, card: Path) -> list[str]:
    """Put the weights and their card under ``loras/NAME/``; return their keys."""
    weights_key = keys.lora_key(name)
    card_key = lora_readme_key(name)
    # Card first: a reader that finds the weights finds their card too.
    store.put(card_key, card.read_bytes(), "text/markdown; charset=utf-8")
    store.put(weights_key, weights.read_bytes(), "application/octet-stream")
    return [weights_key, card_key]


def push_to_hub(folder: Path, repo: str, settings: Settings) -> str:
    """Upload the weights and card in ``folder`` to hub model ``repo``; return its URL."""
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
