"""runtime/bus/consumer.py's metrics and spans against a real nats-server: queue wait from
the message's publication, outcomes, redeliveries, and the trace context that the
publisher's NATS headers carry into the handler's span and on to what it publishes.

AckWait is 5 s here: this module's own ``nbus`` replaces the folder's (AckWait 1 s).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from opentelemetry import trace
from prometheus_client import REGISTRY
from support.spans import capture_spans

from ghibli_anim.contracts import config
from ghibli_anim.contracts.pb import bus_pb2
from ghibli_anim.runtime import tracing
from ghibli_anim.runtime.bus.connection import Bus, connect
from ghibli_anim.runtime.bus.consumer import Delivery, NonRetryable, Retryable, work_consumer
from ghibli_anim.runtime.bus.names import EVENTS_STREAM, WORK_STREAM
from ghibli_anim.runtime.bus.publish import new_event, publish_event, publish_work
from ghibli_anim.runtime.bus.topology import init_bus
from ghibli_anim.runtime.processes import NatsServer

JOB = "0123456789abcdef0123456789abcdef"

WAIT_S = 0.4


@pytest.fixture
async def nbus(nats_server: NatsServer) -> AsyncIterator[Bus]:
    settings = config.load("planner", {"ANIM_NATS_URL": nats_server.url, "ANIM_STORE": "local"})
    connection = await connect(settings, "test")
    await init_bus(connection.js, ack_wait_s=5.0, max_deliver=3)
    try:
        yield connection
    finally:
        await asyncio.wait_for(connection.close(), 10)


@pytest.fixture(scope="module")
def exporter():
    with capture_spans() as exporter:
        yield exporter


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def counts() -> dict[str, float]:
    out = {
        outcome: value("anim_messages_handled_total", consumer="render", outcome=outcome)
        for outcome in ("ok", "retry", "failed", "invalid")
    }
    out["redeliveries"] = value("anim_message_redeliveries_total", consumer="render")
    out["waits"] = value("anim_message_queue_wait_seconds_count", consumer="render")
    out["handled_s"] = value("anim_message_handle_seconds_count", consumer="render")
    return out


async def publish(nb: Bus, frame: int) -> None:
    work = bus_pb2.RenderWork(job_id=JOB, frame=frame, attempt=1, causation_id="c")
    await publish_work(nb.js, "render", work, job_id=JOB, frame=frame, attempt=1)


async def test_queue_wait_outcomes_and_redeliveries(nbus: Bus) -> None:
    seen: dict[int, list[Delivery]] = {}
    done = asyncio.Event()

    async def handle(work: bus_pb2.RenderWork, delivery: Delivery) -> None:
        seen.setdefault(work.frame, []).append(delivery)
        if len(seen) == 3 and len(seen[1]) == 2:
            done.set()
        if work.frame == 1 and delivery.num_delivered == 1:
            raise Retryable("not yet", delay=0.05)
        if work.frame == 2:
            raise NonRetryable("never")

    async def give_up(work, failure) -> None:
        pass

    before = counts()
    published = time.monotonic()
    for frame in range(3):
        await publish(nbus, frame)
    await nbus.js.publish("anim.work.render", b"\xff not a protobuf", stream=WORK_STREAM)
    # The messages wait in the stream before any consumer runs: that is the queue wait.
    await asyncio.sleep(WAIT_S)
    consumer = work_consumer(nbus.js, "render", bus_pb2.RenderWork, handle, on_give_up=give_up)
    async with consumer:
        await asyncio.wait_for(done.wait(), 20)
        deadline = time.monotonic() + 10
        while counts()["invalid"] == before["invalid"] or counts()["ok"] < before["ok"] + 2:
            assert time.monotonic() < deadline, counts()
            await asyncio.sleep(0.02)
    after = counts()
    assert after["ok"] - before["ok"] == 2  # frame 0, and frame 1 on its second delivery
    assert after["retry"] - before["retry"] == 1
    assert after["failed"] - before["failed"] == 1
    assert after["invalid"] - before["invalid"] == 1
    assert after["redeliveries"] - before["redeliveries"] == 1
    assert after["waits"] - before["waits"] == 5  # every delivery, the invalid one too
    assert after["handled_s"] - before["handled_s"] == 4
    first = seen[0][0]
    waited = time.monotonic() - published
    assert WAIT_S <= first.queue_wait_s <= waited + 0.05
    # A redelivery's wait counts from the original publication.
    assert seen[1][1].queue_wait_s >= seen[1][0].queue_wait_s


async def test_trace_context_flows_through_nats_headers(nbus: Bus, exporter) -> None:
    handled = asyncio.Event()

    async def handle(work: bus_pb2.RenderWork, delivery: Delivery) -> None:
        event = new_event(bus_pb2.EVENT_TYPE_FRAME_RENDERED, JOB, work.frame, 1, "c")
        await publish_event(nbus.js, event)
        handled.set()

    consumer = work_consumer(nbus.js, "render", bus_pb2.RenderWork, handle)
    consumer.service = "renderer"
    with tracing.span("planner", "conductor frame.rendered") as publisher:
        await publish(nbus, 7)
    async with consumer:
        await asyncio.wait_for(handled.wait(), 20)
    (span,) = [
        s
        for s in exporter.get_finished_spans()
        if s.name == "render" and s.attributes.get("anim.frame") == 7
    ]
    ids = publisher.get_span_context()
    assert span.context.trace_id == ids.trace_id and span.parent.span_id == ids.span_id
    assert span.kind == trace.SpanKind.CONSUMER
    assert span.attributes["anim.service"] == "renderer"
    assert span.attributes["anim.job_id"] == JOB and span.attributes["anim.outcome"] == "ok"
    assert span.attributes["messaging.message.id"] == f"{JOB}:render:7:1"
    # What the handler published carries the handler's span on.
    stored = await nbus.js.get_last_msg(EVENTS_STREAM, f"anim.event.frame.rendered.{JOB}")
    parent = tracing.extract(stored.headers)
    carried = trace.get_current_span(parent).get_span_context()
    assert (carried.trace_id, carried.span_id) == (ids.trace_id, span.context.span_id)
