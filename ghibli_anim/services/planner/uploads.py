"""Init images the planner checks before a job exists (``init_upload_id``).

The upload (``uploads/{id}``, written by the client through a presigned PUT) is read,
validated like every edge validates images (:func:`ghibli_anim.contracts.uploads.
validate_image`) and re-encoded as a PNG, which the job keeps as ``jobs/{id}/init.png``.
"""

from __future__ import annotations

from ghibli_anim.contracts import keys, limits
from ghibli_anim.contracts.uploads import validate_image
from ghibli_anim.runtime.store.base import NotFound, Store


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
    except NotFound:
        raise ValueError(f"{field}: nothing was uploaded for {upload_id} (no {key})") from None
    return validate_image(data, field)
