"""WatchAnimation over a connection that dies without closing: the planner's heartbeats
keep a quiet job's stream audibly alive, and a client whose connection stops carrying
anything notices within a stated bound (keepalive pings, or silence past its idle limit)
and resumes after its last event, missing and repeating none.

A planner alone (no renderer) keeps the job quiet after it is planned; a loopback proxy
(tests/support/tcp_proxy.py) freezes the client's connection."""

from __future__ import annotations

import asyncio
import time

import pytest
from support.tcp_proxy import FreezingProxy

from ghibli_anim.contracts import events
from ghibli_anim.contracts.pb import animation_pb2
from ghibli_anim.devtools.stack import LocalStack
from ghibli_anim.runtime.client import AnimationClient

HEARTBEAT_S = 0.5


@pytest.fixture
def planner_only(tmp_path, tiny_cache_dir):
    env = {
        "ANIM_CACHE_DIR": str(tiny_cache_dir),
        "ANIM_PROFILE": "tiny",
        "ANIM_WATCH_HEARTBEAT_S": str(HEARTBEAT_S),
        "OMP_NUM_THREADS": "1",
    }
    stack = LocalStack(tmp_path, services=("planner",), env=env)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def request() -> animation_pb2.CreateAnimationRequest:
    return animation_pb2.CreateAnimationRequest(idea="a paper boat on a pond", frames=2, seed=3)


async def wait_for(check, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def test_a_quiet_job_streams_heartbeats_after_its_last_event(planner_only) -> None:
    async def main():
        async with AnimationClient(planner_only.planner_target) as client:
            job = await client.create(request())
            call = client.stub.WatchAnimation(
                animation_pb2.WatchAnimationRequest(job_id=job.job_id)
            )
            seen = []

            def beats_after_planning() -> int:
                kinds = [e.type for e in seen]
                after = (
                    kinds[kinds.index(events.JOB_PLANNED) :] if events.JOB_PLANNED in kinds else []
                )
                return after.count(events.WATCH_HEARTBEAT)

            while beats_after_planning() < 3:
                seen.append(await asyncio.wait_for(call.read(), 60))
            call.cancel()
            await client.cancel(job.job_id)
            return seen

    seen = asyncio.run(main())
    kinds = [e.type for e in seen if e.type != events.WATCH_HEARTBEAT]
    assert kinds == [events.JOB_CREATED, events.JOB_PLANNED], kinds
    # Each heartbeat carries the sequence of the last event before it, and no event id.
    last = None
    for event in seen:
        if event.type == events.WATCH_HEARTBEAT:
            assert last is not None and event.sequence == last.sequence and not event.event_id
            assert event.job_id == last.job_id
        else:
            last = event
    assert seen[-1].type == events.WATCH_HEARTBEAT and last.type == events.JOB_PLANNED


def test_a_frozen_connection_is_noticed_and_the_watch_resumes(planner_only) -> None:
    async def main():
        host, port = planner_only.planner_target.rsplit(":", 1)
        proxy = await FreezingProxy(host, int(port)).start()
        try:
            async with (
                AnimationClient(planner_only.planner_target) as direct,
                AnimationClient(
                    f"127.0.0.1:{proxy.port}", keepalive_s=1.0, watch_idle_s=4 * HEARTBEAT_S
                ) as client,
            ):
                job = await direct.create(request())
                seen: list = []

                async def watch():
                    async for event in client.watch(job.job_id):
                        seen.append(event)

                watching = asyncio.create_task(watch())
                await wait_for(lambda: len(seen) == 2)  # created, planned; then quiet
                proxy.freeze()
                frozen = time.monotonic()
                await wait_for(lambda: proxy.connections == 2, timeout=30)
                noticed_s = time.monotonic() - frozen
                await direct.cancel(job.job_id)
                await asyncio.wait_for(watching, 30)
                return seen, noticed_s
        finally:
            await proxy.close()

    seen, noticed_s = asyncio.run(main())
    # Silence past 4 heartbeats (2 s) or two unanswered pings (2 s): a new connection
    # within a few seconds, not the minutes TCP would take.
    assert noticed_s < 6, noticed_s
    assert [e.type for e in seen] == [events.JOB_CREATED, events.JOB_PLANNED, events.JOB_CANCELLED]
    sequences = [e.sequence for e in seen]
    assert sequences == sorted(set(sequences))
