"""One job's events in stream order, stored ones first, then live ones (WatchAnimation)."""

from __future__ import annotations

import contextlib
import logging
from types import TracebackType
from typing import Self

from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from ghibli_anim.contracts.pb import bus_pb2
from ghibli_anim.runtime.bus.names import EVENTS_STREAM, job_events_filter

log = logging.getLogger(__name__)


class EventWatch:
    """One job's events in stream order: the stored ones first, then live ones.

    Each event's ``sequence`` is its ``ANIM_EVENTS`` sequence, so a client can
    resume after it. Backed by an ordered consumer (ephemeral, no acks, replaced
    transparently by the client after a gap). Close it when done.
    """

    def __init__(self, sub: JetStreamContext.PushSubscription, job_id: str) -> None:
        self._sub = sub
        self.job_id = job_id

    async def next(self, timeout: float | None = None) -> bus_pb2.Event:
        """The next event; waits forever unless ``timeout`` (then TimeoutError)."""
        while True:
            msg = await self._sub.next_msg(timeout=timeout)
            event = _parse_event(msg)
            if event is not None:
                return event

    async def next_with_pending(self, timeout: float | None = None) -> tuple[bus_pb2.Event, int]:
        """The next event and how many more were stored when it was delivered."""
        while True:
            msg = await self._sub.next_msg(timeout=timeout)
            event = _parse_event(msg)
            if event is not None:
                return event, int(msg.metadata.num_pending)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._sub.unsubscribe()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bus_pb2.Event:
        return await self.next()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def _parse_event(msg: Msg) -> bus_pb2.Event | None:
    try:
        event = bus_pb2.Event.FromString(msg.data)
    except DecodeError as exc:
        log.error("skipping unparseable event on %s: %s", msg.subject, exc)
        return None
    event.sequence = msg.metadata.sequence.stream
    return event


async def watch_job_events(
    js: JetStreamContext, job_id: str, *, after_sequence: int = 0
) -> EventWatch:
    """Watch ``job_id``'s events with a stream sequence greater than ``after_sequence``."""
    subject = job_events_filter(job_id)
    if after_sequence < 0:
        raise ValueError(f"after_sequence: must be >= 0, got {after_sequence}")
    config = api.ConsumerConfig(description=f"watch {job_id}")
    policy = api.DeliverPolicy.ALL
    if after_sequence > 0:
        policy = api.DeliverPolicy.BY_START_SEQUENCE
        config.opt_start_seq = after_sequence + 1
    sub = await js.subscribe(
        subject,
        stream=EVENTS_STREAM,
        ordered_consumer=True,
        deliver_policy=policy,
        config=config,
    )
    return EventWatch(sub, job_id)


async def read_job_events(
    js: JetStreamContext,
    job_id: str,
    *,
    after_sequence: int = 0,
    timeout: float = 5.0,
) -> list[bus_pb2.Event]:
    """``job_id``'s events stored now (after ``after_sequence``), in stream order."""
    watch = await watch_job_events(js, job_id, after_sequence=after_sequence)
    try:
        info = await watch._sub.consumer_info()
        # Stored at the time of the call: delivered so far plus still pending.
        if int(info.num_pending or 0) == 0 and info.delivered.consumer_seq == 0:
            return []
        events: list[bus_pb2.Event] = []
        while True:
            event, left = await watch.next_with_pending(timeout=timeout)
            events.append(event)
            if left == 0:
                return events
    finally:
        await watch.close()
