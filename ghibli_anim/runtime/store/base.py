"""The object store's interface: frames, plans and outputs by key.

Two implementations: ``runtime.store.s3.S3Store`` (any S3 server: MinIO, SeaweedFS, a
cloud bucket) and ``runtime.store.local.LocalStore`` (a folder, for the embedded mode);
``runtime.store.open.open_store`` picks one from ``ANIM_STORE``. Every key is checked
with ``keys.check_key`` and every prefix with :func:`check_prefix` before anything
touches the store.
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from ghibli_anim.contracts import keys

DEFAULT_CONTENT_TYPE = "application/octet-stream"
# S3 refuses presigned URLs that live longer than seven days.
MAX_PRESIGN_TTL_S = 7 * 24 * 3600
# Object metadata holding the sha256 written at put (x-amz-meta-sha256).
SHA256_META = "x-amz-meta-sha256"


class StoreError(RuntimeError):
    """The store failed in a way a retry will not fix by itself."""


class NotFound(KeyError):
    """No object under this key (a ``KeyError``, hence a ``LookupError``)."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key

    def __str__(self) -> str:
        return f"not in the store: {self.key}"


class StoreAuthError(StoreError):
    """The S3 server refused the credentials or the permission."""


class StoreUnavailable(StoreError):
    """The S3 server stayed unreachable (or failing) for the whole retry budget."""


# -- keys and prefixes ------------------------------------------------------

# What may follow a top-level folder in a prefix: a start of a valid key.
_PREFIX_RE = re.compile(
    r"^(jobs/[0-9a-f]{32}/[a-z0-9_./]*"
    r"|uploads/[0-9a-f]*"
    rf"|loras/([a-z0-9._-]*|{keys.NAME_PATTERN}/[A-Za-z0-9_.-]*))$"
)


def check_prefix(value: object, field: str = "prefix") -> str:
    """Accept ``jobs/<valid id>/...``, ``uploads/...`` or ``loras/...`` prefixes."""
    if not (
        isinstance(value, str)
        and _PREFIX_RE.match(value)
        and ".." not in value
        and "//" not in value
    ):
        raise ValueError(
            f"{field}: must start with 'jobs/<32 hex job id>/', 'uploads/' or 'loras/' "
            f"and hold no '..', got {value!r:.120}"
        )
    return value


def check_ttl(ttl_s: int | None, default: int) -> int:
    ttl = default if ttl_s is None else ttl_s
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= MAX_PRESIGN_TTL_S:
        raise ValueError(f"ttl_s: must be an integer in 1..{MAX_PRESIGN_TTL_S}, got {ttl!r}")
    return ttl


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- interface --------------------------------------------------------------


@dataclass(frozen=True)
class ObjectInfo:
    """What the store knows about one object."""

    key: str
    size: int
    sha256: str | None
    """Hex digest; None when the object was written without it (not by this module)."""
    content_type: str


class Store(ABC):
    """Objects by key. All methods are blocking; call them from a worker thread in async code."""

    kind: str

    @abstractmethod
    def put(self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> ObjectInfo:
        """Write ``data`` under ``key``, replacing any object there (idempotent, atomic)."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The object's bytes; raise ``NotFound`` when there is none."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """Size, sha256 and content type, or None when there is no object."""

    def stat_many(self, keys_: Sequence[str]) -> list[ObjectInfo | None]:
        """``stat`` of each key, in the same order (a store on a network asks side by side)."""
        return [self.stat(key) for key in keys_]

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def copy(self, source: str, dest: str) -> None:
        """Copy the object at ``source`` to ``dest`` (replacing it); ``NotFound`` when there
        is no source. The copy is an object of its own: deleting the source keeps it."""
        info = self.stat(source)
        if info is None:
            raise NotFound(source)
        self.put(dest, self.get(source), info.content_type)

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Every key that starts with ``prefix``, sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; nothing happens when there is none."""

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object under ``prefix``; return how many there were."""
        found = self.list(prefix)
        for key in found:
            self.delete(key)
        return len(found)

    @abstractmethod
    def presign_get(self, key: str, ttl_s: int | None = None) -> str:
        """A URL that reads the object without credentials, valid ``ttl_s`` seconds."""

    @abstractmethod
    def presign_put(self, key: str, ttl_s: int | None = None) -> str:
        """A URL that writes the object without credentials, valid ``ttl_s`` seconds."""

    @abstractmethod
    def ensure_bucket(self) -> None:
        """Create the bucket (or folder) when missing."""
