"""What the PNG settings cost: encode time and size of a painted frame and of its depth map.

``runtime/png.py``'s encoder (the row marked ``*``: what the renderer stores frames with),
then, through libpng (OpenCV, one thread), every combination of row filter and zlib strategy
at level 1, plus zlib level 0 and Pillow's fastest level, on
:func:`ghibli_anim.devtools.standin.painting` (the stand-in picture with the statistics of a
painted frame that ``bench/chain_host.py`` renders) and a depth-like map (a smooth grayscale
field).

    python bench/png_options.py [--size 512] [--repeat 30]
"""

from __future__ import annotations

import argparse
import io
import time

import cv2
import numpy as np
from PIL import Image

from ghibli_anim.devtools import standin
from ghibli_anim.runtime.png import encode_png

FILTERS = {
    "none": cv2.IMWRITE_PNG_FILTER_NONE,
    "sub": cv2.IMWRITE_PNG_FILTER_SUB,
    "up": cv2.IMWRITE_PNG_FILTER_UP,
    "avg": cv2.IMWRITE_PNG_FILTER_AVG,
    "paeth": cv2.IMWRITE_PNG_FILTER_PAETH,
}
STRATEGIES = {
    "huffman": cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY,
    "rle": cv2.IMWRITE_PNG_STRATEGY_RLE,
    "default": cv2.IMWRITE_PNG_STRATEGY_DEFAULT,
}


def _ms(encode, repeat: int) -> tuple[float, int]:
    """Median milliseconds of ``encode()`` over ``repeat`` calls, and its size in bytes."""
    size = len(encode())
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        encode()
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times)), size


def rows(picture: np.ndarray, repeat: int) -> list[tuple[str, float, int]]:
    """(settings, ms, bytes) of every option for ``picture`` (RGB or grayscale)."""
    bgr = picture if picture.ndim == 2 else np.ascontiguousarray(picture[..., ::-1])
    out = [
        ("* runtime/png.py: average, zlib-ng huffman", *_ms(lambda: encode_png(picture), repeat))
    ]

    def cv(params: tuple[int, ...]):
        return lambda: cv2.imencode(".png", bgr, params)[1].tobytes()

    for strategy, s in STRATEGIES.items():
        for name, f in FILTERS.items():
            params = (cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, s)
            params += (cv2.IMWRITE_PNG_FILTER, f)
            out.append((f"  libpng level 1, {strategy}, {name}", *_ms(cv(params), repeat)))
    out.append(("  libpng level 0 (stored)", *_ms(cv((cv2.IMWRITE_PNG_COMPRESSION, 0)), repeat)))

    def pillow() -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(picture).save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()

    out.append(("  Pillow, compress_level=1", *_ms(pillow, repeat)))
    return out


def depth_like(size: int) -> np.ndarray:
    """A smooth grayscale field with soft shapes: what a depth map of the painting looks like."""
    gray = cv2.cvtColor(standin.painting(size, size), cv2.COLOR_RGB2GRAY)
    return cv2.GaussianBlur(gray, (0, 0), 3.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="width and height")
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    frame = standin.next_frame(standin.painting(args.size, args.size), 3)
    for label, picture in (("frame (RGB)", frame), ("depth map (gray)", depth_like(args.size))):
        print(f"\n{label}, {args.size} x {args.size}")
        print(f"  {'settings':<44} {'ms':>7} {'KiB':>8}")
        for name, ms, size in rows(picture, args.repeat):
            print(f"  {name:<44} {ms:>7.2f} {size / 1024:>8.1f}")


if __name__ == "__main__":
    main()
