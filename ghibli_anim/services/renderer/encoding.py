"""Frame pixels and PNG bytes: how the renderer encodes and decodes every frame it stores.

In memory a frame is an ``H x W x 3`` ``uint8`` RGB array (PIL's layout); in the store it is a
PNG. Encoding writes no timestamps or text chunks, so the same pixels always give the same
bytes, and it favours speed over size (see ``PNG_COMPRESS_LEVEL``).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# Frames are written once and read a few times: fast compression keeps the encode off
# the frame's critical path (level 1 is ~5x faster than 6 for ~10% more bytes).
PNG_COMPRESS_LEVEL = 1


def as_rgb(image: Image.Image | np.ndarray, field: str = "image") -> np.ndarray:
    """An ``H x W x 3`` uint8 RGB array of a PIL image (any mode) or an RGB array.

    Raises ValueError naming ``field`` for an array of another shape or dtype.
    """
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(
            f"{field}: must be an H x W x 3 uint8 RGB array, got {arr.dtype} {arr.shape}"
        )
    return arr


def encode_image(image: Image.Image) -> bytes:
    """PNG bytes of a PIL image, in its own mode, encoded as the renderer encodes frames."""
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False, compress_level=PNG_COMPRESS_LEVEL)
    return out.getvalue()


def encode_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an RGB array, encoded as the renderer encodes frames (no timestamps)."""
    return encode_image(Image.fromarray(as_rgb(rgb)))


def decode_png(png: bytes, field: str = "png") -> np.ndarray:
    """The RGB array of an encoded frame (a PNG of any mode is converted to RGB)."""
    with Image.open(io.BytesIO(png)) as im:
        return as_rgb(im, field)


__all__ = ["PNG_COMPRESS_LEVEL", "as_rgb", "decode_png", "encode_image", "encode_png"]
