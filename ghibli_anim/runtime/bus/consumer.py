"""Consuming: messages from a durable pull consumer (``WorkConsumer``), one at a time or,
with ``concurrency``, up to that many at once (each in its own task).

Heartbeats (``in_progress()``) while the handler runs, ack on success, nak with a
growing delay on a retryable failure, give-up (``on_give_up``, then term) on a
non-retryable one or on the last allowed delivery, and a graceful stop. Each message is
handled in a span that continues the publisher's trace, and counted in the consumer
metrics of ``runtime.metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import nats.errors
import nats.js.errors
from google.protobuf.message import DecodeError, Message
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from ghibli_anim.contracts import events
from ghibli_anim.contracts.keys import is_job_id
from ghibli_anim.contracts.pb import bus_pb2
from ghibli_anim.runtime import metrics, tracing
from ghibli_anim.runtime.bus.names import (
    ADVISORIES_CONSUMER,
    ADVISORIES_STREAM,
    CONDUCTOR,
    EVENTS_STREAM,
    MSG_ID_HEADER,
    WORK_STREAM,
    work_subject,
)

log = logging.getLogger(__name__)

MAX_RETRY_DELAY_S = 300.0
"""Cap of the nak delay after ``Retryable``."""
DEFAULT_RETRY_DELAY_S = 1.0


class BusNotInitialized(RuntimeError):
    """A stream or consumer a service binds to does not exist (run ``bus init``)."""


M = TypeVar("M", bound=Message)


class Retryable(Exception):
    """The work failed for a reason that may pass: nak, and retry after ``delay``
    seconds, doubled with each delivery (until MaxDeliver)."""

    def __init__(self, reason: str, delay: float = DEFAULT_RETRY_DELAY_S) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay


class NonRetryable(Exception):
    """The work can never succeed as it is: give up at once (no redelivery)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Delivery:
    """One delivery of a message to a handler (the consumer notes its failure on it)."""

    msg: Msg
    num_delivered: int
    """1 on the first delivery."""
    max_deliver: int
    """The consumer's MaxDeliver (-1: unbounded)."""
    stream_sequence: int
    queue_wait_s: float = 0.0
    """Seconds from the message's publication to this delivery's handling."""
    failure_reason: str = ""
    """Why the handler failed this delivery, once it has (for its span)."""

    @property
    def last(self) -> bool:
        """True when a failure now will not be redelivered."""
        return 0 < self.max_deliver <= self.num_delivered


@dataclass(frozen=True)
class Failure:
    """Why a consumer gave up on a message (passed to ``on_give_up``)."""

    reason: str
    retryable: bool
    """True when retries ran out (a resume may still succeed); False for NonRetryable."""
    num_delivered: int


@dataclass
class ConsumerStats:
    """Outcome counters of one ``WorkConsumer`` (metrics, tests)."""

    acked: int = 0
    naked: int = 0
    termed: int = 0
    given_up: int = 0
    unparseable: int = 0
    heartbeats: int = 0


def _queue_wait_s(published: datetime | None) -> float:
    """Seconds since ``published`` (the message's stream timestamp), 0 if unknown."""
    if published is None:
        return 0.0
    return max(0.0, (datetime.now(UTC) - published).total_seconds())


Handler = Callable[[M, Delivery], Awaitable[None]]
GiveUpHook = Callable[[M, Failure], Awaitable[None]]


class WorkConsumer(Generic[M]):
    """Pulls one message at a time from an existing durable and runs ``handler``.

    Binds only (``bus init`` creates the consumer; services have no right to).
    The handler gets the parsed message and its ``Delivery``; its outcome
    decides the acknowledgement:

    - returns: ack;
    - raises ``Retryable`` (or any other exception): nak with ``delay * 2**(n-1)``
      (n = deliveries so far, capped at ``MAX_RETRY_DELAY_S``), except on the last
      allowed delivery: ``on_give_up`` then term;
    - raises ``NonRetryable``: ``on_give_up`` then term;
    - a payload that is not the expected protobuf (or has no valid ``job_id``):
      logged and termed; the consumer goes on.

    While the handler runs, ``in_progress()`` goes out every AckWait/3, so long
    work is not redelivered; blocking work must run in a thread
    (``asyncio.to_thread``) or the heartbeats stop with the event loop.
    If ``on_give_up`` itself fails, the message is nakked so a later delivery
    tries again (on the last delivery it is termed and logged).

    Each message is handled in a span named by ``span_name(message)`` (default:
    the durable's name; None: no span), child of the context in its headers, and
    counted in the consumer metrics (queue wait, redeliveries, outcome, handler
    time). ``service`` names the service in spans: ``run_service`` sets it.
    """

    def __init__(
        self,
        js: JetStreamContext,
        durable: str,
        message_type: type[M],
        handler: Handler[M],
        *,
        on_give_up: GiveUpHook[M] | None = None,
        stream: str = WORK_STREAM,
        fetch_timeout_s: float = 5.0,
        ack_timeout_s: float = 5.0,
        parse: Callable[[bytes], M] | None = None,
        span_name: Callable[[M], str | None] | None = None,
        concurrency: int = 1,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency: must be >= 1, got {concurrency}")
        self.js = js
        self.concurrency = concurrency
        self.durable = durable
        self.service = ""
        self.metrics = metrics.ConsumerMetrics(durable)
        self._span_name = span_name or (lambda _message: durable)
        self.stream = stream
        self.message_type = message_type
        # Messages that are not protobuf (server advisories are JSON) bring a parser.
        self._parse_fn = parse or message_type.FromString
        self.stats = ConsumerStats()
        self._handler = handler
        self._on_give_up = on_give_up
        self._fetch_timeout_s = fetch_timeout_s
        self._ack_timeout_s = ack_timeout_s
        self._ack_wait_s = 30.0
        self._max_deliver = -1
        descriptor = getattr(message_type, "DESCRIPTOR", None)
        self._has_job_id = descriptor is not None and "job_id" in descriptor.fields_by_name
        self._sub: JetStreamContext.PullSubscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._fetch_task: asyncio.Task[list[Msg]] | None = None
        self._handler_tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()

    @property
    def ack_wait_s(self) -> float:
        """The consumer's AckWait, read from the server on ``start()``."""
        return self._ack_wait_s

    @property
    def max_deliver(self) -> int:
        return self._max_deliver

    @property
    def busy(self) -> bool:
        """True while a handler runs."""
        return bool(self._handler_tasks)

    @property
    def in_hand(self) -> int:
        """How many messages this consumer's handlers hold now."""
        return len(self._handler_tasks)

    async def start(self) -> None:
        """Bind to the durable and start pulling in a background task."""
        if self._task is not None:
            return
        try:
            info = await self.js.consumer_info(self.stream, self.durable)
        except nats.js.errors.NotFoundError:
            raise BusNotInitialized(
                f"consumer {self.durable!r} on stream {self.stream!r} does not exist; "
                "run `ghibli-anim bus init` first"
            ) from None
        # The server's values, not this process's settings: bus init is the authority.
        self._ack_wait_s = float(info.config.ack_wait or 30.0)
        self._max_deliver = int(info.config.max_deliver or -1)
        self._sub = await self.js.pull_subscribe_bind(self.durable, stream=self.stream)
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name=f"consumer-{self.durable}")

    async def wait(self) -> None:
        """Until the pull loop ends (after ``stop()``)."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def stop(self, grace_s: float = 60.0) -> None:
        """Stop fetching; let the messages in hand finish within ``grace_s`` seconds,
        else cancel their handlers and nak them (another replica takes them); unsubscribe."""
        self._stopping.set()
        if self._fetch_task is not None:
            self._fetch_task.cancel()
        task, self._task = self._task, None
        if task is not None:
            _, pending = await asyncio.wait({task}, timeout=grace_s)
            if pending:
                log.warning(
                    "handler still running after %.1f s; cancelling and nakking",
                    grace_s,
                    extra={"consumer": self.durable},
                )
                for handler_task in list(self._handler_tasks):
                    handler_task.cancel()
                await asyncio.wait({task})
            if not task.cancelled() and task.exception() is not None:
                log.error(
                    "pull loop ended with an error",
                    exc_info=task.exception(),
                    extra={"consumer": self.durable},
                )
        # Unsubscribe before anyone drains the connection: drain hangs on a pull
        # subscription whose fetch timed out (ENVIRONMENT.md, NATS pitfalls).
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- the loop ----------------------------------------------------------

    async def _run(self) -> None:
        assert self._sub is not None
        sub = self._sub
        # Up to ``concurrency`` messages in hand: one fetch asks for as many as there is
        # room for, each runs in its own task; the loop ends once they all have.
        processing: set[asyncio.Task[None]] = set()
        try:
            while not self._stopping.is_set():
                room = self.concurrency - len(processing)
                if room <= 0:
                    done, _ = await asyncio.wait(processing, return_when=asyncio.FIRST_COMPLETED)
                    processing -= done
                    _raise_interrupts(done)
                    continue
                fetch = asyncio.create_task(sub.fetch(room, timeout=self._fetch_timeout_s))
                self._fetch_task = fetch
                try:
                    await asyncio.wait({fetch})
                finally:
                    self._fetch_task = None
                    if not fetch.done():  # this loop itself was cancelled
                        fetch.cancel()
                if fetch.cancelled():
                    break  # stop() interrupted an idle fetch
                exc = fetch.exception()
                if exc is not None:
                    if isinstance(exc, TimeoutError):
                        continue  # nothing to do right now
                    if isinstance(exc, nats.errors.ConnectionClosedError):
                        log.warning(
                            "connection closed; pull loop ends", extra={"consumer": self.durable}
                        )
                        break
                    log.warning("fetch failed: %r; retrying", exc, extra={"consumer": self.durable})
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), 1.0)
                    continue
                if self.concurrency == 1:
                    for msg in fetch.result():
                        await self._process(msg)
                    continue
                for msg in fetch.result():
                    processing.add(asyncio.create_task(self._process(msg)))
                done = {t for t in processing if t.done()}
                processing -= done
                _raise_interrupts(done)
        finally:
            if processing:
                await asyncio.wait(processing)
                _raise_interrupts(processing)

    def _parse(self, msg: Msg) -> M | None:
        try:
            work = self._parse_fn(msg.data)
        except (DecodeError, ValueError, KeyError, TypeError) as exc:
            reason = f"not a {self.message_type.__name__}: {exc}"
        else:
            if not self._has_job_id or is_job_id(work.job_id):  # type: ignore[attr-defined]
                return work
            reason = f"invalid job_id {work.job_id!r:.80}"  # type: ignore[attr-defined]
        self.stats.unparseable += 1
        log.error(
            "dropping unusable message on %s: %s",
            msg.subject,
            reason,
            extra={"consumer": self.durable},
        )
        return None

    async def _process(self, msg: Msg) -> None:
        meta = msg.metadata
        delivery = Delivery(
            msg=msg,
            num_delivered=meta.num_delivered,
            max_deliver=self._max_deliver,
            stream_sequence=meta.sequence.stream,
            queue_wait_s=_queue_wait_s(meta.timestamp),
        )
        self.metrics.received(delivery.num_delivered, delivery.queue_wait_s)
        work = self._parse(msg)
        if work is None:
            await self._term(msg)
            self.metrics.handled("invalid")
            return
        name = self._span_name(work)
        started = time.perf_counter()
        if name is None:
            outcome = await self._handle(work, delivery)
        else:
            attributes = {
                "messaging.system": "nats",
                "messaging.destination.name": msg.subject,
                "messaging.consumer.group.name": self.durable,
                "messaging.message.id": (msg.headers or {}).get(MSG_ID_HEADER),
                "anim.job_id": getattr(work, "job_id", None),
                "anim.frame": getattr(work, "frame", None),
                "anim.attempt": getattr(work, "attempt", None),
                "anim.delivery": delivery.num_delivered,
            }
            with tracing.span(
                self.service or self.durable,
                name,
                attributes,
                kind=tracing.SpanKind.CONSUMER,
                context=tracing.extract(msg.headers),
            ) as span:
                # The handler task starts inside the span: its publishes carry it on.
                outcome = await self._handle(work, delivery)
                span.set_attribute("anim.outcome", outcome)
                if outcome in ("retry", "failed"):
                    tracing.fail(span, delivery.failure_reason)
        self.metrics.handled(outcome, time.perf_counter() - started)

    async def _handle(self, work: M, delivery: Delivery) -> str:
        """Run the handler on one delivery and settle the message; the outcome."""
        msg = delivery.msg
        heartbeat = asyncio.create_task(self._heartbeat(msg))
        handler_task = asyncio.create_task(self._handler(work, delivery))
        self._handler_tasks.add(handler_task)
        try:
            # Not `await handler_task`: stop() must be able to wait without cancelling it.
            await asyncio.wait({handler_task})
        finally:
            self._handler_tasks.discard(handler_task)
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            if not handler_task.done():  # the loop itself was cancelled
                handler_task.cancel()

        if handler_task.cancelled():
            # stop()'s grace ran out: hand the message back at once.
            await self._nak(msg, None)
            return "interrupted"
        if msg.is_acked:
            return "ok"  # the handler acknowledged it itself
        exc = handler_task.exception()
        if exc is None:
            await self._ack(msg)
            return "ok"
        if isinstance(exc, NonRetryable):
            log.warning(
                "non-retryable failure: %s",
                exc.reason,
                extra={"consumer": self.durable, "delivery": delivery.num_delivered},
            )
            delivery.failure_reason = exc.reason
            await self._give_up(work, delivery, Failure(exc.reason, False, delivery.num_delivered))
            return "failed"
        if isinstance(exc, Exception):
            if isinstance(exc, Retryable):
                reason, delay = exc.reason, exc.delay
            else:
                # I/O failures (network, store, missing files) are expected weather: one
                # line. Anything else is a bug worth its traceback.
                expected = isinstance(exc, OSError | TimeoutError)
                log.log(
                    logging.WARNING if expected else logging.ERROR,
                    "handler raised %s: %s; retrying (delivery %d of %d)",
                    type(exc).__name__,
                    str(exc).splitlines()[0] if str(exc) else "",
                    delivery.num_delivered,
                    delivery.max_deliver,
                    exc_info=None if expected else exc,
                    extra={"consumer": self.durable},
                )
                reason, delay = f"{type(exc).__name__}: {exc}", DEFAULT_RETRY_DELAY_S
            delivery.failure_reason = reason
            if delivery.last:
                reason = f"{reason} (gave up after {delivery.num_delivered} deliveries)"
                await self._give_up(work, delivery, Failure(reason, True, delivery.num_delivered))
                return "failed"
            await self._nak(msg, self._retry_delay(delay, delivery.num_delivered))
            return "retry"
        # KeyboardInterrupt, SystemExit: hand the message back and let it propagate
        await self._nak(msg, None)
        raise exc

    @staticmethod
    def _retry_delay(base: float, num_delivered: int) -> float:
        return min(max(base, 0.0) * 2 ** max(num_delivered - 1, 0), MAX_RETRY_DELAY_S)

    async def _heartbeat(self, msg: Msg) -> None:
        interval = self._ack_wait_s / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await msg.in_progress()
                self.stats.heartbeats += 1
            except Exception as exc:  # keep trying: the connection may come back
                log.warning("in_progress failed: %s", exc, extra={"consumer": self.durable})

    async def _give_up(self, work: M, delivery: Delivery, failure: Failure) -> None:
        self.stats.given_up += 1
        if self._on_give_up is not None:
            try:
                await self._on_give_up(work, failure)
            except Exception:
                log.exception("on_give_up failed", extra={"consumer": self.durable})
                if not delivery.last:
                    await self._nak(msg=delivery.msg, delay=DEFAULT_RETRY_DELAY_S)
                    return
        await self._term(delivery.msg)

    async def _ack(self, msg: Msg) -> None:
        try:
            # Synchronous: the work queue has really dropped the message on return.
            await msg.ack_sync(timeout=self._ack_timeout_s)
            self.stats.acked += 1
        except Exception as exc:  # redelivered later; handlers are idempotent
            log.warning("ack failed: %s", exc, extra={"consumer": self.durable})

    async def _nak(self, msg: Msg, delay: float | None) -> None:
        try:
            await msg.nak(delay=delay)
            self.stats.naked += 1
        except Exception as exc:  # AckWait expiry redelivers it anyway
            log.warning("nak failed: %s", exc, extra={"consumer": self.durable})

    async def _term(self, msg: Msg) -> None:
        try:
            await msg.term()
            self.stats.termed += 1
        except Exception as exc:
            log.warning("term failed: %s", exc, extra={"consumer": self.durable})


def work_consumer(
    js: JetStreamContext,
    step: str,
    message_type: type[M],
    handler: Handler[M],
    *,
    on_give_up: GiveUpHook[M] | None = None,
    **kwargs: Any,
) -> WorkConsumer[M]:
    """A ``WorkConsumer`` on the durable of one work step (``plan``, ``render`` ...)."""
    work_subject(step)  # validates the step
    return WorkConsumer(js, step, message_type, handler, on_give_up=on_give_up, **kwargs)


def conductor_consumer(
    js: JetStreamContext,
    handler: Handler[bus_pb2.Event],
    *,
    on_give_up: GiveUpHook[bus_pb2.Event] | None = None,
    **kwargs: Any,
) -> WorkConsumer[bus_pb2.Event]:
    """A ``WorkConsumer`` on the ``conductor`` durable of ``ANIM_EVENTS``."""
    kwargs.setdefault("span_name", _conductor_span_name)
    return WorkConsumer(
        js,
        CONDUCTOR,
        bus_pb2.Event,
        handler,
        on_give_up=on_give_up,
        stream=EVENTS_STREAM,
        **kwargs,
    )


def _conductor_span_name(event: bus_pb2.Event) -> str | None:
    return f"{CONDUCTOR} {events.EVENT_NAMES.get(event.type, 'unknown')}"


def _raise_interrupts(tasks: set[asyncio.Task[None]]) -> None:
    """Re-raise what a message's task let through (KeyboardInterrupt, SystemExit, bugs in
    the loop itself), as the loop does when it processes one message at a time."""
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


@dataclass(frozen=True)
class MaxDeliveries:
    """The server's advisory that a work message ran out of deliveries."""

    stream: str
    consumer: str
    stream_seq: int
    deliveries: int

    @classmethod
    def parse(cls, data: bytes) -> MaxDeliveries:
        doc = json.loads(data)
        if not isinstance(doc, dict) or not str(doc.get("type", "")).endswith("max_deliver"):
            raise ValueError("not a max-deliveries advisory")
        return cls(
            stream=str(doc["stream"]),
            consumer=str(doc["consumer"]),
            stream_seq=int(doc["stream_seq"]),
            deliveries=int(doc.get("deliveries", 0)),
        )


def advisories_consumer(
    js: JetStreamContext, handler: Handler[MaxDeliveries], **kwargs: Any
) -> WorkConsumer[MaxDeliveries]:
    """A ``WorkConsumer`` on the planner's ``advisories`` durable."""
    return WorkConsumer(
        js,
        ADVISORIES_CONSUMER,
        MaxDeliveries,
        handler,
        stream=ADVISORIES_STREAM,
        parse=MaxDeliveries.parse,
        **kwargs,
    )


async def pending(js: JetStreamContext, consumer: str, stream: str = WORK_STREAM) -> int:
    """Messages waiting for a consumer: not yet delivered plus delivered and unacked."""
    info = await js.consumer_info(stream, consumer)
    return int(info.num_pending or 0) + int(info.num_ack_pending or 0)
