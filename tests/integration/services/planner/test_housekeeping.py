"""services/planner/housekeeping.py against a real nats-server and a local store.

The overall job time limit (ANIM_JOB_TIMEOUT_S): a job that does not finish in time
fails with a reason naming the limit, the state and the frame it was stuck at. The first
test runs the planner service itself (its periodic check) with a 1 s limit against jobs
that nothing works on; the second calls ``Housekeeping.time_out`` with an explicit clock
for the resume rule.

Retention: the planner's sweep deletes only finished jobs older than the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from ghibli_anim.contracts import config, keys
from ghibli_anim.contracts.pb import animation_pb2, bus_pb2, types_pb2
from ghibli_anim.runtime.bus.connection import connect
from ghibli_anim.runtime.bus.publish import new_event, publish_event
from ghibli_anim.runtime.bus.topology import init_bus_from_settings
from ghibli_anim.runtime.bus.watch import read_job_events, watch_job_events
from ghibli_anim.runtime.jobstore import JobNotFound, JobStore
from ghibli_anim.runtime.service import run_service
from ghibli_anim.services.planner.conductor import Conductor
from ghibli_anim.services.planner.housekeeping import Housekeeping
from ghibli_anim.services.planner.jobs_api import JobsApi
from ghibli_anim.services.planner.service import PlannerService

pytestmark = pytest.mark.timeout(120)

S = types_pb2


def job_state(status: int, frames: int = 3, rendered: int = 0, attempt: int = 1, age_s=0.0):
    """A job as the planner would have stored it, ``rendered`` frames done."""
    state = animation_pb2.JobState(
        job_id=keys.new_job_id(), status=status, frames=frames, attempt=attempt
    )
    state.request.idea = "a paper boat on a rain puddle"
    state.request.frames = frames
    state.created_at.FromSeconds(int(time.time() - age_s))
    if status != S.JOB_STATUS_PENDING:
        state.frame_states.extend(
            types_pb2.FrameState(index=i, rendered=i < rendered) for i in range(frames)
        )
    return state


async def failed_reason(js, job_id: str, timeout: float = 30.0) -> str:
    """The reason of the job's job.failed event, awaited on the events stream."""
    watch = await watch_job_events(js, job_id)
    try:
        while True:
            event = await watch.next(timeout=timeout)
            if event.type == bus_pb2.EVENT_TYPE_JOB_FAILED:
                return event.reason
    finally:
        await watch.close()


async def test_planner_fails_jobs_over_the_time_limit(nats_server, tmp_path, tiny_cache_dir):
    env = {
        "ANIM_NATS_URL": nats_server.url,
        "ANIM_STORE": "local",
        "ANIM_RUNS_DIR": str(tmp_path / "runs"),
        "ANIM_PROFILE": "tiny",
        "ANIM_CACHE_DIR": str(tiny_cache_dir),
        "ANIM_PLANNER_BACKEND": "offline",
        "ANIM_GRPC_HOST": "127.0.0.1",
        "ANIM_GRPC_PORT": "0",
        "ANIM_JOB_TIMEOUT_S": "1",
    }
    settings = config.load("planner", env)
    conn = await connect(settings, "test", first_connect_timeout_s=10)
    stop = asyncio.Event()
    planner: asyncio.Task | None = None
    try:
        await init_bus_from_settings(conn.js, settings)
        jobs = await JobStore.open(conn.js)
        rendering = job_state(S.JOB_STATUS_RENDERING, frames=3, rendered=1)
        pending = job_state(S.JOB_STATUS_PENDING)
        done = job_state(S.JOB_STATUS_COMPLETED, age_s=3600)
        for state in (rendering, pending, done):
            await jobs.create(state)
        started = asyncio.Event()
        planner = asyncio.create_task(
            run_service(PlannerService(settings), stop, ready=lambda _: started.set())
        )
        await asyncio.wait_for(started.wait(), 60)

        reasons = await asyncio.gather(
            failed_reason(conn.js, rendering.job_id), failed_reason(conn.js, pending.job_id)
        )
        assert reasons[0].startswith(
            "job exceeded ANIM_JOB_TIMEOUT_S=1 while RENDERING at frame 1 (started "
        ), reasons[0]
        assert reasons[1].startswith("job exceeded ANIM_JOB_TIMEOUT_S=1 while PENDING"), reasons[1]
        for state, reason in zip((rendering, pending), reasons, strict=True):
            stored, _ = await jobs.get(state.job_id)
            assert stored.status == S.JOB_STATUS_FAILED
            assert stored.error == reason
        finished, _ = await jobs.get(done.job_id)
        assert finished.status == S.JOB_STATUS_COMPLETED and not finished.error
    finally:
        stop.set()
        if planner is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(planner, 30)
        await conn.close()


async def test_time_out_counts_from_the_latest_resume(nats_server, local_store):
    settings = config.load("client", {"ANIM_NATS_URL": nats_server.url, "ANIM_STORE": "local"})
    conn = await connect(settings, "test", first_connect_timeout_s=10)
    try:
        await init_bus_from_settings(conn.js, settings)
        jobs = await JobStore.open(conn.js)
        api = JobsApi(conn, jobs, local_store, ["tiny"], "tiny")
        house = Housekeeping(jobs, api, Conductor(conn, jobs))
        now = time.time()
        fresh = job_state(S.JOB_STATUS_PLANNING, age_s=10)
        # Created two hours ago, resumed (attempt 2) just now: its first event is recent.
        resumed = job_state(S.JOB_STATUS_RENDERING, frames=2, attempt=2, age_s=7200)
        old = job_state(S.JOB_STATUS_ASSEMBLING, frames=2, rendered=2, age_s=7200)
        for state in (fresh, resumed, old):
            await jobs.create(state)
        await publish_event(
            conn.js, new_event(bus_pb2.EVENT_TYPE_JOB_PLANNED, resumed.job_id, -1, 2)
        )

        assert await house.time_out(60, now=now) == [old.job_id]
        state, _ = await jobs.get(old.job_id)
        assert state.status == S.JOB_STATUS_FAILED
        assert state.error.startswith("job exceeded ANIM_JOB_TIMEOUT_S=60 while ASSEMBLING (")

        # Two minutes on, the resumed job and the fresh one are past the limit too.
        assert sorted(await house.time_out(60, now=now + 120)) == sorted(
            [resumed.job_id, fresh.job_id]
        )
        state, _ = await jobs.get(fresh.job_id)
        assert state.error.startswith("job exceeded ANIM_JOB_TIMEOUT_S=60 while PLANNING (")
        state, _ = await jobs.get(resumed.job_id)
        assert state.error.startswith(
            "job exceeded ANIM_JOB_TIMEOUT_S=60 while RENDERING at frame 0 (started 1"
        )
        events = await read_job_events(conn.js, resumed.job_id)
        assert [e.type for e in events][-1] == bus_pb2.EVENT_TYPE_JOB_FAILED
        assert events[-1].attempt == 2 and events[-1].reason == state.error
        # Already failed: a second check (another replica) changes nothing.
        assert await house.time_out(60, now=now + 120) == []
    finally:
        await conn.close()


DAY = 86400.0


async def test_expire_deletes_only_expired_finished_jobs(nats_server, local_store):
    settings = config.load("client", {"ANIM_NATS_URL": nats_server.url, "ANIM_STORE": "local"})
    conn = await connect(settings, "test", first_connect_timeout_s=10)
    try:
        await init_bus_from_settings(conn.js, settings)
        jobs = await JobStore.open(conn.js)
        api = JobsApi(conn, jobs, local_store, ["tiny"], "tiny")
        house = Housekeeping(jobs, api, Conductor(conn, jobs))
        now = time.time()
        cases = {
            "old_done": (types_pb2.JOB_STATUS_COMPLETED, now - 10 * DAY),
            "old_failed": (types_pb2.JOB_STATUS_FAILED, now - 10 * DAY),
            "old_running": (types_pb2.JOB_STATUS_RENDERING, now - 10 * DAY),
            "new_done": (types_pb2.JOB_STATUS_COMPLETED, now - 1 * DAY),
        }
        ids = {}
        for name, (status, updated) in cases.items():
            job_id = keys.new_job_id()
            ids[name] = job_id
            state = animation_pb2.JobState(job_id=job_id, status=status, frames=1)
            state.request.idea = name
            state.updated_at.FromSeconds(int(updated))
            state.created_at.FromSeconds(int(updated))
            await jobs.create(state)
            local_store.put(keys.frame_key(job_id, 0), b"png", "image/png")
            await publish_event(conn.js, new_event(bus_pb2.EVENT_TYPE_JOB_CREATED, job_id, -1, 1))
        expired = await house.expire(older_than_s=7 * DAY, now=now)
        assert sorted(expired) == sorted([ids["old_done"], ids["old_failed"]])
        for name, job_id in ids.items():
            gone = name in ("old_done", "old_failed")
            try:
                await jobs.get(job_id)
                present = True
            except JobNotFound:
                present = False
            assert present is not gone
            assert local_store.exists(keys.frame_key(job_id, 0)) is not gone
            events = await read_job_events(conn.js, job_id)
            assert (events == []) is gone
    finally:
        await conn.close()
