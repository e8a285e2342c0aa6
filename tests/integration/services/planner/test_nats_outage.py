"""The planner's API while NATS is away (a real nats-server stopped and started again, a
real planner): a call it cannot serve is UNAVAILABLE, naming NATS and not where it runs,
and a watch opened during the outage reopens until NATS is back, then streams the job's
events from the start, each once; a read begun during the outage is tried again by the
client's channel and answers once NATS is back."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
from support.bus import eventually
from support.planner import in_process_planner

from ghibli_anim.contracts import events, lifecycle
from ghibli_anim.contracts.pb import animation_pb2, animation_pb2_grpc
from ghibli_anim.runtime.client import AnimationClient

pytestmark = pytest.mark.timeout(120)


async def test_an_outage_is_unavailable_and_a_read_and_a_watch_outlast_it(
    nats_server, tmp_path, tiny_cache_dir, caplog
) -> None:
    caplog.set_level(logging.WARNING, logger="ghibli_anim.services.planner.grpc_api")
    async with (
        in_process_planner(
            nats_server, tmp_path, tiny_cache_dir, ANIM_PLANNER_BACKEND="offline"
        ) as target,
        AnimationClient(target) as client,
    ):
        # With review the job waits in PLANNED: nothing else touches it during the outage.
        request = animation_pb2.CreateAnimationRequest(
            idea="a kite on a windy day", frames=3, seed=7, review=True
        )
        job = (await client.create(request)).job_id
        async for event in client.watch(job):
            if event.type == events.JOB_PLANNED:
                break

        await asyncio.to_thread(nats_server.stop)
        # One try, on a channel of its own (the client's tries reads again): the answer.
        async with grpc.aio.insecure_channel(target) as channel:
            stub = animation_pb2_grpc.AnimationServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.GetAnimation(animation_pb2.GetAnimationRequest(job_id=job), timeout=30)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert caught.value.details().startswith("the planner cannot reach NATS (")
        assert str(nats_server.port) not in caught.value.details()

        # A watch and a read begun now: each first try fails on the planner's side (a
        # request to NATS waits its 5 s for an answer), then they try again.
        caplog.clear()
        seen: list = []

        async def watch() -> None:
            async for event in client.watch(job):
                seen.append(event)
                if event.type == events.JOB_PLANNED:
                    return

        watching = asyncio.create_task(watch())
        reading = asyncio.create_task(client.get(job))
        # The first try of the watch and of the read failing.
        await eventually(
            lambda: sum("NATS not answering" in r.getMessage() for r in caplog.records) >= 2, 30
        )
        assert not watching.done() and not reading.done() and seen == []
        await asyncio.to_thread(nats_server.start)
        await asyncio.wait_for(watching, 60)
        assert (await asyncio.wait_for(reading, 60)).status == lifecycle.PLANNED

        assert [events.event_name(e.type) for e in seen] == ["job.created", "job.planned"]
        assert [e.sequence for e in seen] == sorted({e.sequence for e in seen})
