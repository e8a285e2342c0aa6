"""Retention: the planner's sweep deletes only finished jobs older than the limit."""

from __future__ import annotations

import time

from ghibli_anim.contracts import config, keys
from ghibli_anim.contracts.pb import animation_pb2, bus_pb2, types_pb2
from ghibli_anim.runtime.bus.connection import connect
from ghibli_anim.runtime.bus.publish import new_event, publish_event
from ghibli_anim.runtime.bus.topology import init_bus_from_settings
from ghibli_anim.runtime.bus.watch import read_job_events
from ghibli_anim.runtime.jobstore import JobNotFound, JobStore
from ghibli_anim.services.planner.conductor import Conductor
from ghibli_anim.services.planner.housekeeping import Housekeeping
from ghibli_anim.services.planner.jobs_api import JobsApi

DAY = 86400.0


async def test_expire_deletes_only_expired_finished_jobs(nats_server, local_store):
    settings = config.load("client", {"ANIM_NATS_URL": nats_server.url, "ANIM_STORE": "local"})
    conn = await connect(settings, "test", first_connect_timeout_s=10)
    try:
        await init_bus_from_settings(conn.js, settings)
        jobs = await JobStore.open(conn.js)
        api = JobsApi(conn, jobs, local_store, ["tiny"], "tiny")
        house = Housekeeping(jobs, api, Conductor(conn, jobs, local_store))
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
