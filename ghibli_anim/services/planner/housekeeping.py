"""The planner's periodic work: the job time limit, retention, and job counts for metrics.

- every ``min(60 s, ANIM_JOB_TIMEOUT_S / 4)``: fail unfinished jobs whose current attempt
  started more than ``ANIM_JOB_TIMEOUT_S`` ago (:func:`lifecycle.timed_out`, through the
  conductor's :meth:`~.conductor.Conductor.fail_job`, so ``job.failed`` goes out);
- every hour, with ``ANIM_RETENTION_DAYS`` set: delete finished jobs older than that;
- at each metrics scrape: jobs by status (``anim_jobs{state}``).

None of them reads every job: the time limit reads the unfinished jobs
(:meth:`JobStore.open_jobs`), retention the finished entries up to the first one that is
recent enough (:meth:`JobStore.finished_before`), and the scrape the status counters
(:meth:`JobStore.counts`, kept exact by the atomic writes of every status change).

Replicas may run these at the same time: every change is a compare-and-swap, so a job is
failed or deleted once.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

from ghibli_anim.contracts import lifecycle
from ghibli_anim.contracts.pb import animation_pb2
from ghibli_anim.runtime.bus.watch import read_job_events
from ghibli_anim.runtime.jobstore import JobNotFound, JobStore
from ghibli_anim.services.planner.conductor import Conductor
from ghibli_anim.services.planner.jobs_api import FailedPrecondition, JobsApi


def started_at_cheaply(state: animation_pb2.JobState, now: float, limit_s: float) -> float | None:
    """When the job's current attempt began, if the state alone tells (else None).

    A job starts when it is created, and again when it is resumed; JobState keeps no time
    per attempt, so a resumed job older than the limit needs its events to tell.
    """
    created = state.created_at.ToSeconds() if state.HasField("created_at") else now
    if state.attempt <= 1 or now - created <= limit_s:
        return created
    return None


@dataclass
class Housekeeping:
    jobs: JobStore
    api: JobsApi
    conductor: Conductor

    async def expire(self, older_than_s: float, now: float | None = None) -> list[str]:
        """Delete finished jobs last updated more than ``older_than_s`` seconds ago."""
        now = time.time() if now is None else now
        expired = []
        async for state in self.jobs.finished_before(now - older_than_s):
            updated = state.updated_at.ToSeconds() if state.HasField("updated_at") else now
            if now - updated <= older_than_s:
                continue
            # Resumed or deleted meanwhile: not this sweep's to delete.
            with contextlib.suppress(JobNotFound, FailedPrecondition):
                await self.api.delete(state.job_id)
                expired.append(state.job_id)
        return expired

    async def time_out(self, limit_s: float, now: float | None = None) -> list[str]:
        """Fail every unfinished job whose current attempt started more than ``limit_s``
        seconds ago; the ids of the jobs this call failed (replicas racing fail each once).

        The reason names the limit, the status and, while rendering, the first frame not
        yet done. Work still in flight for the job is ignored when it reports back (the
        conductor only advances running jobs).
        """
        now = time.time() if now is None else now
        failed = []
        for state in await self.jobs.open_jobs():
            started = started_at_cheaply(state, now, limit_s)
            if started is None:
                started = await self._attempt_started(state)
            if now - started <= limit_s:
                continue
            elapsed = now - started
            with contextlib.suppress(JobNotFound):
                if await self._fail(state.job_id, limit_s, elapsed):
                    failed.append(state.job_id)
        return failed

    async def _attempt_started(self, state: animation_pb2.JobState) -> float:
        # The first event of the current attempt marks its start.
        for event in await read_job_events(self.conductor.bus.js, state.job_id):
            if event.attempt == state.attempt and event.HasField("time"):
                return event.time.ToSeconds()
        # Its events are gone (stream age limit): the last change is the best lower bound.
        return state.updated_at.ToSeconds()

    async def _fail(self, job_id: str, limit_s: float, elapsed_s: float) -> bool:
        """Through the conductor's one way to fail a job, with the time-out's reason."""
        state, _ = await self.jobs.get(job_id)
        if lifecycle.is_terminal(state.status):
            return False  # finished meanwhile
        reason = lifecycle.time_out_reason(state, limit_s, elapsed_s)
        return await self.conductor.fail_job(job_id, reason, cause=state.last_event_id)

    async def job_counts(self) -> dict[str, int]:
        """Every stored job by status name (``anim_jobs{state}``), from the counters."""
        return await self.jobs.counts()
