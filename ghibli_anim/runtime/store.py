"""The store: frames, plans and outputs by key (DESIGN.md "Store").

One interface, two implementations:

- ``S3Store``: any S3 server (MinIO, SeaweedFS, a cloud bucket) through the
  ``minio`` SDK. Transient failures (connection refused or reset, timeouts,
  5xx) are retried with exponential backoff for a bounded time, so a restart of
  the S3 server mid-job costs a delay, not a failed frame. Refused credentials
  raise ``StoreAuthError`` at once, with a message that never holds the secret.
- ``LocalStore``: a folder, for the embedded mode. ``jobs/{id}/X`` lives at
  ``ROOT/{id}/X``, ``uploads/X`` at ``ROOT/_uploads/X``, ``loras/X`` at
  ``ROOT/_loras/X``. Writes go to a temporary file in the same folder and are
  renamed into place, so a reader never sees half a file.

Every key is checked with ``keys.check_key`` and every prefix with
``check_prefix`` before anything touches the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import mimetypes
import os
import re
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import certifi
import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, S3Error, ServerError
from minio.helpers import check_bucket_name

from ghibli_anim.contracts import keys
from ghibli_anim.contracts.config import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_CONTENT_TYPE = "application/octet-stream"
# S3 refuses presigned URLs that live longer than seven days.
MAX_PRESIGN_TTL_S = 7 * 24 * 3600
# Object metadata holding the sha256 written at put (x-amz-meta-sha256).
SHA256_META = "x-amz-meta-sha256"


# -- errors -----------------------------------------------------------------


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
    r"|loras/([a-z0-9._-]*|[a-z0-9][a-z0-9._-]{0,62}/[A-Za-z0-9_.-]*))$"
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


def _check_ttl(ttl_s: int | None, default: int) -> int:
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

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

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


# -- S3 ---------------------------------------------------------------------

# Codes that mean "these credentials may not do this": retrying cannot help.
_AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "AuthorizationHeaderMalformed",
        "ExpiredToken",
        "InvalidToken",
        "AllAccessDisabled",
    }
)
# Codes that servers send while busy or restarting.
_TRANSIENT_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "RequestTimeout",
        "XMinioServerNotInitialized",
    }
)
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchObject", "ResourceNotFound"})


def _split_endpoint(value: str, secure: bool, field: str) -> tuple[str, bool]:
    """``host:port`` and whether to use TLS, from ``host:port`` or ``scheme://host:port``."""
    if "://" not in value:
        if not value or "/" in value:
            raise ValueError(f"{field}: must be host:port or scheme://host:port, got {value!r}")
        return value, secure
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise ValueError(f"{field}: must be http(s)://host[:port] with no path, got {value!r}")
    return parts.netloc, parts.scheme == "https"


def _http_client(secure: bool, connect_s: float, read_s: float) -> urllib3.PoolManager:
    # No urllib3 retries: S3Store retries itself, on its own budget.
    kwargs: dict[str, Any] = {}
    if secure:
        kwargs = {
            "cert_reqs": "CERT_REQUIRED",
            "ca_certs": os.environ.get("SSL_CERT_FILE") or certifi.where(),
        }
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=connect_s, read=read_s),
        retries=False,
        maxsize=16,
        **kwargs,
    )


def _status_of(exc: BaseException) -> int | None:
    if isinstance(exc, S3Error):
        return getattr(exc.response, "status", None)
    if isinstance(exc, ServerError):
        return exc.status_code
    if isinstance(exc, InvalidResponseError):
        return getattr(exc, "_code", None)
    return None


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, urllib3.exceptions.SSLError | urllib3.exceptions.LocationValueError):
        return False  # a wrong certificate or URL stays wrong
    if isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError):
        return True
    if isinstance(exc, S3Error) and exc.code in _TRANSIENT_CODES:
        return True
    status = _status_of(exc)
    return status is not None and status >= 500


class S3Store(Store):
    """Objects in one bucket of an S3 server.

    Two minio clients: one talks to ``endpoint``; the other only signs URLs for
    ``public_endpoint`` (what browsers and remote clients reach) and never
    connects, since both are built with ``region=`` and so skip the location
    look-up.
    """

    kind = "s3"

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        *,
        region: str = "us-east-1",
        secure: bool = False,
        public_endpoint: str = "",
        presign_ttl_s: int = 900,
        retry_budget_s: float = 30.0,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
    ) -> None:
        if not access_key:
            raise ValueError("ANIM_S3_ACCESS_KEY: must not be empty")
        if not secret_key:
            raise ValueError("ANIM_S3_SECRET_KEY: must not be empty")
        if not retry_budget_s >= 0:
            raise ValueError(f"retry_budget_s: must be >= 0, got {retry_budget_s!r}")
        host, secure = _split_endpoint(endpoint, secure, "ANIM_S3_ENDPOINT")
        self.endpoint = host
        self.bucket = bucket
        self.region = region
        # Both are secrets (config.py): kept only to scrub them from messages.
        self._secrets = (access_key, secret_key)
        self.presign_ttl_s = _check_ttl(presign_ttl_s, 900)
        self.retry_budget_s = retry_budget_s
        self._client = Minio(
            host,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region,
            http_client=_http_client(secure, connect_timeout_s, read_timeout_s),
        )
        if public_endpoint:
            pub_host, pub_secure = _split_endpoint(
                public_endpoint, secure, "ANIM_S3_PUBLIC_ENDPOINT"
            )
            self._signer = Minio(
                pub_host,
                access_key=access_key,
                secret_key=secret_key,
                secure=pub_secure,
                region=region,
            )
        else:
            self._signer = self._client
        # Fails here, naming the variable, rather than at the first put.
        try:
            check_bucket_name(bucket, True)
        except ValueError:
            raise ValueError(
                f"ANIM_S3_BUCKET: not a valid S3 bucket name, got {bucket!r}"
            ) from None

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> S3Store:
        """Build from the ANIM_S3_* variables; ``kwargs`` override (e.g. retry_budget_s)."""
        return cls(
            settings["ANIM_S3_ENDPOINT"],
            settings["ANIM_S3_ACCESS_KEY"],
            settings["ANIM_S3_SECRET_KEY"],
            settings["ANIM_S3_BUCKET"],
            region=settings["ANIM_S3_REGION"],
            secure=settings["ANIM_S3_SECURE"],
            public_endpoint=settings["ANIM_S3_PUBLIC_ENDPOINT"],
            presign_ttl_s=settings["ANIM_PRESIGN_TTL_S"],
            **kwargs,
        )

    def __repr__(self) -> str:
        return f"S3Store(endpoint={self.endpoint!r}, bucket={self.bucket!r})"

    # -- retry and error mapping -------------------------------------------
    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run ``fn``, retrying transient failures with backoff within the budget."""
        start = time.monotonic()
        delay = 0.1
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn()
            except S3Error as exc:
                if exc.code in _AUTH_CODES:
                    raise StoreAuthError(
                        self._scrub(
                            f"{what}: S3 at {self.endpoint} refused the credentials: "
                            f"{exc.code} ({exc.message}); check "
                            "ANIM_S3_ACCESS_KEY, ANIM_S3_SECRET_KEY and the key's permissions"
                        )
                    ) from None
                if exc.code == "NoSuchBucket":
                    raise StoreError(
                        f"{what}: bucket {self.bucket!r} does not exist on {self.endpoint} "
                        "(ANIM_S3_BUCKET; `ghibli-anim store init` creates it)"
                    ) from None
                if not _is_transient(exc):
                    raise StoreError(
                        self._scrub(f"{what}: S3 error {exc.code}: {exc.message}")
                    ) from None
                error: BaseException = exc
            except (
                urllib3.exceptions.HTTPError,
                ConnectionError,
                TimeoutError,
                ServerError,
                InvalidResponseError,
            ) as exc:
                if not _is_transient(exc):
                    raise StoreError(self._scrub(f"{what}: {exc}")) from None
                error = exc
            elapsed = time.monotonic() - start
            if elapsed + delay > self.retry_budget_s:
                raise StoreUnavailable(
                    self._scrub(
                        f"{what}: S3 at {self.endpoint} still failing after {attempt} tries "
                        f"in {elapsed:.1f} s: {type(error).__name__}: {error}"
                    )
                ) from None
            log.warning(
                "store: %s failed (%s), retry %d in %.1f s",
                what,
                type(error).__name__,
                attempt,
                delay,
            )
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    # -- operations ---------------------------------------------------------
    def put(self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> ObjectInfo:
        keys.check_key(key)
        data = bytes(data)
        digest = sha256_hex(data)

        def do() -> None:
            # A fresh stream per try: a failed try may have read part of it.
            self._client.put_object(
                self.bucket,
                key,
                io.BytesIO(data),
                len(data),
                content_type=content_type,
                metadata={SHA256_META: digest},
            )

        self._call(f"put {key}", do)
        return ObjectInfo(key, len(data), digest, content_type)

    def get(self, key: str) -> bytes:
        keys.check_key(key)

        def do() -> tuple[bytes, str | None]:
            try:
                response = self._client.get_object(self.bucket, key)
            except S3Error as exc:
                if exc.code in _NOT_FOUND_CODES:
                    raise NotFound(key) from None
                raise
            try:
                return response.read(), response.headers.get(SHA256_META)
            finally:
                response.close()
                response.release_conn()

        data, expected = self._call(f"get {key}", do)
        # The digest written at put is free to check here: catch corruption.
        if expected and sha256_hex(data) != expected:
            raise StoreError(f"get {key}: content does not match its sha256 {expected}")
        return data

    def stat(self, key: str) -> ObjectInfo | None:
        keys.check_key(key)

        def do() -> ObjectInfo | None:
            try:
                obj = self._client.stat_object(self.bucket, key)
            except S3Error as exc:
                if exc.code in _NOT_FOUND_CODES:
                    return None
                raise
            meta = obj.metadata or {}
            return ObjectInfo(
                key,
                int(obj.size or 0),
                meta.get(SHA256_META),
                obj.content_type or DEFAULT_CONTENT_TYPE,
            )

        return self._call(f"stat {key}", do)

    def list(self, prefix: str) -> list[str]:
        check_prefix(prefix)

        def do() -> list[str]:
            objects = self._client.list_objects(self.bucket, prefix=prefix, recursive=True)
            return sorted(o.object_name for o in objects if o.object_name and not o.is_dir)

        return self._call(f"list {prefix}", do)

    def delete(self, key: str) -> None:
        keys.check_key(key)
        self._call(f"delete {key}", lambda: self._client.remove_object(self.bucket, key))

    def delete_prefix(self, prefix: str) -> int:
        found = self.list(prefix)
        if not found:
            return 0

        def do() -> None:
            # One request per thousand keys; the iterator must be drained to run.
            errors = list(
                self._client.remove_objects(self.bucket, [DeleteObject(k) for k in found])
            )
            if errors:
                first = errors[0]
                raise StoreError(
                    f"delete_prefix {prefix}: {len(errors)} keys not deleted, first "
                    f"{first.name}: {first.code} {first.message}"
                )

        self._call(f"delete_prefix {prefix}", do)
        return len(found)

    def presign_get(self, key: str, ttl_s: int | None = None) -> str:
        keys.check_key(key)
        ttl = _check_ttl(ttl_s, self.presign_ttl_s)
        return self._signer.presigned_get_object(self.bucket, key, expires=timedelta(seconds=ttl))

    def presign_put(self, key: str, ttl_s: int | None = None) -> str:
        keys.check_key(key)
        ttl = _check_ttl(ttl_s, self.presign_ttl_s)
        return self._signer.presigned_put_object(self.bucket, key, expires=timedelta(seconds=ttl))

    def ensure_bucket(self) -> None:
        def do() -> None:
            if self._client.bucket_exists(self.bucket):
                return
            try:
                self._client.make_bucket(self.bucket)
            except S3Error as exc:
                # Another process created it between the two calls.
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

        self._call(f"ensure_bucket {self.bucket}", do)


# -- local folder -----------------------------------------------------------

_TMP_PREFIX = ".tmp-"
# Top-level key folders and the folder each lives in under the root.
_LOCAL_DIRS = {keys.UPLOAD_PREFIX: "_uploads", keys.LORA_PREFIX: "_loras"}


class LocalStore(Store):
    """Objects as files under ``root`` (the embedded mode; ``ANIM_RUNS_DIR``).

    ``stat`` hashes the file to report its sha256 (objects are frames and
    outputs, megabytes at most) and reports a content type guessed from the
    extension: the folder keeps no metadata.

    Presigned URLs are ``file://`` URLs of the object's path: they work only on
    this machine, carry no expiry (``ttl_s`` is checked, then ignored) and no
    signature. ``presign_put`` creates the parent folder so its URL is writable;
    whoever writes through it should write a temporary file and rename it.
    """

    kind = "local"

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().absolute()

    def __repr__(self) -> str:
        return f"LocalStore(root={str(self.root)!r})"

    def _path(self, key_or_prefix: str) -> Path:
        """The file (or folder, for a prefix ending in '/') of a checked key."""
        top, _, rest = key_or_prefix.partition("/")
        if top == keys.JOB_PREFIX:
            return self.root / rest
        return self.root / _LOCAL_DIRS[top] / rest

    def path_of(self, key: str) -> Path:
        """Where the object of ``key`` lives on disk."""
        return self._path(keys.check_key(key))

    def put(self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> ObjectInfo:
        path = self.path_of(key)
        data = bytes(data)
        # Same folder, so the rename is atomic; readers see old or new, never half.
        for attempt in range(3):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TMP_PREFIX)
                break
            except FileNotFoundError:
                # A delete_prefix pruned the empty folder in between: make it again.
                if attempt == 2:
                    raise
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return ObjectInfo(key, len(data), sha256_hex(data), content_type)

    def get(self, key: str) -> bytes:
        path = self.path_of(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotFound(key) from None

    def stat(self, key: str) -> ObjectInfo | None:
        path = self.path_of(key)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        content_type = mimetypes.guess_type(path.name)[0] or DEFAULT_CONTENT_TYPE
        return ObjectInfo(key, len(data), sha256_hex(data), content_type)

    def exists(self, key: str) -> bool:
        return self.path_of(key).is_file()

    def list(self, prefix: str) -> list[str]:
        check_prefix(prefix)
        # Walk the folder of the prefix's last complete segment, then filter.
        folder_key = prefix[: prefix.rfind("/") + 1]
        folder = self._path(folder_key)
        found: list[str] = []
        for dirpath, _dirs, files in os.walk(folder):
            rel = Path(dirpath).relative_to(folder).as_posix()
            base = folder_key if rel == "." else f"{folder_key}{rel}/"
            for name in files:
                key = base + name
                if name.startswith(_TMP_PREFIX) or not key.startswith(prefix):
                    continue
                # Files that no key maps to are not objects.
                with contextlib.suppress(ValueError):
                    found.append(keys.check_key(key))
        return sorted(found)

    def delete(self, key: str) -> None:
        self.path_of(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> int:
        count = super().delete_prefix(prefix)
        # Drop folders left empty, bottom up, stopping at the root (or _uploads, _loras).
        top = prefix.split("/", 1)[0]
        stop = self.root if top == keys.JOB_PREFIX else self._path(top + "/")
        folder = self._path(prefix[: prefix.rfind("/") + 1])
        for dirpath, _dirs, _files in os.walk(folder, topdown=False):
            if Path(dirpath) != stop:
                with contextlib.suppress(OSError):  # not empty: keep it
                    os.rmdir(dirpath)
        while folder != stop and stop in folder.parents:
            try:
                folder.rmdir()
            except FileNotFoundError:
                pass  # the walk above removed it already
            except OSError:
                break  # not empty: neither are its parents
            folder = folder.parent
        return count

    def presign_get(self, key: str, ttl_s: int | None = None) -> str:
        _check_ttl(ttl_s, 900)
        return self.path_of(key).as_uri()

    def presign_put(self, key: str, ttl_s: int | None = None) -> str:
        _check_ttl(ttl_s, 900)
        path = self.path_of(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.as_uri()

    def ensure_bucket(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)


def open_store(settings: Settings, **kwargs: Any) -> Store:
    """The store ``ANIM_STORE`` names: ``S3Store`` (s3) or ``LocalStore`` (local).

    ``kwargs`` go to ``S3Store`` (e.g. ``retry_budget_s``).
    """
    kind = settings["ANIM_STORE"]
    if kind == "local":
        return LocalStore(settings["ANIM_RUNS_DIR"])
    if kind == "s3":
        return S3Store.from_settings(settings, **kwargs)
    raise ValueError(f"ANIM_STORE: must be s3 or local, got {kind!r}")
