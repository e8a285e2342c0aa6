"""runtime/bus/watch.py against a real nats-server: a job's events read and watched from a
sequence, other jobs' left out."""

from __future__ import annotations

import pytest
from support.bus import JOB, OTHER_JOB

from ghibli_anim.contracts.pb import bus_pb2
from ghibli_anim.runtime.bus.connection import Bus
from ghibli_anim.runtime.bus.publish import new_event, publish_event
from ghibli_anim.runtime.bus.watch import read_job_events, watch_job_events


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
