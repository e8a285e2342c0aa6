"""runtime/bus/publish.py against a real nats-server: a message id is published once."""

from __future__ import annotations

from support.bus import JOB, render, stream_messages

from ghibli_anim.contracts.pb import bus_pb2
from ghibli_anim.runtime.bus.connection import Bus
from ghibli_anim.runtime.bus.names import EVENTS_STREAM
from ghibli_anim.runtime.bus.publish import new_event, publish_event


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
