"""`ghibli-anim models tiny DIR` and `ghibli-anim models fetch PROFILE [--depth] [--all]`.

``tiny`` writes the random-weight models of the SD-1.5 shape (same bytes every time) with
the development tool ``ghibli_anim.devtools.tiny_models``; ``fetch`` downloads into the
Hugging Face cache the hub files a profile's renders read, and nothing else: the folders
the base model's ``model_index.json`` names but the safety checker, their safetensors
weights only, the LoRA file the renderer picks. The ControlNet and the depth model come
with ``--depth``; ``--all`` adds them and what ``--preset fast``, ``--tiny-vae`` and
``dataset build --caption blip`` load. The planned size is printed first, from the hub's
file listing; huggingface_hub shows the download's progress.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from ghibli_anim.contracts import config, model_refs
from ghibli_anim.contracts.model_refs import HubFile

# The renderer's from_pretrained passes no variant, so it reads the plain (fp32)
# safetensors in every dtype; the fp16 files pay off only once it asks for them.
PIPELINE_VARIANT: str | None = None


def model_fields(
    profile, *, depth: bool = False, everything: bool = False
) -> list[tuple[str, str]]:
    """(field, model reference) of every model a render with ``profile`` reads: the base
    model, tokenizer, tiny autoencoder, LoRAs (and a single-file model's configs); the
    ControlNet and depth model with ``depth``; with ``everything`` also what --preset fast,
    --tiny-vae and `dataset build --caption blip` add. Unset references are left out."""
    from ghibli_anim.contracts import profiles

    refs = [
        ("base_model", profile.base_model),
        ("tokenizer", profile.tokenizer),
        ("tiny_autoencoder", profile.tiny_autoencoder),
        *((f"loras[{i}]", lora.source) for i, lora in enumerate(profile.loras)),
    ]
    if model_refs.is_single_file(profile.base_model):
        refs.append(("config", profiles.single_file_config(profile)))
    if depth or everything:
        refs += [("controlnet", profile.controlnet), ("depth_model", profile.depth_model)]
    if everything:
        refs += [
            ("lcm_lora", profiles.profile_option(profile.name, "lcm_lora")),
            ("taesd", profiles.profile_option(profile.name, "taesd")),
            ("captioner", profiles.load_captioner(profile.name)),
        ]
    return [(field, ref) for field, ref in refs if ref]


def _hub_refs(profile, *, depth: bool = False, everything: bool = False) -> list[tuple[str, str]]:
    """(field, hub id) of every model of a profile that a render reads from the hub."""
    return [
        (field, ref)
        for field, ref in model_fields(profile, depth=depth, everything=everything)
        if model_refs.check_ref(ref, None, field, allow_store=True) == "hub"
    ]


@dataclass(frozen=True)
class Planned:
    """The files one model reference reads from its hub repository."""

    field: str
    ref: str
    repo: str
    files: tuple[HubFile, ...]


def _listing(repo: str) -> list[HubFile]:
    """The repository's files with their sizes: from the hub, else (offline) from the
    listing a previous download cached in HF_HOME."""
    from huggingface_hub import HfApi, RepoFile, get_cached_repo_tree

    try:
        entries = list(HfApi().list_repo_tree(repo, recursive=True))
    except Exception as exc:  # offline, missing repo, gated model
        try:
            entries = get_cached_repo_tree(repo)
        except Exception:
            raise exc from None
    return [HubFile(e.path, e.size) for e in entries if isinstance(e, RepoFile)]


def _model_index(repo: str) -> dict:
    from huggingface_hub import hf_hub_download

    return json.loads(Path(hf_hub_download(repo, "model_index.json")).read_text())


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def plan(refs: list[tuple[str, str]], weight_names: dict[str, str]) -> list[Planned]:
    """The files each (field, hub id) reads; ``weight_names`` maps a LoRA field to its
    weight_name. Raises ValueError when a repository lacks them and OSError when its
    files cannot be listed, both naming the field."""
    listings: dict[str, list[HubFile]] = {}
    out = []
    for field, ref in refs:
        owner, name, *sub = ref.split("/")
        repo, folder = f"{owner}/{name}", "/".join(sub)
        where = f"{field} ({ref})"
        pipeline = field == "base_model" and not folder
        try:
            if repo not in listings:
                listings[repo] = _listing(repo)
            index = _model_index(repo) if pipeline else {}
        except Exception as exc:  # offline, missing repo, gated model: all say why
            raise OSError(
                f"{where}: cannot list its files on the hub ({_first_line(exc)})"
            ) from exc
        listing = listings[repo]
        if folder:  # model_refs.locate downloads a folder inside a repository whole
            files = model_refs.subfolder_files(listing, folder, where=where)
        elif pipeline:
            files = model_refs.pipeline_files(listing, index, variant=PIPELINE_VARIANT, where=where)
        elif field == "config":
            files = model_refs.single_file_config_files(listing)
        elif field.startswith("loras[") or field == "lcm_lora":
            files = [model_refs.lora_file(listing, weight_names.get(field, ""), where=where)]
        else:
            files = model_refs.folder_files(listing, weights=field != "tokenizer", where=where)
        out.append(Planned(field, ref, repo, tuple(files)))
    return out


def human(size: int) -> str:
    """Bytes in the hub's decimal units: 999 B, 1.5 kB, 4.27 GB."""
    value, unit = float(size), "B"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            break
        value /= 1000
    return f"{size} B" if unit == "B" else f"{value:.2f} {unit}"


def _is_cached(repo: str, path: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo, path), str)


def fetch(profile_name: str, *, depth: bool = False, everything: bool = False) -> int:
    """Download the hub files a profile's renders read into the Hugging Face cache (HF_HOME)."""
    from ghibli_anim.contracts import profiles

    profile = profiles.load_profile(profile_name, config.load("client"))
    if not _hub_refs(profile, depth=depth, everything=everything):
        print(f"profile {profile.name}: no hub models to fetch (local or tiny models only)")
        return 0
    return fetch_profile(profile, depth=depth, everything=everything)


def fetch_profile(profile, *, depth: bool = False, everything: bool = False) -> int:
    """:func:`fetch` for a loaded profile (a request's --base/--lora overrides applied)."""
    from huggingface_hub import snapshot_download

    refs = _hub_refs(profile, depth=depth, everything=everything)
    if not refs:
        return 0
    weight_names = {f"loras[{i}]": lora.weight_name for i, lora in enumerate(profile.loras)}
    try:
        # An OSError (offline, gated, no such repository) goes up with the hub's error as
        # its cause: cli/errors.py says what to do about each.
        planned = plan(refs, weight_names)
    except ValueError as exc:
        print(f"error: profile {profile.name}: {exc}", file=sys.stderr)
        return 1
    by_repo: dict[str, dict[str, HubFile]] = {}
    for p in planned:
        by_repo.setdefault(p.repo, {}).update({f.path: f for f in p.files})
    every = [(repo, f) for repo, files in by_repo.items() for f in files.values()]
    total = model_refs.total_size(f for _, f in every)
    missing = model_refs.total_size(f for repo, f in every if not _is_cached(repo, f.path))
    if everything:
        hint = ""
    elif depth:
        hint = " (every model the profile names: --all)"
    else:
        hint = " (the ControlNet and depth model: --depth; every model the profile names: --all)"
    print(
        f"profile {profile.name}: {human(total)} in {len(every)} files, "
        f"{human(missing)} ({missing} bytes) to download{hint}",
        file=sys.stderr,
    )
    for p in planned:
        size = human(model_refs.total_size(p.files))
        print(f"  {p.field}: {p.ref}: {len(p.files)} files, {size}", file=sys.stderr)
    for repo, files in by_repo.items():
        try:
            # Exact names: a name with * ? [ stays literal.
            path = snapshot_download(repo, allow_patterns=[glob.escape(n) for n in sorted(files)])
        except OSError as exc:  # the hub's errors are OSErrors
            raise OSError(f"cannot download {repo!r} ({_first_line(exc)})") from exc
        print(f"  {repo} -> {path}", file=sys.stderr)
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
    p = models_sub.add_parser(
        "fetch", help="download the hub files a profile's renders read into HF_HOME"
    )
    p.add_argument("profile")
    p.add_argument("--depth", action="store_true", help="also the ControlNet and depth model")
    p.add_argument(
        "--all",
        dest="everything",
        action="store_true",
        help="every model the profile names (adds --depth's, the LCM-LoRA, TAESD, the captioner)",
    )


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
    return fetch(args.profile, depth=args.depth, everything=args.everything)
