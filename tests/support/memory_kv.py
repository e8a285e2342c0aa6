"""An in-memory stand-in for a NATS JetStream KV bucket (``nats.js.kv.KeyValue``).

For unit tests of the job store without a server. It keeps only what the job store uses
(``create``, ``get``, ``put``, ``update(last=)``, ``delete(last=)``, ``purge(before=)``,
and :class:`~ghibli_anim.runtime.bus.buckets.JobsBucket`'s ``commit``,
``keys_under`` and ``next_after``) with the server's semantics: one revision counter per
bucket (a key's revision is its place in the stream, so a rewrite moves it to the end),
``KeyWrongLastSequenceError`` on a stale or taken revision (for a delete, the server's
plain ``BadRequestError``), an atomic ``commit`` that checks every expected revision
before writing any, and ``KeyNotFoundError`` for a missing or deleted key. A value must be
bytes (nats-py measures it before sending). A purge inside a ``commit`` leaves a marker, as
the server's purge message does: listed by ``keys_under``, read by ``next_after`` as a value
of None, gone with the key's next write or its ``purge``. The same
contract tests run against a real bucket (tests/integration/runtime/test_jobstore.py),
so the two cannot drift apart unnoticed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import nats.js.errors
from nats.js.kv import KeyValue

from ghibli_anim.runtime.bus.buckets import Entry, Write


@dataclass
class MemoryKV:
    bucket: str = "memory"
    _values: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    _revision: int = 0
    _markers: dict[str, int] = field(default_factory=dict)
    """Keys purged inside a commit: the revision of their marker."""
    before_write: Callable[[str], None] | None = None
    """Called before every write with the key: a test can slip a concurrent write in."""

    def _next(self) -> int:
        self._revision += 1
        return self._revision

    def _written(self, key: str, value: bytes) -> int:
        if not isinstance(value, bytes):
            raise TypeError(f"value of {key}: bytes expected, got {type(value).__name__}")
        self._markers.pop(key, None)
        revision = self._next()
        self._values[key] = (value, revision)
        return revision

    async def create(self, key: str, value: bytes) -> int:
        if self.before_write is not None:
            self.before_write(key)
        if key in self._values:
            raise nats.js.errors.KeyWrongLastSequenceError(
                description="wrong last sequence: key exists"
            )
        return self._written(key, value)

    async def get(self, key: str) -> KeyValue.Entry:
        if key not in self._values:
            raise nats.js.errors.KeyNotFoundError
        value, revision = self._values[key]
        return KeyValue.Entry(
            bucket=self.bucket,
            key=key,
            value=value,
            revision=revision,
            delta=None,
            created=None,
            operation=None,
        )

    async def update(self, key: str, value: bytes, last: int | None = None) -> int:
        if self.before_write is not None:
            self.before_write(key)
        current = self._values.get(key)
        if current is None or (last is not None and current[1] != last):
            raise nats.js.errors.KeyWrongLastSequenceError(
                description=f"wrong last sequence: {current[1] if current else 0}"
            )
        return self._written(key, value)

    async def delete(self, key: str, last: int | None = None) -> bool:
        current = self._values.get(key)
        if current is not None and last is not None and current[1] != last:
            # nats-py turns a stale revision into KeyWrongLastSequenceError for updates
            # only; a delete raises the server's plain API error.
            raise nats.js.errors.BadRequestError(
                code=400, err_code=10071, description=f"wrong last sequence: {current[1]}"
            )
        self._values.pop(key, None)
        self._next()
        return True

    async def put(self, key: str, value: bytes) -> int:
        if self.before_write is not None:
            self.before_write(key)
        return self._written(key, value)

    async def purge(self, key: str, before: int | None = None) -> bool:
        current = self._values.get(key)
        if current is not None and (before is None or current[1] < before):
            del self._values[key]
        marker = self._markers.get(key)
        if marker is not None and (before is None or marker < before):
            del self._markers[key]
        self._next()
        return True

    async def keys_under(self, prefix: str = "", *, one_token: bool = False) -> list[str]:
        return [
            k
            for k in [*self._values, *self._markers]
            if k.startswith(prefix) and not (one_token and "." in k[len(prefix) :])
        ]

    async def commit(self, writes: Sequence[Write]) -> int:
        for write in writes:
            if self.before_write is not None:
                self.before_write(write.key)
        for write in writes:  # every check first: all or nothing
            have = self._values[write.key][1] if write.key in self._values else 0
            have = self._markers.get(write.key, have)
            if write.last is not None and have != write.last:
                raise nats.js.errors.KeyWrongLastSequenceError(
                    description=f"wrong last sequence: {have}"
                )
        revision = 0
        for write in writes:
            if write.purge:
                self._values.pop(write.key, None)
                revision = self._markers[write.key] = self._next()
            else:
                revision = self._written(write.key, write.value)
        return revision

    async def next_after(self, prefix: str, revision: int) -> Entry | None:
        later = [
            (rev, key)
            for key, rev in [
                *((k, r) for k, (_, r) in self._values.items()),
                *self._markers.items(),
            ]
            if key.startswith(prefix) and rev > revision
        ]
        if not later:
            return None
        rev, key = min(later)
        value = self._values[key][0] if key in self._values else None
        return Entry(key=key, value=value, revision=rev)

    def write_behind(self, key: str, value: bytes) -> None:
        """A concurrent writer's update, as another process would make it."""
        self._written(key, value)
