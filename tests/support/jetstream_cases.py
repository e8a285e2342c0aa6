"""The contract of the JetStream calls the conductor and the job store make, as test
functions shared by two modules: one runs them on :class:`support.memory_js.MemoryJetStream`
(unit tier, no server), one on a real nats-server after ``bus init`` (integration tier).
The unit tests of the conductor rely on the in-memory copy; these keep it honest.

Each module provides the fixtures ``js`` (a JetStream context with the streams and
buckets of ``bus init``, nothing published yet) and ``nc`` (the core connection it belongs
to) and imports these tests with ``from support.jetstream_cases import *``.
"""

from __future__ import annotations

import contextlib

import nats.js.errors
import pytest
from nats.js import api

from ghibli_anim.contracts import events, keys
from ghibli_anim.contracts.pb import animation_pb2, bus_pb2, types_pb2
from ghibli_anim.runtime.bus.names import EVENTS_STREAM, MSG_ID_HEADER, WORK_STREAM, work_msg_id
from ghibli_anim.runtime.bus.publish import (
    announce,
    new_event,
    publish_event,
    publish_work,
    send_event,
)
from ghibli_anim.runtime.jobstore import JobNotFound, JobStore

__all__ = [
    "test_a_deleted_message_is_gone",
    "test_a_publish_lands_in_the_stream_of_its_subject",
    "test_a_repeated_message_id_is_a_duplicate",
    "test_an_event_sent_without_an_ack_lands_in_order_and_deduplicates",
    "test_jobs_are_listed_and_purged_through_the_buckets_stream",
    "test_the_expected_stream_must_match",
]


async def published(js, stream: str) -> list[api.RawStreamMsg]:
    """Every message still in ``stream``, oldest first (through the public API only)."""
    last = (await js.stream_info(stream)).state.last_seq
    found = []
    for seq in range(1, last + 1):
        with contextlib.suppress(nats.js.errors.NotFoundError):
            found.append(await js.get_msg(stream, seq))
    return found


async def test_a_publish_lands_in_the_stream_of_its_subject(js):
    job = keys.new_job_id()
    work = bus_pb2.RenderWork(job_id=job, frame=2, attempt=1, causation_id="c")
    ack = await publish_work(js, "render", work, job_id=job, frame=2, attempt=1)
    assert ack.stream == WORK_STREAM and ack.seq == 1 and not ack.duplicate
    event = await announce(js, events.JOB_COMPLETED, job, 1, "cause", service="planner")
    [message] = await published(js, EVENTS_STREAM)
    assert message.subject == f"anim.event.job.completed.{job}"
    assert bus_pb2.Event.FromString(message.data) == event
    [message] = await published(js, WORK_STREAM)
    assert message.seq == 1 and message.subject == "anim.work.render"
    assert bus_pb2.RenderWork.FromString(message.data) == work
    assert message.headers[MSG_ID_HEADER] == work_msg_id(job, "render", 2, 1)


async def test_a_repeated_message_id_is_a_duplicate(js):
    headers = {MSG_ID_HEADER: "same"}
    first = await js.publish("anim.work.plan", b"one", stream=WORK_STREAM, headers=headers)
    again = await js.publish("anim.work.plan", b"two", stream=WORK_STREAM, headers=headers)
    other = await js.publish("anim.work.plan", b"three", headers={MSG_ID_HEADER: "other"})
    assert (first.seq, first.duplicate) == (1, None)
    assert (again.seq, again.duplicate) == (1, True)
    assert (other.seq, other.duplicate) == (2, None)
    assert [m.data for m in await published(js, WORK_STREAM)] == [b"one", b"three"]


async def test_an_event_sent_without_an_ack_lands_in_order_and_deduplicates(js, nc):
    """What the renderer relies on for frame.started and frame.progress (send_event)."""
    job = keys.new_job_id()
    started = new_event(events.FRAME_STARTED, job, 0, 1, "cause", service="renderer")
    await send_event(nc, started)
    await send_event(nc, started)  # the same Nats-Msg-Id: a duplicate, dropped
    rendered = new_event(events.FRAME_RENDERED, job, 0, 1, "cause", service="renderer")
    await publish_event(js, rendered)  # acknowledged: the unacknowledged one is in before it
    await nc.flush()
    stored = [bus_pb2.Event.FromString(m.data) for m in await published(js, EVENTS_STREAM)]
    assert stored == [started, rendered]


async def test_the_expected_stream_must_match(js):
    with pytest.raises(nats.js.errors.BadRequestError):
        await js.publish("anim.work.plan", b"x", stream=EVENTS_STREAM)
    assert await published(js, WORK_STREAM) == []


async def test_a_deleted_message_is_gone(js):
    ack = await js.publish("anim.work.depth", b"x", headers={MSG_ID_HEADER: "m"})
    assert (await js.get_msg(WORK_STREAM, ack.seq)).data == b"x"
    assert await js.delete_msg(WORK_STREAM, ack.seq) is True
    with pytest.raises(nats.js.errors.NotFoundError):
        await js.get_msg(WORK_STREAM, ack.seq)
    with pytest.raises(nats.js.errors.NotFoundError):
        await js.get_msg(WORK_STREAM, ack.seq + 1)
    with pytest.raises(nats.js.errors.NotFoundError):
        await js.stream_info("NO_SUCH_STREAM")


async def test_jobs_are_listed_and_purged_through_the_buckets_stream(js):
    store = await JobStore.open(js)
    assert await store.list() == []
    ids = sorted(keys.new_job_id() for _ in range(3))
    for job_id in reversed(ids):
        await store.create(
            animation_pb2.JobState(job_id=job_id, status=types_pb2.JOB_STATUS_PENDING)
        )
    assert await store.list() == ids
    await store.delete(ids[1])
    assert await store.list() == [ids[0], ids[2]]
    with pytest.raises(JobNotFound):
        await store.get(ids[1])
    with pytest.raises(JobNotFound):
        await store.delete(ids[1])
    # The claim bucket is the other one: claims are not jobs.
    await store.claim_idempotency("client", "key", ids[0])
    assert await store.list() == [ids[0], ids[2]]
