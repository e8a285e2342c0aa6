"""Init images: presigned uploads, validation before a job starts, the client side.

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
import os
import tempfile
import urllib.parse
import urllib.request
import warnings
from pathlib import Path

from ghibli_anim.contracts import keys, limits
from ghibli_anim.runtime.store import Store

# Magic bytes -> (format name, content type).
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG", "image/png"),
    (b"\xff\xd8\xff", "JPEG", "image/jpeg"),
)
CONTENT_TYPES = ("image/png", "image/jpeg", "image/webp")
INIT_NAME = "init.png"


def init_key(job_id: str) -> str:
    """Store key of a job's validated init image (what frame 0 starts from)."""
    return keys.job_prefix(job_id) + INIT_NAME


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


def load_upload(store: Store, upload_id: str, field: str = "init_upload_id") -> bytes:
    """The validated, re-encoded PNG of ``uploads/{upload_id}`` (blocking; run in a thread)."""
    key = keys.upload_key(keys.check_upload_id(upload_id, field))
    info = store.stat(key)
    if info is None:
        raise ValueError(f"{field}: nothing was uploaded for {upload_id} (no {key})")
    if info.size > limits.UPLOAD_BYTES:
        raise ValueError(
            f"{field}: the upload is {info.size} bytes, the limit is {limits.UPLOAD_BYTES}"
        )
    try:
        data = store.get(key)
    except KeyError:
        raise ValueError(f"{field}: nothing was uploaded for {upload_id} (no {key})") from None
    return validate_image(data, field)


# ---------------------------------------------------------------------------
# Client side: PUT a file to a presigned URL
# ---------------------------------------------------------------------------


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


def put_presigned(url: str, data: bytes, content_type: str, timeout_s: float = 60.0) -> None:
    """Upload ``data`` to a presigned PUT URL (http(s), or file:// of the local store)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        # The local store's "URL" is the object's path: write beside it, then rename.
        dest = Path(urllib.request.url2pathname(parsed.path))
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return
    if parsed.scheme not in ("http", "https"):
        raise ValueError(f"put_url: unsupported scheme {parsed.scheme!r}")
    request = urllib.request.Request(
        url, data=data, method="PUT", headers={"Content-Type": content_type}
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        if response.status not in (200, 201, 204):
            raise OSError(f"put_url: the store answered HTTP {response.status}")


async def upload_init_image(stub, path: Path, metadata=None, timeout_s: float = 30.0) -> str:
    """CreateUpload, then PUT the file; returns the upload id for ``init_upload_id``.

    ``stub`` is an ``AnimationServiceStub`` (``AnimationClient.stub``).
    """
    import asyncio

    from ghibli_anim.contracts.pb import animation_pb2

    data, content_type = read_image_file(path)
    resp = await stub.CreateUpload(
        animation_pb2.CreateUploadRequest(content_type=content_type, size_bytes=len(data)),
        timeout=timeout_s,
        metadata=metadata,
    )
    await asyncio.to_thread(put_presigned, resp.put_url, data, content_type)
    return resp.upload_id
