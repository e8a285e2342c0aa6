"""Planning a job (anim.work.plan): storyboard, token check, FrameSpecs, frame 0.

PENDING -> PLANNING -> RENDERING. Each step is safe to repeat: a redelivered plan
message after a crash finds the job where the crash left it and carries on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field

from ghibli_anim.contracts import keys
from ghibli_anim.contracts.pb import animation_pb2, bus_pb2, types_pb2
from ghibli_anim.contracts.profiles import resolve_profile
from ghibli_anim.contracts.storyboard import Storyboard, parse_storyboard, prompts_with_style
from ghibli_anim.contracts.tokens import PromptTooLong, TokenCounter
from ghibli_anim.runtime import bus
from ghibli_anim.runtime.bus import NonRetryable
from ghibli_anim.runtime.jobstore import JobStore
from ghibli_anim.runtime.store import Store
from ghibli_anim.services.planner.frame_specs import resolve_frames
from ghibli_anim.services.planner.storyboard_llm import PlanningFailed, Storyboarder

log = logging.getLogger(__name__)


@dataclass
class Planner:
    bus: bus.Bus
    jobs: JobStore
    store: Store
    settings: object
    storyboarder: Storyboarder | None = field(default=None)
    """The LLM (or offline) planner; built from the settings when not given, so a backend
    missing its settings fails start-up with the variable's name."""

    def __post_init__(self) -> None:
        if self.storyboarder is None:
            self.storyboarder = Storyboarder.from_settings(self.settings)

    async def handle(self, work: bus_pb2.PlanWork) -> None:
        job_id = keys.check_job_id(work.job_id)

        def start(state: animation_pb2.JobState) -> None:
            if state.status == types_pb2.JOB_STATUS_PENDING:
                state.status = types_pb2.JOB_STATUS_PLANNING

        state = await self.jobs.update(job_id, start)
        if state.status == types_pb2.JOB_STATUS_RENDERING:
            # Planned before a crash; frame 0 may not have been published.
            await self._publish_first(state, state.last_event_id)
            return
        if state.status != types_pb2.JOB_STATUS_PLANNING:
            log.info("plan skipped", extra={"job_id": job_id, "status": state.status})
            return
        try:
            await self._plan(state, work)
        except (PromptTooLong, PlanningFailed) as exc:
            await self.fail(job_id, str(exc), work.causation_id)

    async def _plan(self, state: animation_pb2.JobState, work: bus_pb2.PlanWork) -> None:
        req = state.request
        try:
            # The named profile with the request's model overrides and preset applied:
            # every FrameSpec carries this one.
            profile = resolve_profile(req, self.settings)
        except ValueError as exc:  # e.g. the profiles file changed since creation
            await self.fail(state.job_id, str(exc), work.causation_id)
            return
        counter = await asyncio.to_thread(lambda: TokenCounter.for_profile(profile, self.settings))
        started = time.monotonic()
        notice = ""
        if req.storyboard_json:
            try:
                board = parse_storyboard(req.storyboard_json, req.frames)
            except ValueError as exc:
                raise NonRetryable(f"storyboard_json: {exc}") from None
            backend = "user"
            attempts = [
                {
                    "attempt": 1,
                    "backend": backend,
                    "latency_s": round(time.monotonic() - started, 4),
                    "errors": [],
                    "accepted": True,
                }
            ]
        else:
            # LLM (with repairs and fallback) or offline, in a thread: calls block for seconds.
            try:
                outcome = await asyncio.to_thread(
                    self.storyboarder.plan,
                    req.idea,
                    req.frames,
                    style=profile.style,
                    counter=counter,
                )
            except PlanningFailed as exc:
                await asyncio.to_thread(self._write_attempts, state.job_id, exc.attempts)
                raise
            board, backend, notice = outcome.board, outcome.backend, outcome.notice
            attempts = outcome.attempts
        if not req.truncate_prompts:
            # Otherwise the renderer cuts at 77 tokens and records what it dropped.
            counter.check(prompts_with_style(board))
        await asyncio.to_thread(self._write_plan, state.job_id, board, attempts)
        specs = resolve_frames(state.job_id, req, state.seed, board, profile)
        planned = bus.new_event(
            bus_pb2.EVENT_TYPE_JOB_PLANNED,
            state.job_id,
            -1,
            state.attempt,
            work.causation_id,
            service="planner",
            reason=notice,
        )

        def finish(s: animation_pb2.JobState) -> None:
            if s.status != types_pb2.JOB_STATUS_PLANNING:
                return
            s.status = types_pb2.JOB_STATUS_RENDERING
            s.title = board.title
            s.planner_backend = backend
            s.profile.CopyFrom(profile)
            del s.frame_specs[:]
            s.frame_specs.extend(specs)
            del s.frame_states[:]
            s.frame_states.extend(types_pb2.FrameState(index=i) for i in range(len(specs)))
            s.last_event_id = planned.event_id

        state = await self.jobs.update(state.job_id, finish)
        if state.status != types_pb2.JOB_STATUS_RENDERING:
            return  # cancelled while planning
        await bus.publish_event(self.bus.js, planned)
        await self._publish_first(state, planned.event_id)
        log.info("job planned", extra={"job_id": state.job_id, "backend": backend})

    def _write_plan(self, job_id: str, board: Storyboard, attempts: list[dict]) -> None:
        self.store.put(keys.plan_key(job_id), board.to_json().encode(), "application/json")
        self._write_attempts(job_id, attempts)

    def _write_attempts(self, job_id: str, attempts: list[dict]) -> None:
        """Every planning try (messages, reply, errors, latency), also when planning failed."""
        self.store.put(
            keys.plan_attempts_key(job_id),
            json.dumps(attempts, indent=2).encode(),
            "application/json",
        )

    async def _publish_first(self, state: animation_pb2.JobState, cause: str) -> None:
        spec = state.frame_specs[0]
        await bus.publish_work(
            self.bus.js,
            "render",
            bus_pb2.RenderWork(
                job_id=state.job_id, frame=0, attempt=state.attempt, causation_id=cause, spec=spec
            ),
            job_id=state.job_id,
            frame=0,
            attempt=state.attempt,
        )

    async def fail(self, job_id: str, reason: str, cause: str) -> None:
        """Fail the job in PLANNING with the reason (no render has started)."""

        def mutate(s: animation_pb2.JobState) -> None:
            if s.status in (types_pb2.JOB_STATUS_PENDING, types_pb2.JOB_STATUS_PLANNING):
                s.status = types_pb2.JOB_STATUS_FAILED
                s.error = f"planning: {reason}"

        state = await self.jobs.update(job_id, mutate)
        if state.status == types_pb2.JOB_STATUS_FAILED:
            await bus.publish_event(
                self.bus.js,
                bus.new_event(
                    bus_pb2.EVENT_TYPE_JOB_FAILED,
                    job_id,
                    -1,
                    state.attempt,
                    cause,
                    service="planner",
                    reason=state.error,
                ),
            )
