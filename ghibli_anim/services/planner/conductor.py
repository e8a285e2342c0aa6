"""The conductor: turns each event into the job's next step (DESIGN.md "The chain").

on frame.rendered{i}: mark i done; depth on and i+1<N -> anim.work.depth{i}
                                    else i+1<N         -> anim.work.render{i+1}
                                    else               -> ASSEMBLING, anim.work.assemble
on depth.ready{i}:    anim.work.render{i+1}
on job.assembled:     COMPLETED, job.completed
on a failure event:   FAILED with the reason, job.failed

Every handler first updates KV (compare-and-swap), then publishes what the
*resulting* state calls for, then the message is acked. A redelivered event
therefore re-publishes the same work with the same Nats-Msg-Id (dropped as a
duplicate), and KV, not the dedup window, says what is done.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass

import nats.js.errors
from google.protobuf.message import DecodeError

from ghibli_anim.contracts import keys, manifests
from ghibli_anim.contracts.pb import animation_pb2, bus_pb2, types_pb2
from ghibli_anim.contracts.storyboard import Manifest
from ghibli_anim.runtime import bus, metrics
from ghibli_anim.runtime.jobstore import JobNotFound, JobStore, is_terminal
from ghibli_anim.runtime.store import Store
from ghibli_anim.services.planner.frame_specs import needs_depth

log = logging.getLogger(__name__)

RENDERING = types_pb2.JOB_STATUS_RENDERING
ASSEMBLING = types_pb2.JOB_STATUS_ASSEMBLING
COMPLETED = types_pb2.JOB_STATUS_COMPLETED
FAILED = types_pb2.JOB_STATUS_FAILED

_WORK_TYPES = {
    "plan": bus_pb2.PlanWork,
    "render": bus_pb2.RenderWork,
    "depth": bus_pb2.DepthWork,
    "assemble": bus_pb2.AssembleWork,
}

_FAILURES = {
    bus_pb2.EVENT_TYPE_FRAME_FAILED: "frame",
    bus_pb2.EVENT_TYPE_DEPTH_FAILED: "depth of frame",
    bus_pb2.EVENT_TYPE_JOB_FAILED: "job",
}


def next_work(state: animation_pb2.JobState, index: int) -> tuple[str, object] | None:
    """The work that frame ``index`` being done (and its depth, if needed) calls for."""
    specs = state.frame_specs
    done = state.frame_states[index]
    if needs_depth(list(specs), index) and not done.depth_ready:
        return "depth", bus_pb2.DepthWork(
            job_id=state.job_id,
            frame=index,
            attempt=state.attempt,
            causation_id=done.rendered_event_id,
            image_key=keys.frame_key(state.job_id, index),
            output_key=keys.depth_key(state.job_id, index),
            profile=state.profile,
        )
    if index + 1 < len(specs):
        cause = done.depth_event_id if done.depth_ready else done.rendered_event_id
        return "render", bus_pb2.RenderWork(
            job_id=state.job_id,
            frame=index + 1,
            attempt=state.attempt,
            causation_id=cause,
            spec=specs[index + 1],
        )
    return None


def assemble_work(state: animation_pb2.JobState) -> bus_pb2.AssembleWork:
    req = state.request
    n = len(state.frame_specs)
    return bus_pb2.AssembleWork(
        job_id=state.job_id,
        attempt=state.attempt,
        causation_id=state.frame_states[-1].rendered_event_id,
        frame_keys=[keys.frame_key(state.job_id, i) for i in range(n)],
        depth_keys=[
            keys.depth_key(state.job_id, i)
            for i in range(n)
            if needs_depth(list(state.frame_specs), i)
        ],
        fps=req.fps if req.HasField("fps") else (state.profile.fps or 8),
        formats=list(req.formats),
        prompts=[s.prompt for s in state.frame_specs],
        interpolate=req.interpolate,
    )


async def publish_step(bus_: bus.Bus, state: animation_pb2.JobState, step: str, work) -> None:
    """Publish one step's work for the job's current attempt (frame -1: job-level steps)."""
    await bus.publish_work(
        bus_.js,
        step,
        work,
        job_id=state.job_id,
        frame=getattr(work, "frame", -1),
        attempt=state.attempt,
    )


@dataclass
class Conductor:
    bus: bus.Bus
    jobs: JobStore
    store: Store

    async def handle(self, event: bus_pb2.Event) -> None:
        if not keys.is_job_id(event.job_id):
            log.warning("event for a malformed job id ignored", extra={"job": event.job_id[:64]})
            return
        try:
            if event.type == bus_pb2.EVENT_TYPE_FRAME_RENDERED:
                await self._frame_rendered(event)
            elif event.type == bus_pb2.EVENT_TYPE_DEPTH_READY:
                await self._depth_ready(event)
            elif event.type == bus_pb2.EVENT_TYPE_JOB_ASSEMBLED:
                await self._assembled(event)
            elif event.type in _FAILURES:
                await self._failed(event)
        except JobNotFound:
            log.info("event for a deleted job ignored", extra={"job_id": event.job_id})

    async def _frame_rendered(self, event: bus_pb2.Event) -> None:
        i = event.frame

        def mark(state: animation_pb2.JobState) -> None:
            if state.status != RENDERING or not 0 <= i < len(state.frame_states):
                return
            done = state.frame_states[i]
            if not done.rendered:
                done.rendered = True
                done.rendered_event_id = event.event_id
                done.attempt = event.attempt
                state.last_event_id = event.event_id
            if all(f.rendered for f in state.frame_states):
                state.status = ASSEMBLING

        state = await self.jobs.update(event.job_id, mark)
        if state.status == RENDERING:
            await self._publish(state, next_work(state, i))
            await self._update_manifest(state, i)
        elif state.status == ASSEMBLING:
            # The last frame: the manifest is complete before the assembler reads it.
            await self._update_manifest(state, i)
            await self._publish(state, ("assemble", assemble_work(state)))

    async def _depth_ready(self, event: bus_pb2.Event) -> None:
        i = event.frame

        def mark(state: animation_pb2.JobState) -> None:
            if state.status != RENDERING or not 0 <= i < len(state.frame_states):
                return
            done = state.frame_states[i]
            if not done.depth_ready:
                done.depth_ready = True
                done.depth_event_id = event.event_id
                state.last_event_id = event.event_id

        state = await self.jobs.update(event.job_id, mark)
        if state.status == RENDERING and state.frame_states[i].rendered:
            await self._publish(state, next_work(state, i))

    async def _assembled(self, event: bus_pb2.Event) -> None:
        outputs = await asyncio.to_thread(self._read_outputs, event.job_id)

        completed_now = False  # whether the stored update is this call's (job duration)

        def complete(state: animation_pb2.JobState) -> None:
            nonlocal completed_now
            completed_now = False
            if state.status != ASSEMBLING:
                return
            completed_now = True
            state.status = COMPLETED
            del state.outputs[:]
            state.outputs.extend(outputs)
            state.last_event_id = event.event_id

        state = await self.jobs.update(event.job_id, complete)
        if state.status == COMPLETED:
            if completed_now and state.HasField("created_at"):
                metrics.planner().job_seconds.observe(
                    max(0.0, time.time() - state.created_at.ToNanoseconds() / 1e9)
                )
            await bus.publish_event(
                self.bus.js,
                bus.new_event(
                    bus_pb2.EVENT_TYPE_JOB_COMPLETED,
                    state.job_id,
                    -1,
                    state.attempt,
                    event.event_id,
                    service="planner",
                ),
            )
            log.info("job completed", extra={"job_id": state.job_id})

    def _read_outputs(self, job_id: str) -> list[types_pb2.OutputFile]:
        manifest = Manifest.model_validate_json(self.store.get(keys.manifest_key(job_id)))
        return [
            types_pb2.OutputFile(
                name=o.name,
                key=o.key,
                size_bytes=o.size_bytes,
                sha256=o.sha256,
                content_type=o.content_type,
            )
            for o in manifest.outputs
        ]

    async def _failed(self, event: bus_pb2.Event) -> None:
        what = _FAILURES[event.type]
        where = f"{what} {event.frame}" if event.frame >= 0 else what
        reason = f"{where}: {event.reason}" if what != "job" else event.reason

        def fail(state: animation_pb2.JobState) -> None:
            if is_terminal(state.status):
                return
            state.status = FAILED
            state.error = reason
            state.last_event_id = event.event_id

        state = await self.jobs.update(event.job_id, fail)
        if state.status == FAILED and event.type != bus_pb2.EVENT_TYPE_JOB_FAILED:
            await bus.publish_event(
                self.bus.js,
                bus.new_event(
                    bus_pb2.EVENT_TYPE_JOB_FAILED,
                    state.job_id,
                    -1,
                    state.attempt,
                    event.event_id,
                    service="planner",
                    reason=state.error,
                ),
            )

    async def max_deliveries(self, advisory: bus.MaxDeliveries) -> None:
        """A work message ran out of deliveries without a worker saying why (each one
        died or stalled): fail its job with the reason and drop the message, so
        nothing stays stuck in the work queue."""
        try:
            raw = await self.bus.js.get_msg(advisory.stream, advisory.stream_seq)
        except nats.js.errors.NotFoundError:
            return  # acked or terminated meanwhile
        step = (raw.subject or "").rsplit(".", 1)[-1]
        kind = _WORK_TYPES.get(step)
        try:
            work = kind.FromString(raw.data or b"") if kind else None
        except DecodeError:
            work = None
        if work is not None and keys.is_job_id(work.job_id):
            frame = getattr(work, "frame", -1)
            where = f"{step} of frame {frame}" if frame >= 0 else step
            reason = (
                f"{where}: gave up after {advisory.deliveries} deliveries; the worker "
                "stopped each time without an answer (crashed, out of memory, or AckWait "
                "too short)"
            )
            event = bus.new_event(
                bus_pb2.EVENT_TYPE_JOB_FAILED,
                work.job_id,
                -1,
                work.attempt,
                work.causation_id,
                service="planner",
                reason=reason,
            )
            try:
                await self._failed(event)
                await bus.publish_event(self.bus.js, event)
            except JobNotFound:
                pass
        await self.bus.js.delete_msg(advisory.stream, advisory.stream_seq)

    async def _publish(self, state: animation_pb2.JobState, item) -> None:
        if item is not None:
            await publish_step(self.bus, state, *item)

    async def _update_manifest(self, state: animation_pb2.JobState, index: int) -> None:
        await asyncio.to_thread(self._write_manifest, state, index)

    def _write_manifest(self, state: animation_pb2.JobState, index: int) -> None:
        record = json.loads(self.store.get(keys.frame_record_key(state.job_id, index)))
        key = keys.manifest_key(state.job_id)
        try:
            current = self.store.get(key)
        except KeyError:
            current = None
        self.store.put(
            key, manifests.with_frame_json(current, state, index, record), "application/json"
        )
