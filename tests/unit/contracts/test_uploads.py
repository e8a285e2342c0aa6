"""contracts/uploads.py: init images are checked and re-encoded; upload requests are bounded."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from ghibli_anim.contracts import limits, uploads


def _png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size).save(out, format="PNG")
    return out.getvalue()


def test_init_images_are_checked_and_reencoded() -> None:
    jpeg = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 100, 50)).save(jpeg, format="JPEG")
    png = uploads.validate_image(jpeg.getvalue())
    image = Image.open(io.BytesIO(png))
    assert (image.format, image.mode, image.size) == ("PNG", "RGB", (40, 30))
    good = _png((64, 64))
    cases = [
        (b"GIF89a not what we take", r"not a PNG, JPEG or WebP image \(by its signature\)"),
        (good[: len(good) // 2], r"not a readable PNG image"),
        (_png((4097, 4096), "1"), r"4097x4096 = 16781312 pixels, the limit is 16777216"),
        (good + b"\0" * 64, None),  # trailing bytes after IEND are harmless
    ]
    for data, message in cases:
        if message is None:
            assert uploads.validate_image(data) == uploads.validate_image(good)
            continue
        with pytest.raises(ValueError, match=rf"^init_upload_id: .*{message}"):
            uploads.validate_image(data)
    with pytest.raises(ValueError, match=r"^content_type: must be one of image/png"):
        uploads.check_request("image/gif", 10)
    with pytest.raises(
        ValueError, match=rf"^size_bytes: must be an integer in 1\.\.{limits.UPLOAD_BYTES}"
    ):
        uploads.check_request("image/png", limits.UPLOAD_BYTES + 1)
