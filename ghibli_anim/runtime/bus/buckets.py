"""The job bucket on its stream: what ``anim-jobs`` needs beyond nats-py's ``KeyValue``.

A KV bucket is a JetStream stream (``KV_<bucket>``, one subject per key), and the job store
(:mod:`ghibli_anim.runtime.jobstore`) uses three things the stream offers that nats-py's
``KeyValue`` does not: writing several keys as one atomic batch, listing keys by a
subjects filter, and walking keys in the order they were last written. This module is the
wire side of those; the job store's logic lives in jobstore.py, tested on an in-memory
stand-in (tests/support/memory_kv.py) that speaks the same interface.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from ghibli_anim.runtime.bus.names import JOBS_BUCKET


@dataclass(frozen=True)
class Write:
    """One key of an atomic multi-key write (:meth:`JobsBucket.commit`)."""

    key: str
    value: bytes = b""
    last: int | None = None
    """The revision the key must still have (0: the key must not exist); None: any."""
    purge: bool = False
    """Remove the key (a purge marker) instead of writing ``value``."""


@dataclass(frozen=True)
class Entry:
    """A key as the bucket's stream holds it, found by :meth:`JobsBucket.next_after`."""

    key: str
    value: bytes | None
    """None for a delete or purge marker."""
    revision: int


_KV_OPERATION = "KV-Operation"
_WRONG_LAST_SEQUENCE = 10071  # server error code: an expected revision did not match
_BATCH_INCOMPLETE = 10176  # a message of the batch was refused (e.g. too many in flight)
COMMITS_IN_FLIGHT = 16
"""Atomic batches one process has open at once: the server takes 50 per stream."""


class JobsBucket:
    """The ``anim-jobs`` bucket, with what its stream offers beyond nats-py's ``KeyValue``.

    - ``keys_under(prefix)`` lists keys with one stream-info request per 100,000 (a
      subjects filter), never through an ordered consumer: nats-py's ``KeyValue.keys()``
      can decide it is done before the first keys arrive.
    - ``purge(key)`` purges the key's subject, leaving no delete marker behind.
    - ``commit(writes)`` writes several keys as one atomic batch (nats-server 2.12+,
      ``allow_atomic`` on the stream, which ``bus init`` sets): every key's expected
      revision is checked when the batch commits, and either every write lands or none.
    - ``next_after(prefix, revision)`` is the first key under ``prefix`` written after
      ``revision``: the stream keeps one message per key (history 1), so keys come in
      the order they were last written.

    Everything else is the bucket's own.
    """

    def __init__(
        self, kv: KeyValue, js: JetStreamContext, nc: Client, bucket: str = JOBS_BUCKET
    ) -> None:
        self._kv = kv
        self._js = js
        self._nc = nc
        self._stream = f"KV_{bucket}"
        self._prefix = f"$KV.{bucket}."
        self._in_flight = asyncio.Semaphore(COMMITS_IN_FLIGHT)

    def __getattr__(self, name: str) -> object:
        return getattr(self._kv, name)

    async def keys_under(self, prefix: str = "", *, one_token: bool = False) -> list[str]:
        """Keys that start with ``prefix`` (``one_token``: without a further dot)."""
        wildcard = "*" if one_token else ">"
        request = {"subjects_filter": self._prefix + prefix + wildcard, "offset": 0}
        keys: list[str] = []
        while True:
            reply = await self._nc.request(
                f"$JS.API.STREAM.INFO.{self._stream}", json.dumps(request).encode(), timeout=10
            )
            info = json.loads(reply.data)
            if "error" in info:
                nats.js.errors.APIError.from_error(info["error"])
            subjects = info.get("state", {}).get("subjects") or {}
            keys.extend(subject.removeprefix(self._prefix) for subject in subjects)
            total = info.get("total", 0)
            if not subjects or len(keys) >= total:
                return keys
            request["offset"] = len(keys)  # the server sends 100,000 subjects at most

    async def purge(self, key: str, before: int | None = None) -> bool:
        """Remove the key; with ``before``, only if its revision is below that (a
        conditional purge: a write that came later stays)."""
        return await self._js.purge_stream(self._stream, seq=before, subject=self._prefix + key)

    async def commit(self, writes: Sequence[Write]) -> int:
        """Write every key of ``writes`` or none; the revision of the last one (the
        writes get consecutive revisions, in order). ``KeyWrongLastSequenceError`` when a
        key's revision is not the one expected."""
        async with self._in_flight:
            ack = await self._commit(writes)
        if "error" in ack:
            error = ack["error"]
            if error.get("err_code") in (_WRONG_LAST_SEQUENCE, _BATCH_INCOMPLETE):
                # Both mean: nothing was written, read again and retry.
                raise nats.js.errors.KeyWrongLastSequenceError(error.get("description"))
            nats.js.errors.APIError.from_error(error)
        return int(ack["seq"])

    async def _commit(self, writes: Sequence[Write]) -> dict:
        batch = uuid.uuid4().hex
        reply = None
        for number, write in enumerate(writes, 1):
            headers = {"Nats-Batch-Id": batch, "Nats-Batch-Sequence": str(number)}
            if write.last is not None:
                headers["Nats-Expected-Last-Subject-Sequence"] = str(write.last)
            if write.purge:
                headers[_KV_OPERATION] = "PURGE"
                headers["Nats-Rollup"] = "sub"
            subject = self._prefix + write.key
            if number < len(writes):
                await self._nc.publish(subject, write.value, headers=headers)
                continue
            headers["Nats-Batch-Commit"] = "1"
            reply = await self._nc.request(subject, write.value, headers=headers, timeout=10)
        if reply is None:
            raise ValueError("commit: no writes")
        return json.loads(reply.data)

    async def next_after(self, prefix: str, revision: int) -> Entry | None:
        """The first key under ``prefix`` whose last write came after ``revision``."""
        try:
            msg = await self._js.get_msg(
                self._stream, seq=revision + 1, subject=self._prefix + prefix + ">", next=True
            )
        except nats.js.errors.NotFoundError:
            return None
        marker = (msg.headers or {}).get(_KV_OPERATION) in ("DEL", "PURGE")
        return Entry(
            key=(msg.subject or "").removeprefix(self._prefix),
            value=None if marker else (msg.data or b""),
            revision=int(msg.seq or 0),
        )
