"""The bus's names: streams, subjects, durable consumers, KV buckets, message ids.

Every name a service uses on NATS is built here, so the wire contract lives in one
file (ARCHITECTURE.md's tables are generated from it):

- stream ``ANIM_WORK`` (work queue), subjects ``anim.work.<step>``, one durable pull
  consumer per step: ``plan``, ``render``, ``depth``, ``assemble``;
- stream ``ANIM_EVENTS`` (history), subjects ``anim.event.<entity>.<verb>.<job_id>``;
  the planner's durable ``conductor`` receives only the events it acts on
  (``CONDUCTOR_EVENTS``), never ``frame.started`` or ``frame.progress``;
- stream ``ANIM_ADVISORIES``: the server's max-deliveries advisories of ``ANIM_WORK``,
  durable ``advisories``;
- KV buckets ``anim-jobs`` (one JobState per job) and ``anim-idem`` (idempotency);
- ``anim.request.create``, ``anim.request.approve``, ``anim.request.fork`` and
  ``anim.request.extend``: CreateAnimation, ApproveAnimation, ForkAnimation and
  ExtendAnimation as core request/reply, queue group ``planner``;
- ``Nats-Msg-Id`` of every publish, built from (job, step or event, frame, attempt), so a
  re-publish within the dedup window is dropped while a retry (a new attempt) is not.
"""

from __future__ import annotations

from nats.js import api

from ghibli_anim.contracts import events
from ghibli_anim.contracts.keys import check_job_id
from ghibli_anim.contracts.pb import bus_pb2

WORK_STREAM = "ANIM_WORK"
EVENTS_STREAM = "ANIM_EVENTS"
ADVISORIES_STREAM = "ANIM_ADVISORIES"
WORK_PREFIX = "anim.work"
EVENT_PREFIX = "anim.event"

STEPS: tuple[str, ...] = ("plan", "render", "depth", "assemble")
"""Work steps; each is a subject ``anim.work.<step>`` and a durable of that name."""

CONDUCTOR = "conductor"
"""Durable consumer of the events the planner's conductor acts on."""
CONDUCTOR_EVENTS: tuple[int, ...] = (
    events.JOB_CREATED,
    events.JOB_PLANNED,
    events.JOB_APPROVED,
    events.FRAME_RENDERED,
    events.DEPTH_READY,
    events.JOB_ASSEMBLED,
    events.FRAME_FAILED,
    events.DEPTH_FAILED,
    events.PLAN_FAILED,
    events.ASSEMBLY_FAILED,
    events.JOB_FAILED,
)
"""What the conductor acts on (job.failed: from assemblers older than assembly.failed).
Progress, starts, completions and cancellations never reach it."""

ADVISORIES_CONSUMER = "advisories"
# The server's advisory when a work message ran out of deliveries (a worker that died
# on each of them never got to say so), captured into a stream of its own so a planner
# that was down still sees it.
MAX_DELIVERIES_SUBJECT = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{WORK_STREAM}.*"

BOUND_BY: dict[str, str] = {
    "plan": "planner",
    "render": "renderer",
    "depth": "depth",
    "assemble": "assembler",
    CONDUCTOR: "planner",
    ADVISORIES_CONSUMER: "planner",
}
"""The service whose replicas share each durable consumer (scale by adding replicas)."""

JOBS_BUCKET = "anim-jobs"
IDEM_BUCKET = "anim-idem"

REQUEST_CREATE = "anim.request.create"
"""Core request/reply subject for CreateAnimation over the bus."""
REQUEST_APPROVE = "anim.request.approve"
"""Core request/reply subject for ApproveAnimation over the bus."""
REQUEST_FORK = "anim.request.fork"
"""Core request/reply subject for ForkAnimation over the bus."""
REQUEST_EXTEND = "anim.request.extend"
"""Core request/reply subject for ExtendAnimation over the bus."""
PLANNER_QUEUE = "planner"
"""Queue group of the planners answering the ``anim.request.*`` subjects."""

MSG_ID_HEADER = api.Header.MSG_ID.value  # "Nats-Msg-Id"

# Limits of the streams and buckets.
EVENTS_MAX_AGE_S = 7 * 24 * 3600.0
EVENTS_MAX_BYTES = 1 << 30
WORK_MAX_BYTES = 256 << 20
MAX_MSG_SIZE = 1 << 20  # core NATS caps messages at 1 MiB anyway
DUPLICATE_WINDOW_S = 120.0
JOBS_HISTORY = 1
IDEM_MAX_AGE_S = 24 * 3600.0

JOB_LEVEL_FRAME = -1
"""The ``frame`` of job-level work and events (plan, assemble, job.*)."""


def work_subject(step: str) -> str:
    """``anim.work.<step>`` for one of ``STEPS``."""
    if step not in STEPS:
        raise ValueError(f"step: must be one of {', '.join(STEPS)}, got {step!r:.40}")
    return f"{WORK_PREFIX}.{step}"


def event_subject(event_type: int, job_id: str) -> str:
    """``anim.event.<entity>.<verb>.<job_id>``."""
    return f"{EVENT_PREFIX}.{events.event_name(event_type)}.{check_job_id(job_id)}"


def event_filter(event_type: int) -> str:
    """Subject filter of every job's events of one type: ``anim.event.<entity>.<verb>.*``."""
    return f"{EVENT_PREFIX}.{events.event_name(event_type)}.*"


def job_events_filter(job_id: str) -> str:
    """Subject filter of every event of one job: ``anim.event.*.*.<job_id>``."""
    return f"{EVENT_PREFIX}.*.*.{check_job_id(job_id)}"


def work_msg_id(job_id: str, step: str, frame: int, attempt: int) -> str:
    """``Nats-Msg-Id`` of a work message: ``job:step:frame:attempt``."""
    return f"{job_id}:{step}:{frame}:{attempt}"


def event_msg_id(event: bus_pb2.Event) -> str:
    """``Nats-Msg-Id`` of an event: ``job:entity.verb:frame:attempt``.

    Progress events repeat for one (frame, attempt), so their denoising step is
    part of the id; otherwise all but the first would be dropped as duplicates.
    """
    msg_id = f"{event.job_id}:{events.event_name(event.type)}:{event.frame}:{event.attempt}"
    if event.type == events.FRAME_PROGRESS:
        msg_id += f":{event.step}"
    return msg_id
