"""Frame pixels and PNG bytes: how the renderer encodes and decodes every image it stores.

In memory a frame is an ``H x W x 3`` ``uint8`` RGB array (PIL's layout) and a depth map an
``H x W`` ``uint8`` array; in the store both are PNGs. Encoding writes no timestamps or text
chunks, so the same pixels always give the same bytes, and it favours speed over size (see
``PNG_PARAMS``): a frame is encoded once, on its critical path.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

PNG_PARAMS = (
    cv2.IMWRITE_PNG_COMPRESSION,
    1,
    cv2.IMWRITE_PNG_STRATEGY,
    cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY,
    cv2.IMWRITE_PNG_FILTER,
    cv2.IMWRITE_PNG_FILTER_PAETH,
)
"""libpng with zlib level 1, Huffman coding only, after the Paeth filter on every row: on
painted 512 x 512 frames about a third of the time of Pillow's fastest level (~7 ms against
~24 ms on a 2-core machine) and about a quarter fewer bytes. The filters already remove what
LZ77 matching would find, and libpng's adaptive choice among its five filters picks Paeth
for nearly every row of such pictures while costing a third more time.
``bench/chain_host.py`` measures it in the chain."""


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


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of an RGB frame (``H x W x 3``) or a grayscale map (``H x W``), uint8."""
    arr = np.asarray(pixels)
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ValueError(f"pixels: must be H x W x 3 or H x W uint8, got {arr.dtype} {arr.shape}")
    # OpenCV orders colour channels B, G, R.
    ok, data = cv2.imencode(".png", arr if arr.ndim == 2 else arr[..., ::-1], PNG_PARAMS)
    if not ok:  # pragma: no cover - libpng refuses only impossible shapes, checked above
        raise ValueError(f"pixels: the PNG encoder refused an image of shape {arr.shape}")
    return data.tobytes()


def decode_png(png: bytes, field: str = "png") -> np.ndarray:
    """The RGB array of an encoded frame (a PNG of any mode is converted to RGB)."""
    with Image.open(io.BytesIO(png)) as im:
        return as_rgb(im, field)


def decode_gray(png: bytes, field: str = "png") -> np.ndarray:
    """The ``H x W`` uint8 array of an encoded map (a PNG of any mode is converted to "L")."""
    with Image.open(io.BytesIO(png)) as im:
        return np.asarray(im.convert("L"), dtype=np.uint8)


__all__ = ["PNG_PARAMS", "as_rgb", "decode_gray", "decode_png", "encode_png"]
