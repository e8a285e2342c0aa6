"""The planner service: the job API, the plan step, the conductor and the housekeeping.

AnimationService over gRPC and ``anim.request.create``, ``anim.request.approve`` and
``anim.request.fork`` on the bus (:mod:`.grpc_api` over :mod:`.jobs_api`), the plan step
(durable ``plan``), the conductor (durable ``conductor``) and its advisories (durable
``advisories``), and the periodic housekeeping (time limit, retention, job counts).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ghibli_anim.contracts import lifecycle
from ghibli_anim.contracts.pb import animation_pb2, bus_pb2
from ghibli_anim.contracts.profiles import profile_names
from ghibli_anim.runtime import metrics
from ghibli_anim.runtime.bus.connection import Bus
from ghibli_anim.runtime.bus.consumer import (
    Delivery,
    Failure,
    MaxDeliveries,
    advisories_consumer,
    conductor_consumer,
    work_consumer,
)
from ghibli_anim.runtime.bus.names import PLANNER_QUEUE
from ghibli_anim.runtime.grpcserver import ServiceBinding
from ghibli_anim.runtime.jobstore import JobStore
from ghibli_anim.runtime.service import Service
from ghibli_anim.services.planner.conductor import Conductor
from ghibli_anim.services.planner.grpc_api import (
    BUS_CALLS,
    AnimationServicer,
    add_animation_service,
    handle_bus_request,
)
from ghibli_anim.services.planner.housekeeping import Housekeeping
from ghibli_anim.services.planner.jobs_api import JobsApi
from ghibli_anim.services.planner.plan_step import PlanStep

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 3600.0
TIMEOUT_CHECK_MAX_INTERVAL_S = 60.0


class PlannerService(Service):
    name = "planner"
    # What close() releases; None until start() got that far (start can fail early,
    # e.g. when NATS does not answer, and close() must then report that, not itself).
    _sweeper: asyncio.Task | None = None
    _timer: asyncio.Task | None = None
    _request_subs: tuple = ()

    async def start(self, bus_: Bus, store) -> None:
        await super().start(bus_, store)
        jobs = self.jobs = await JobStore.open(bus_.js)
        await jobs.ensure_index()  # once, on a bucket written before the indexes
        self.api = JobsApi(
            bus=bus_,
            jobs=jobs,
            store=store,
            profile_names=profile_names(self.settings),
            default_profile=self.settings["ANIM_PROFILE"],
            presign_ttl_s=self.settings["ANIM_PRESIGN_TTL_S"],
            max_jobs_per_client=self.settings["ANIM_MAX_JOBS_PER_CLIENT"],
            watch_heartbeat_s=self.settings["ANIM_WATCH_HEARTBEAT_S"],
            settings=self.settings,
        )
        self.plan_step = PlanStep(bus=bus_, jobs=jobs, store=store, settings=self.settings)
        self.conductor = Conductor(bus=bus_, jobs=jobs)
        self.housekeeping = Housekeeping(jobs=jobs, api=self.api, conductor=self.conductor)

        async def on_plan(work: bus_pb2.PlanWork, delivery: Delivery) -> None:
            await self.plan_step.handle(work)

        async def plan_give_up(work: bus_pb2.PlanWork, failure: Failure) -> None:
            await self.plan_step.report_failure(work, failure.reason, failure.retryable)

        async def on_event(event: bus_pb2.Event, delivery: Delivery) -> None:
            await self.conductor.handle(event)

        async def on_advisory(advisory: MaxDeliveries, delivery: Delivery) -> None:
            await self.conductor.max_deliveries(advisory)

        self.consumers = [
            work_consumer(bus_.js, "plan", bus_pb2.PlanWork, on_plan, on_give_up=plan_give_up),
            conductor_consumer(bus_.js, on_event),
            advisories_consumer(bus_.js, on_advisory),
        ]

        async def on_request(msg) -> None:
            await msg.respond(await handle_bus_request(self.api, msg.subject, msg.data))

        for subject in BUS_CALLS:  # appended one by one: close() releases what started
            sub = await bus_.nc.subscribe(subject, queue=PLANNER_QUEUE, cb=on_request)
            self._request_subs = (*self._request_subs, sub)
        days = self.settings["ANIM_RETENTION_DAYS"]
        if days > 0:
            self._sweeper = asyncio.create_task(self._sweep(days * 86400.0), name="retention")
        limit = self.settings["ANIM_JOB_TIMEOUT_S"]
        if limit > 0:
            self._timer = asyncio.create_task(self._time_out(limit), name="job-timeout")

    async def _sweep(self, older_than_s: float) -> None:
        """Delete expired finished jobs every hour (replicas racing is harmless)."""
        while True:
            try:
                expired = await self.housekeeping.expire(older_than_s)
                if expired:
                    log.info("retention sweep", extra={"deleted": len(expired)})
            except Exception:
                log.exception("retention sweep failed")
            await asyncio.sleep(SWEEP_INTERVAL_S)

    async def collect_metrics(self) -> list[metrics.Sample]:
        """``anim_jobs{state}``: every job in KV by state, at each scrape (the status
        counters, not a scan; replicas report the same numbers: dashboards take the max)."""
        return metrics.jobs_samples(await self.housekeeping.job_counts(), lifecycle.STATUS_NAMES)

    async def _time_out(self, limit_s: float) -> None:
        """Fail jobs running longer than ANIM_JOB_TIMEOUT_S, checked every min(60, limit/4) s,
        so a job fails at most a quarter of its limit late."""
        interval = min(TIMEOUT_CHECK_MAX_INTERVAL_S, limit_s / 4)
        while True:
            await asyncio.sleep(interval)
            try:
                failed = await self.housekeeping.time_out(limit_s)
                if failed:
                    log.info("job time limit", extra={"failed": len(failed)})
            except Exception:
                log.exception("job time limit check failed")

    def bindings(self) -> list[ServiceBinding]:
        return [
            ServiceBinding(
                name=animation_pb2.DESCRIPTOR.services_by_name["AnimationService"].full_name,
                add=add_animation_service,
                servicer=AnimationServicer(self.api),
            )
        ]

    async def close(self) -> None:
        for task in (self._sweeper, self._timer):
            if task is not None:
                task.cancel()
        for sub in self._request_subs:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sub.unsubscribe(), 2)


SERVICE = PlannerService
