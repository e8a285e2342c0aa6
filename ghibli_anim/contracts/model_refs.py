"""Model references: what may name a model, and where that model is on this machine.

A profile, a request or a setting names each model by a reference, one of:

* a hub id, ``owner/name``, or ``owner/name/sub/folder`` for a folder inside a hub
  repository (downloaded with ``huggingface_hub.snapshot_download``);
* a local path, absolute or starting with ``./``, ``../`` or ``~``, that must resolve
  (symbolic links and ``..`` included) inside one of ``ANIM_MODEL_ROOTS``; a base model
  may be one ``.safetensors`` file (pickle checkpoints are refused: loading them runs code);
* ``tiny:<component>``: a random-weight model of the SD-1.5 shape in
  ``<ANIM_CACHE_DIR>/tiny-v<N>/<component>`` (``ghibli-anim models tiny`` writes them);
* for LoRA sources only, ``store://loras/NAME``: a LoRA in the object store, which the
  caller fetches (``locate`` refuses it).

Nothing here imports torch: the planner locates tokenizers without it. Building the tiny
models is a development tool (``ghibli_anim.devtools.tiny_models``) that this package never
imports; an entry point that wants missing ``tiny:`` components built on first use passes a
builder to :func:`use_tiny_builder` (the ``ghibli-anim`` command does).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from ghibli_anim.contracts import config, keys
from ghibli_anim.contracts.config import Settings

TINY_PREFIX = "tiny:"
STORE_PREFIX = "store://"

TINY_VERSION = 1
"""Version of the tiny models' bytes: the cache keeps one folder per version."""
TINY_COMPONENTS: tuple[str, ...] = (
    "pipeline",
    "tokenizer",
    "controlnet",
    "depth",
    "taesd",
    "lcm_lora",
    "blip",
)
"""The ``tiny:<component>`` names (see ``ghibli_anim.devtools.tiny_models``)."""

SINGLE_FILE_SUFFIX = ".safetensors"
# Pickle checkpoints run code when loaded: only safetensors files are accepted.
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")

_HUB_SEGMENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

TinyBuilder = Callable[[Path, Sequence[str]], object]
"""``builder(out_dir, components)`` writes ``out_dir/<component>/`` for each component."""

_tiny_builder: TinyBuilder | None = None


def use_tiny_builder(builder: TinyBuilder | None) -> None:
    """Build missing ``tiny:`` components with ``builder`` from now on (None: refuse them).

    The ``ghibli-anim`` command and the test suite pass the writer of
    ``ghibli_anim.devtools.tiny_models``; a process that passes nothing needs the models
    written beforehand (``ghibli-anim models tiny DIR`` or ``models fetch tiny``).
    """
    global _tiny_builder
    _tiny_builder = builder


def settings_or_client(settings: Settings | None) -> Settings:
    """The given settings, or the ``client`` role's (reads every variable, requires none)."""
    return settings if settings is not None else config.load("client")


def is_path_ref(ref: str) -> bool:
    """Whether ``ref`` names a local path (absolute, or starting with ./ ../ ~)."""
    return (
        os.path.isabs(ref)
        or ref in (".", "..", "~")
        or ref.startswith(("./", "../", "~/", ".\\", "..\\"))
    )


def is_single_file(ref: str) -> bool:
    """Whether a model reference is a local single-file checkpoint (``.safetensors``)."""
    return is_path_ref(ref) and ref.lower().endswith(SINGLE_FILE_SUFFIX)


def refuse_pickle(ref: str, field: str) -> None:
    """ValueError naming ``field`` for a local pickle checkpoint (``.ckpt``, ``.bin``...)."""
    if is_path_ref(ref) and ref.lower().endswith(PICKLE_SUFFIXES):
        raise ValueError(
            f"{field}: {ref!r:.200} is a pickle checkpoint, which can run code when loaded; "
            f"convert it to {SINGLE_FILE_SUFFIX}"
        )


def _check_hub_id(ref: str, field: str) -> None:
    parts = ref.split("/")
    if len(parts) < 2 or not all(_HUB_SEGMENT_RE.match(p) and p not in (".", "..") for p in parts):
        raise ValueError(
            f"{field}: must be a hub id (owner/name[/subfolder]), a path under "
            f"ANIM_MODEL_ROOTS (absolute or starting with ./ ../ ~) or "
            f"{TINY_PREFIX}<component>, got {ref!r:.200}"
        )


def check_local_path(ref: str, settings: Settings | None, field: str) -> Path:
    """Resolve a local path and require it inside one of ANIM_MODEL_ROOTS."""
    roots: tuple[Path, ...] = tuple(settings_or_client(settings)["ANIM_MODEL_ROOTS"] or ())
    if not roots:
        raise ValueError(
            f"{field}: local path {ref!r:.200} is not allowed: ANIM_MODEL_ROOTS names "
            "no folder for models"
        )
    resolved = Path(ref).expanduser().resolve()  # follows symbolic links and '..'
    for root in roots:
        base = root.expanduser().resolve()
        if resolved == base or resolved.is_relative_to(base):
            return resolved
    how = "'..' leads to" if ".." in Path(ref).parts else "it resolves to"
    raise ValueError(
        f"{field}: path {ref!r:.200} is outside ANIM_MODEL_ROOTS ({how} {resolved}; "
        f"roots: {', '.join(str(r) for r in roots)})"
    )


def check_ref(ref: str, settings: Settings | None, field: str, *, allow_store: bool = False) -> str:
    """Validate a model reference without touching the hub or the disk's models.

    Returns its kind: ``hub``, ``path``, ``tiny`` or ``store``.
    """
    if not isinstance(ref, str) or not ref.strip():
        raise ValueError(f"{field}: must name a model, got {ref!r:.60}")
    if ref != ref.strip():
        raise ValueError(f"{field}: must not start or end with spaces, got {ref!r:.200}")
    if ref.startswith(TINY_PREFIX):
        component = ref[len(TINY_PREFIX) :]
        if component not in TINY_COMPONENTS:
            raise ValueError(
                f"{field}: tiny component must be one of "
                f"{', '.join(TINY_COMPONENTS)}, got {component!r:.60}"
            )
        return "tiny"
    if ref.startswith(STORE_PREFIX):
        if not allow_store:
            raise ValueError(f"{field}: store:// references are allowed for LoRAs only")
        parts = ref[len(STORE_PREFIX) :].split("/")
        if len(parts) != 2 or parts[0] != keys.LORA_PREFIX:
            raise ValueError(f"{field}: must be store://loras/NAME, got {ref!r:.200}")
        keys.check_name(parts[1], f"{field} (LoRA name)")
        return "store"
    if "://" in ref:
        raise ValueError(f"{field}: unsupported scheme in {ref!r:.200}")
    if is_path_ref(ref):
        check_local_path(ref, settings, field)
        return "path"
    _check_hub_id(ref, field)
    return "hub"


def tiny_dir(settings: Settings | None = None) -> Path:
    """The cache folder of this version's tiny models."""
    cache_dir = Path(settings_or_client(settings)["ANIM_CACHE_DIR"]).expanduser()
    return cache_dir / f"tiny-v{TINY_VERSION}"


def ensure_tiny(component: str, settings: Settings | None = None, field: str = "model") -> Path:
    """The folder of a tiny component; built first when missing and a builder is set."""
    out_dir = tiny_dir(settings)
    folder = out_dir / component
    if folder.is_dir():
        return folder
    if _tiny_builder is None:
        raise FileNotFoundError(
            f"{field}: {TINY_PREFIX}{component} is not in {out_dir}; write the tiny models "
            f"with `ghibli-anim models tiny {out_dir}`"
        )
    _tiny_builder(out_dir, [component])
    return folder


def _hub_subfolder(ref: str, field: str) -> str:
    """Local folder of ``owner/name/sub/folder``, downloaded (or cached) from the hub."""
    from huggingface_hub import snapshot_download

    owner, name, *sub = ref.split("/")
    subfolder = "/".join(sub)
    try:
        root = snapshot_download(f"{owner}/{name}", allow_patterns=[f"{subfolder}/*"])
    except Exception as exc:  # offline, missing repo, gated model: all say why
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise OSError(
            f"{field}: cannot fetch {ref!r} from the hub ({first}); with no network, "
            "`ghibli-anim models fetch PROFILE` on a connected machine fills HF_HOME, "
            "and `--profile tiny` needs no download"
        ) from exc
    folder = Path(root) / subfolder
    if not folder.is_dir():
        raise ValueError(f"{field}: hub repository {owner}/{name} has no folder {subfolder!r}")
    return str(folder)


def locate(
    ref: str, settings: Settings | None = None, *, field: str = "model", allow_store: bool = False
) -> str:
    """What ``from_pretrained`` takes for a model reference.

    A hub id comes back unchanged (``from_pretrained`` downloads or uses the cache); a hub
    subfolder is downloaded and its local folder returned; a local path comes back resolved
    (and must exist); ``tiny:X`` comes back as its cache folder (see :func:`ensure_tiny`).
    Raises ValueError naming ``field``.
    """
    kind = check_ref(ref, settings, field, allow_store=allow_store)
    if kind == "tiny":
        return str(ensure_tiny(ref[len(TINY_PREFIX) :], settings, field))
    if kind == "store":
        raise ValueError(f"{field}: {ref} is in the object store; fetch it before loading")
    if kind == "path":
        path = check_local_path(ref, settings, field)
        if not path.exists():
            raise ValueError(f"{field}: path {ref!r:.200} does not exist")
        return str(path)
    if ref.count("/") > 1:
        return _hub_subfolder(ref, field)
    return ref


def default_tokenizer(base_model: str) -> str:
    """The tokenizer folder that goes with a base model."""
    if base_model == TINY_PREFIX + "pipeline":
        return TINY_PREFIX + "tokenizer"
    return base_model.rstrip("/") + "/tokenizer"
