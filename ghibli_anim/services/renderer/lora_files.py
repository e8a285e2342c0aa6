"""LoRA files: find the weights, tell the format from the keys, load, count what attached.

Three layouts are in use for SD-1.5 LoRAs, and each needs its own loading call:

==============  ====================================================  =========================
format          keys look like                                        loaded with
==============  ====================================================  =========================
``diffusers``   ``unet.down_blocks.1...to_q.lora.down.weight`` or     ``load_lora_weights``
                ``unet....to_q.lora_A.weight`` (diffusers / PEFT)
``kohya``       ``lora_unet_down_blocks_1_..._to_q.lora_down.weight``  ``load_lora_weights``
                (+ ``.alpha``; kohya-ss, A1111, LCM-LoRA)              (converted by diffusers)
``attn_procs``  ``down_blocks.1...attn1.processor.to_q_lora.down.``    ``unet.load_lora_adapter``
                ``weight`` (the old attention-processor layout)        with ``prefix=None``
``peft``        ``down_blocks.1...to_q.lora_A.weight`` (a UNet's       ``unet.load_lora_adapter``
                adapter saved without the ``unet.`` prefix)            with ``prefix=None``
==============  ====================================================  =========================

``load_lora_weights`` takes an ``attn_procs`` file silently and changes nothing,
and diffusers reports no matched-key count, so after loading the modules that
really hold the adapter are counted; zero is an error that names the file.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ghibli_anim.contracts.config import Settings
from ghibli_anim.contracts.model_refs import check_ref, locate
from ghibli_anim.services.renderer.provenance import file_sha256, hub_revision

log = logging.getLogger(__name__)

FORMATS = ("diffusers", "kohya", "attn_procs", "peft")
# diffusers' own default file names, in its order of preference.
DEFAULT_WEIGHT_NAMES = ("pytorch_lora_weights.safetensors", "pytorch_lora_weights.bin")
_SUFFIXES = (".safetensors", ".bin")

_KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
# One key per low-rank pair (the "down"/"A" half), in any of the layouts.
_PAIR_RE = re.compile(r"(\.lora_down|\.lora\.down|_lora\.down|\.lora_A)(\.[^.]+)?\.weight$")


@dataclass(frozen=True)
class LoraFile:
    """A LoRA's weights on this machine and where they came from."""

    source: str
    """The reference as the profile or request wrote it."""
    path: Path
    sha256: str
    revision: str | None = None
    """The hub commit, when the file came from the hub."""


@dataclass(frozen=True)
class LoadedLora:
    """A LoRA loaded as a named adapter."""

    adapter: str
    file: LoraFile
    format: str
    pairs: int
    """Low-rank pairs in the file."""
    modules: int
    """Layers of the UNet and text encoder that hold the adapter."""

    def record(self) -> dict[str, Any]:
        return {
            "file": self.file.path.name,
            "sha256": self.file.sha256,
            "revision": self.file.revision,
            "format": self.format,
            "pairs": self.pairs,
            "modules": self.modules,
            "adapter": self.adapter,
        }


# ---------------------------------------------------------------------------
# Finding the file
# ---------------------------------------------------------------------------


def _in_folder(folder: Path, weight_name: str | None, field: str) -> Path:
    if weight_name:
        path = folder / weight_name
        if not path.is_file():
            raise ValueError(f"{field}: {folder} has no file {weight_name!r}")
        return path
    for name in DEFAULT_WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    candidates = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix == ".safetensors")
    if len(candidates) == 1:
        return candidates[0]
    raise ValueError(
        f"{field}: {folder} holds {len(candidates)} .safetensors files and none named "
        f"{DEFAULT_WEIGHT_NAMES[0]}; name one with weight_name or give the file's path"
    )


def _from_hub(repo_id: str, weight_name: str | None, field: str) -> Path:
    from huggingface_hub import hf_hub_download, list_repo_files
    from huggingface_hub.errors import EntryNotFoundError

    names = [weight_name] if weight_name else list(DEFAULT_WEIGHT_NAMES)
    last: Exception | None = None
    for name in names:
        try:
            return Path(hf_hub_download(repo_id, name))
        except EntryNotFoundError as exc:
            last = exc
        except Exception as exc:  # offline, gated, missing repo: all say why
            raise OSError(f"{field}: cannot fetch {repo_id!r} from the hub ({exc})") from exc
    if not weight_name:
        try:
            files = [f for f in list_repo_files(repo_id) if f.endswith(".safetensors")]
        except Exception as exc:
            raise OSError(f"{field}: cannot list {repo_id!r} on the hub ({exc})") from exc
        if len(files) == 1:
            return Path(hf_hub_download(repo_id, files[0]))
    raise ValueError(f"{field}: {repo_id!r} has no LoRA file {' or '.join(names)} ({last})")


def find_file(
    source: str,
    weight_name: str,
    settings: Settings | None,
    field: str,
    resolver: Callable[[str], str] | None = None,
) -> LoraFile:
    """The local file of a LoRA reference (a file, a folder, a hub id, tiny:, store://).

    ``resolver`` turns ``store://loras/NAME`` into a local file or folder (the
    renderer service downloads it); without one such sources are refused.
    """
    kind = check_ref(source, settings, field, allow_store=True)
    if kind == "store":
        if resolver is None:
            raise ValueError(f"{field}: {source} is in the object store and no store is at hand")
        path = Path(resolver(source))
    elif kind == "hub" and source.count("/") == 1:
        path = _from_hub(source, weight_name or None, field)
    else:  # a local file or folder, tiny:, or a folder inside a hub repository
        path = Path(locate(source, settings, field=field))
    if path.is_dir():
        path = _in_folder(path, weight_name or None, field)
    if path.suffix not in _SUFFIXES:
        raise ValueError(f"{field}: {path.name} is not a .safetensors (or .bin) LoRA file")
    return LoraFile(source, path, file_sha256(path), hub_revision(path))


# ---------------------------------------------------------------------------
# Reading and telling the format
# ---------------------------------------------------------------------------


def read_state_dict(path: Path, field: str) -> dict[str, Any]:
    """The tensors of a LoRA file on the CPU (``.bin`` through torch's weights-only loader)."""
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path)
        # weights_only: a pickle that holds anything but tensors is refused, not run.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{field}: cannot read {path.name} ({exc})") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{field}: {path.name} does not hold a dict of tensors")
    return state


def detect_format(keys: list[str] | set[str], name: str = "LoRA") -> str:
    """``diffusers``, ``kohya``, ``attn_procs`` or ``peft``, from the keys alone."""
    keys = list(keys)
    if any(k.startswith(_KOHYA_PREFIXES) for k in keys):
        return "kohya"
    if any(".processor." in k and "_lora." in k for k in keys):
        return "attn_procs"
    lora_keys = [k for k in keys if ".lora" in k or ".lora_" in k]
    if lora_keys and all(k.startswith(("unet.", "text_encoder.")) for k in lora_keys):
        return "diffusers"
    if lora_keys and any(".lora_A" in k for k in lora_keys):
        return "peft"
    shown = ", ".join(sorted(keys)[:2]) or "no keys"
    raise ValueError(
        f"{name}: cannot tell the LoRA format from its keys ({shown}); expected diffusers "
        "(unet....lora...), kohya (lora_unet_...), attention-processor "
        "(...processor.to_q_lora.down.weight) or PEFT (...lora_A.weight) keys"
    )


def count_pairs(keys: list[str] | set[str]) -> int:
    return sum(1 for k in keys if _PAIR_RE.search(k))


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def count_modules(pipe: Any, adapter: str) -> int:
    """Layers of the UNet and text encoder that hold ``adapter`` (diffusers reports none)."""
    count = 0
    for component in (pipe.unet, getattr(pipe, "text_encoder", None)):
        if component is None:
            continue
        for module in component.modules():
            lora_a = getattr(module, "lora_A", None)
            if lora_a is not None and adapter in lora_a:
                count += 1
    return count


def _adapters(pipe: Any) -> set[str]:
    return {name for names in pipe.get_list_adapters().values() for name in names}


def load_lora(pipe: Any, lora: LoraFile, adapter: str, field: str) -> LoadedLora:
    """Load ``lora`` into ``pipe`` as ``adapter``; raise ValueError naming the file when
    it cannot be read, its format is unknown, or it attaches to no layer."""
    state = read_state_dict(lora.path, field)
    fmt = detect_format(state.keys(), f"{field} ({lora.path.name})")
    pairs = count_pairs(state.keys())
    try:
        with warnings.catch_warnings():
            # peft notes every second adapter of a model; several are the point here.
            warnings.filterwarnings("ignore", message=".*multiple adapters.*")
            if fmt in ("attn_procs", "peft"):
                # load_lora_weights would drop these silently: the UNet loads them as is.
                pipe.unet.load_lora_adapter(dict(state), prefix=None, adapter_name=adapter)
            else:
                pipe.load_lora_weights(dict(state), adapter_name=adapter)
    except (ValueError, KeyError, RuntimeError, TypeError) as exc:
        _drop(pipe, adapter)
        raise ValueError(f"{field}: cannot load {lora.path} as a {fmt} LoRA ({exc})") from exc
    modules = count_modules(pipe, adapter)
    if modules == 0:
        _drop(pipe, adapter)
        raise ValueError(
            f"{field}: {lora.path} ({fmt} format, {pairs} LoRA pairs) matched no layer "
            "of the base model"
        )
    if modules < pairs:
        log.warning(
            "LoRA attached to fewer layers than it has pairs",
            extra={"file": str(lora.path), "pairs": pairs, "modules": modules},
        )
    return LoadedLora(adapter, lora, fmt, pairs, modules)


def _drop(pipe: Any, adapter: str) -> None:
    if adapter in _adapters(pipe):
        pipe.delete_adapters([adapter])


def lora_layers(pipe: Any) -> list[tuple[str, Any]]:
    """(qualified name, layer) of every LoRA-holding layer of the UNet and text encoder."""
    out = []
    for prefix in ("unet", "text_encoder"):
        component = getattr(pipe, prefix, None)
        if component is None:
            continue
        for name, module in component.named_modules():
            if getattr(module, "lora_A", None) is not None and hasattr(module, "base_layer"):
                out.append((f"{prefix}.{name}", module))
    return out
