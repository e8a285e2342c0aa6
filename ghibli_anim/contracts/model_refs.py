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

Which files of a hub repository a load reads (``ghibli-anim models fetch`` downloads only
those) is decided here too, from the repository's file listing: :func:`pipeline_files`
(the folders ``model_index.json`` names, without the safety checker),
:func:`folder_files` (one model or tokenizer folder), :func:`lora_file`,
:func:`subfolder_files` and :func:`single_file_config_files`.

Nothing here imports torch: the planner locates tokenizers without it. Building the tiny
models is a development tool (``ghibli_anim.devtools.tiny_models``) that this package never
imports; an entry point that wants missing ``tiny:`` components built on first use passes a
builder to :func:`use_tiny_builder` (the ``ghibli-anim`` command does).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
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


# ---------------------------------------------------------------------------
# Which files of a hub repository a load reads
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class HubFile:
    """A file of a hub repository as its listing gives it (``HfApi.list_repo_tree``)."""

    path: str
    size: int


SKIPPED_COMPONENTS: tuple[str, ...] = ("safety_checker",)
"""Pipeline components the renderer never loads (it passes ``safety_checker=None``)."""

LORA_WEIGHT_NAMES: tuple[str, ...] = (
    "pytorch_lora_weights.safetensors",
    "pytorch_lora_weights.bin",
)
"""The LoRA files the renderer looks for when no ``weight_name`` is given, in its order."""

# Top-level files diffusers' DiffusionPipeline.download takes besides the component folders.
_PIPELINE_TOP_FILES = (
    "model_index.json",
    "scheduler_config.json",
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
)
# Weights from_pretrained reads: diffusers' and transformers' safetensors names, with an
# optional variant (fp16, non_ema, ...) and shard number.
_WEIGHTS_RE = re.compile(
    r"^(?:diffusion_pytorch_model|model)(?:\.(?P<variant>[A-Za-z0-9_]+))?"
    r"(?:-\d{5}-of-\d{5})?\.safetensors$"
)
_INDEX_RE = re.compile(
    r"^(?:diffusion_pytorch_model|model)\.safetensors\.index(?:\.(?P<variant>[A-Za-z0-9_]+))?\.json$"
)
# Any checkpoint format: a folder holding one is a model folder, whose weights must be
# safetensors (pickle formats run code when loaded).
_ANY_WEIGHTS_RE = re.compile(
    r"\.(safetensors|bin|ckpt|pt|pth|pkl|msgpack|h5|onnx|onnx_data|pb|gguf)$"
)
# A model folder's configs, tokenizer and image-processor files.
_SIDE_SUFFIXES = (".json", ".txt", ".model")


def total_size(files: Iterable[HubFile]) -> int:
    """Bytes of ``files``."""
    return sum(f.size for f in files)


def _prefix(folder: str) -> str:
    return f"{folder.strip('/')}/" if folder.strip("/") else ""


def subfolder_files(
    listing: Iterable[HubFile], folder: str, *, where: str = "model"
) -> list[HubFile]:
    """Everything under ``folder``: what :func:`locate` downloads for ``owner/name/folder``."""
    prefix = _prefix(folder)
    files = sorted((f for f in listing if f.path.startswith(prefix)), key=lambda f: f.path)
    if not prefix or not files:
        raise ValueError(f"{where}: the repository has no folder {folder!r}")
    return files


def folder_files(
    listing: Iterable[HubFile],
    folder: str = "",
    *,
    variant: str | None = None,
    weights: bool = True,
    where: str = "model",
) -> list[HubFile]:
    """What ``from_pretrained`` reads from one folder ("" = the repository's top).

    A folder without weights (a scheduler, a tokenizer) is read whole. From a model
    folder: its configs and tokenizer files, and its safetensors weights, in ``variant``
    when the folder has that variant (else the plain ones, as diffusers does), never
    another format or variant; ``weights=False`` takes the configs only. Raises ValueError
    naming ``where`` when the folder is empty or its weights are not safetensors.
    """
    listing = list(listing)
    prefix = _prefix(folder)
    direct = {f.path[len(prefix) :]: f for f in listing if f.path.startswith(prefix)}
    direct = {name: f for name, f in direct.items() if "/" not in name}
    shown = f"{where}: folder {folder!r}" if prefix else f"{where}:"
    if not direct:
        raise ValueError(f"{shown} holds no files")
    if not any(_ANY_WEIGHTS_RE.search(name) for name in direct):
        return sorted((f for f in listing if f.path.startswith(prefix)), key=lambda f: f.path)
    picked = [f for n, f in direct.items() if n.endswith(_SIDE_SUFFIXES) and ".index" not in n]
    if weights:
        by_variant: dict[str | None, list[HubFile]] = {}
        for name, f in direct.items():
            if m := _WEIGHTS_RE.match(name):
                by_variant.setdefault(m["variant"], []).append(f)
        chosen = variant if variant in by_variant else None
        if chosen not in by_variant:
            found = ", ".join(sorted(n for n in direct if _ANY_WEIGHTS_RE.search(n)))
            wanted = f" (or their {variant} variant)" if variant else ""
            raise ValueError(
                f"{shown} has neither diffusion_pytorch_model.safetensors nor "
                f"model.safetensors{wanted}; it has {found}"
            )
        picked += by_variant[chosen]
        picked += [
            f for n, f in direct.items() if (m := _INDEX_RE.match(n)) and m["variant"] == chosen
        ]
    return sorted(picked, key=lambda f: f.path)


def pipeline_components(model_index: Mapping[str, object]) -> list[str]:
    """The component folders of a diffusers ``model_index.json`` that the renderer loads:
    every entry naming a library and a class, but the safety checker."""
    out = []
    for name, value in model_index.items():
        if name.startswith("_") or name in SKIPPED_COMPONENTS:
            continue
        if isinstance(value, (list, tuple)) and len(value) == 2 and all(value):
            out.append(name)
    return sorted(out)


def pipeline_files(
    listing: Iterable[HubFile],
    model_index: Mapping[str, object],
    *,
    variant: str | None = None,
    where: str = "base_model",
) -> list[HubFile]:
    """What ``StableDiffusionPipeline.from_pretrained(REPO, safety_checker=None)`` reads
    from a diffusers repository: ``model_index.json`` (and the few other top-level files
    diffusers takes) and, for each component it names (see :func:`pipeline_components`),
    that folder's files (see :func:`folder_files`)."""
    listing = list(listing)
    picked = [f for f in listing if f.path in _PIPELINE_TOP_FILES]
    if not any(f.path == "model_index.json" for f in picked):
        raise ValueError(f"{where}: model_index.json is not in the repository")
    for component in pipeline_components(model_index):
        picked += folder_files(listing, component, variant=variant, where=f"{where} ({component})")
    return sorted(picked, key=lambda f: f.path)


def single_file_config_files(listing: Iterable[HubFile]) -> list[HubFile]:
    """What ``from_single_file(PATH, config=REPO)`` downloads from REPO (diffusers'
    patterns): every ``.json`` and ``.txt`` file, and the ``.model`` files in folders."""
    return sorted(
        (
            f
            for f in listing
            if f.path.endswith((".json", ".txt")) or ("/" in f.path and f.path.endswith(".model"))
        ),
        key=lambda f: f.path,
    )


def lora_file(listing: Iterable[HubFile], weight_name: str = "", *, where: str = "lora") -> HubFile:
    """The one file a LoRA at the top of a hub repository loads: ``weight_name``, else the
    first of :data:`LORA_WEIGHT_NAMES` the repository has, else its only ``.safetensors``."""
    files = {f.path: f for f in listing}
    if weight_name:
        if weight_name not in files:
            raise ValueError(f"{where}: the repository has no file {weight_name!r}")
        return files[weight_name]
    for name in LORA_WEIGHT_NAMES:
        if name in files:
            return files[name]
    candidates = sorted(p for p in files if p.endswith(SINGLE_FILE_SUFFIX))
    if len(candidates) == 1:
        return files[candidates[0]]
    raise ValueError(
        f"{where}: the repository holds {len(candidates)} .safetensors files and none named "
        f"{LORA_WEIGHT_NAMES[0]}; name one with weight_name"
    )
