"""Captions for a style dataset: sidecar files, BLIP, clean-up and the trigger phrase.

* ``read_sidecar_captions``: captions a user already wrote, from ``metadata.csv``
  (``file_name,caption`` or ``file_name,text``) or from ``NAME.txt`` beside
  ``NAME.png``; a ``.txt`` file wins over a ``metadata.csv`` row (it is the more
  specific of the two).
* ``BlipCaptioner``: ``BlipForConditionalGeneration.generate`` directly
  (transformers 5 has no image-to-text pipeline), with beam search and
  ``no_repeat_ngram_size`` so captions do not loop.
* ``clean_caption``: what is left of a loop after generation
  ("a samurai samurai samurai" -> "a samurai"), plus BLIP's well-known
  hallucinated words ("arafed", "araffe").
* ``with_trigger``: the trigger phrase first, once.

Nothing here imports torch at module level.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ghibli_anim.contracts import model_refs
from ghibli_anim.contracts.config import Settings
from ghibli_anim.runtime import devices

METADATA_CSV = "metadata.csv"
# Columns that may hold a caption in a user's metadata.csv, in order of preference.
CAPTION_COLUMNS = ("caption", "text")
# The longest caption kept, in characters (CLIP reads 77 tokens; this is far above).
MAX_CAPTION_CHARS = 1000
# Sidecar captions are small text files; anything bigger is not a caption.
MAX_SIDECAR_BYTES = 1 << 20

# Words BLIP-large is known to invent at the start of captions ("arafed man ...").
_BLIP_ARTEFACTS = frozenset({"arafed", "araffe", "araffes", "arafe", "arafly"})
_WS_RE = re.compile(r"\s+")
_LONGEST_LOOP = 6  # longest repeated word group the cleaner looks for


def normalize_text(text: str) -> str:
    """One line: whitespace (newlines included) collapsed to single spaces."""
    return _WS_RE.sub(" ", text).strip()


def _word_key(word: str) -> str:
    return word.lower().strip(".,;:!?\"'")


def remove_repeats(text: str) -> str:
    """Drop word groups repeated back to back, keeping the first copy.

    "a cat cat cat on a roof" -> "a cat on a roof"; "on a hill on a hill" ->
    "on a hill". Comparison ignores case and trailing punctuation.
    """
    words = text.split()
    changed = True
    while changed:
        changed = False
        for n in range(1, min(_LONGEST_LOOP, len(words) // 2) + 1):
            i = 0
            while i + 2 * n <= len(words):
                first = [_word_key(w) for w in words[i : i + n]]
                second = [_word_key(w) for w in words[i + n : i + 2 * n]]
                if first == second and any(first):
                    del words[i + n : i + 2 * n]
                    changed = True
                else:
                    i += 1
    return " ".join(words)


def clean_caption(text: str) -> str:
    """A generated caption made fit for training: one line, no loops, no artefacts."""
    words = [w for w in normalize_text(text).split() if _word_key(w) not in _BLIP_ARTEFACTS]
    cleaned = remove_repeats(" ".join(words))
    return cleaned.strip(" ,;:")


def with_trigger(caption: str, trigger: str) -> str:
    """``"TRIGGER, caption"``; unchanged when the caption already holds the trigger."""
    caption = normalize_text(caption)
    trigger = normalize_text(trigger)
    if not trigger:
        return caption
    if trigger.lower() in caption.lower():
        return caption
    return f"{trigger}, {caption}" if caption else trigger


def combine(manual: str, generated: str) -> str:
    """The ``both`` mode: the user's caption, then BLIP's unless it adds nothing."""
    manual, generated = normalize_text(manual), normalize_text(generated)
    if not generated or generated.lower() in manual.lower():
        return manual
    if not manual:
        return generated
    return f"{manual.rstrip(' ,;.')}, {generated}"


# ---------------------------------------------------------------------------
# Sidecar captions
# ---------------------------------------------------------------------------


def _read_metadata_csv(path: Path) -> dict[str, str]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path.name}: cannot read ({exc})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path.name}: must be UTF-8 text ({exc})") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = reader.fieldnames or []
    column = next((c for c in CAPTION_COLUMNS if c in columns), None)
    if "file_name" not in columns or column is None:
        raise ValueError(
            f"{path.name}: needs a header with file_name and one of "
            f"{', '.join(CAPTION_COLUMNS)}, got {', '.join(columns) or 'no header'}"
        )
    captions: dict[str, str] = {}
    for line, row in enumerate(reader, start=2):
        name = (row.get("file_name") or "").strip()
        if not name:
            raise ValueError(f"{path.name}: line {line}: file_name is empty")
        captions[Path(name).name] = normalize_text(row.get(column) or "")
    return captions


def read_sidecar_captions(folder: Path, image_names: Sequence[str]) -> dict[str, str]:
    """Existing captions of ``image_names`` (file names in ``folder``), by file name.

    Empty captions count as missing. Raises ValueError for a malformed
    metadata.csv or a caption file that is not UTF-8 text.
    """
    captions: dict[str, str] = {}
    metadata = folder / METADATA_CSV
    if metadata.is_file():
        captions.update(_read_metadata_csv(metadata))
    for name in image_names:
        sidecar = folder / (Path(name).stem + ".txt")
        if Path(name).suffix.lower() == ".txt" or not sidecar.is_file():
            continue
        if sidecar.stat().st_size > MAX_SIDECAR_BYTES:
            raise ValueError(f"{sidecar.name}: caption file over {MAX_SIDECAR_BYTES} bytes")
        try:
            captions[name] = normalize_text(sidecar.read_text(encoding="utf-8-sig"))
        except UnicodeDecodeError as exc:
            raise ValueError(f"{sidecar.name}: must be UTF-8 text ({exc})") from None
    return {name: text for name, text in captions.items() if text}


def sidecar_names(folder: Path, image_names: Sequence[str]) -> set[str]:
    """File names in ``folder`` that are captions, not images (never reported as skipped)."""
    names = {METADATA_CSV}
    names.update(Path(n).stem + ".txt" for n in image_names if Path(n).suffix.lower() != ".txt")
    return {n for n in names if (folder / n).is_file()}


# ---------------------------------------------------------------------------
# BLIP
# ---------------------------------------------------------------------------


class BlipCaptioner:
    """Captions images with a BLIP captioning model (a hub id, a folder or ``tiny:blip``).

    Decoding: beam search (``num_beams``) with ``no_repeat_ngram_size`` (no
    3-word group twice) and a mild ``repetition_penalty``; each caption then goes
    through ``clean_caption``.
    """

    def __init__(
        self,
        ref: str,
        settings: Settings,
        *,
        max_new_tokens: int = 30,
        num_beams: int = 3,
        batch_size: int = 8,
    ) -> None:
        import torch
        from transformers import BlipForConditionalGeneration, BlipProcessor

        from ghibli_anim.runtime import logs

        logs.quiet_ml_libraries()
        path = model_refs.locate(ref, settings, field="captioner")
        self.ref = ref
        self.device = devices.pick_device(settings)
        # Half precision on CUDA only: CPU kernels are slow or missing for it.
        self.dtype = torch.float16 if self.device == "cuda" else torch.float32
        try:
            self.processor = BlipProcessor.from_pretrained(path)
            model = BlipForConditionalGeneration.from_pretrained(path, dtype=self.dtype)
        except OSError as exc:
            raise OSError(f"captioner: cannot load {ref!r} ({exc})") from exc
        self.model = model.to(self.device).eval()
        self.max_new_tokens = max_new_tokens
        self.num_beams = num_beams
        self.batch_size = batch_size

    def caption(
        self, images: Sequence[Any], on_batch: Callable[[int], None] | None = None
    ) -> list[str]:
        """One cleaned caption per PIL image (RGB), in order."""
        import torch

        out: list[str] = []
        for start in range(0, len(images), self.batch_size):
            batch = [im.convert("RGB") for im in images[start : start + self.batch_size]]
            inputs = self.processor(images=batch, return_tensors="pt")
            pixels = inputs["pixel_values"].to(self.device, self.dtype)
            with torch.inference_mode():
                ids = self.model.generate(
                    pixel_values=pixels,
                    max_new_tokens=self.max_new_tokens,
                    num_beams=self.num_beams,
                    no_repeat_ngram_size=3,
                    repetition_penalty=1.2,
                )
            texts = self.processor.batch_decode(ids, skip_special_tokens=True)
            out.extend(clean_caption(t)[:MAX_CAPTION_CHARS] for t in texts)
            if on_batch is not None:
                on_batch(len(batch))
        return out
