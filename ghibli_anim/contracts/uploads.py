"""Init images: what an uploaded image must be, checked the same way on every edge.

``CreateUpload`` gives a client a presigned PUT URL for ``uploads/{upload_id}``.
A request that names the upload (``init_upload_id``) is validated before its job
is created: the object must exist, be at most ``limits.UPLOAD_BYTES``, start
with a PNG, JPEG or WebP signature, declare at most ``limits.UPLOAD_PIXELS``
pixels (checked from the header, before any pixel is decoded) and decode
completely (a truncated file is refused). The decoded image is re-encoded as an
RGB PNG into the job's own ``jobs/{id}/init.png``, which frame 0 starts from:
the job never reads the uploaded bytes again, so a later PUT to the same URL
cannot change a running job, and a job never decodes anything but a PNG the
planner wrote.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from ghibli_anim.contracts import limits

# Magic bytes -> (format name, content type).
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG", "image/png"),
    (b"\xff\xd8\xff", "JPEG", "image/jpeg"),
)
CONTENT_TYPES = ("image/png", "image/jpeg", "image/webp")


def sniff(data: bytes) -> tuple[str, str] | None:
    """(Pillow format, content type) from the first bytes, or None when not an image we take."""
    for magic, fmt, content_type in _SIGNATURES:
        if data.startswith(magic):
            return fmt, content_type
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP", "image/webp"
    return None


def check_request(content_type: str, size_bytes: int) -> None:
    """CreateUpload's fields: a supported content type and a size within the cap."""
    if content_type not in CONTENT_TYPES:
        raise ValueError(
            f"content_type: must be one of {', '.join(CONTENT_TYPES)}, got {content_type!r:.60}"
        )
    if not 1 <= size_bytes <= limits.UPLOAD_BYTES:
        raise ValueError(
            f"size_bytes: must be an integer in 1..{limits.UPLOAD_BYTES}, got {size_bytes}"
        )


def validate_image(
    data: bytes,
    field: str = "init_upload_id",
    *,
    max_bytes: int = limits.UPLOAD_BYTES,
    max_pixels: int = limits.UPLOAD_PIXELS,
) -> bytes:
    """Check an uploaded image and return it re-encoded as an RGB PNG.

    Raises ValueError naming ``field`` when it is too big, not a PNG/JPEG/WebP
    by signature, declares too many pixels, or does not decode completely.
    """
    from PIL import Image

    if len(data) > max_bytes:
        raise ValueError(f"{field}: the upload is {len(data)} bytes, the limit is {max_bytes}")
    kind = sniff(data)
    if kind is None:
        raise ValueError(f"{field}: the upload is not a PNG, JPEG or WebP image (by its signature)")
    fmt = kind[0]

    def unreadable(exc: Exception) -> ValueError:
        return ValueError(f"{field}: the upload is not a readable {fmt} image ({exc})")

    with warnings.catch_warnings():
        # Pillow's own bomb check warns first; the cap below is the one that counts.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=[fmt])  # the header only
        except Exception as exc:
            raise unreadable(exc) from None
        width, height = image.size
        if width * height > max_pixels:
            raise ValueError(
                f"{field}: the image is {width}x{height} = {width * height} pixels, "
                f"the limit is {max_pixels}"
            )
        try:
            image.load()  # a truncated file fails here
            rgb = image.convert("RGB")
        except Exception as exc:
            raise unreadable(exc) from None
    out = io.BytesIO()
    rgb.save(out, format="PNG", optimize=False, compress_level=6)
    return out.getvalue()


def read_image_file(path: Path, field: str = "--init-image") -> tuple[bytes, str]:
    """(bytes, content type) of a local image file, checked like the server will."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{field}: cannot read {path} ({exc.strerror or exc})") from None
    if len(data) > limits.UPLOAD_BYTES:
        raise ValueError(
            f"{field}: {path} is {len(data)} bytes, the limit is {limits.UPLOAD_BYTES}"
        )
    kind = sniff(data)
    if kind is None:
        raise ValueError(f"{field}: {path} is not a PNG, JPEG or WebP image")
    return data, kind[1]
