"""The plan step (anim.work.plan): storyboard, token check, FrameSpecs, ``job.planned``.

PENDING -> PLANNING -> RENDERING (or PLANNED, for a request with ``review``: the job
waits there until the job API approves it). The storyboard comes from the request
(``storyboard_json``) or from the storyboard LLM (:mod:`.storyboard_llm`, which falls back
to the offline planner); an extension of a finished job (:mod:`.forks`) whose request holds
only the parent's shots has them continued by the same planner, with them as context. Every
prompt with the style line must fit CLIP's 77 tokens unless the request asks to truncate;
:mod:`.frame_specs` resolves it into one FrameSpec per frame, stored in the job's state.
Then ``job.planned`` goes out and the conductor publishes frame 0. A storyboard that
cannot be planned is ``plan.failed`` (the conductor fails the job with the reason).

Each step is safe to repeat: a redelivered plan message after a crash finds the job
where the crash left it and carries on (a job already planned announces it again; the
announcement has the same message id, so a copy is dropped).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field

from ghibli_anim.contracts import events, keys, lifecycle
from ghibli_anim.contracts.config import Settings
from ghibli_anim.contracts.pb import animation_pb2, bus_pb2, types_pb2
from ghibli_anim.contracts.profiles import resolve_profile
from ghibli_anim.contracts.storyboard import Storyboard, parse_storyboard, prompts_with_style
from ghibli_anim.contracts.tokens import PromptTooLong, TokenCounter
from ghibli_anim.runtime.bus.connection import Bus
from ghibli_anim.runtime.bus.consumer import NonRetryable
from ghibli_anim.runtime.bus.publish import announce, job_event, publish_event
from ghibli_anim.runtime.jobstore import JobStore
from ghibli_anim.runtime.store.base import NotFound, Store
from ghibli_anim.services.planner import forks
from ghibli_anim.services.planner.frame_specs import resolve_frames
from ghibli_anim.services.planner.storyboard_llm import PlanningFailed, Storyboarder

log = logging.getLogger(__name__)

SERVICE = "planner"
_PLANNED = (lifecycle.RENDERING, lifecycle.ASSEMBLING, lifecycle.PLANNED)
REVIEW_NOTICE = "waiting for review: approve the storyboard (ApproveAnimation) or cancel the job"


@dataclass
class PlanStep:
    bus: Bus
    jobs: JobStore
    store: Store
    settings: Settings
    storyboarder: Storyboarder | None = field(default=None)
    """The LLM (or offline) planner; built from the settings when not given, so a backend
    missing its settings fails start-up with the variable's name."""

    def __post_init__(self) -> None:
        if self.storyboarder is None:
            self.storyboarder = Storyboarder.from_settings(self.settings)

    async def handle(self, work: bus_pb2.PlanWork) -> None:
        job_id = keys.check_job_id(work.job_id)
        state = await self.jobs.update(job_id, lifecycle.start_planning)
        if state.status in _PLANNED and state.frame_specs:
            # Planned before a crash; job.planned may not have gone out.
            await announce(
                self.bus.js,
                events.JOB_PLANNED,
                job_id,
                state.attempt,
                work.causation_id,
                service=SERVICE,
            )
            return
        if state.status != lifecycle.PLANNING:
            log.info("plan skipped", extra={"job_id": job_id, "status": state.status})
            return
        try:
            await self._plan(state, work)
        except (PromptTooLong, PlanningFailed) as exc:
            await self.report_failure(work, str(exc), retryable=False)

    async def report_failure(self, work: bus_pb2.PlanWork, reason: str, retryable: bool) -> None:
        """``plan.failed`` with the reason (the conductor fails the job with it)."""
        await announce(
            self.bus.js,
            events.PLAN_FAILED,
            work.job_id,
            work.attempt,
            work.causation_id,
            service=SERVICE,
            reason=reason,
            retryable=retryable,
        )

    async def _plan(self, state: animation_pb2.JobState, work: bus_pb2.PlanWork) -> None:
        req = state.request
        try:
            # The named profile with the request's model overrides and preset applied:
            # every FrameSpec carries this one.
            profile = resolve_profile(req, self.settings)
        except ValueError as exc:  # e.g. the profiles file changed since creation
            await self.report_failure(work, str(exc), retryable=False)
            return
        counter = await asyncio.to_thread(TokenCounter.for_profile, profile, self.settings)
        started = time.monotonic()
        notice = ""
        # An extension whose new shots are left to the planner: its storyboard so far.
        so_far = forks.to_continue(req)
        if so_far is None and req.storyboard_json:
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
            assert self.storyboarder is not None
            try:
                if so_far is not None:
                    # The new shots with the existing ones as context; those stay as they
                    # are, their style included (the frames kept were rendered with it).
                    outcome = await asyncio.to_thread(
                        self.storyboarder.extend, req.idea, so_far, req.frames, counter=counter
                    )
                else:
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
        specs, stored = await asyncio.to_thread(frame_specs_of, self.store, state, board, profile)
        if lifecycle.awaits_review(state):
            notice = "; ".join(filter(None, (notice, REVIEW_NOTICE)))
        # Built first: the job's state records its id as the cause of the change.
        planned = job_event(
            events.JOB_PLANNED,
            state.job_id,
            state.attempt,
            work.causation_id,
            service=SERVICE,
            reason=notice,
        )
        state = await self.jobs.update(
            state.job_id,
            lambda s: lifecycle.planned(
                s,
                title=board.title,
                backend=backend,
                profile=profile,
                specs=specs,
                event_id=planned.event_id,
                stored=stored,
            ),
        )
        if state.status not in _PLANNED:
            return  # cancelled while planning
        await publish_event(self.bus.js, planned)
        log.info("job planned", extra={"job_id": state.job_id, "backend": backend})

    def _write_plan(self, job_id: str, board: Storyboard, attempts: list[dict]) -> None:
        write_plan(self.store, job_id, board)
        self._write_attempts(job_id, attempts)

    def _write_attempts(self, job_id: str, attempts: list[dict]) -> None:
        """Every planning try (messages, reply, errors, latency), also when planning failed."""
        self.store.put(
            keys.plan_attempts_key(job_id),
            json.dumps(attempts, indent=2).encode(),
            "application/json",
        )


def write_plan(store: Store, job_id: str, board: Storyboard) -> None:
    """``plan.json``: the storyboard the job renders (GetAnimation shows it)."""
    store.put(keys.plan_key(job_id), board.to_json().encode(), "application/json")


def frame_specs_of(
    store: Store, state: animation_pb2.JobState, board: Storyboard, profile: types_pb2.Profile
) -> tuple[list[types_pb2.FrameSpec], list[str]]:
    """The job's FrameSpecs for ``board`` (:func:`resolve_frames`), and the keys it holds
    already: a fork's frames 0..K-1 are its parent's, copied at creation, with their specs
    as they ran (:func:`forks.fork_specs`). Planning and an approval with an edited
    storyboard both build them here. Blocking (store reads): run it in a thread."""
    req = state.request
    specs = resolve_frames(state.job_id, req, state.seed, board, profile)
    if not req.HasField("fork"):
        return specs, []
    records = []
    for i in range(req.fork.from_frame):
        try:
            records.append(json.loads(store.get(keys.frame_record_key(state.job_id, i))))
        except (NotFound, ValueError):
            raise NonRetryable(
                f"fork: frame {i}'s record, copied from the parent at creation, is "
                "missing or unreadable"
            ) from None
    try:
        specs = forks.fork_specs(state.job_id, req.fork.from_frame, specs, records)
    except forks.ForkError as exc:
        raise NonRetryable(str(exc)) from None
    return specs, store.list(keys.job_prefix(state.job_id))
