"""An in-memory stand-in for a NATS JetStream KV bucket (``nats.js.kv.KeyValue``).

For unit tests of the job store without a server. It keeps only what the job store uses
(``create``, ``get``, ``update(last=)``, ``delete(last=)``, ``purge``, ``keys``) with the
server's semantics: one revision counter per bucket, ``KeyWrongLastSequenceError`` on a
stale or taken revision (for a delete, the server's plain ``BadRequestError``), and
``KeyNotFoundError`` for a missing or deleted key. The same
contract tests run against a real bucket (tests/integration/runtime/test_jobstore.py),
so the two cannot drift apart unnoticed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import nats.js.errors
from nats.js.kv import KeyValue


@dataclass
class MemoryKV:
    bucket: str = "memory"
    _values: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    _revision: int = 0
    before_write: Callable[[str], None] | None = None
    """Called before every write with the key: a test can slip a concurrent write in."""

    def _next(self) -> int:
        self._revision += 1
        return self._revision

    def _written(self, key: str, value: bytes) -> int:
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

    async def purge(self, key: str) -> bool:
        self._values.pop(key, None)
        self._next()
        return True

    async def keys(self) -> list[str]:
        if not self._values:
            raise nats.js.errors.NoKeysError
        return list(self._values)

    def write_behind(self, key: str, value: bytes) -> None:
        """A concurrent writer's update, as another process would make it."""
        self._written(key, value)
