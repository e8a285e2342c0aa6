"""Image files for a training dataset: checking them, and turning them into training squares.

Checks (``check_image_file``; a failure raises ``Rejected`` with the reason the
user is shown): a file's first bytes must be a PNG, JPEG or WebP signature (the
name does not count), it must fit ``max_bytes``, its pixel count must fit
``max_pixels`` (read from the header, before any decoding: a decompression bomb
is refused, as Pillow's ``Image.MAX_IMAGE_PIXELS`` does, but at the cap the
caller chose) and it must decode completely.

Processing: ``to_rgb`` turns an image upright (EXIF orientation) and flattens
transparency onto white; ``square_crop`` scales the short side to the training
size and crops the centred square. Both the dataset build and training use them.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from ghibli_anim.contracts import limits

# Decompression-bomb guard: 8192 x 8192 RGB decodes to 192 MiB.
DEFAULT_MAX_PIXELS = 8192 * 8192
MAX_PIXELS = limits.IntRange(1, 1 << 30)
MAX_FILE_BYTES = 200 * 1024 * 1024

_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
)


# ---------------------------------------------------------------------------
# Checking one file
# ---------------------------------------------------------------------------


def sniff(head: bytes) -> str | None:
    """The image format the first bytes announce: PNG, JPEG, WEBP or None."""
    for signature, fmt in _SIGNATURES:
        if head.startswith(signature):
            return fmt
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\t\r\n" for c in text)


@dataclass(frozen=True)
class CheckedImage:
    """A file that passed every check: its bytes, format and decoded size."""

    name: str
    data: bytes
    format: str
    sha256: str
    width: int
    height: int


class Rejected(Exception):
    """A file fails a check; the message is the reason reported to the user."""


def check_image_file(
    path: Path, *, max_pixels: int, max_bytes: int = MAX_FILE_BYTES
) -> CheckedImage:
    """Read and check one file; raise ``Rejected`` with the reason it cannot be used."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise Rejected(f"file too large: {size} bytes (at most {max_bytes})")
        data = path.read_bytes()
    except OSError as exc:
        raise Rejected(f"unreadable: {exc.strerror or exc}") from None
    if not data:
        raise Rejected("empty file")
    fmt = sniff(data[:16])
    if fmt is None:
        looks = "; it looks like text" if _looks_like_text(data[:512]) else ""
        raise Rejected(
            f"not a PNG, JPEG or WebP image: its first bytes match none of their signatures{looks}"
        )
    try:
        # formats=[fmt]: only the decoder the signature names may read the file.
        with Image.open(io.BytesIO(data), formats=[fmt]) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise Rejected(_too_many_pixels(width, height, max_pixels))
            image.load()  # the whole file must decode
    except Image.DecompressionBombError as exc:
        raise Rejected(f"too many pixels: {exc} (a decompression-bomb guard)") from None
    except Rejected:
        raise
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError...
        raise Rejected(f"corrupt {fmt} image: {exc}") from None
    return CheckedImage(path.name, data, fmt, hashlib.sha256(data).hexdigest(), width, height)


def _too_many_pixels(width: int, height: int, max_pixels: int) -> str:
    return (
        f"too many pixels: {width}x{height} = {width * height} (at most {max_pixels}; "
        "a decompression-bomb guard)"
    )


# ---------------------------------------------------------------------------
# Image processing
# ---------------------------------------------------------------------------


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, upright (EXIF orientation), transparency flattened onto white."""
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I;16"):
        # 16-bit greyscale: Pillow's own conversion clips it to white; scale it instead.
        import numpy as np

        values = np.asarray(image, dtype=np.float32) / 257.0
        image = Image.fromarray(values.round().clip(0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def square_crop(image: Image.Image, side: int) -> Image.Image:
    """Scale so the short side is ``side`` (Lanczos), then crop the centred square."""
    width, height = image.size
    scale = side / min(width, height)
    new_size = (max(side, round(width * scale)), max(side, round(height * scale)))
    if new_size != image.size:
        image = image.resize(new_size, Image.Resampling.LANCZOS)
    left = (image.width - side) // 2
    top = (image.height - side) // 2
    return image.crop((left, top, left + side, top + side))
