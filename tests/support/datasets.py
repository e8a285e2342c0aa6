"""Image folders for the dataset builder and the LoRA trainer: deterministic pictures, every
kind of bad file, and captioned training images."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def gradient_image(seed: int, size: tuple[int, int] = (96, 80)) -> Image.Image:
    """A deterministic picture: a colour gradient with a bright disc."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    base = rng.integers(0, 255, 3)
    pixels = np.stack(
        [(x * 255 // w + base[0]) % 256, (y * 255 // h + base[1]) % 256, np.full_like(x, base[2])],
        axis=-1,
    )
    cx, cy = rng.integers(10, w - 10), rng.integers(10, h - 10)
    pixels[(x - cx) ** 2 + (y - cy) ** 2 < 100] = 255
    return Image.fromarray(pixels.astype(np.uint8))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _claimed_size_png(path: Path, width: int, height: int) -> None:
    """A valid PNG header claiming ``width`` x ``height`` pixels, with almost no data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + _chunk(b"IEND", b"")
    )


def write_image_folder(folder: Path) -> Path:
    """``folder`` with good images (PNG, JPEG, WebP, a JPEG named .png), every kind of bad
    file, and captions in metadata.csv and a sidecar file."""
    folder.mkdir()
    gradient_image(1).save(folder / "castle.png")
    gradient_image(2).save(folder / "forest.jpg", quality=90)
    gradient_image(3).save(folder / "river.webp")
    gradient_image(4).save(folder / "sky.png", format="JPEG")  # signature says JPEG, name says PNG
    (folder / "zz-copy-of-castle.png").write_bytes((folder / "castle.png").read_bytes())
    (folder / "notes.png").write_text("this is a text file, not an image\n")
    whole = (folder / "forest.jpg").read_bytes()
    (folder / "broken.jpg").write_bytes(whole[: len(whole) // 2])
    _claimed_size_png(folder / "huge.png", 9000, 9000)  # 81 Mpx: over our cap, under Pillow's
    _claimed_size_png(folder / "bomb.png", 100_000, 100_000)  # over Pillow's own hard limit
    (folder / "empty.webp").write_bytes(b"")
    (folder / "sub").mkdir()
    # Captions of the user, in the seed paper's CSV and as a sidecar file.
    (folder / "metadata.csv").write_text(
        'file_name,caption\ncastle.png,"a castle on a hill, ""at dusk"""\n'
        "forest.jpg,a forest path\n"
    )
    (folder / "river.txt").write_text("a river  in\nthe valley\n")
    return folder


# Captions of the training images, one per picture.
CAPTIONS = [
    "a red house on a hill",
    "a blue river in a valley",
    "a green forest at dawn",
    "a small boat at sea",
    "a castle under the moon",
    "a quiet village street",
    "a field of yellow flowers",
    "a train in the mountains",
]


def _picture(i: int) -> Image.Image:
    rng = np.random.default_rng(i)
    y, x = np.mgrid[0:64, 0:64]
    colour = rng.integers(40, 255, 3)
    pixels = np.zeros((64, 64, 3), dtype=np.uint8) + (colour // 3).astype(np.uint8)
    cx, cy, r = rng.integers(16, 48), rng.integers(16, 48), rng.integers(6, 16)
    pixels[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = colour
    return Image.fromarray(pixels)


def write_training_images(folder: Path) -> None:
    """One 64x64 picture per caption of CAPTIONS (``img<i>.png``), each with its caption in
    a sidecar file (``img<i>.txt``)."""
    for i, caption in enumerate(CAPTIONS):
        _picture(i).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(caption)
