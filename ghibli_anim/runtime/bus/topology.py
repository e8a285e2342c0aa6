"""Creating the bus: streams, KV buckets and durable consumers (``ghibli-anim bus init``).

Only ``bus init`` (a compose step, a Kubernetes Job), the embedded mode and test
fixtures run :func:`init_bus`; services only bind to what it created (least privilege).
It is idempotent: a second run changes nothing, and a run with other limits, AckWait or
MaxDeliver updates streams and consumers in place (their pending messages stay).
"""

from __future__ import annotations

from dataclasses import dataclass

import nats.js.errors
from nats.js import JetStreamContext, api

from ghibli_anim.contracts.config import Settings
from ghibli_anim.runtime.bus.names import (
    ADVISORIES_CONSUMER,
    ADVISORIES_STREAM,
    CONDUCTOR,
    CONDUCTOR_EVENTS,
    DUPLICATE_WINDOW_S,
    EVENT_PREFIX,
    EVENTS_MAX_AGE_S,
    EVENTS_MAX_BYTES,
    EVENTS_STREAM,
    IDEM_BUCKET,
    IDEM_MAX_AGE_S,
    JOBS_BUCKET,
    JOBS_HISTORY,
    MAX_DELIVERIES_SUBJECT,
    MAX_MSG_SIZE,
    STEPS,
    WORK_MAX_BYTES,
    WORK_STREAM,
    event_filter,
    work_subject,
)

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
    name: str, filter_subject: str | None, ack_wait_s: float, max_deliver: int, description: str
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


def advisories_consumer_config(ack_wait_s: float, max_deliver: int) -> api.ConsumerConfig:
    """The planner's durable consumer of the max-deliveries advisories."""
    return _durable_config(
        ADVISORIES_CONSUMER,
        MAX_DELIVERIES_SUBJECT,
        ack_wait_s,
        max_deliver,
        "The planner: fails jobs whose work ran out of deliveries.",
    )


def conductor_consumer_config(ack_wait_s: float, max_deliver: int) -> api.ConsumerConfig:
    """The planner's durable pull consumer of the events the conductor acts on."""
    config = _durable_config(
        CONDUCTOR,
        None,
        ack_wait_s,
        max_deliver,
        "The conductor: decides what comes next after each event it acts on.",
    )
    # One filter per event type: progress and start events, up to several a second per
    # frame, never reach the conductor.
    config.filter_subjects = [event_filter(t) for t in CONDUCTOR_EVENTS]
    return config


async def _ensure_stream(js: JetStreamContext, config: api.StreamConfig) -> api.StreamInfo:
    try:
        return await js.add_stream(config)
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != _STREAM_EXISTS:
            raise
        # Exists with another configuration (older limits): bring it up to date.
        return await js.update_stream(config)


@dataclass(frozen=True)
class Bucket:
    """A KV bucket ``bus init`` creates."""

    name: str
    history: int
    max_age_s: float | None
    description: str
    atomic: bool = False
    """Atomic multi-key writes (the job store's ``commit``; nats-server 2.12 or later)."""


BUCKETS: tuple[Bucket, ...] = (
    Bucket(
        JOBS_BUCKET,
        JOBS_HISTORY,
        None,
        "One JobState per job, its index entries (list., counts., open., done.) and one "
        "slot record per client (slots.<sha256>): compare-and-swap and atomic batches only.",
        atomic=True,
    ),
    Bucket(IDEM_BUCKET, 1, IDEM_MAX_AGE_S, "sha256(client, idempotency key) -> job id, for 24 h."),
)


def stream_configs(replicas: int = 1) -> list[api.StreamConfig]:
    """Every stream ``bus init`` creates, in order."""
    return [
        work_stream_config(replicas),
        events_stream_config(replicas),
        advisories_stream_config(replicas),
    ]


def consumer_configs(ack_wait_s: float, max_deliver: int) -> list[tuple[str, api.ConsumerConfig]]:
    """(stream, config) of every durable consumer ``bus init`` creates."""
    return [
        *((WORK_STREAM, work_consumer_config(s, ack_wait_s, max_deliver)) for s in STEPS),
        (EVENTS_STREAM, conductor_consumer_config(ack_wait_s, max_deliver)),
        (ADVISORIES_STREAM, advisories_consumer_config(ack_wait_s, max_deliver)),
    ]


def direct_reads(replicas: int) -> bool:
    """Whether a KV bucket answers reads with direct gets.

    A direct get returns the stored message as it is; the other path (the stream's
    MSG.GET API) wraps it in JSON with the value in base64, which costs the server and
    the reader CPU on every read of a job's state (the renderer reads it for every
    frame; ``bench/kv_get.py`` measures both ways). With one replica the one server
    answers both ways, after every write it has acknowledged. With several, any replica
    may answer a direct get, and a follower may not yet hold the last write: a renderer
    could read a job as not yet rendering and skip its work. So only single-replica
    buckets read directly.
    """
    return replicas == 1


def kv_config(bucket: Bucket, replicas: int) -> api.KeyValueConfig:
    """The configuration ``bus init`` creates ``bucket`` with."""
    return api.KeyValueConfig(
        bucket=bucket.name,
        description=bucket.description,
        history=bucket.history,
        ttl=bucket.max_age_s,
        storage=api.StorageType.FILE,
        replicas=replicas,
        direct=direct_reads(replicas),
    )


async def _ensure_kv(js: JetStreamContext, bucket: Bucket, replicas: int) -> None:
    config = kv_config(bucket, replicas)
    try:
        await js.create_key_value(config)
        if not bucket.atomic:
            return
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != _STREAM_EXISTS:
            raise
    # A new bucket that takes atomic batches (nats-py's KeyValueConfig has no such
    # field), or one that exists with other limits: update its stream in place.
    info = await js.stream_info(f"KV_{bucket.name}")
    stream = info.config
    stream.max_msgs_per_subject = bucket.history
    stream.max_age = bucket.max_age_s or 0
    stream.num_replicas = replicas
    stream.allow_direct = direct_reads(replicas)
    stream.description = bucket.description
    stream.allow_atomic = bucket.atomic or None
    if bucket.max_age_s and stream.duplicate_window > bucket.max_age_s:
        stream.duplicate_window = bucket.max_age_s
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
    for stream in stream_configs(replicas):
        await _ensure_stream(js, stream)
    for bucket in BUCKETS:
        await _ensure_kv(js, bucket, replicas)
    # CONSUMER.CREATE without an action creates or updates, so this is idempotent.
    for stream_name, consumer in consumer_configs(ack_wait_s, max_deliver):
        await js.add_consumer(stream_name, consumer)


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
