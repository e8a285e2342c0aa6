"""Event names, the events that end a job, and a failure's reason named by what failed."""

from __future__ import annotations

import pytest

from ghibli_anim.contracts import events
from ghibli_anim.contracts.pb import bus_pb2

JOB = "0123456789abcdef0123456789abcdef"


def test_every_event_type_has_an_entity_verb_name() -> None:
    assert events.event_name(events.FRAME_RENDERED) == "frame.rendered"
    assert events.event_name(events.PLAN_FAILED) == "plan.failed"
    assert events.event_name(events.ASSEMBLY_FAILED) == "assembly.failed"
    assert len(events.EVENT_NAMES) == len(bus_pb2.EventType.values()) - 1
    for value, name in events.EVENT_NAMES.items():
        entity, verb = name.split(".")
        assert entity and verb and events.EVENT_TYPES[name] == value
    with pytest.raises(ValueError, match="not a known event type"):
        events.event_name(bus_pb2.EVENT_TYPE_UNSPECIFIED)


def test_terminal_events() -> None:
    assert {events.JOB_COMPLETED, events.JOB_FAILED, events.JOB_CANCELLED} == events.TERMINAL


@pytest.mark.parametrize(
    ("kind", "frame", "reason", "expected"),
    [
        (events.FRAME_FAILED, 3, "CUDA out of memory", "frame 3: CUDA out of memory"),
        (events.DEPTH_FAILED, 2, "bad image", "depth of frame 2: bad image"),
        (events.PLAN_FAILED, -1, "77 tokens", "planning: 77 tokens"),
        (events.ASSEMBLY_FAILED, -1, "no frames", "assembling: no frames"),
        # An older assembler already named the step: kept as it is.
        (events.ASSEMBLY_FAILED, -1, "assembling: no frames", "assembling: no frames"),
        (events.JOB_FAILED, -1, "whatever it says", "whatever it says"),
    ],
)
def test_a_failures_reason_names_what_failed(kind, frame, reason, expected) -> None:
    event = bus_pb2.Event(type=kind, job_id=JOB, frame=frame, reason=reason)
    assert events.failure_reason(event) == expected
