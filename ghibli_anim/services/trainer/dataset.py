"""Building a captioned image dataset for LoRA training (`ghibli-anim dataset build`).

From a folder of images to a folder that ``datasets.load_dataset("imagefolder")``
reads, with a ``metadata.csv`` in the seed paper's format (``file_name,caption``):

1. Every regular file at the top level of IMAGES_DIR is checked (signature, size,
   pixel cap, a complete decode: see ``images``). Exact duplicates (same sha256
   of the bytes) are dropped; the first by name stays. Every file left out is
   reported with its reason. ``metadata.csv`` and ``NAME.txt`` beside an image
   are captions, not images.
2. Each image is turned upright (EXIF orientation), flattened onto white if it
   has transparency, scaled so its short side is ``resolution`` and cropped to a
   centred square, and written as PNG. The originals are never changed; with
   ``resolution=0`` the output holds byte-for-byte copies of them instead.
3. Captions: ``keep`` takes the user's (``metadata.csv`` or ``NAME.txt``; images
   without one are skipped), ``blip`` asks the profile's BLIP model, ``both``
   takes the user's caption and appends BLIP's (BLIP's alone where the user gave
   none). The trigger phrase goes first in every caption, once.
4. ``metadata.csv`` (the only metadata file in the folder) is written, the folder
   is loaded back with ``datasets`` to prove it reads, and only then renamed into
   place (a failed build leaves no half-written dataset). A dry run does all of
   this in a temporary folder and keeps nothing.
5. ``push_to_hub`` pushes the loaded dataset with ``datasets`` (token: HF_TOKEN).

``load_image_dataset`` reads such a folder, or a hub dataset, for training.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ghibli_anim.contracts import limits, profiles, tokens
from ghibli_anim.contracts.config import Settings
from ghibli_anim.services.trainer import captions as cap
from ghibli_anim.services.trainer.images import (
    DEFAULT_MAX_PIXELS,
    MAX_FILE_BYTES,
    MAX_PIXELS,
    CheckedImage,
    Rejected,
    check_image_file,
    square_crop,
    to_rgb,
)

CAPTION_MODES = ("keep", "blip", "both")
# Output side of the square crops; 0 keeps the originals.
RESOLUTION = limits.IntRange(64, 2048, multiple_of=8)
MAX_FILES = 100_000
TRIGGER_CHARS = limits.STYLE_CHARS

_HUB_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_SAFE_NAME_RE = re.compile(r"[^A-Za-z0-9._-]+")
_EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}
_FORMAT_OF_EXTENSION = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


@dataclass(frozen=True)
class Skipped:
    """A file left out of the dataset, and why."""

    file: str
    reason: str


@dataclass(frozen=True)
class KeptImage:
    """One row of the dataset."""

    file_name: str
    """Its name in the dataset folder (the ``file_name`` column)."""
    source: str
    """Its name in IMAGES_DIR."""
    caption: str
    caption_from: str
    """``sidecar``, ``blip`` or ``sidecar+blip``."""
    width: int
    height: int
    """Size of the original."""


@dataclass
class BuildReport:
    """What a build kept, what it left out and why, and where the dataset went."""

    images_dir: Path
    out_dir: Path
    kept: list[KeptImage] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    dry_run: bool = False
    rows_loaded: int = 0
    columns: tuple[str, ...] = ()
    push: str = ""
    """What was (or, in a dry run, would be) pushed; empty without --push-to-hub."""

    def lines(self) -> list[str]:
        where = "(dry run: nothing written)" if self.dry_run else f"-> {self.out_dir}"
        out = [f"kept {len(self.kept)} image(s) {where}"]
        out += [f"  {k.file_name}: {k.caption!r}" for k in self.kept]
        if self.skipped:
            out.append(f"skipped {len(self.skipped)} file(s):")
            out += [f"  {s.file}: {s.reason}" for s in self.skipped]
        if self.notes:
            out.append("notes:")
            out += [f"  {n}" for n in self.notes]
        out.append(
            f"metadata.csv: file_name,caption ({len(self.kept)} rows); datasets reads "
            f"{self.rows_loaded} rows with columns {', '.join(self.columns)}"
        )
        if self.push:
            out.append(self.push)
        return out


def check_hub_repo(value: str, field: str) -> str:
    """``value`` if it is a hub repository id ``owner/name``; ValueError naming ``field``."""
    if not isinstance(value, str) or not _HUB_REPO_RE.fullmatch(value):
        raise ValueError(f"{field}: must be a hub repository id owner/name, got {value!r:.120}")
    return value


def _safe_stem(name: str) -> str:
    return _SAFE_NAME_RE.sub("_", Path(name).stem).strip("._-") or "image"


def _output_name(image: CheckedImage, resolution: int, taken: set[str]) -> str:
    ext = ".png" if resolution else _EXTENSIONS[image.format]
    name = _safe_stem(image.name) + ext
    if name.lower() in taken:
        name = f"{_safe_stem(image.name)}-{image.sha256[:8]}{ext}"
    taken.add(name.lower())
    return name


def _csv_field(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def write_metadata_csv(folder: Path, rows: list[tuple[str, str]]) -> Path:
    """``file_name,caption`` with every caption quoted, as in the seed paper."""
    lines = ["file_name,caption"]
    for file_name, caption in rows:
        # Output names are [A-Za-z0-9._-] only: they never need quoting.
        lines.append(f"{file_name},{_csv_field(caption)}")
    path = folder / cap.METADATA_CSV
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", newline="")
    return path


@contextlib.contextmanager
def _datasets_quiet(quiet: bool) -> Iterator[None]:
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    if quiet:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if quiet and was_enabled:
            datasets.enable_progress_bars()


def load_image_dataset(source: str | Path, cache_dir: Path, *, quiet: bool = True) -> Any:
    """The ``train`` split of a dataset folder (imagefolder) or a hub dataset id."""
    import datasets

    folder = Path(source).expanduser()
    with _datasets_quiet(quiet):
        if folder.is_dir():
            return datasets.load_dataset(
                "imagefolder", data_dir=str(folder), split="train", cache_dir=str(cache_dir)
            )
        repo = check_hub_repo(str(source), "--dataset (not a folder, so a hub dataset id)")
        try:
            return datasets.load_dataset(repo, split="train", cache_dir=str(cache_dir))
        except Exception as exc:  # offline, missing or gated repository
            raise OSError(f"--dataset: cannot load hub dataset {repo} ({exc})") from exc


def _check_out(images_dir: Path, out_dir: Path, overwrite: bool) -> None:
    images, out = images_dir.resolve(), out_dir.resolve()
    if out == images or images.is_relative_to(out):
        raise ValueError(f"--out: must not be IMAGES_DIR or a folder above it, got {out_dir}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out: {out_dir} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"--out: {out_dir} is not empty (pass --overwrite to replace it)")


def _count_tokens(profile: Any, settings: Settings) -> Callable[[str], int] | None:
    try:
        return tokens.TokenCounter.for_profile(profile, settings).count
    except Exception:  # offline without the tokenizer cached: the check is advisory
        return None


def build_dataset(
    images_dir: Path,
    out_dir: Path,
    *,
    settings: Settings,
    profile: str = "",
    caption: str = "blip",
    trigger: str | None = None,
    resolution: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    overwrite: bool = False,
    dry_run: bool = False,
    push_to_hub: str = "",
    progress: bool = False,
    captioner: Any = None,
) -> BuildReport:
    """Build the dataset folder ``out_dir`` from the images in ``images_dir``.

    ``trigger`` defaults to the profile's style ("ghibli style"; "" for none),
    ``resolution`` to the profile's width (0 keeps the originals). ``captioner``
    (something with ``caption(images) -> list[str]``) replaces the profile's
    BLIP model. Raises ValueError naming the flag for a bad argument.
    """
    images_dir, out_dir = Path(images_dir).expanduser(), Path(out_dir).expanduser()
    if not images_dir.is_dir():
        raise ValueError(f"IMAGES_DIR: {images_dir} is not a folder")
    if caption not in CAPTION_MODES:
        raise ValueError(f"--caption: must be one of {', '.join(CAPTION_MODES)}, got {caption!r}")
    prof = profiles.load_profile(profile or None, settings)
    trigger = prof.style if trigger is None else trigger
    trigger = limits.check_text("--trigger", trigger, TRIGGER_CHARS, required=False)
    resolution = prof.width if resolution is None else resolution
    if resolution != 0:
        RESOLUTION.check("--resolution", resolution)
    MAX_PIXELS.check("--max-pixels", max_pixels)
    if push_to_hub:
        check_hub_repo(push_to_hub, "--push-to-hub")
        if not dry_run and not settings["HF_TOKEN"]:
            raise ValueError("HF_TOKEN: required for --push-to-hub (a token with write access)")
    _check_out(images_dir, out_dir, overwrite)
    if caption != "keep" and captioner is None:
        # Loaded first: a missing model fails before any image is processed.
        captioner = cap.BlipCaptioner(profiles.load_captioner(prof.name, settings), settings)

    report = BuildReport(images_dir, out_dir, dry_run=dry_run)
    staging_parent = None if dry_run else out_dir.parent
    if staging_parent is not None:
        staging_parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=staging_parent))
    try:
        dataset_dir = staging / "dataset"
        dataset_dir.mkdir()
        rows = _fill(
            dataset_dir,
            report,
            images_dir,
            settings,
            prof,
            caption,
            trigger,
            resolution,
            max_pixels,
            progress,
            captioner,
        )
        if not rows:
            reasons = "; ".join(f"{s.file}: {s.reason}" for s in report.skipped[:10])
            more = f"; and {len(report.skipped) - 10} more" if len(report.skipped) > 10 else ""
            raise ValueError(
                f"IMAGES_DIR: no usable image in {images_dir} "
                f"({len(report.skipped)} file(s) skipped: {reasons}{more})"
                if report.skipped
                else f"IMAGES_DIR: no image in {images_dir}"
            )
        write_metadata_csv(dataset_dir, rows)
        # Read it back as training will; a private cache, gone with the staging folder.
        loaded = load_image_dataset(dataset_dir, staging / "cache", quiet=not progress)
        report.rows_loaded = loaded.num_rows
        report.columns = tuple(loaded.column_names)
        if report.rows_loaded != len(rows):
            raise RuntimeError(
                f"datasets read {report.rows_loaded} rows from {len(rows)} images in {dataset_dir}"
            )
        if dry_run:
            if push_to_hub:
                report.push = _push(loaded, dataset_dir, push_to_hub, settings, dry_run=True)
        else:
            _move_into_place(dataset_dir, out_dir)
            if push_to_hub:
                # The dataset stays on disk even when the push fails.
                loaded = load_image_dataset(out_dir, _datasets_cache(settings), quiet=not progress)
                report.push = _push(loaded, out_dir, push_to_hub, settings, dry_run=False)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # empty after a successful rename
    return report


def _datasets_cache(settings: Settings) -> Path:
    return Path(settings["ANIM_CACHE_DIR"]).expanduser() / "datasets"


def _move_into_place(built: Path, out_dir: Path) -> None:
    """Rename the built folder to ``out_dir``; an old one is replaced only afterwards."""
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.{uuid.uuid4().hex}.old"
        os.rename(out_dir, old)
    os.rename(built, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _fill(
    dataset_dir: Path,
    report: BuildReport,
    images_dir: Path,
    settings: Settings,
    prof: Any,
    mode: str,
    trigger: str,
    resolution: int,
    max_pixels: int,
    progress: bool,
    captioner: Any,
) -> list[tuple[str, str]]:
    """Check, dedupe, process and caption; return the (file_name, caption) rows."""
    from tqdm import tqdm

    entries = sorted(images_dir.iterdir(), key=lambda p: p.name)
    if len(entries) > MAX_FILES:
        raise ValueError(f"IMAGES_DIR: holds {len(entries)} entries (at most {MAX_FILES})")
    files = [p for p in entries if p.is_file()]
    report.skipped += [
        Skipped(p.name, "a folder: only the top level of IMAGES_DIR is read")
        for p in entries
        if p.is_dir()
    ]
    report.skipped += [
        Skipped(p.name, "not a regular file") for p in entries if not p.is_dir() and not p.is_file()
    ]
    sidecars = cap.sidecar_names(images_dir, [p.name for p in files])
    existing = cap.read_sidecar_captions(images_dir, [p.name for p in files])

    # Exact duplicates first, by the sha256 of the bytes: of identical files, the
    # first (by name) with a caption of its own stays, else the first by name.
    groups: dict[str, list[Path]] = {}
    chosen: list[Path] = []
    for path in files:
        if path.name in sidecars:
            continue
        digest = _digest(path)
        if digest is None:
            chosen.append(path)  # unreadable or too large: the check below says which
        else:
            groups.setdefault(digest, []).append(path)
    for same in groups.values():
        first = next((p for p in same if p.name in existing), same[0])
        chosen.append(first)
        report.skipped += [
            Skipped(p.name, f"duplicate of {first.name} (same bytes)") for p in same if p != first
        ]
    chosen.sort(key=lambda p: p.name)

    taken: set[str] = set()
    staged: list[tuple[CheckedImage, str, str]] = []  # (image, out name, user caption)
    for path in tqdm(chosen, desc="checking images", unit="file", disable=not progress):
        try:
            image = check_image_file(path, max_pixels=max_pixels)
        except Rejected as exc:
            report.skipped.append(Skipped(path.name, str(exc)))
            continue
        ext = path.suffix.lower()
        if _FORMAT_OF_EXTENSION.get(ext) != image.format:
            report.notes.append(
                f"{path.name}: {image.format} content under the name's "
                f"{ext or 'missing'} extension (accepted by its signature)"
            )
        user_caption = existing.get(path.name, "")
        if len(user_caption) > cap.MAX_CAPTION_CHARS:
            report.skipped.append(
                Skipped(path.name, f"caption over {cap.MAX_CAPTION_CHARS} characters")
            )
            continue
        if mode == "keep" and not user_caption:
            report.skipped.append(
                Skipped(
                    path.name,
                    f"no caption: --caption keep needs a metadata.csv row or "
                    f"{Path(path.name).stem}.txt",
                )
            )
            continue
        out_name = _output_name(image, resolution, taken)
        _write_image(dataset_dir / out_name, image, resolution, report)
        staged.append((image, out_name, user_caption))

    generated: list[str] = [""] * len(staged)
    if mode != "keep" and staged:
        generated = _generate(dataset_dir, staged, progress, captioner)

    count_tokens = _count_tokens(prof, settings)
    rows: list[tuple[str, str]] = []
    for (image, out_name, user_caption), blip in zip(staged, generated, strict=True):
        if mode == "keep":
            text, origin = user_caption, "sidecar"
        elif mode == "blip":
            text, origin = blip, "blip"
        else:
            text = cap.combine(user_caption, blip)
            origin = "sidecar+blip" if user_caption else "blip"
        text = cap.with_trigger(text, trigger)
        if not text:
            report.skipped.append(Skipped(image.name, "empty caption (and no --trigger)"))
            (dataset_dir / out_name).unlink()
            continue
        if count_tokens is not None and count_tokens(text) > limits.CLIP_MAX_TOKENS:
            report.notes.append(
                f"{out_name}: caption over {limits.CLIP_MAX_TOKENS} CLIP tokens "
                "(training truncates it)"
            )
        report.kept.append(KeptImage(out_name, image.name, text, origin, image.width, image.height))
        rows.append((out_name, text))
    if count_tokens is None:
        report.notes.append("token counts not checked: the profile's tokenizer is not available")
    report.skipped.sort(key=lambda s: s.file)
    return rows


def _digest(path: Path) -> str | None:
    """sha256 of a file, or None when it cannot be read or is over MAX_FILE_BYTES."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return None
        with path.open("rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return None


def _write_image(target: Path, image: CheckedImage, resolution: int, report: BuildReport) -> None:
    if resolution == 0:
        target.write_bytes(image.data)
        return
    if min(image.width, image.height) < resolution:
        report.notes.append(
            f"{image.name}: {image.width}x{image.height} is smaller than {resolution}: upscaled"
        )
    with Image.open(io.BytesIO(image.data), formats=[image.format]) as opened:
        square = square_crop(to_rgb(opened), resolution)
    target.write_bytes(_png_bytes(square))


def _png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=6)
    return out.getvalue()


def _generate(
    dataset_dir: Path,
    staged: list[tuple[CheckedImage, str, str]],
    progress: bool,
    captioner: Any,
) -> list[str]:
    """BLIP captions of the staged images (read back from the dataset folder)."""
    from tqdm import tqdm

    out: list[str] = []
    batch = 32  # images open at once
    with tqdm(total=len(staged), desc="captioning", unit="image", disable=not progress) as bar:
        for start in range(0, len(staged), batch):
            opened = []
            for _image, name, _ in staged[start : start + batch]:
                with Image.open(dataset_dir / name) as im:
                    opened.append(to_rgb(im))
            out.extend(captioner.caption(opened))
            bar.update(len(opened))
    return out


def _push(loaded: Any, folder: Path, repo: str, settings: Settings, *, dry_run: bool) -> str:
    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    what = f"{loaded.num_rows} rows (columns {', '.join(loaded.column_names)}; {size} bytes)"
    if dry_run:
        token = "set" if settings["HF_TOKEN"] else "NOT set (the push would fail)"
        return f"dry run: would push {what} to hub dataset {repo}; HF_TOKEN is {token}"
    loaded.push_to_hub(repo, token=settings["HF_TOKEN"])
    return f"pushed {what} to hub dataset {repo}"
