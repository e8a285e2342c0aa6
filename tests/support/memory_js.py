"""An in-memory stand-in for the part of nats-py's ``JetStreamContext`` that the conductor
and the job store use, for unit tests without a server.

It keeps the server's semantics where the code depends on them: a publish lands in the
stream whose subjects match (``stream=`` must name that stream), a second publish with
the same ``Nats-Msg-Id`` is a duplicate (same sequence, ``duplicate=True``, nothing
stored), ``get_msg``/``delete_msg`` of a missing sequence raise ``NotFoundError``, and
the two KV buckets of the job store (:class:`support.memory_kv.MemoryKV`) are listed
and purged through their streams (``KV_<bucket>``, subjects ``$KV.<bucket>.<key>``) the
way ``JobsBucket`` does it. Streams never expire, and there are no consumers.
:class:`MemoryNats` is the core connection beside it: a plain publish (no reply, no
acknowledgement) on a stream's subject is stored as the stream stores any publish.

The same contract tests (tests/support/jetstream_cases.py) run against a real
nats-server in tests/integration/runtime/bus/test_jetstream_contract.py, so the two
cannot drift apart unnoticed.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import nats.errors
import nats.js.errors
from nats.js import api

from ghibli_anim.runtime.bus.connection import Bus
from ghibli_anim.runtime.bus.names import IDEM_BUCKET, JOBS_BUCKET, MSG_ID_HEADER
from ghibli_anim.runtime.bus.topology import stream_configs
from support.memory_kv import MemoryKV


def _matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, ``>`` the rest (one token or more)."""
    want, got = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(got) > i
        if i >= len(got) or (token != "*" and token != got[i]):
            return False
    return len(want) == len(got)


@dataclass
class _Stream:
    name: str
    subjects: list[str]
    messages: dict[int, api.RawStreamMsg] = field(default_factory=dict)
    last_seq: int = 0
    seq_by_msg_id: dict[str, int] = field(default_factory=dict)


class MemoryJetStream:
    """The streams of ``bus init`` (work, events, advisories) and the job store's buckets."""

    def __init__(self) -> None:
        self._streams = {c.name: _Stream(c.name, list(c.subjects or [])) for c in stream_configs()}
        self.buckets = {name: MemoryKV(name) for name in (JOBS_BUCKET, IDEM_BUCKET)}

    def _stream(self, name: str) -> _Stream:
        if name not in self._streams:
            raise nats.js.errors.NotFoundError(description="stream not found")
        return self._streams[name]

    def _bucket_of_stream(self, name: str) -> MemoryKV | None:
        return self.buckets.get(name.removeprefix("KV_")) if name.startswith("KV_") else None

    # -- publishing and reading messages ------------------------------------

    async def publish(
        self,
        subject: str,
        payload: bytes = b"",
        timeout: float | None = None,
        stream: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> api.PubAck:
        matching = [
            s for s in self._streams.values() if any(_matches(p, subject) for p in s.subjects)
        ]
        if not matching:
            raise nats.errors.NoRespondersError
        target = matching[0]
        if stream is not None and stream != target.name:
            raise nats.js.errors.BadRequestError(description="expected stream does not match")
        msg_id = (headers or {}).get(MSG_ID_HEADER)
        if msg_id is not None and msg_id in target.seq_by_msg_id:
            return api.PubAck(stream=target.name, seq=target.seq_by_msg_id[msg_id], duplicate=True)
        target.last_seq += 1
        target.messages[target.last_seq] = api.RawStreamMsg(
            subject=subject,
            seq=target.last_seq,
            data=payload or None,
            headers=dict(headers) if headers else None,
            stream=target.name,
        )
        if msg_id is not None:
            target.seq_by_msg_id[msg_id] = target.last_seq
        return api.PubAck(stream=target.name, seq=target.last_seq)

    async def get_msg(self, stream_name: str, seq: int) -> api.RawStreamMsg:
        message = self._stream(stream_name).messages.get(seq)
        if message is None:
            raise nats.js.errors.NotFoundError(description="no message found")
        return message

    async def delete_msg(self, stream_name: str, seq: int) -> bool:
        if self._stream(stream_name).messages.pop(seq, None) is None:
            raise nats.js.errors.NotFoundError(description="no message found")
        return True

    # -- streams and buckets ---------------------------------------------------

    async def stream_info(self, name: str, subjects_filter: str | None = None) -> api.StreamInfo:
        bucket = self._bucket_of_stream(name)
        if bucket is not None:
            counts = {f"$KV.{bucket.bucket}.{k}": 1 for k in [*bucket._values, *bucket._markers]}
        elif name in self._streams:
            stream = self._streams[name]
            counts = {}
            for message in stream.messages.values():
                counts[message.subject] = counts.get(message.subject, 0) + 1
        else:
            raise nats.js.errors.NotFoundError(description="stream not found")
        subjects = None
        if subjects_filter:
            subjects = {s: n for s, n in counts.items() if _matches(subjects_filter, s)} or None
        messages = sum(counts.values())
        last_seq = bucket._revision if bucket is not None else self._streams[name].last_seq
        return api.StreamInfo(
            config=api.StreamConfig(name=name),
            state=api.StreamState(
                messages=messages,
                bytes=0,
                first_seq=0,
                last_seq=last_seq,
                consumer_count=0,
                subjects=subjects,
            ),
        )

    async def purge_stream(self, name: str, subject: str | None = None) -> bool:
        bucket = self._bucket_of_stream(name)
        if bucket is not None:
            for key in [*bucket._values, *bucket._markers]:
                if subject is None or _matches(subject, f"$KV.{bucket.bucket}.{key}"):
                    bucket._values.pop(key, None)
                    bucket._markers.pop(key, None)
            return True
        stream = self._stream(name)
        for seq, message in list(stream.messages.items()):
            if subject is None or _matches(subject, message.subject or ""):
                del stream.messages[seq]
        return True

    async def key_value(self, bucket: str) -> MemoryKV:
        if bucket not in self.buckets:
            raise nats.js.errors.BucketNotFoundError
        return self.buckets[bucket]


class MemoryNats:
    """The core-NATS ``publish`` of the connection ``js`` belongs to: the server stores a
    message on a stream's subject (deduplicated by ``Nats-Msg-Id``) without answering, and
    drops one that no stream takes."""

    def __init__(self, js: MemoryJetStream) -> None:
        self._js = js

    async def publish(
        self,
        subject: str,
        payload: bytes = b"",
        reply: str = "",
        headers: dict[str, str] | None = None,
    ) -> None:
        # No stream takes it: gone, as on the server.
        with contextlib.suppress(nats.errors.NoRespondersError):
            await self._js.publish(subject, payload, headers=headers)

    async def flush(self, timeout: float | None = None) -> None:
        """Everything published is stored already."""


def memory_bus(name: str = "test") -> Bus:
    """A ``Bus`` on an in-memory JetStream and its core connection (no server)."""
    js = MemoryJetStream()
    return Bus(nc=MemoryNats(js), js=js, name=name)  # type: ignore[arg-type]
