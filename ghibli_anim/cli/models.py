"""`ghibli-anim models tiny DIR` and `ghibli-anim models fetch PROFILE`.

``tiny`` writes the random-weight models of the SD-1.5 shape (same bytes every time) with
the development tool ``ghibli_anim.devtools.tiny_models``; ``fetch`` downloads every hub
model a profile names into the Hugging Face cache, only the files ``from_pretrained``
loads.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ghibli_anim.contracts import config, model_refs


def _hub_refs(profile) -> list[tuple[str, str]]:
    """(field, hub id) of every model a profile loads from the hub."""
    from ghibli_anim.contracts import profiles

    refs = [
        ("base_model", profile.base_model),
        ("tokenizer", profile.tokenizer),
        ("controlnet", profile.controlnet),
        ("depth_model", profile.depth_model),
        ("tiny_autoencoder", profile.tiny_autoencoder),
        *((f"loras[{i}]", lora.source) for i, lora in enumerate(profile.loras)),
        # What --preset fast and --tiny-vae add, so they work offline afterwards too.
        ("lcm_lora", profiles.profile_option(profile.name, "lcm_lora")),
        ("taesd", profiles.profile_option(profile.name, "taesd")),
    ]
    if model_refs.is_single_file(profile.base_model):
        refs.append(("config", profiles.single_file_config(profile)))
    out = []
    for field, ref in refs:
        if ref and model_refs.check_ref(ref, None, field, allow_store=True) == "hub":
            out.append((field, ref))
    return out


_OTHER_FORMATS = [
    "*.ckpt",
    "*.bin",
    "*.msgpack",
    "*.h5",
    "*.onnx",
    "*.onnx_data",
    "*.pb",
    "*non_ema*",
    "*.fp16.*",
]


def fetch(profile_name: str) -> int:
    """Download every hub model of a profile into the Hugging Face cache (HF_HOME)."""
    from huggingface_hub import snapshot_download

    from ghibli_anim.contracts import profiles

    settings = config.load("client")
    profile = profiles.load_profile(profile_name, settings)
    refs = _hub_refs(profile)
    if not refs:
        print(f"profile {profile.name}: no hub models to fetch (local or tiny models only)")
        return 0
    seen: set[str] = set()
    for field, ref in refs:
        owner, name, *sub = ref.split("/")
        repo = f"{owner}/{name}"
        patterns = [f"{'/'.join(sub)}/*"] if sub else None
        if field == "config":
            # from_single_file reads configs, scheduler and tokenizer only, no weights.
            patterns = ["*.json", "*/*.json", "tokenizer/*"]
        if (repo, str(patterns)) in seen:
            continue
        seen.add((repo, str(patterns)))
        print(f"fetching {field}: {ref}", file=sys.stderr)
        # Model repos also hold checkpoints in other formats (SD-1.5 has several GB of
        # .ckpt and non-EMA weights): fetch only what from_pretrained loads.
        ignore = _OTHER_FORMATS if not field.startswith("loras") else ["*.ckpt"]
        try:
            path = snapshot_download(repo, allow_patterns=patterns, ignore_patterns=ignore)
        except Exception as exc:
            print(
                f"error: {field}: cannot download {ref!r} ({type(exc).__name__}: {exc}); "
                "check the network, HF_TOKEN for gated models, and HF_HOME",
                file=sys.stderr,
            )
            return 1
        print(f"  -> {path}", file=sys.stderr)
    return 0


COMMANDS = ("models",)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="model folders")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    p = models_sub.add_parser("tiny", help="write the tiny random-weight models (deterministic)")
    p.add_argument("dir", type=Path)
    p.add_argument(
        "--single-file",
        action="store_true",
        help="also write DIR/pipeline.safetensors: the pipeline in the original (LDM) layout",
    )
    p = models_sub.add_parser("fetch", help="download a profile's models into HF_HOME")
    p.add_argument("profile")


def run(args: argparse.Namespace) -> int:
    if args.models_command == "tiny":
        from ghibli_anim.devtools.tiny_models import write_tiny_models

        out = write_tiny_models(args.dir)
        print(out)
        if getattr(args, "single_file", False):
            from ghibli_anim.devtools.tiny_models import SINGLE_FILE_NAME, write_single_file

            # The same pipeline as one checkpoint in the original (LDM) key layout; a
            # profile loads it with base_model = this file, config = the pipeline folder.
            print(write_single_file(out / "pipeline", out / SINGLE_FILE_NAME))
        return 0
    return fetch(args.profile)
