"""runtime/bus/topology.py against a real nats-server: `init_bus` creates and updates the
streams, KV buckets and consumers, idempotently; the conductor gets only the events it acts on."""

from __future__ import annotations

from nats.js import api
from support.bus import ACK_WAIT, MAX_DELIVER, render

from ghibli_anim.contracts import events, keys
from ghibli_anim.contracts.events import EVENT_NAMES
from ghibli_anim.runtime.bus.connection import Bus
from ghibli_anim.runtime.bus.consumer import pending
from ghibli_anim.runtime.bus.names import (
    CONDUCTOR,
    CONDUCTOR_EVENTS,
    EVENTS_MAX_AGE_S,
    EVENTS_STREAM,
    IDEM_BUCKET,
    IDEM_MAX_AGE_S,
    JOBS_BUCKET,
    JOBS_HISTORY,
    STEPS,
    WORK_STREAM,
)
from ghibli_anim.runtime.bus.publish import new_event, publish_event
from ghibli_anim.runtime.bus.topology import BUCKETS, direct_reads, init_bus, kv_config


async def test_init_bus_is_idempotent_and_updates_consumers(nbus: Bus) -> None:
    js = nbus.js
    await init_bus(js, ack_wait_s=ACK_WAIT, max_deliver=MAX_DELIVER)  # second run

    work = await js.stream_info(WORK_STREAM)
    assert work.config.retention == api.RetentionPolicy.WORK_QUEUE
    assert sorted(work.config.subjects) == sorted(f"anim.work.{s}" for s in STEPS)
    events = await js.stream_info(EVENTS_STREAM)
    assert events.config.retention == api.RetentionPolicy.LIMITS
    assert events.config.subjects == ["anim.event.>"]
    assert events.config.max_age == EVENTS_MAX_AGE_S

    for step in STEPS:
        info = await js.consumer_info(WORK_STREAM, step)
        assert info.config.durable_name == step
        assert info.config.filter_subject == f"anim.work.{step}"
        assert info.config.ack_policy == api.AckPolicy.EXPLICIT
        assert info.config.ack_wait == ACK_WAIT
        assert info.config.max_deliver == MAX_DELIVER
        assert not info.config.backoff  # backoff is done by nak delays (see bus.py)
    conductor = await js.consumer_info(EVENTS_STREAM, CONDUCTOR)
    assert not conductor.config.filter_subject
    assert sorted(conductor.config.filter_subjects) == sorted(
        f"anim.event.{EVENT_NAMES[t]}.*" for t in CONDUCTOR_EVENTS
    )
    assert conductor.config.ack_policy == api.AckPolicy.EXPLICIT

    jobs_kv = await (await js.key_value(JOBS_BUCKET)).status()
    assert jobs_kv.history == JOBS_HISTORY
    idem_kv = await (await js.key_value(IDEM_BUCKET)).status()
    assert idem_kv.ttl == IDEM_MAX_AGE_S
    # The job store writes a status change and its index entries as one atomic batch.
    assert (await js.stream_info(f"KV_{JOBS_BUCKET}")).config.allow_atomic
    assert not (await js.stream_info(f"KV_{IDEM_BUCKET}")).config.allow_atomic
    for bucket in BUCKETS:  # one replica: reads are direct gets
        assert (await js.stream_info(f"KV_{bucket.name}")).config.allow_direct, bucket.name

    # A changed AckWait/MaxDeliver updates the consumer; waiting work stays.
    await render(nbus)
    await init_bus(js, ack_wait_s=4, max_deliver=5)
    info = await js.consumer_info(WORK_STREAM, "render")
    assert (info.config.ack_wait, info.config.max_deliver) == (4, 5)
    assert await pending(js, "render") == 1


async def test_conductor_receives_only_the_events_it_acts_on(nbus: Bus) -> None:
    """Starts and progress (several a second per frame) never reach the conductor."""
    job_id = keys.new_job_id()
    for kind in events.EVENT_NAMES:
        await publish_event(nbus.js, new_event(kind, job_id, 0, 1))
    info = await nbus.js.consumer_info(EVENTS_STREAM, CONDUCTOR)
    assert info.num_pending == len(CONDUCTOR_EVENTS)
    assert events.FRAME_PROGRESS not in CONDUCTOR_EVENTS
    assert events.FRAME_STARTED not in CONDUCTOR_EVENTS


async def test_init_bus_narrows_an_older_conductor_in_place(nbus: Bus) -> None:
    """A deployment whose conductor received every event is updated by ``bus init``."""
    js = nbus.js
    await js.delete_consumer(EVENTS_STREAM, CONDUCTOR)
    old = api.ConsumerConfig(
        name=CONDUCTOR,
        durable_name=CONDUCTOR,
        filter_subject="anim.event.>",
        ack_policy=api.AckPolicy.EXPLICIT,
    )
    await js.add_consumer(EVENTS_STREAM, old)
    job_id = keys.new_job_id()
    await publish_event(js, new_event(events.FRAME_RENDERED, job_id, 0, 1))
    await init_bus(js, ack_wait_s=ACK_WAIT, max_deliver=MAX_DELIVER)
    info = await js.consumer_info(EVENTS_STREAM, CONDUCTOR)
    assert not info.config.filter_subject and len(info.config.filter_subjects) > 1
    assert info.num_pending == 1  # what was waiting stays


async def test_init_bus_turns_on_direct_reads_of_an_older_bucket(nbus: Bus) -> None:
    """Buckets made before reads were direct get them from ``bus init``; values stay."""
    js = nbus.js
    for bucket in BUCKETS:
        info = await js.stream_info(f"KV_{bucket.name}")
        info.config.allow_direct = False
        await js.update_stream(info.config)
    kv = await js.key_value(IDEM_BUCKET)
    await kv.put("before", b"kept")
    await init_bus(js, ack_wait_s=ACK_WAIT, max_deliver=MAX_DELIVER)
    for bucket in BUCKETS:
        assert (await js.stream_info(f"KV_{bucket.name}")).config.allow_direct, bucket.name
    direct = await js.key_value(IDEM_BUCKET)
    assert direct._direct  # what nats-py reads the bucket with, from its stream's config
    assert (await direct.get("before")).value == b"kept"


def test_only_single_replica_buckets_read_directly() -> None:
    # A follower of a replicated stream may answer a direct get before it holds the last
    # write: with several replicas, every read goes to the leader.
    assert direct_reads(1) and not direct_reads(3)
    for bucket in BUCKETS:
        assert kv_config(bucket, 1).direct is True
        assert kv_config(bucket, 3).direct is False
        assert kv_config(bucket, 3).replicas == 3
