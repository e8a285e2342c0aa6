"""What exactly ran: model revisions or file hashes, library versions, the device.

Every frame record carries these (the manifest is the list of FrameSpecs plus what
actually ran: ``contracts.manifest``), so a run can be audited and replayed:

* a hub model: its id and the commit the local Hugging Face cache resolved it to;
* a single file (a checkpoint, a LoRA): its sha256;
* a local folder (also the tiny models): the sha256 over its files' names and hashes.

Hashes are computed once per file version (path, size, modification time) per
process: a real SD-1.5 checkpoint takes seconds to hash, once, beside a load that
takes as long.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import platform
import threading
from pathlib import Path
from typing import Any

import torch

_CHUNK = 1 << 20
_HASHES: dict[tuple[str, int, int], str] = {}
_LOCK = threading.Lock()
# Library versions that change what a frame looks like.
_LIBRARIES = (
    "torch",
    "diffusers",
    "transformers",
    "peft",
    "accelerate",
    "safetensors",
    "numpy",
    "pillow",
)
# Files that matter in a model folder (weights, configs, tokenizer files).
_FOLDER_SUFFIXES = (".safetensors", ".bin", ".json", ".txt", ".model")


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file, cached per (path, size, mtime)."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    with _LOCK:
        if key in _HASHES:
            return _HASHES[key]
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    value = digest.hexdigest()
    with _LOCK:
        _HASHES[key] = value
    return value


def folder_sha256(folder: str | os.PathLike[str]) -> str:
    """sha256 over ``relative/path <sha256>`` lines of a folder's model files, sorted.

    Weight variants that ``from_pretrained`` does not load by default
    (``*.fp16.safetensors``, ``*.non_ema.bin``) and hidden files are left out.
    """
    root = Path(folder).resolve()
    lines = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        variant = "." in path.stem and path.suffix in (".safetensors", ".bin")
        if (
            path.is_file()
            and path.suffix in _FOLDER_SUFFIXES
            and not variant
            and not any(part.startswith(".") for part in Path(relative).parts)
        ):
            lines.append(f"{relative} {file_sha256(path)}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def hub_revision(path: str | os.PathLike[str]) -> str | None:
    """The commit of a file or folder inside the Hugging Face cache (``snapshots/<commit>``)."""
    parts = Path(path).parts
    if "snapshots" in parts:
        i = parts.index("snapshots")
        if i + 1 < len(parts):
            return parts[i + 1]
    return None


def _cached_hub_revision(repo_id: str) -> str | None:
    """The cached commit of a hub repository, without the network."""
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model_index.json", "config.json", "pytorch_lora_weights.safetensors"):
        found = try_to_load_from_cache(repo_id, filename)
        if isinstance(found, str):
            return hub_revision(found)
    return None


def describe_model(ref: str, located: str) -> dict[str, Any]:
    """``{ref, revision | sha256}`` of a model reference and where it was loaded from.

    ``located`` is what ``profiles.locate`` returned: the hub id itself, or a local
    file or folder (possibly inside the Hugging Face cache).
    """
    out: dict[str, Any] = {"ref": ref}
    path = Path(located)
    if path.is_file():
        out["sha256"] = file_sha256(path)
        revision = hub_revision(path)
        if revision:
            out["revision"] = revision
    elif path.is_dir():
        revision = hub_revision(path)
        if revision:
            out["revision"] = revision
        else:
            out["sha256"] = folder_sha256(path)
    else:
        out["revision"] = _cached_hub_revision(located)
    return out


def versions() -> dict[str, str]:
    """Versions of Python, the ML libraries and (with CUDA) the CUDA runtime and cuDNN
    (a fresh copy of what was read once: reading package metadata costs ~15 ms a frame)."""
    return dict(_versions())


@functools.cache
def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    if torch.version.cuda:
        out["cuda"] = torch.version.cuda
    if torch.backends.cudnn.is_available():
        out["cudnn"] = str(torch.backends.cudnn.version())
    return out


def device_name(device: str) -> str:
    """A human name of the device frames ran on (GPU model, or the CPU's architecture)."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    if device == "mps":
        return f"Apple MPS ({platform.machine()})"
    return f"CPU {platform.machine()} ({os.cpu_count()} threads)"
