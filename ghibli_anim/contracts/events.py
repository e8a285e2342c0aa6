"""Events: their names, which ones end a job, which ones report a failure.

An event's type is a ``bus_pb2.EventType``; its name is ``entity.verb`` (``frame.rendered``),
which is also the middle of its subject ``anim.event.<entity>.<verb>.<job_id>``.
"""

from __future__ import annotations

from collections.abc import Mapping

from ghibli_anim.contracts.pb import bus_pb2

JOB_CREATED = bus_pb2.EVENT_TYPE_JOB_CREATED
JOB_PLANNED = bus_pb2.EVENT_TYPE_JOB_PLANNED
JOB_APPROVED = bus_pb2.EVENT_TYPE_JOB_APPROVED
JOB_ASSEMBLED = bus_pb2.EVENT_TYPE_JOB_ASSEMBLED
JOB_COMPLETED = bus_pb2.EVENT_TYPE_JOB_COMPLETED
JOB_FAILED = bus_pb2.EVENT_TYPE_JOB_FAILED
JOB_CANCELLED = bus_pb2.EVENT_TYPE_JOB_CANCELLED
FRAME_STARTED = bus_pb2.EVENT_TYPE_FRAME_STARTED
FRAME_PROGRESS = bus_pb2.EVENT_TYPE_FRAME_PROGRESS
FRAME_RENDERED = bus_pb2.EVENT_TYPE_FRAME_RENDERED
FRAME_FAILED = bus_pb2.EVENT_TYPE_FRAME_FAILED
DEPTH_READY = bus_pb2.EVENT_TYPE_DEPTH_READY
DEPTH_FAILED = bus_pb2.EVENT_TYPE_DEPTH_FAILED
PLAN_FAILED = bus_pb2.EVENT_TYPE_PLAN_FAILED
ASSEMBLY_FAILED = bus_pb2.EVENT_TYPE_ASSEMBLY_FAILED
WATCH_HEARTBEAT = bus_pb2.EVENT_TYPE_WATCH_HEARTBEAT


def _name_of(value: int) -> str:
    # EVENT_TYPE_FRAME_RENDERED -> frame.rendered (entity and verb are one word each).
    entity, verb = bus_pb2.EventType.Name(value).removeprefix("EVENT_TYPE_").lower().split("_", 1)
    return f"{entity}.{verb}"


EVENT_NAMES: Mapping[int, str] = {
    value: _name_of(value)
    for value in bus_pb2.EventType.values()
    if value != bus_pb2.EVENT_TYPE_UNSPECIFIED
}
"""EventType value -> ``entity.verb`` (e.g. ``frame.rendered``)."""
EVENT_TYPES: Mapping[str, int] = {name: value for value, name in EVENT_NAMES.items()}
"""``entity.verb`` -> EventType value."""

TERMINAL: frozenset[int] = frozenset({JOB_COMPLETED, JOB_FAILED, JOB_CANCELLED})
"""Events after which a job does nothing more by itself (a resume starts a new attempt)."""

STEP_FAILURES: Mapping[int, str] = {
    FRAME_FAILED: "frame",
    DEPTH_FAILED: "depth of frame",
    PLAN_FAILED: "planning",
    ASSEMBLY_FAILED: "assembling",
}
"""A worker gave up on one step, named by what failed: what the job's error starts with."""


EMITTED_BY: Mapping[int, str] = {
    JOB_CREATED: "planner (job API: create, or a resume before planning ended)",
    JOB_PLANNED: "planner (plan step, also when the job then waits for review; job API on resume)",
    JOB_APPROVED: "planner (job API: a job waiting for review approved)",
    JOB_ASSEMBLED: "assembler",
    JOB_COMPLETED: "planner (conductor)",
    JOB_FAILED: "planner (conductor, time limit)",
    JOB_CANCELLED: "planner (job API)",
    FRAME_STARTED: "renderer",
    FRAME_PROGRESS: "renderer",
    FRAME_RENDERED: "renderer",
    FRAME_FAILED: "renderer (planner's advisories for a renderer that died)",
    DEPTH_READY: "depth",
    DEPTH_FAILED: "depth (planner's advisories for a depth worker that died)",
    PLAN_FAILED: "planner (plan step)",
    ASSEMBLY_FAILED: "assembler (planner's advisories for an assembler that died)",
    WATCH_HEARTBEAT: "planner (WatchAnimation only, while a job is quiet; never on the bus)",
}
"""Who publishes each event."""


def event_name(event_type: int) -> str:
    """``entity.verb`` of an EventType value; ValueError for UNSPECIFIED or unknown."""
    try:
        return EVENT_NAMES[event_type]
    except KeyError:
        raise ValueError(f"event type: not a known event type, got {event_type!r}") from None


def failure_reason(event: bus_pb2.Event) -> str:
    """The job's error for a step-failure event: ``frame 3: <reason>``, ``planning: ...``.

    A reason that already names its step (an older assembler's ``assembling: ...``) is
    kept as it is.
    """
    what = STEP_FAILURES.get(event.type)
    if what is None:
        return event.reason
    where = f"{what} {event.frame}" if event.frame >= 0 else what
    if event.reason.startswith(f"{where}:"):
        return event.reason
    return f"{where}: {event.reason}"
