"""runtime/bus/names.py: subjects, message ids and event names (no server needed)."""

from __future__ import annotations

import pytest
from support.bus import JOB

from ghibli_anim.contracts.events import EVENT_NAMES
from ghibli_anim.contracts.pb import bus_pb2
from ghibli_anim.runtime.bus.names import event_msg_id, event_subject, work_subject
from ghibli_anim.runtime.bus.publish import new_event


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
