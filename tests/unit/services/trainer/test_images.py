"""services/trainer/images.py: file signatures; pixels made RGB, upright and square."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from ghibli_anim.services.trainer.images import sniff, square_crop, to_rgb


def test_signatures() -> None:
    assert sniff(b"\x89PNG\r\n\x1a\n....") == "PNG"
    assert sniff(b"\xff\xd8\xff\xe0") == "JPEG"
    assert sniff(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "WEBP"
    assert sniff(b"RIFF\x00\x00\x00\x00WAVEfmt ") is None
    assert sniff(b"GIF89a") is None


def test_pixels_are_made_rgb_upright_and_square() -> None:
    clear = Image.new("RGBA", (8, 8), (10, 20, 30, 0))
    assert to_rgb(clear).getpixel((0, 0)) == (255, 255, 255)  # transparency -> white
    deep = Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16))
    assert deep.mode.startswith("I;16")
    assert to_rgb(deep).getpixel((0, 0)) == (128, 128, 128)  # scaled, not clipped to white
    tall = Image.new("RGB", (40, 80), (0, 0, 0))
    exif = tall.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    data = io.BytesIO()
    tall.save(data, format="JPEG", exif=exif.tobytes())
    upright = to_rgb(Image.open(data))
    assert upright.size == (80, 40)  # turned upright before cropping
    assert square_crop(upright, 32).size == (32, 32)
    assert square_crop(Image.new("RGB", (300, 100)), 64).size == (64, 64)
