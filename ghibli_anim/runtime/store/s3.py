"""``S3Store``: objects in one bucket of any S3 server, through the ``minio`` SDK.

Transient failures (connection refused or reset, timeouts, 5xx) are retried with
exponential backoff for a bounded time (``runtime.retry.within_budget``), so a restart of
the S3 server mid-job costs a delay, not a failed frame. Refused credentials raise
``StoreAuthError`` at once, with a message that never holds the secret.
"""

from __future__ import annotations

import io
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, TypeVar
from urllib.parse import urlsplit

import certifi
import urllib3
from minio import Minio
from minio.commonconfig import CopySource
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, S3Error, ServerError
from minio.helpers import check_bucket_name

from ghibli_anim.contracts import keys
from ghibli_anim.contracts.config import Settings
from ghibli_anim.runtime import retry
from ghibli_anim.runtime.store.base import (
    DEFAULT_CONTENT_TYPE,
    SHA256_META,
    NotFound,
    ObjectInfo,
    Store,
    StoreAuthError,
    StoreError,
    StoreUnavailable,
    check_prefix,
    check_ttl,
    sha256_hex,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


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
STAT_CONCURRENCY = 8
"""HEADs that ``stat_many`` keeps in flight: each is a round trip, and a completed job's
view asks one per file (about three a frame). Below the connection pool's size."""
_POOL_SIZE = 16


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
        maxsize=_POOL_SIZE,
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
        self.presign_ttl_s = check_ttl(presign_ttl_s, 900)
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
        started = time.monotonic()
        retrying = retry.within_budget(
            retry_on=_is_transient,
            budget_s=self.retry_budget_s,
            first_wait_s=0.1,
            max_wait_s=2.0,
            log=log,
            what=f"store: {what}",
        )
        try:
            return retrying(self._mapped, what, fn)
        except retry.RetryError as exc:
            error = exc.last_attempt.exception()
            raise StoreUnavailable(
                self._scrub(
                    f"{what}: S3 at {self.endpoint} still failing after "
                    f"{exc.last_attempt.attempt_number} tries in "
                    f"{time.monotonic() - started:.1f} s: {type(error).__name__}: {error}"
                )
            ) from None

    def _mapped(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()``; failures a retry cannot fix become StoreError (transient ones pass)."""
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
            raise
        except (
            urllib3.exceptions.HTTPError,
            ConnectionError,
            TimeoutError,
            ServerError,
            InvalidResponseError,
        ) as exc:
            if not _is_transient(exc):
                raise StoreError(self._scrub(f"{what}: {exc}")) from None
            raise

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

    def stat_many(self, keys_: Sequence[str]) -> list[ObjectInfo | None]:
        """``stat`` of each key, in order, ``STAT_CONCURRENCY`` HEADs in flight."""
        if len(keys_) < 2:
            return [self.stat(key) for key in keys_]
        workers = min(STAT_CONCURRENCY, len(keys_))
        with ThreadPoolExecutor(workers, thread_name_prefix="store-stat") as pool:
            return list(pool.map(self.stat, keys_))

    def copy(self, source: str, dest: str) -> None:
        """A server-side copy (CopyObject): the bytes never leave the S3 server, and the
        copy keeps the source's metadata (its sha256)."""
        keys.check_key(source)
        keys.check_key(dest)

        def do() -> None:
            try:
                self._client.copy_object(self.bucket, dest, CopySource(self.bucket, source))
            except S3Error as exc:
                if exc.code in _NOT_FOUND_CODES:
                    raise NotFound(source) from None
                raise

        self._call(f"copy {source} to {dest}", do)

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
        ttl = check_ttl(ttl_s, self.presign_ttl_s)
        return self._signer.presigned_get_object(self.bucket, key, expires=timedelta(seconds=ttl))

    def presign_put(self, key: str, ttl_s: int | None = None) -> str:
        keys.check_key(key)
        ttl = check_ttl(ttl_s, self.presign_ttl_s)
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
