"""runtime/bus/consumer.py against a real nats-server (AckWait 1 s, MaxDeliver 3):
binding, redelivery, heartbeats, retries and their delays, giving up, bad messages, stopping."""

from __future__ import annotations

import asyncio
import time

import pytest
from support.bus import (
    ACK_WAIT,
    JOB,
    MAX_DELIVER,
    Recorder,
    eventually,
    render,
    settings_for,
    stream_messages,
)

from ghibli_anim.contracts.pb import bus_pb2
from ghibli_anim.runtime.bus.connection import Bus, connect
from ghibli_anim.runtime.bus.consumer import (
    DEFAULT_RETRY_DELAY_S,
    BusNotInitialized,
    Delivery,
    Failure,
    NonRetryable,
    Retryable,
    conductor_consumer,
    pending,
)
from ghibli_anim.runtime.bus.names import WORK_STREAM
from ghibli_anim.runtime.bus.publish import new_event, publish_event
from ghibli_anim.runtime.processes import NatsServer


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


async def test_concurrency_holds_that_many_messages_and_no_more(nbus: Bus) -> None:
    held: set[int] = set()
    most = 0
    release = asyncio.Event()

    async def hold(work: bus_pb2.RenderWork, delivery: Delivery) -> None:
        nonlocal most
        held.add(work.frame)
        most = max(most, len(held))
        await release.wait()
        held.discard(work.frame)

    recorder = Recorder(hold)
    consumer = recorder.consumer(nbus, concurrency=2)
    for frame in range(3):
        await render(nbus, frame=frame)
    await consumer.start()
    await eventually(lambda: len(held) == 2)
    await asyncio.sleep(0.3)  # room for two: the third waits on the server
    assert consumer.in_hand == 2 and len(held) == 2
    assert await pending(nbus.js, "render") == 3
    release.set()
    await eventually(lambda: consumer.stats.acked == 3)
    await consumer.stop()
    assert most == 2 and sorted(f for f, _, _ in recorder.calls) == [0, 1, 2]


async def test_stop_naks_every_message_in_hand_when_the_grace_runs_out(nbus: Bus) -> None:
    async def forever(work: bus_pb2.RenderWork, delivery: Delivery) -> None:
        await asyncio.sleep(60)

    stuck = Recorder(forever)
    consumer = stuck.consumer(nbus, concurrency=2)
    await consumer.start()
    await render(nbus, frame=0)
    await render(nbus, frame=1)
    await eventually(lambda: consumer.in_hand == 2)
    begin = time.monotonic()
    await consumer.stop(grace_s=0.3)
    assert time.monotonic() - begin < 2
    assert consumer.stats.naked == 2 and consumer.in_hand == 0
    recorder = Recorder()
    async with recorder.consumer(nbus) as successor:
        await eventually(lambda: successor.stats.acked == 2, timeout=ACK_WAIT * 0.9)
    assert sorted((f, n) for f, n, _ in recorder.calls) == [(0, 2), (1, 2)]


def test_concurrency_must_be_positive() -> None:
    with pytest.raises(ValueError, match="concurrency: must be >= 1, got 0"):
        Recorder().consumer(Bus(nc=None, js=None, name="x"), concurrency=0)  # type: ignore[arg-type]


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
