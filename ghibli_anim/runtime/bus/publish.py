"""Publishing work and events.

Every publish carries a ``Nats-Msg-Id`` (see ``names``), so a re-publish within the
dedup window is dropped while a retry (a new attempt) is not, and the trace context of
the current span (``traceparent``, see ``runtime.tracing``).
"""

from __future__ import annotations

import uuid
from typing import Any

from google.protobuf.message import Message
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext, api

from ghibli_anim.contracts import events
from ghibli_anim.contracts.keys import check_job_id
from ghibli_anim.contracts.pb import bus_pb2
from ghibli_anim.runtime import tracing
from ghibli_anim.runtime.bus.names import (
    EVENTS_STREAM,
    JOB_LEVEL_FRAME,
    MSG_ID_HEADER,
    WORK_STREAM,
    event_msg_id,
    event_subject,
    work_msg_id,
    work_subject,
)

_EVENT_ID_NAMESPACE = uuid.UUID("6f1d3c2e-9a57-4b8e-8f0a-1c2d3e4f5a6b")


async def publish_work(
    js: JetStreamContext,
    step: str,
    msg: Message,
    *,
    job_id: str,
    frame: int,
    attempt: int,
    timeout: float | None = None,
) -> api.PubAck:
    """Publish a work message on ``anim.work.<step>``; ``ack.duplicate`` tells a dedup.

    ``frame`` is -1 for job-level steps (plan, assemble).
    """
    check_job_id(job_id)
    return await js.publish(
        work_subject(step),
        msg.SerializeToString(),
        timeout=timeout,
        stream=WORK_STREAM,
        headers=tracing.inject({MSG_ID_HEADER: work_msg_id(job_id, step, frame, attempt)}),
    )


async def publish_event(
    js: JetStreamContext, event: bus_pb2.Event, *, timeout: float | None = None
) -> api.PubAck:
    """Publish an event on ``anim.event.<entity>.<verb>.<job_id>``."""
    return await js.publish(
        event_subject(event.type, event.job_id),
        event.SerializeToString(),
        timeout=timeout,
        stream=EVENTS_STREAM,
        headers=tracing.inject({MSG_ID_HEADER: event_msg_id(event)}),
    )


async def send_event(nc: NATS, event: bus_pb2.Event) -> None:
    """Publish an event without waiting for the stream's acknowledgement.

    For the events that only inform (``frame.started``, ``frame.progress``), which sit on
    a frame's critical path: one round trip to the server less each. Sent on the
    connection that then publishes the frame's acknowledged events, so all reach the
    stream in the order they were sent (and the ``Nats-Msg-Id`` still deduplicates); one
    lost while the server is away costs only its news, as a failed progress event did.
    """
    await nc.publish(
        event_subject(event.type, event.job_id),
        event.SerializeToString(),
        headers=tracing.inject({MSG_ID_HEADER: event_msg_id(event)}),
    )


def new_event(
    event_type: int,
    job_id: str,
    frame: int = JOB_LEVEL_FRAME,
    attempt: int = 0,
    causation_id: str = "",
    **fields: Any,
) -> bus_pb2.Event:
    """An Event stamped with the current time; ``fields`` fill the rest
    (``reason``, ``key``, ``step``, ``steps``, ``service``, ``retryable``).

    The id derives from the event's ``Nats-Msg-Id``: a worker that re-emits an
    event after a crash produces the same id, so the copy the server drops as a
    duplicate and the one it kept are the same event, and causation ids that
    point at either stay valid.
    """
    events.event_name(event_type)  # rejects UNSPECIFIED and unknown values
    event = bus_pb2.Event(
        type=event_type,  # type: ignore[arg-type]
        job_id=check_job_id(job_id),
        frame=frame,
        attempt=attempt,
        causation_id=causation_id,
        **fields,
    )
    event.event_id = uuid.uuid5(_EVENT_ID_NAMESPACE, event_msg_id(event)).hex
    event.time.GetCurrentTime()
    return event


def job_event(
    event_type: int, job_id: str, attempt: int, causation_id: str, *, service: str, **fields: Any
) -> bus_pb2.Event:
    """A job-level event (frame -1: ``job.*``, ``plan.failed``, ``assembly.failed``)."""
    return new_event(
        event_type, job_id, JOB_LEVEL_FRAME, attempt, causation_id, service=service, **fields
    )


async def announce(
    js: JetStreamContext,
    event_type: int,
    job_id: str,
    attempt: int,
    causation_id: str,
    *,
    service: str,
    **fields: Any,
) -> bus_pb2.Event:
    """Publish a job-level event (frame -1: ``job.*``, ``plan.failed``...); the event."""
    event = job_event(event_type, job_id, attempt, causation_id, service=service, **fields)
    await publish_event(js, event)
    return event
