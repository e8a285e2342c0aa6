"""runtime/png.py: lossless for RGB frames and grayscale maps of any size (decoded by Pillow
and by OpenCV), the same pixels always give the same bytes, zlib-ng writes exactly what
Python's own zlib would, the Average filter is PNG's, and nothing but IHDR, one IDAT and
IEND is written."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from ghibli_anim.devtools import standin
from ghibli_anim.runtime import png

RNG = np.random.default_rng(7)


def _cases() -> dict[str, np.ndarray]:
    painting = standin.painting(96, 64)
    return {
        "painting": painting,
        "painting gray": np.ascontiguousarray(painting[..., 1]),
        "noise": RNG.integers(0, 256, (37, 53, 3), dtype=np.uint8),
        "noise gray": RNG.integers(0, 256, (41, 29), dtype=np.uint8),
        "one pixel": RNG.integers(0, 256, (1, 1, 3), dtype=np.uint8),
        "one row": RNG.integers(0, 256, (1, 9, 3), dtype=np.uint8),
        "one column": RNG.integers(0, 256, (9, 1), dtype=np.uint8),
        "white": np.full((5, 7, 3), 255, np.uint8),
        "black gray": np.zeros((4, 6), np.uint8),
        "not contiguous": painting[::2, ::-1],
    }


CASES = _cases()


@pytest.mark.parametrize("name", CASES)
def test_pillow_and_opencv_decode_the_same_pixels(name: str) -> None:
    pixels = CASES[name]
    data = png.encode_png(pixels)
    with Image.open(io.BytesIO(data)) as image:  # Pillow checks every chunk's CRC
        image.load()
        assert image.mode == ("RGB" if pixels.ndim == 3 else "L")
        assert np.array_equal(np.asarray(image), pixels)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels.ndim == 3:
        decoded = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
    assert np.array_equal(decoded, pixels)


def test_the_same_pixels_give_the_same_bytes_and_zlib_would_write_them() -> None:
    frame = standin.painting(512, 512)
    assert png.encode_png(frame) == png.encode_png(frame.copy())
    for pixels in (frame, CASES["noise"], CASES["noise gray"], CASES["white"]):
        rows = png.average_filtered(np.ascontiguousarray(pixels))
        python_zlib = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)
        assert png.deflate(rows) == python_zlib.compress(rows) + python_zlib.flush()
        # And it is a zlib stream of exactly those scanlines.
        assert zlib.decompress(png.deflate(rows)) == rows.tobytes()


def _average_reference(pixels: np.ndarray) -> np.ndarray:
    """PNG's Average filter, byte by byte as the specification writes it."""
    rows = pixels.reshape(pixels.shape[0], -1).astype(int)
    bpp = 1 if pixels.ndim == 2 else pixels.shape[2]
    out = np.zeros((rows.shape[0], rows.shape[1] + 1), int)
    out[:, 0] = 3
    for y in range(rows.shape[0]):
        for x in range(rows.shape[1]):
            left = rows[y, x - bpp] if x >= bpp else 0
            up = rows[y - 1, x] if y >= 1 else 0
            out[y, x + 1] = (rows[y, x] - (left + up) // 2) % 256
    return out.astype(np.uint8)


@pytest.mark.parametrize("name", ["noise", "noise gray", "one pixel", "one row", "one column"])
def test_the_filter_is_pngs_average(name: str) -> None:
    pixels = np.ascontiguousarray(CASES[name])
    assert np.array_equal(png.average_filtered(pixels), _average_reference(pixels))


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data.startswith(png.SIGNATURE)
    at, chunks = len(png.SIGNATURE), []
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length : at + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        chunks.append((kind, body))
        at += 12 + length
    return chunks


def test_only_the_header_one_idat_and_the_end_are_written() -> None:
    chunks = _chunks(png.encode_png(CASES["noise"]))
    assert [kind for kind, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    width, height, depth, colour, *rest = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (width, height, depth, colour, rest) == (53, 37, 8, 2, [0, 0, 0])
    assert struct.unpack(">IIBBBBB", _chunks(png.encode_png(CASES["noise gray"]))[0][1])[3] == 0


@pytest.mark.parametrize(
    ("pixels", "message"),
    [
        (np.zeros((4, 4, 3), np.float32), "pixels: must be H x W x 3 or H x W uint8, got float32"),
        (
            np.zeros((4, 4, 4), np.uint8),
            "pixels: must be H x W x 3 or H x W uint8, got uint8 (4, 4, 4)",
        ),
        (np.zeros((4,), np.uint8), "pixels: must be H x W x 3 or H x W uint8, got uint8 (4,)"),
        (
            np.zeros((0, 4, 3), np.uint8),
            "pixels: must have at least one pixel, got shape (0, 4, 3)",
        ),
    ],
)
def test_bad_pixels_are_refused_naming_them(pixels: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        png.encode_png(pixels)
    assert str(caught.value).startswith(message)
