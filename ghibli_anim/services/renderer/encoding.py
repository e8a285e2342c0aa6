"""Frame pixels and PNG bytes: how the renderer decodes every image it reads.

In memory a frame is an ``H x W x 3`` ``uint8`` RGB array (PIL's layout) and a depth map an
``H x W`` ``uint8`` array; in the store both are PNGs, encoded by
:func:`ghibli_anim.runtime.png.encode_png` (shared with the depth service, so a depth map
has the same bytes whichever service made it).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


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


def decode_png(png: bytes, field: str = "png") -> np.ndarray:
    """The RGB array of an encoded frame (a PNG of any mode is converted to RGB)."""
    with Image.open(io.BytesIO(png)) as im:
        return as_rgb(im, field)


def decode_gray(png: bytes, field: str = "png") -> np.ndarray:
    """The ``H x W`` uint8 array of an encoded map (a PNG of any mode is converted to "L")."""
    with Image.open(io.BytesIO(png)) as im:
        return np.asarray(im.convert("L"), dtype=np.uint8)


__all__ = ["as_rgb", "decode_gray", "decode_png"]
