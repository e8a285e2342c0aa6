"""PNG bytes of the frames and depth maps a job stores, made the same way by every service.

Encoding writes no timestamps or text chunks, so the same pixels always give the same
bytes, whichever service encodes them: the renderer encodes each frame and the depth maps
it makes, the depth service the depth maps it is asked for (a fork's or an extension's
first frame may need one the parent never made), and a job's bytes do not depend on which
made a map. It favours speed over size (see ``PNG_PARAMS``): a frame is encoded once, on
its critical path.
"""

from __future__ import annotations

import cv2
import numpy as np

PNG_PARAMS = (
    cv2.IMWRITE_PNG_COMPRESSION,
    1,
    cv2.IMWRITE_PNG_STRATEGY,
    cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY,
    cv2.IMWRITE_PNG_FILTER,
    cv2.IMWRITE_PNG_FILTER_AVG,
)
"""libpng with zlib level 1, Huffman coding only, after the Average filter on every row. On
painted 512 x 512 frames (``bench/png_options.py`` prints every combination): ~5.6 ms and
~340 KiB, against ~10 ms and ~350 KiB with Paeth, ~9 ms and ~400 KiB with zlib's LZ77 on top,
and ~24 ms with Pillow's fastest level. The filter already removes what LZ77 matching would
find; Average predicts a smooth painting about as well as Paeth at half its cost, and
libpng's adaptive choice among its five filters costs a third more than Paeth alone.
``bench/chain_host.py`` measures it in the chain."""


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of an RGB frame (``H x W x 3``) or a grayscale map (``H x W``), uint8."""
    arr = np.asarray(pixels)
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ValueError(f"pixels: must be H x W x 3 or H x W uint8, got {arr.dtype} {arr.shape}")
    # OpenCV orders colour channels B, G, R (cvtColor: a tenth of a reversed view's copy).
    ok, data = cv2.imencode(
        ".png", arr if arr.ndim == 2 else cv2.cvtColor(arr, cv2.COLOR_RGB2BGR), PNG_PARAMS
    )
    if not ok:  # pragma: no cover - libpng refuses only impossible shapes, checked above
        raise ValueError(f"pixels: the PNG encoder refused an image of shape {arr.shape}")
    return data.tobytes()
