"""The bus: the one module that knows NATS JetStream.

Everything a service does on NATS goes through here (DESIGN.md "Bus"):

- names: streams ``ANIM_WORK`` (work queue) and ``ANIM_EVENTS`` (history of
  events), durable consumers ``plan``, ``render``, ``depth``, ``assemble`` and
  ``conductor``, KV buckets ``anim-jobs`` and ``anim-idem``, subject builders;
- ``connect()``: a connection that reconnects forever and logs why it dropped;
- ``init_bus()``: creates or updates streams, buckets and consumers (only
  ``ghibli-anim bus init``, fixtures and the embedded mode run it; services bind);
- ``publish_work()`` / ``publish_event()``: every publish carries a
  ``Nats-Msg-Id`` built from (job, step, frame, attempt), so a re-publish within
  the dedup window is dropped while a retry (a new attempt) is not, and the
  trace context of the current span (``traceparent``, see tracing.py);
- ``WorkConsumer``: one message at a time from a durable pull consumer, with
  ``in_progress()`` heartbeats, nak with exponential delay, give-up on the last
  delivery, and a graceful stop; each message is handled in a span that
  continues the publisher's trace, and counted in metrics.py's consumer metrics;
- ``watch_job_events()`` / ``read_job_events()``: one job's events in stream
  order from a given sequence (WatchAnimation);
- ``pending()``: a consumer's backlog, for metrics and autoscaling.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import nats
import nats.errors
import nats.js.errors
from google.protobuf.message import DecodeError, Message
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from ghibli_anim.contracts.config import Settings
from ghibli_anim.contracts.keys import check_job_id, is_job_id
from ghibli_anim.contracts.pb import bus_pb2
from ghibli_anim.runtime import metrics, tracing

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------

WORK_STREAM = "ANIM_WORK"
EVENTS_STREAM = "ANIM_EVENTS"
WORK_PREFIX = "anim.work"
EVENT_PREFIX = "anim.event"

STEPS: tuple[str, ...] = ("plan", "render", "depth", "assemble")
"""Work steps; each is a subject ``anim.work.<step>`` and a durable of that name."""

CONDUCTOR = "conductor"
# The server's advisory when a work message ran out of deliveries (a worker that
# died on each of them never got to say so), captured into a stream of its own so
# a planner that was down still sees it.
ADVISORIES_STREAM = "ANIM_ADVISORIES"
ADVISORIES_CONSUMER = "advisories"
MAX_DELIVERIES_SUBJECT = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.ANIM_WORK.*"
"""Durable consumer of every event (the planner's conductor)."""

JOBS_BUCKET = "anim-jobs"
IDEM_BUCKET = "anim-idem"

REQUEST_CREATE = "anim.request.create"
"""Core request/reply subject for CreateAnimation over the bus."""
PLANNER_QUEUE = "planner"
"""Queue group of the planners answering ``REQUEST_CREATE``."""

MSG_ID_HEADER = api.Header.MSG_ID.value  # "Nats-Msg-Id"

# Limits of the streams and buckets.
EVENTS_MAX_AGE_S = 7 * 24 * 3600.0
EVENTS_MAX_BYTES = 1 << 30
WORK_MAX_BYTES = 256 << 20
MAX_MSG_SIZE = 1 << 20  # core NATS caps messages at 1 MiB anyway
DUPLICATE_WINDOW_S = 120.0
JOBS_HISTORY = 1
IDEM_MAX_AGE_S = 24 * 3600.0
MAX_RETRY_DELAY_S = 300.0
"""Cap of the nak delay after ``Retryable``."""
DEFAULT_RETRY_DELAY_S = 1.0

_JOB_LEVEL_FRAME = -1
_EVENT_ID_NAMESPACE = uuid.UUID("6f1d3c2e-9a57-4b8e-8f0a-1c2d3e4f5a6b")


class BusNotInitialized(RuntimeError):
    """A stream or consumer a service binds to does not exist (run ``bus init``)."""


def work_subject(step: str) -> str:
    """``anim.work.<step>`` for one of ``STEPS``."""
    if step not in STEPS:
        raise ValueError(f"step: must be one of {', '.join(STEPS)}, got {step!r:.40}")
    return f"{WORK_PREFIX}.{step}"


def _event_name(value: int) -> str:
    # EVENT_TYPE_FRAME_RENDERED -> frame.rendered (entity and verb are one word each).
    name = bus_pb2.EventType.Name(value).removeprefix("EVENT_TYPE_").lower()
    entity, verb = name.split("_", 1)
    return f"{entity}.{verb}"


EVENT_NAMES: dict[int, str] = {
    value: _event_name(value)
    for value in bus_pb2.EventType.values()
    if value != bus_pb2.EVENT_TYPE_UNSPECIFIED
}
"""EventType value -> ``entity.verb`` (e.g. ``frame.rendered``)."""
EVENT_TYPES: dict[str, int] = {name: value for value, name in EVENT_NAMES.items()}
"""``entity.verb`` -> EventType value."""


def event_name(event_type: int) -> str:
    """``entity.verb`` of an EventType value; ValueError for UNSPECIFIED or unknown."""
    try:
        return EVENT_NAMES[event_type]
    except KeyError:
        raise ValueError(f"event type: not a known event type, got {event_type!r}") from None


def event_subject(event_type: int, job_id: str) -> str:
    """``anim.event.<entity>.<verb>.<job_id>``."""
    return f"{EVENT_PREFIX}.{event_name(event_type)}.{check_job_id(job_id)}"


def job_events_filter(job_id: str) -> str:
    """Subject filter of every event of one job: ``anim.event.*.*.<job_id>``."""
    return f"{EVENT_PREFIX}.*.*.{check_job_id(job_id)}"


def work_msg_id(job_id: str, step: str, frame: int, attempt: int) -> str:
    """``Nats-Msg-Id`` of a work message: ``job:step:frame:attempt``."""
    return f"{job_id}:{step}:{frame}:{attempt}"


def event_msg_id(event: bus_pb2.Event) -> str:
    """``Nats-Msg-Id`` of an event: ``job:entity.verb:frame:attempt``.

    Progress events repeat for one (frame, attempt), so their denoising step is
    part of the id; otherwise all but the first would be dropped as duplicates.
    """
    msg_id = f"{event.job_id}:{event_name(event.type)}:{event.frame}:{event.attempt}"
    if event.type == bus_pb2.EVENT_TYPE_FRAME_PROGRESS:
        msg_id += f":{event.step}"
    return msg_id


# --------------------------------------------------------------------------
# Connection
# --------------------------------------------------------------------------


@dataclass
class Bus:
    """A NATS connection and its JetStream context."""

    nc: Client
    js: JetStreamContext
    name: str

    async def close(self) -> None:
        """Drain (flush publishes, finish subscriptions), then close.

        Stop every ``WorkConsumer`` first: a pull subscription whose fetch timed
        out makes ``drain()`` hang unless it was unsubscribed.
        """
        if self.nc.is_closed:
            return
        try:
            await self.nc.drain()
        except Exception as exc:  # drain fails when the server is gone; close anyway
            log.warning("nats drain failed: %s", exc, extra={"connection": self.name})
        if not self.nc.is_closed:
            await self.nc.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def connect(
    settings: Settings,
    name: str,
    *,
    first_connect_timeout_s: float | None = None,
    reconnect_wait_s: float = 1.0,
    api_timeout_s: float = 5.0,
) -> Bus:
    """Connect to ``ANIM_NATS_URL`` as ``name`` (shown in the server's connection list).

    Reconnects forever, ``reconnect_wait_s`` apart, including the first
    connection (a service may start before NATS): pass
    ``first_connect_timeout_s`` to give up instead (CLI clients).
    Authenticates with ``ANIM_NATS_CREDS`` or ``ANIM_NATS_USER``/``PASSWORD``.
    """
    url = settings["ANIM_NATS_URL"]
    if not url:
        raise ValueError("ANIM_NATS_URL: required to connect to NATS")
    servers = [s.strip() for s in str(url).split(",") if s.strip()]

    async def on_error(exc: Exception) -> None:
        log.warning("nats error: %s", exc, extra={"connection": name})

    async def on_disconnect() -> None:
        if nc.is_closed or nc.is_draining:
            return  # our own close(), not a lost server
        log.warning("nats disconnected; reconnecting", extra={"connection": name})

    async def on_reconnect() -> None:
        log.info(
            "nats reconnected to %s",
            nc.connected_url.netloc if nc.connected_url else "?",
            extra={"connection": name},
        )

    async def on_close() -> None:
        log.info("nats connection closed", extra={"connection": name})

    options: dict[str, Any] = {
        "servers": servers,
        "name": name,
        "error_cb": on_error,
        "disconnected_cb": on_disconnect,
        "reconnected_cb": on_reconnect,
        "closed_cb": on_close,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": reconnect_wait_s,
        # Notice a dead server within a minute rather than the default four.
        "ping_interval": 20,
        "max_outstanding_pings": 3,
        "drain_timeout": 10,
    }
    if settings["ANIM_NATS_CREDS"]:
        options["user_credentials"] = settings["ANIM_NATS_CREDS"]
    elif settings["ANIM_NATS_USER"]:
        options["user"] = settings["ANIM_NATS_USER"]
        options["password"] = settings["ANIM_NATS_PASSWORD"]

    nc = Client()
    try:
        await asyncio.wait_for(nc.connect(**options), first_connect_timeout_s)
    except TimeoutError:
        with contextlib.suppress(Exception):
            await nc.close()
        raise ConnectionError(
            f"ANIM_NATS_URL: no NATS server answered at {url} within {first_connect_timeout_s:g} s"
        ) from None
    return Bus(nc=nc, js=nc.jetstream(timeout=api_timeout_s), name=name)


# --------------------------------------------------------------------------
# Streams, buckets and consumers (bus init)
# --------------------------------------------------------------------------

# Server error code "stream name already in use with a different configuration".
_STREAM_EXISTS = 10058


def work_stream_config(replicas: int = 1) -> api.StreamConfig:
    return api.StreamConfig(
        name=WORK_STREAM,
        description="Work for the services: plan, render, depth, assemble.",
        subjects=[work_subject(step) for step in STEPS],
        retention=api.RetentionPolicy.WORK_QUEUE,
        storage=api.StorageType.FILE,
        max_bytes=WORK_MAX_BYTES,
        max_msg_size=MAX_MSG_SIZE,
        duplicate_window=DUPLICATE_WINDOW_S,
        num_replicas=replicas,
    )


def events_stream_config(replicas: int = 1) -> api.StreamConfig:
    return api.StreamConfig(
        name=EVENTS_STREAM,
        description="What happened to each job: anim.event.<entity>.<verb>.<job_id>.",
        subjects=[f"{EVENT_PREFIX}.>"],
        retention=api.RetentionPolicy.LIMITS,
        storage=api.StorageType.FILE,
        max_age=EVENTS_MAX_AGE_S,
        max_bytes=EVENTS_MAX_BYTES,
        max_msg_size=MAX_MSG_SIZE,
        # Oldest events go first when the stream is full; never refuse new ones.
        discard=api.DiscardPolicy.OLD,
        duplicate_window=DUPLICATE_WINDOW_S,
        num_replicas=replicas,
    )


def advisories_stream_config(replicas: int = 1) -> api.StreamConfig:
    return api.StreamConfig(
        name=ADVISORIES_STREAM,
        description="Max-deliveries advisories of ANIM_WORK's consumers.",
        subjects=[MAX_DELIVERIES_SUBJECT],
        retention=api.RetentionPolicy.LIMITS,
        storage=api.StorageType.FILE,
        max_age=EVENTS_MAX_AGE_S,
        discard=api.DiscardPolicy.OLD,
        num_replicas=replicas,
    )


def _durable_config(
    name: str, filter_subject: str, ack_wait_s: float, max_deliver: int, description: str
) -> api.ConsumerConfig:
    return api.ConsumerConfig(
        name=name,
        durable_name=name,
        description=description,
        filter_subject=filter_subject,
        deliver_policy=api.DeliverPolicy.ALL,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=ack_wait_s,
        max_deliver=max_deliver,
        # No BackOff list: with one, the server redelivers nakked messages only
        # when its backoff timer fires (a 0.3 s nak waited 3.3 s on the third
        # delivery here), so Retryable delays would be off by whole backoff steps.
        # Backoff comes from WorkConsumer's growing nak delays instead; a crashed
        # worker's message comes back after AckWait, at most MaxDeliver times.
        backoff=None,
    )


def work_consumer_config(step: str, ack_wait_s: float, max_deliver: int) -> api.ConsumerConfig:
    """The durable pull consumer of one work step."""
    return _durable_config(
        step, work_subject(step), ack_wait_s, max_deliver, f"{step} workers (anim.work.{step})."
    )


def conductor_consumer_config(ack_wait_s: float, max_deliver: int) -> api.ConsumerConfig:
    """The planner's durable pull consumer of every event."""
    return _durable_config(
        CONDUCTOR,
        f"{EVENT_PREFIX}.>",
        ack_wait_s,
        max_deliver,
        "The conductor: decides what comes next after each event.",
    )


async def _ensure_stream(js: JetStreamContext, config: api.StreamConfig) -> api.StreamInfo:
    try:
        return await js.add_stream(config)
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != _STREAM_EXISTS:
            raise
        # Exists with another configuration (older limits): bring it up to date.
        return await js.update_stream(config)


async def _ensure_kv(
    js: JetStreamContext,
    bucket: str,
    *,
    history: int,
    max_age_s: float | None,
    replicas: int,
    description: str,
) -> None:
    config = api.KeyValueConfig(
        bucket=bucket,
        description=description,
        history=history,
        ttl=max_age_s,
        storage=api.StorageType.FILE,
        replicas=replicas,
    )
    try:
        await js.create_key_value(config)
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != _STREAM_EXISTS:
            raise
        # The bucket exists with other limits: update its stream in place.
        info = await js.stream_info(f"KV_{bucket}")
        stream = info.config
        stream.max_msgs_per_subject = history
        stream.max_age = max_age_s or 0
        stream.num_replicas = replicas
        stream.description = description
        if max_age_s and stream.duplicate_window > max_age_s:
            stream.duplicate_window = max_age_s
        await js.update_stream(stream)


async def init_bus(
    js: JetStreamContext, *, ack_wait_s: float, max_deliver: int, replicas: int = 1
) -> None:
    """Create or update every stream, KV bucket and durable consumer.

    Idempotent: a second run changes nothing, and a run with another AckWait or
    MaxDeliver updates the consumers in place (their pending messages stay).
    ``replicas`` is 3 in a cluster.
    """
    if ack_wait_s <= 0:
        raise ValueError(f"ack_wait_s: must be > 0, got {ack_wait_s!r}")
    if max_deliver < 1:
        raise ValueError(f"max_deliver: must be >= 1, got {max_deliver!r}")
    await _ensure_stream(js, work_stream_config(replicas))
    await _ensure_stream(js, events_stream_config(replicas))
    await _ensure_kv(
        js,
        JOBS_BUCKET,
        history=JOBS_HISTORY,
        max_age_s=None,
        replicas=replicas,
        description="One JobState per job (compare-and-swap only).",
    )
    await _ensure_kv(
        js,
        IDEM_BUCKET,
        history=1,
        max_age_s=IDEM_MAX_AGE_S,
        replicas=replicas,
        description="sha256(client, idempotency key) -> job id, for 24 h.",
    )
    # CONSUMER.CREATE without an action creates or updates, so this is idempotent.
    for step in STEPS:
        await js.add_consumer(WORK_STREAM, work_consumer_config(step, ack_wait_s, max_deliver))
    await js.add_consumer(EVENTS_STREAM, conductor_consumer_config(ack_wait_s, max_deliver))
    await _ensure_stream(js, advisories_stream_config(replicas))
    await js.add_consumer(
        ADVISORIES_STREAM,
        _durable_config(
            ADVISORIES_CONSUMER,
            MAX_DELIVERIES_SUBJECT,
            ack_wait_s,
            max_deliver,
            "The planner: fails jobs whose work ran out of deliveries.",
        ),
    )


async def init_bus_from_settings(
    js: JetStreamContext, settings: Settings, replicas: int = 1
) -> None:
    """``init_bus`` with ``ANIM_ACK_WAIT_S`` and ``ANIM_MAX_DELIVER``."""
    await init_bus(
        js,
        ack_wait_s=float(settings["ANIM_ACK_WAIT_S"]),
        max_deliver=int(settings["ANIM_MAX_DELIVER"]),
        replicas=replicas,
    )


# --------------------------------------------------------------------------
# Publishing
# --------------------------------------------------------------------------


async def publish_work(
    js: JetStreamContext,
    step: str,
    msg: Message,
    *,
    job_id: str,
    frame: int,
    attempt: int,
    timeout: float | None = None,
) -> api.PubAck:
    """Publish a work message on ``anim.work.<step>``; ``ack.duplicate`` tells a dedup.

    ``frame`` is -1 for job-level steps (plan, assemble).
    """
    check_job_id(job_id)
    return await js.publish(
        work_subject(step),
        msg.SerializeToString(),
        timeout=timeout,
        stream=WORK_STREAM,
        headers=tracing.inject({MSG_ID_HEADER: work_msg_id(job_id, step, frame, attempt)}),
    )


async def publish_event(
    js: JetStreamContext, event: bus_pb2.Event, *, timeout: float | None = None
) -> api.PubAck:
    """Publish an event on ``anim.event.<entity>.<verb>.<job_id>``."""
    return await js.publish(
        event_subject(event.type, event.job_id),
        event.SerializeToString(),
        timeout=timeout,
        stream=EVENTS_STREAM,
        headers=tracing.inject({MSG_ID_HEADER: event_msg_id(event)}),
    )


def new_event(
    event_type: int,
    job_id: str,
    frame: int = _JOB_LEVEL_FRAME,
    attempt: int = 0,
    causation_id: str = "",
    **fields: Any,
) -> bus_pb2.Event:
    """An Event stamped with the current time; ``fields`` fill the rest
    (``reason``, ``key``, ``step``, ``steps``, ``service``, ``retryable``).

    The id derives from the event's ``Nats-Msg-Id``: a worker that re-emits an
    event after a crash produces the same id, so the copy the server drops as a
    duplicate and the one it kept are the same event, and causation ids that
    point at either stay valid.
    """
    event_name(event_type)  # rejects UNSPECIFIED and unknown values
    event = bus_pb2.Event(
        type=event_type,  # type: ignore[arg-type]
        job_id=check_job_id(job_id),
        frame=frame,
        attempt=attempt,
        causation_id=causation_id,
        **fields,
    )
    event.event_id = uuid.uuid5(_EVENT_ID_NAMESPACE, event_msg_id(event)).hex
    event.time.GetCurrentTime()
    return event


# --------------------------------------------------------------------------
# Consuming
# --------------------------------------------------------------------------

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


@dataclass(frozen=True)
class Delivery:
    """One delivery of a message to a handler."""

    msg: Msg
    num_delivered: int
    """1 on the first delivery."""
    max_deliver: int
    """The consumer's MaxDeliver (-1: unbounded)."""
    stream_sequence: int
    queue_wait_s: float = 0.0
    """Seconds from the message's publication to this delivery's handling."""

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
    ) -> None:
        self.js = js
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
        self._handler_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._last_reason = ""  # why the last message failed, for its span

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
        return self._handler_task is not None

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
        """Stop fetching; let the message in hand finish within ``grace_s`` seconds,
        else cancel its handler and nak it (another replica takes it); unsubscribe."""
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
                if self._handler_task is not None:
                    self._handler_task.cancel()
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
        while not self._stopping.is_set():
            fetch = asyncio.create_task(sub.fetch(1, timeout=self._fetch_timeout_s))
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
            for msg in fetch.result():
                await self._process(msg)

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
                    tracing.fail(span, self._last_reason)
        self.metrics.handled(outcome, time.perf_counter() - started)

    async def _handle(self, work: M, delivery: Delivery) -> str:
        """Run the handler on one delivery and settle the message; the outcome."""
        msg = delivery.msg
        self._last_reason = ""
        heartbeat = asyncio.create_task(self._heartbeat(msg))
        handler_task = asyncio.create_task(self._handler(work, delivery))
        self._handler_task = handler_task
        try:
            # Not `await handler_task`: stop() must be able to wait without cancelling it.
            await asyncio.wait({handler_task})
        finally:
            self._handler_task = None
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
            self._last_reason = exc.reason
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
            self._last_reason = reason
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
    # Progress events change nothing for the conductor: a span each would only be noise.
    if event.type == bus_pb2.EVENT_TYPE_FRAME_PROGRESS:
        return None
    return f"{CONDUCTOR} {EVENT_NAMES.get(event.type, 'unknown')}"


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


# --------------------------------------------------------------------------
# Reading one job's events (WatchAnimation)
# --------------------------------------------------------------------------


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
