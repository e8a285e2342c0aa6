"""The conductor: the one place that decides what runs next for a job.

The decision is a pure function of the job's state, :func:`due_work`: PENDING calls for
planning; RENDERING for the step after the last frame in the chain (frame i+1, or the
depth map of frame i when frame i+1 needs it and the renderer did not make it with frame
i; frame 0 right after planning); and ASSEMBLING for assembly. A render work asks the
renderer for the frame's depth map when the next frame needs one (``depth_output_key``).
The :class:`Conductor` applies each event the planner's durable ``conductor`` receives
(only the events it acts on reach it):

=====================  =====================================================================
job.created            publish what the state calls for (planning)
job.planned            the same: frame 0 after planning; after a resume, the first frame
                       not done, its predecessor's depth map, or assembly; nothing for
                       a job waiting for review (PLANNED)
job.approved           the same as job.planned, once a job waiting for review is approved
frame.rendered{i}      KV marks frame i done (the last one: ASSEMBLING), and its depth map
                       when the event names it, then publish what the state calls for
depth.ready{i}         KV marks the depth map done, then publish what the state calls for
job.assembled          COMPLETED with the outputs the event carries, then job.completed
frame.failed,          FAILED with the reason, named by what failed (``frame 3: ...``),
depth.failed,          then job.failed (:meth:`Conductor.fail_job`, the one way a job fails)
plan.failed,
assembly.failed
job.failed             FAILED (older assemblers report a failed assembly this way)
=====================  =====================================================================

Every handler first updates KV (compare-and-swap, a transition of
:mod:`ghibli_anim.contracts.lifecycle`), then publishes what the *resulting* state calls
for, then the message is acked. A redelivered event therefore re-publishes the same work
with the same ``Nats-Msg-Id`` (dropped as a duplicate), and KV, not the dedup window,
says what is done.

Between two frames the conductor does one KV update and one publish: nothing else is on
the frame's critical path (the manifest is the assembler's, written once at the end).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import nats.js.errors
from google.protobuf.message import DecodeError, Message

from ghibli_anim.contracts import events, keys, lifecycle
from ghibli_anim.contracts.lifecycle import ASSEMBLING, COMPLETED, FAILED, PENDING, RENDERING
from ghibli_anim.contracts.pb import animation_pb2, bus_pb2
from ghibli_anim.runtime import metrics
from ghibli_anim.runtime.bus.connection import Bus
from ghibli_anim.runtime.bus.consumer import MaxDeliveries
from ghibli_anim.runtime.bus.names import JOB_LEVEL_FRAME
from ghibli_anim.runtime.bus.publish import announce, new_event, publish_event, publish_work
from ghibli_anim.runtime.jobstore import JobNotFound, JobStore

log = logging.getLogger(__name__)

SERVICE = "planner"

WORK_TYPES: dict[str, type[Message]] = {
    "plan": bus_pb2.PlanWork,
    "render": bus_pb2.RenderWork,
    "depth": bus_pb2.DepthWork,
    "assemble": bus_pb2.AssembleWork,
}

# The statuses in which job.created and job.planned start work.
_STARTS = {
    events.JOB_CREATED: frozenset({PENDING}),
    events.JOB_PLANNED: frozenset({RENDERING, ASSEMBLING}),
    events.JOB_APPROVED: frozenset({RENDERING, ASSEMBLING}),
}

# The failure event a worker would have sent for each step, had it lived to say so.
_FAILURE_OF_STEP = {
    "plan": events.PLAN_FAILED,
    "render": events.FRAME_FAILED,
    "depth": events.DEPTH_FAILED,
    "assemble": events.ASSEMBLY_FAILED,
}


# ---------------------------------------------------------------------------
# What runs next: pure functions of the job's state
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Work:
    """One piece of work to publish: its step (``anim.work.<step>``) and message."""

    step: str
    message: Message

    @property
    def frame(self) -> int:
        """The frame it is about (-1 for job-level work: plan, assemble)."""
        return getattr(self.message, "frame", JOB_LEVEL_FRAME)


def plan_work(state: animation_pb2.JobState, cause: str) -> Work:
    return Work(
        "plan", bus_pb2.PlanWork(job_id=state.job_id, attempt=state.attempt, causation_id=cause)
    )


def render_work(state: animation_pb2.JobState, index: int, cause: str) -> Work:
    # The renderer makes the depth map the next frame needs while the frame is in its
    # memory: no store read, decode and second round trip through the bus (ARCHITECTURE.md).
    wanted = lifecycle.needs_depth(state.frame_specs, index)
    return Work(
        "render",
        bus_pb2.RenderWork(
            job_id=state.job_id,
            frame=index,
            attempt=state.attempt,
            causation_id=cause,
            spec=state.frame_specs[index],
            depth_output_key=keys.depth_key(state.job_id, index) if wanted else "",
        ),
    )


def depth_work(state: animation_pb2.JobState, index: int, cause: str) -> Work:
    return Work(
        "depth",
        bus_pb2.DepthWork(
            job_id=state.job_id,
            frame=index,
            attempt=state.attempt,
            causation_id=cause,
            image_key=keys.frame_key(state.job_id, index),
            output_key=keys.depth_key(state.job_id, index),
            profile=state.profile,
        ),
    )


def assemble_work(state: animation_pb2.JobState, cause: str) -> Work:
    req = state.request
    specs: Sequence = state.frame_specs
    n = len(specs)
    return Work(
        "assemble",
        bus_pb2.AssembleWork(
            job_id=state.job_id,
            attempt=state.attempt,
            causation_id=state.frame_states[-1].rendered_event_id or cause,
            frame_keys=[keys.frame_key(state.job_id, i) for i in range(n)],
            depth_keys=[
                keys.depth_key(state.job_id, i) for i in range(n) if lifecycle.needs_depth(specs, i)
            ],
            fps=req.fps if req.HasField("fps") else (state.profile.fps or 8),
            formats=list(req.formats),
            prompts=[s.prompt for s in specs],
            interpolate=req.interpolate,
        ),
    )


def due_work(state: animation_pb2.JobState, cause: str) -> list[Work]:
    """The work the job's state calls for now (empty when it calls for none).

    ``cause`` is the id of the event being handled: the causation id of work whose own
    cause is not in the state (planning, frame 0, frames a resume found in the store).
    Publishing the result twice is harmless: the same work has the same message id.
    """
    if state.status == PENDING:
        return [plan_work(state, cause)]
    if state.status == ASSEMBLING:
        return [assemble_work(state, cause)]
    if state.status != RENDERING or not state.frame_specs:
        return []
    upcoming = lifecycle.first_frame_not_rendered(state)
    if upcoming is None:
        return []  # every frame is done: the job is ASSEMBLING once its state says so
    if upcoming == 0:
        return [render_work(state, 0, cause)]
    previous = state.frame_states[upcoming - 1]
    if lifecycle.needs_depth(state.frame_specs, previous.index):
        if not previous.depth_ready:
            return [depth_work(state, previous.index, previous.rendered_event_id or cause)]
        return [render_work(state, upcoming, previous.depth_event_id or cause)]
    return [render_work(state, upcoming, previous.rendered_event_id or cause)]


# ---------------------------------------------------------------------------
# Applying events
# ---------------------------------------------------------------------------


@dataclass
class Conductor:
    bus: Bus
    jobs: JobStore

    async def handle(self, event: bus_pb2.Event) -> None:
        if not keys.is_job_id(event.job_id):
            log.warning("event for a malformed job id ignored", extra={"job": event.job_id[:64]})
            return
        try:
            await self._handle(event)
        except JobNotFound:
            log.info("event for a deleted job ignored", extra={"job_id": event.job_id})

    async def _handle(self, event: bus_pb2.Event) -> None:
        kind = event.type
        if kind in _STARTS:
            state, _ = await self.jobs.get(event.job_id)
            # A late copy of an earlier attempt's event, or of one the job is past, starts
            # nothing.
            if state.attempt == event.attempt and state.status in _STARTS[kind]:
                await self.publish(state, due_work(state, event.event_id))
        elif kind == events.FRAME_RENDERED:
            await self._frame_rendered(event)
        elif kind == events.DEPTH_READY:
            state = await self.jobs.update(
                event.job_id,
                lambda s: lifecycle.depth_ready(s, event.frame, event_id=event.event_id),
            )
            await self.publish(state, due_work(state, event.event_id))
        elif kind == events.JOB_ASSEMBLED:
            await self._assembled(event)
        elif kind in events.STEP_FAILURES:
            await self.fail_job(
                event.job_id,
                events.failure_reason(event),
                cause=event.event_id,
                attempt=event.attempt,
            )
        elif kind == events.JOB_FAILED:
            # Already announced by whoever sent it: record it, announce nothing.
            await self.jobs.update(
                event.job_id,
                lambda s: lifecycle.failed(
                    s, event.reason, event_id=event.event_id, attempt=event.attempt
                ),
            )

    async def _frame_rendered(self, event: bus_pb2.Event) -> None:
        i = event.frame
        # A depth_key is the depth map the render work asked for, stored with the frame;
        # without one (a renderer that made none), due_work asks the depth service.
        with_depth = event.depth_key == keys.depth_key(event.job_id, i)
        state = await self.jobs.update(
            event.job_id,
            lambda s: lifecycle.frame_rendered(
                s, i, event_id=event.event_id, attempt=event.attempt, with_depth=with_depth
            ),
        )
        await self.publish(state, due_work(state, event.event_id))

    async def _assembled(self, event: bus_pb2.Event) -> None:
        state, completed_now = await self.jobs.apply(
            event.job_id,
            lambda s: lifecycle.assembled(s, event.outputs, event_id=event.event_id),
        )
        if state.status != COMPLETED:
            return
        if completed_now and state.HasField("created_at"):
            metrics.planner().job_seconds.observe(
                max(0.0, time.time() - state.created_at.ToNanoseconds() / 1e9)
            )
        await announce(
            self.bus.js,
            events.JOB_COMPLETED,
            state.job_id,
            state.attempt,
            event.event_id,
            service=SERVICE,
        )
        log.info("job completed", extra={"job_id": state.job_id})

    async def fail_job(self, job_id: str, reason: str, *, cause: str, attempt: int = 0) -> bool:
        """The one way a job fails: FAILED with ``reason``, then ``job.failed``.

        True when this call failed it. ``job.failed`` goes out whenever the job is
        FAILED afterwards, so a redelivered failure re-announces it (deduplicated by its
        message id) if the first handler died between the write and the publish. A
        failure of an earlier ``attempt`` (work that ended after a resume) changes nothing.
        """
        state, failed_now = await self.jobs.apply(
            job_id, lambda s: lifecycle.failed(s, reason, event_id=cause, attempt=attempt)
        )
        if state.status == FAILED and (failed_now or attempt in (0, state.attempt)):
            await announce(
                self.bus.js,
                events.JOB_FAILED,
                state.job_id,
                state.attempt,
                cause,
                service=SERVICE,
                reason=state.error,
            )
        if failed_now:
            log.warning("job failed", extra={"job_id": job_id, "reason": state.error[:500]})
        return failed_now

    async def max_deliveries(self, advisory: MaxDeliveries) -> None:
        """A work message ran out of deliveries without a worker saying why (each one died
        or stalled): send the failure event that worker could not, and drop the message,
        so nothing stays stuck in the work queue."""
        try:
            raw = await self.bus.js.get_msg(advisory.stream, advisory.stream_seq)
        except nats.js.errors.NotFoundError:
            return  # acked or terminated meanwhile
        step = (raw.subject or "").rsplit(".", 1)[-1]
        kind = WORK_TYPES.get(step)
        try:
            work = kind.FromString(raw.data or b"") if kind else None
        except DecodeError:
            work = None
        if work is not None and keys.is_job_id(work.job_id):
            failure = new_event(
                _FAILURE_OF_STEP[step],
                work.job_id,
                getattr(work, "frame", JOB_LEVEL_FRAME),
                work.attempt,
                work.causation_id,
                service=SERVICE,
                reason=(
                    f"gave up after {advisory.deliveries} deliveries; the {step} worker stopped "
                    "each time without an answer (crashed, out of memory, or AckWait too short)"
                ),
                retryable=True,
            )
            await publish_event(self.bus.js, failure)
        await self.bus.js.delete_msg(advisory.stream, advisory.stream_seq)

    async def publish(self, state: animation_pb2.JobState, work: Sequence[Work]) -> None:
        """Publish ``work`` for the job's current attempt."""
        for item in work:
            await publish_work(
                self.bus.js,
                item.step,
                item.message,
                job_id=state.job_id,
                frame=item.frame,
                attempt=state.attempt,
            )
