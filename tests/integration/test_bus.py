"""The bus and the job store against a real nats-server (AckWait 1 s, MaxDeliver 3)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import nats.js.errors
import pytest
from nats.js import api

from ghibli_anim.contracts import config, events, keys, lifecycle
from ghibli_anim.contracts.events import EVENT_NAMES
from ghibli_anim.contracts.pb import animation_pb2, bus_pb2, types_pb2
from ghibli_anim.runtime import jobstore as jobs
from ghibli_anim.runtime.bus.connection import Bus, connect
from ghibli_anim.runtime.bus.consumer import (
    DEFAULT_RETRY_DELAY_S,
    BusNotInitialized,
    Delivery,
    Failure,
    NonRetryable,
    Retryable,
    WorkConsumer,
    conductor_consumer,
    pending,
    work_consumer,
)
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
    event_msg_id,
    event_subject,
    work_subject,
)
from ghibli_anim.runtime.bus.publish import new_event, publish_event, publish_work
from ghibli_anim.runtime.bus.topology import init_bus
from ghibli_anim.runtime.bus.watch import read_job_events, watch_job_events
from ghibli_anim.runtime.processes import NatsServer

ACK_WAIT = 1.0
MAX_DELIVER = 3
JOB = "0123456789abcdef0123456789abcdef"
OTHER_JOB = "fedcba9876543210fedcba9876543210"


def settings_for(server: NatsServer) -> config.Settings:
    return config.load("planner", {"ANIM_NATS_URL": server.url, "ANIM_STORE": "local"})


@pytest.fixture
async def nbus(nats_server: NatsServer) -> AsyncIterator[Bus]:
    """A connection to a fresh server on which ``init_bus`` has run."""
    connection = await connect(settings_for(nats_server), "test")
    await init_bus(connection.js, ack_wait_s=ACK_WAIT, max_deliver=MAX_DELIVER)
    try:
        yield connection
    finally:
        await asyncio.wait_for(connection.close(), 10)


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def render(nb: Bus, frame: int = 0, attempt: int = 0, job: str = JOB) -> api.PubAck:
    work = bus_pb2.RenderWork(job_id=job, frame=frame, attempt=attempt, causation_id="c")
    return await publish_work(nb.js, "render", work, job_id=job, frame=frame, attempt=attempt)


async def stream_messages(nb: Bus, stream: str = WORK_STREAM) -> int:
    return (await nb.js.stream_info(stream)).state.messages


Handler = Callable[[bus_pb2.RenderWork, Delivery], Awaitable[None]]


class Recorder:
    """Handler and give-up hook that record what they saw."""

    def __init__(self, behaviour: Handler | None = None) -> None:
        self.calls: list[tuple[int, int, float]] = []  # (frame, num_delivered, time)
        self.given_up: list[tuple[bus_pb2.RenderWork, Failure]] = []
        self._behaviour = behaviour

    async def handle(self, work: bus_pb2.RenderWork, delivery: Delivery) -> None:
        self.calls.append((work.frame, delivery.num_delivered, time.monotonic()))
        if self._behaviour is not None:
            await self._behaviour(work, delivery)

    async def give_up(self, work: bus_pb2.RenderWork, failure: Failure) -> None:
        self.given_up.append((work, failure))

    def consumer(self, nb: Bus, **kwargs: object) -> WorkConsumer[bus_pb2.RenderWork]:
        return work_consumer(
            nb.js,
            "render",
            bus_pb2.RenderWork,
            self.handle,
            on_give_up=self.give_up,
            **kwargs,  # type: ignore[arg-type]
        )


# -- names -------------------------------------------------------------------


def test_subjects_and_event_names() -> None:
    assert work_subject("render") == "anim.work.render"
    with pytest.raises(ValueError, match="step"):
        work_subject("paint")
    assert (
        event_subject(bus_pb2.EVENT_TYPE_FRAME_RENDERED, JOB) == f"anim.event.frame.rendered.{JOB}"
    )
    assert EVENT_NAMES[bus_pb2.EVENT_TYPE_JOB_CREATED] == "job.created"
    assert EVENT_NAMES[bus_pb2.EVENT_TYPE_DEPTH_READY] == "depth.ready"
    assert len(EVENT_NAMES) == len(bus_pb2.EventType.values()) - 1
    assert all(name.count(".") == 1 for name in EVENT_NAMES.values())
    with pytest.raises(ValueError):
        event_subject(bus_pb2.EVENT_TYPE_UNSPECIFIED, JOB)
    with pytest.raises(ValueError, match="job_id"):
        event_subject(bus_pb2.EVENT_TYPE_JOB_CREATED, "x.>")
    event = new_event(bus_pb2.EVENT_TYPE_FRAME_STARTED, JOB, 4, 2, "cause", service="renderer")
    assert len(event.event_id) == 32 and event.time.seconds > 0
    assert (event.frame, event.attempt, event.causation_id, event.service) == (
        4,
        2,
        "cause",
        "renderer",
    )
    assert event_msg_id(event) == f"{JOB}:frame.started:4:2"


# -- bus init ----------------------------------------------------------------


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


async def test_consumer_only_binds(nats_server: NatsServer) -> None:
    connection = await connect(settings_for(nats_server), "bare")
    try:
        consumer = Recorder().consumer(connection)
        with pytest.raises(BusNotInitialized, match="bus init"):
            await consumer.start()
        streams = await connection.js.streams_info()
        assert streams == []  # nothing was created on the way
    finally:
        await connection.close()


# -- publishing ------------------------------------------------------------


async def test_publish_dedups_by_message_id(nbus: Bus) -> None:
    first = await render(nbus, frame=3, attempt=0)
    again = await render(nbus, frame=3, attempt=0)
    assert not first.duplicate and again.duplicate
    assert await stream_messages(nbus) == 1
    retry = await render(nbus, frame=3, attempt=1)  # a new attempt is new work
    assert not retry.duplicate
    assert await stream_messages(nbus) == 2

    rendered = new_event(bus_pb2.EVENT_TYPE_FRAME_RENDERED, JOB, 3, 0, "c")
    assert not (await publish_event(nbus.js, rendered)).duplicate
    twin = new_event(bus_pb2.EVENT_TYPE_FRAME_RENDERED, JOB, 3, 0, "c")
    assert (await publish_event(nbus.js, twin)).duplicate  # new event id, same work
    # Progress events of one frame differ by step, so none is dropped.
    for step in (1, 2, 3):
        progress = new_event(bus_pb2.EVENT_TYPE_FRAME_PROGRESS, JOB, 3, 0, "c", step=step)
        assert not (await publish_event(nbus.js, progress)).duplicate
    assert await stream_messages(nbus, EVENTS_STREAM) == 4


async def test_pending_counts_waiting_and_unacked(nbus: Bus) -> None:
    await render(nbus, frame=0)
    await render(nbus, frame=1)
    assert await pending(nbus.js, "render") == 2
    sub = await nbus.js.pull_subscribe_bind("render", stream=WORK_STREAM)
    (msg,) = await sub.fetch(1, timeout=2)
    assert await pending(nbus.js, "render") == 2  # one waiting, one in hand
    await msg.ack_sync()
    assert await pending(nbus.js, "render") == 1
    await sub.unsubscribe()


# -- consuming ---------------------------------------------------------------


async def test_unacked_message_is_redelivered_then_given_up_at_max_deliver(
    nbus: Bus,
) -> None:
    await render(nbus, frame=7)
    # A worker that crashes twice: fetches and never acknowledges.
    crashed = await nbus.js.pull_subscribe_bind("render", stream=WORK_STREAM)
    await crashed.fetch(1, timeout=2)
    start = time.monotonic()
    (second,) = await crashed.fetch(1, timeout=5)
    assert second.metadata.num_delivered == 2
    assert time.monotonic() - start >= ACK_WAIT * 0.8  # redelivered after AckWait, not before
    await crashed.unsubscribe()

    async def still_failing(work: bus_pb2.RenderWork, delivery: Delivery) -> None:
        raise Retryable("GPU out of memory")

    recorder = Recorder(still_failing)
    async with recorder.consumer(nbus) as consumer:
        # The third delivery comes after another AckWait.
        await eventually(lambda: recorder.given_up, timeout=4)
        await eventually(lambda: consumer.stats.termed == 1)
    assert [(f, n) for f, n, _ in recorder.calls] == [(7, 3)]
    ((work, failure),) = recorder.given_up
    assert work.frame == 7 and work.job_id == JOB
    assert failure.retryable and failure.num_delivered == 3
    assert "GPU out of memory" in failure.reason
    assert await pending(nbus.js, "render") == 0
    assert await stream_messages(nbus) == 0  # termed: gone from the work queue


async def test_heartbeats_keep_a_slow_handler_message(nbus: Bus) -> None:
    async def slow(work: bus_pb2.RenderWork, delivery: Delivery) -> None:
        await asyncio.sleep(2.5 * ACK_WAIT)

    recorder = Recorder(slow)
    # Two replicas: a redelivery would go to the idle one.
    one, two = recorder.consumer(nbus), recorder.consumer(nbus)
    await one.start()
    await two.start()
    try:
        await render(nbus)
        await eventually(lambda: one.stats.acked + two.stats.acked == 1, timeout=6)
        await asyncio.sleep(0.3)  # room for a (wrong) second delivery to show up
    finally:
        await one.stop()
        await two.stop()
    assert [(f, n) for f, n, _ in recorder.calls] == [(0, 1)]
    assert one.stats.heartbeats + two.stats.heartbeats >= 5
    info = await nbus.js.consumer_info(WORK_STREAM, "render")
    assert info.num_redelivered == 0
    assert await pending(nbus.js, "render") == 0


async def test_retryable_naks_and_the_message_comes_back(nbus: Bus) -> None:
    async def fail_once(work: bus_pb2.RenderWork, delivery: Delivery) -> None:
        if delivery.num_delivered == 1:
            raise Retryable("store unreachable", delay=0.3)

    recorder = Recorder(fail_once)
    async with recorder.consumer(nbus) as consumer:
        await render(nbus)
        await eventually(lambda: consumer.stats.acked == 1)
    assert [(f, n) for f, n, _ in recorder.calls] == [(0, 1), (0, 2)]
    waited = recorder.calls[1][2] - recorder.calls[0][2]
    assert 0.25 <= waited < ACK_WAIT  # the nak delay, not an AckWait expiry
    assert consumer.stats.naked == 1 and recorder.given_up == []
    assert await pending(nbus.js, "render") == 0


async def test_retry_delay_doubles_with_each_delivery(nbus: Bus) -> None:
    async def failing(work: bus_pb2.RenderWork, delivery: Delivery) -> None:
        if delivery.num_delivered == 1:
            raise RuntimeError("unexpected bug")  # any exception counts as retryable
        raise Retryable("still busy", delay=0.3)

    recorder = Recorder(failing)
    async with recorder.consumer(nbus):
        await render(nbus)
        await eventually(lambda: recorder.given_up, timeout=5)
    times = [t for _, _, t in recorder.calls]
    assert len(times) == MAX_DELIVER
    first_wait, second_wait = times[1] - times[0], times[2] - times[1]
    assert first_wait >= 0.9 * DEFAULT_RETRY_DELAY_S  # the default delay
    assert 0.55 <= second_wait < 0.95  # 0.3 doubled on the second delivery
    ((_, failure),) = recorder.given_up
    assert failure.retryable and "still busy" in failure.reason
    assert "gave up after 3 deliveries" in failure.reason


async def test_non_retryable_terms_at_once_and_gives_up(nbus: Bus) -> None:
    async def bad_prompt(work: bus_pb2.RenderWork, delivery: Delivery) -> None:
        raise NonRetryable("prompt exceeds 77 tokens")

    recorder = Recorder(bad_prompt)
    async with recorder.consumer(nbus) as consumer:
        await render(nbus, frame=2)
        await eventually(lambda: consumer.stats.termed == 1)
        await asyncio.sleep(ACK_WAIT * 1.5)  # a redelivery would have come by now
    assert [(f, n) for f, n, _ in recorder.calls] == [(2, 1)]
    ((work, failure),) = recorder.given_up
    assert work.frame == 2
    assert failure == Failure("prompt exceeds 77 tokens", retryable=False, num_delivered=1)
    assert consumer.stats.naked == 0
    assert await pending(nbus.js, "render") == 0


async def test_unparseable_message_is_termed_and_the_consumer_goes_on(nbus: Bus) -> None:
    await nbus.js.publish("anim.work.render", b"\xff\xff\xff not protobuf")
    bad_id = bus_pb2.RenderWork(job_id="../../etc", frame=1)
    await nbus.js.publish("anim.work.render", bad_id.SerializeToString())
    await render(nbus, frame=5)
    recorder = Recorder()
    async with recorder.consumer(nbus) as consumer:
        await eventually(lambda: consumer.stats.acked == 1)
    assert consumer.stats.unparseable == 2 and consumer.stats.termed == 2
    assert [(f, n) for f, n, _ in recorder.calls] == [(5, 1)]
    assert recorder.given_up == []  # no job to fail
    assert await pending(nbus.js, "render") == 0


async def test_stop_lets_the_message_in_hand_finish(nbus: Bus) -> None:
    started, finished = asyncio.Event(), asyncio.Event()

    async def work_a_while(work: bus_pb2.RenderWork, delivery: Delivery) -> None:
        started.set()
        await asyncio.sleep(0.8)
        finished.set()

    recorder = Recorder(work_a_while)
    consumer = recorder.consumer(nbus)
    await consumer.start()
    await render(nbus, frame=0)
    await asyncio.wait_for(started.wait(), 5)
    await render(nbus, frame=1)  # must stay for the next worker
    await consumer.stop(grace_s=10)
    assert finished.is_set() and consumer.stats.acked == 1
    assert [(f, n) for f, n, _ in recorder.calls] == [(0, 1)]
    assert await pending(nbus.js, "render") == 1
    # Stopping unsubscribed the pull subscription: drain does not hang (see nbus teardown).


async def test_stop_naks_when_the_grace_runs_out(nbus: Bus) -> None:
    started = asyncio.Event()

    async def forever(work: bus_pb2.RenderWork, delivery: Delivery) -> None:
        started.set()
        await asyncio.sleep(60)

    stuck = Recorder(forever)
    consumer = stuck.consumer(nbus)
    await consumer.start()
    await render(nbus)
    await asyncio.wait_for(started.wait(), 5)
    begin = time.monotonic()
    await consumer.stop(grace_s=0.3)
    assert time.monotonic() - begin < 2
    assert consumer.stats.naked == 1

    # Handed back at once, not after AckWait: the next worker gets delivery 2.
    recorder = Recorder()
    async with recorder.consumer(nbus) as successor:
        await eventually(lambda: successor.stats.acked == 1, timeout=ACK_WAIT * 0.9)
    assert [(f, n) for f, n, _ in recorder.calls] == [(0, 2)]


async def test_idle_stop_is_prompt_and_loses_nothing(nbus: Bus) -> None:
    recorder = Recorder()
    consumer = recorder.consumer(nbus, fetch_timeout_s=30)
    await consumer.start()
    await asyncio.sleep(0.2)  # the fetch is waiting on the server
    begin = time.monotonic()
    await consumer.stop()
    assert time.monotonic() - begin < 1
    await render(nbus)
    async with recorder.consumer(nbus) as successor:
        # Not swallowed by the abandoned pull request: delivered before any AckWait.
        await eventually(lambda: successor.stats.acked == 1, timeout=ACK_WAIT * 0.9)


async def test_conductor_consumer_reads_events(nbus: Bus) -> None:
    seen: list[tuple[int, int]] = []

    async def conduct(event: bus_pb2.Event, delivery: Delivery) -> None:
        seen.append((event.type, event.frame))

    consumer = conductor_consumer(nbus.js, conduct)
    async with consumer:
        await publish_event(nbus.js, new_event(bus_pb2.EVENT_TYPE_JOB_CREATED, JOB))
        await publish_event(nbus.js, new_event(bus_pb2.EVENT_TYPE_FRAME_RENDERED, JOB, 0, 0, "c"))
        await eventually(lambda: consumer.stats.acked == 2)
    assert seen == [(bus_pb2.EVENT_TYPE_JOB_CREATED, -1), (bus_pb2.EVENT_TYPE_FRAME_RENDERED, 0)]


# -- reading a job's events ----------------------------------------------------


async def test_job_events_from_a_sequence(nbus: Bus) -> None:
    js = nbus.js
    assert await read_job_events(js, JOB) == []
    for event_type, job, frame in [
        (bus_pb2.EVENT_TYPE_JOB_CREATED, JOB, -1),
        (bus_pb2.EVENT_TYPE_JOB_CREATED, OTHER_JOB, -1),
        (bus_pb2.EVENT_TYPE_FRAME_STARTED, JOB, 0),
        (bus_pb2.EVENT_TYPE_FRAME_RENDERED, JOB, 0),
    ]:
        await publish_event(js, new_event(event_type, job, frame, 0, "c"))

    stored = await read_job_events(js, JOB)
    assert [e.type for e in stored] == [
        bus_pb2.EVENT_TYPE_JOB_CREATED,
        bus_pb2.EVENT_TYPE_FRAME_STARTED,
        bus_pb2.EVENT_TYPE_FRAME_RENDERED,
    ]
    assert {e.job_id for e in stored} == {JOB}
    assert [e.sequence for e in stored] == [1, 3, 4]

    later = await read_job_events(js, JOB, after_sequence=stored[0].sequence)
    assert [e.sequence for e in later] == [3, 4]

    # Watching replays from the sequence, then follows live events.
    async with await watch_job_events(js, JOB, after_sequence=3) as watch:
        assert (await watch.next(timeout=2)).sequence == 4
        with pytest.raises(TimeoutError):
            await watch.next(timeout=0.2)
        live = new_event(bus_pb2.EVENT_TYPE_FRAME_STARTED, JOB, 1, 0, "c")
        await publish_event(js, live)
        got = await watch.next(timeout=2)
        assert (got.event_id, got.sequence) == (live.event_id, 5)


# -- job store ---------------------------------------------------------------


def new_state(job_id: str = JOB) -> animation_pb2.JobState:
    return animation_pb2.JobState(job_id=job_id, status=types_pb2.JOB_STATUS_PENDING, frames=4)


async def test_job_store_create_get_list_delete(nbus: Bus) -> None:
    store = await jobs.JobStore.open(nbus.js)
    assert await store.list() == []
    with pytest.raises(jobs.JobNotFound):
        await store.get(JOB)
    revision = await store.create(new_state())
    with pytest.raises(jobs.JobExists):
        await store.create(new_state())
    state, got_revision = await store.get(JOB)
    assert got_revision == revision
    assert state.status == types_pb2.JOB_STATUS_PENDING and state.created_at.seconds > 0
    await store.create(new_state(OTHER_JOB))
    assert await store.list() == sorted([JOB, OTHER_JOB])
    await store.delete(OTHER_JOB)
    assert await store.list() == [JOB]
    with pytest.raises(jobs.JobNotFound):
        await store.get(OTHER_JOB)


async def test_job_store_compare_and_swap(nbus: Bus, nats_server: NatsServer) -> None:
    store = await jobs.JobStore.open(nbus.js)
    await store.create(new_state())
    _, stale = await store.get(JOB)

    def to_planning(state: animation_pb2.JobState) -> None:
        state.status = types_pb2.JOB_STATUS_PLANNING

    planned = await store.update(JOB, to_planning, expect_status=types_pb2.JOB_STATUS_PENDING)
    assert planned.status == types_pb2.JOB_STATUS_PLANNING
    # A writer holding the old revision is refused by the server.
    with pytest.raises(nats.js.errors.KeyWrongLastSequenceError):
        await store.jobs.update(JOB, new_state().SerializeToString(), last=stale)

    # Forbidden transitions and unexpected statuses write nothing.
    _, revision = await store.get(JOB)

    def complete(state: animation_pb2.JobState) -> None:
        state.status = types_pb2.JOB_STATUS_COMPLETED

    with pytest.raises(lifecycle.InvalidTransition, match="PLANNING to COMPLETED"):
        await store.update(JOB, complete)
    with pytest.raises(lifecycle.UnexpectedStatus):
        await store.update(JOB, to_planning, expect_status=types_pb2.JOB_STATUS_PENDING)
    assert (await store.get(JOB))[1] == revision
    # A mutation that changes nothing writes nothing.
    await store.update(JOB, lambda state: None)
    assert (await store.get(JOB))[1] == revision

    # Concurrent writers on two connections: every update lands, none is lost.
    other = await connect(settings_for(nats_server), "other-writer")
    try:
        store_b = await jobs.JobStore.open(other.js)

        def mark(index: int) -> Callable[[animation_pb2.JobState], None]:
            def mutate(state: animation_pb2.JobState) -> None:
                state.frame_states.add(index=index, rendered=True)

            return mutate

        await asyncio.gather(*(s.update(JOB, mark(i)) for i, s in enumerate([store, store_b] * 8)))
    finally:
        await other.close()
    final, _ = await store.get(JOB)
    assert sorted(f.index for f in final.frame_states) == list(range(16))
    assert final.status == types_pb2.JOB_STATUS_PLANNING
    assert final.updated_at.ToNanoseconds() >= final.created_at.ToNanoseconds()


async def test_idempotency_claim(nbus: Bus) -> None:
    store = await jobs.JobStore.open(nbus.js)
    assert await store.claim_idempotency("alice", "k1", JOB) == JOB
    assert await store.claim_idempotency("alice", "k1", OTHER_JOB) == JOB  # lost: existing job
    assert await store.claim_idempotency("bob", "k1", OTHER_JOB) == OTHER_JOB  # other client
    # Racing claims agree on one winner.
    winners = await asyncio.gather(
        *(store.claim_idempotency("carol", "k", job) for job in [JOB, OTHER_JOB] * 4)
    )
    assert len(set(winners)) == 1
    # A released claim (its job failed to be created) can be taken again.
    assert not await store.release_idempotency("alice", "k1", OTHER_JOB)  # not the owner
    assert await store.release_idempotency("alice", "k1", JOB)
    assert await store.claim_idempotency("alice", "k1", OTHER_JOB) == OTHER_JOB
