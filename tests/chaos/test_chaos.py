"""Tests that kill things: a job must still finish with every frame exactly once.

Distributed mode, profile ``tiny``, a real nats-server and SeaweedFS, services as
processes. ``ANIM_FAULT`` hooks (ghibli_anim/runtime/faults.py) hold a frame so a
kill lands exactly there. AckWait is 2 s, so a dead worker's message comes back
quickly. Each test starts its own stack and stops every process it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import grpc
import pytest

from ghibli_anim.contracts import config, keys
from ghibli_anim.contracts.events import event_name
from ghibli_anim.contracts.pb import animation_pb2, bus_pb2, types_pb2
from ghibli_anim.devtools.stack import LocalStack
from ghibli_anim.runtime.bus.connection import connect
from ghibli_anim.runtime.bus.consumer import pending
from ghibli_anim.runtime.bus.watch import read_job_events
from ghibli_anim.runtime.client import AnimationClient
from ghibli_anim.runtime.jobstore import JobStore
from ghibli_anim.runtime.processes import LauncherError
from ghibli_anim.runtime.store.s3 import S3Store

pytestmark = pytest.mark.timeout(240)

E = bus_pb2
BASE = ("planner", "depth", "assembler")


@contextlib.contextmanager
def _stack(tmp_path, tiny_cache_dir, **extra: str):
    env = {
        "ANIM_CACHE_DIR": str(tiny_cache_dir),
        "ANIM_PROFILE": "tiny",
        "ANIM_ACK_WAIT_S": "2",
        "ANIM_MAX_DELIVER": "3",
        "ANIM_DRAIN_S": "5",
        "OMP_NUM_THREADS": "1",
        **extra,
    }
    stack = LocalStack(tmp_path, services=BASE, env=env)
    try:
        stack.start()
        yield stack
    except BaseException:
        print(stack.logs())
        raise
    finally:
        stack.stop()


@pytest.fixture
def chaos_stack(tmp_path, tiny_cache_dir):
    with _stack(tmp_path, tiny_cache_dir) as stack:
        yield stack


@pytest.fixture
def capped_stack(tmp_path, tiny_cache_dir):
    """A chaos stack whose planner allows each client one unfinished job."""
    with _stack(tmp_path, tiny_cache_dir, ANIM_MAX_JOBS_PER_CLIENT="1") as stack:
        yield stack


def request(**fields):
    base = {"idea": "a lantern festival by the river", "frames": 6, "seed": 77}
    base.update(fields)
    return animation_pb2.CreateAnimationRequest(**base)


def store_of(stack: LocalStack) -> S3Store:
    return S3Store.from_settings(config.load("client", stack.env()))


async def wait_event(client, job_id, kind, frame=None, timeout=60.0):
    async def find():
        async for event in client.watch(job_id):
            if event.type == kind and (frame is None or event.frame == frame):
                return event
        anim = await client.get(job_id)
        raise AssertionError(
            f"job ended ({anim.status}: {anim.error}) before {event_name(kind)} {frame}"
        )

    return await asyncio.wait_for(find(), timeout)


async def finish(client, job_id, timeout=120.0):
    async def run():
        return [e async for e in client.watch(job_id)]

    events = await asyncio.wait_for(run(), timeout)
    return events, await client.get(job_id)


def frames_of(stack, job_id, n):
    store = store_of(stack)
    return [store.get(keys.frame_key(job_id, i)) for i in range(n)]


def assert_exactly_once(stack, job_id, events, n):
    rendered = [e.frame for e in events if e.type == E.EVENT_TYPE_FRAME_RENDERED]
    assert sorted(set(rendered)) == list(range(n))
    # One frame.rendered per frame and attempt: duplicates were dropped by id.
    assert len(rendered) == len(
        {(e.frame, e.attempt) for e in events if e.type == E.EVENT_TYPE_FRAME_RENDERED}
    )
    frames = [
        k
        for k in store_of(stack).list(keys.job_prefix(job_id))
        if k.endswith(".png") and "/frames/" in k
    ]
    assert len(frames) == n


def test_renderer_killed_mid_frame(chaos_stack):
    """SIGKILL the renderer holding frame 3 of 6; a new renderer finishes the job."""
    stuck = chaos_stack.add("renderer", env={"ANIM_FAULT": "render:3:pause"})

    async def main():
        async with AnimationClient(chaos_stack.planner_target) as client:
            job = await client.create(request())
            await wait_event(client, job.job_id, E.EVENT_TYPE_FRAME_STARTED, 3)
            stuck.kill()
            chaos_stack.add("renderer")
            events, anim = await finish(client, job.job_id)
            reference = await client.create(request())
            _, ref_anim = await finish(client, reference.job_id)
            return job.job_id, events, anim, reference.job_id, ref_anim

    job_id, events, anim, ref_id, ref_anim = asyncio.run(main())
    assert anim.status == types_pb2.JOB_STATUS_COMPLETED, chaos_stack.logs()
    assert ref_anim.status == types_pb2.JOB_STATUS_COMPLETED
    assert_exactly_once(chaos_stack, job_id, events, 6)
    assert frames_of(chaos_stack, job_id, 6) == frames_of(chaos_stack, ref_id, 6)


def test_renderer_killed_during_a_fork_and_forks_count_against_the_cap(capped_stack):
    """A fork from frame 3 of 6 whose renderer is SIGKILLed holding frame 4 still gives the
    bytes of a fresh job with the fork's storyboard, rendering frames 3..5 only; while it
    runs, its client (at its cap of one unfinished job) is refused a fork with the same
    error as a create, and neither refusal makes a job."""
    shots = [{"prompt": f"lanterns on the river, shot {i}"} for i in range(6)]
    edited = [*shots[:3], {"prompt": "the lanterns drift under a bridge"}, *shots[4:]]

    def board(frames) -> str:
        return json.dumps({"version": 1, "title": "lanterns", "style": "", "frames": frames})

    first = capped_stack.add("renderer")

    async def main():
        async with AnimationClient(capped_stack.planner_target) as client:
            parent = await client.create(request(storyboard_json=board(shots)))
            _, anim = await finish(client, parent.job_id)
            assert anim.status == types_pb2.JOB_STATUS_COMPLETED, capped_stack.logs()
            first.kill()
            stuck = capped_stack.add("renderer", env={"ANIM_FAULT": "render:4:pause"})
            fork_request = animation_pb2.ForkAnimationRequest(
                fork=animation_pb2.ForkFrom(parent_job_id=parent.job_id, from_frame=3),
                prompts=[animation_pb2.PromptEdit(frame=3, prompt=edited[3]["prompt"])],
            )
            fork = await client.fork(fork_request)
            await wait_event(client, fork.job_id, E.EVENT_TYPE_FRAME_STARTED, 4)
            jobs_before = len(await client.list())
            refused = []
            for call in (client.create(request()), client.fork(fork_request)):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call
                refused.append((info.value.code(), info.value.details()))
            assert len(await client.list()) == jobs_before
            stuck.kill()
            capped_stack.add("renderer")
            events, anim = await finish(client, fork.job_id)
            fresh = await client.create(request(storyboard_json=board(edited)))
            _, fresh_anim = await finish(client, fresh.job_id)
            return fork.job_id, events, anim, refused, fresh.job_id, fresh_anim

    fork_id, events, anim, refused, fresh_id, fresh_anim = asyncio.run(main())
    assert anim.status == types_pb2.JOB_STATUS_COMPLETED, capped_stack.logs()
    assert fresh_anim.status == types_pb2.JOB_STATUS_COMPLETED, capped_stack.logs()
    (create_code, create_text), (fork_code, fork_text) = refused
    assert create_code == fork_code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert fork_text == create_text and "the limit is 1" in fork_text
    started = {e.frame for e in events if e.type == E.EVENT_TYPE_FRAME_STARTED}
    assert started == {3, 4, 5}
    rendered = [(e.frame, e.attempt) for e in events if e.type == E.EVENT_TYPE_FRAME_RENDERED]
    assert sorted({f for f, _ in rendered}) == [3, 4, 5] and len(rendered) == len(set(rendered))
    assert frames_of(capped_stack, fork_id, 6) == frames_of(capped_stack, fresh_id, 6)


def test_renderer_stopped_mid_frame_hands_it_back_and_exits(chaos_stack):
    """SIGTERM a renderer whose frame 2 is slower than its drain: the frame is handed back,
    the render ends at its next step, the process exits 0 long before the frame would have
    ended, and another renderer finishes the job to the same bytes."""
    slow = chaos_stack.add("renderer", env={"ANIM_FAULT": "render:2:slow", "ANIM_DRAIN_S": "2"})

    async def main():
        async with AnimationClient(chaos_stack.planner_target) as client:
            job = await client.create(request())
            await wait_event(client, job.job_id, E.EVENT_TYPE_FRAME_PROGRESS, 2)
            began = time.monotonic()
            await asyncio.to_thread(slow.stop, 60)  # SIGTERM, then up to 60 s
            stopped_s = time.monotonic() - began
            chaos_stack.add("renderer")
            events, anim = await finish(client, job.job_id)
            reference = await client.create(request())
            _, ref_anim = await finish(client, reference.job_id)
            return stopped_s, job.job_id, events, anim, reference.job_id, ref_anim

    stopped_s, job_id, events, anim, ref_id, ref_anim = asyncio.run(main())
    # Frame 2 alone would take 2 s a step for 5 to 10 steps; the stop took the drain
    # (2 s), at most one more step, and the rest of the shutdown.
    log = slow.log_path.read_text()
    assert slow.exit_code == 0 and stopped_s < 9, (slow.exit_code, stopped_s, log[-3000:])
    assert "cancelling and nakking" in log and "render stopped: the frame was handed back" in log
    assert anim.status == types_pb2.JOB_STATUS_COMPLETED, chaos_stack.logs()
    assert ref_anim.status == types_pb2.JOB_STATUS_COMPLETED
    assert_exactly_once(chaos_stack, job_id, events, 6)
    assert frames_of(chaos_stack, job_id, 6) == frames_of(chaos_stack, ref_id, 6)


def test_nats_killed_and_restarted(chaos_stack):
    chaos_stack.add("renderer", env={"ANIM_FAULT": ""})

    async def main():
        async with AnimationClient(chaos_stack.planner_target, timeout_s=60) as client:
            job = await client.create(request(frames=8))
            await wait_event(client, job.job_id, E.EVENT_TYPE_FRAME_RENDERED, 1)
        chaos_stack.nats.kill()
        await asyncio.sleep(1.0)
        await asyncio.to_thread(chaos_stack.nats.start)
        async with AnimationClient(chaos_stack.planner_target, timeout_s=60) as client:
            return job.job_id, *await finish(client, job.job_id)

    job_id, events, anim = asyncio.run(main())
    assert anim.status == types_pb2.JOB_STATUS_COMPLETED, chaos_stack.logs()
    assert_exactly_once(chaos_stack, job_id, events, 8)


def test_s3_stopped_for_a_few_seconds(chaos_stack):
    chaos_stack.add("renderer")

    async def main():
        async with AnimationClient(chaos_stack.planner_target, timeout_s=60) as client:
            job = await client.create(request(frames=8))
            await wait_event(client, job.job_id, E.EVENT_TYPE_FRAME_RENDERED, 1)
            chaos_stack.s3.stop(grace=1)
            await asyncio.sleep(3.0)
            await asyncio.to_thread(chaos_stack.s3.start)
            return job.job_id, *await finish(client, job.job_id)

    job_id, events, anim = asyncio.run(main())
    assert anim.status == types_pb2.JOB_STATUS_COMPLETED, (anim.error, chaos_stack.logs())
    assert_exactly_once(chaos_stack, job_id, events, 8)


def test_planner_killed_mid_job(chaos_stack):
    chaos_stack.add("renderer")

    async def main():
        async with AnimationClient(chaos_stack.planner_target) as client:
            job = await client.create(request(frames=8))
            await wait_event(client, job.job_id, E.EVENT_TYPE_FRAME_RENDERED, 2)
        chaos_stack.service("planner").kill()
        replacement = chaos_stack.add("planner")
        async with AnimationClient(replacement.target) as client:
            return job.job_id, *await finish(client, job.job_id)

    job_id, events, anim = asyncio.run(main())
    assert anim.status == types_pb2.JOB_STATUS_COMPLETED, chaos_stack.logs()
    assert_exactly_once(chaos_stack, job_id, events, 8)


async def index_report(stack: LocalStack) -> dict:
    """What the job store's indexes say next to what the jobs themselves say."""
    conn = await connect(config.load("client", stack.env()), "test", first_connect_timeout_s=10)
    try:
        store = await JobStore.open(conn.js)
        states = [(await store.get(job_id))[0] for job_id in await store.list()]
        recount: dict[str, int] = {}
        for state in states:
            name = types_pb2.JobStatus.Name(state.status).removeprefix("JOB_STATUS_")
            recount[name] = recount.get(name, 0) + 1
        listed, before = [], 0
        while True:
            found, before = await store.page(before=before, size=7, scan_limit=50)
            listed += [s.job_id for s in found]
            if not before:
                break
        by_client = {}
        for client in {s.request.client_id for s in states}:
            found, _ = await store.page(client_id=client, size=500, scan_limit=500)
            by_client[client] = [s.job_id for s in found]
        return {
            "states": states,
            "counts": await store.counts(),
            "recount": recount,
            "open": sorted(s.job_id for s in await store.open_jobs()),
            "listed": listed,
            "by_client": by_client,
        }
    finally:
        await conn.close()


def test_planner_killed_between_writes_leaves_exact_counters_and_indexes(chaos_stack):
    """A planner crashes right after a job's atomic status change (before it drops the
    entry the job left), and another is SIGKILLed in the middle of a burst of creates and
    cancels: the counters still match the jobs, every job is listed once, newest first,
    and the unfinished entries are exactly the unfinished jobs."""
    chaos_stack.service("planner").kill()
    faulty = chaos_stack.add("planner", env={"ANIM_FAULT": "index:-1:crash"})

    async def crash_on_a_finish():
        async with AnimationClient(faulty.target, timeout_s=10) as client:
            jobs = [await client.create(request(frames=2, client_id="a")) for _ in range(3)]
            with contextlib.suppress(Exception):  # the planner dies answering this one
                await client.cancel(jobs[0].job_id)
        return [j.job_id for j in jobs]

    first = asyncio.run(crash_on_a_finish())
    deadline = time.monotonic() + 20
    while faulty.running and time.monotonic() < deadline:
        time.sleep(0.1)
    assert faulty.exit_code == 1, "the fault hook did not end the planner"

    second = chaos_stack.add("planner")

    async def burst():
        async with AnimationClient(second.target, timeout_s=10) as client:
            answered: list[str] = []
            enough = asyncio.Event()

            async def one(i: int) -> None:
                with contextlib.suppress(Exception):  # cut off by the kill
                    job = await client.create(request(frames=2, client_id=f"c{i % 4}"))
                    answered.append(job.job_id)
                    if len(answered) == 10:
                        enough.set()
                    if i % 3 == 0:
                        await client.cancel(job.job_id)

            tasks = [asyncio.create_task(one(i)) for i in range(40)]
            await asyncio.wait_for(enough.wait(), 60)
            second.kill()  # SIGKILL, with creates and cancels in flight
            await asyncio.gather(*tasks)
            return answered

    answered = asyncio.run(burst())
    third = chaos_stack.add("planner")

    async def cancel_the_rest():
        async with AnimationClient(third.target) as client:
            everything = await client.list()
            for anim in everything:
                if anim.status not in (types_pb2.JOB_STATUS_CANCELLED,):
                    with contextlib.suppress(Exception):
                        await client.cancel(anim.job_id)
            return [a.job_id for a in everything]

    listed_by_api = asyncio.run(cancel_the_rest())
    report = asyncio.run(index_report(chaos_stack))
    states = report["states"]
    ids = {s.job_id for s in states}
    assert set(first) <= ids and set(answered) <= ids
    assert 10 <= len(answered) < 40, len(answered)  # the kill landed mid-burst
    assert report["counts"] == report["recount"], report
    assert report["open"] == sorted(
        s.job_id for s in states if s.status != types_pb2.JOB_STATUS_CANCELLED
    )
    # Every job once, newest first (by the position its create took).
    assert sorted(report["listed"]) == sorted(ids)
    position = {s.job_id: s.list_position for s in states}
    assert [position[j] for j in report["listed"]] == sorted(position.values(), reverse=True)
    assert sorted(listed_by_api) == sorted(ids)
    for client, listed in report["by_client"].items():
        assert sorted(listed) == sorted(s.job_id for s in states if s.request.client_id == client)


def test_cancel_mid_job_stops_within_a_frame(chaos_stack):
    chaos_stack.add("renderer")

    async def main():
        async with AnimationClient(chaos_stack.planner_target) as client:
            job = await client.create(request(frames=40))
            await wait_event(client, job.job_id, E.EVENT_TYPE_FRAME_RENDERED, 2)
            await client.cancel(job.job_id)
            await asyncio.sleep(3.0)  # time for anything in flight to land
            conn = await connect(config.load("client", chaos_stack.env()), "test")
            try:
                events = await read_job_events(conn.js, job.job_id)
                queued = await pending(conn.js, "render")
            finally:
                await conn.close()
            return events, await client.get(job.job_id), queued

    events, anim, queued = asyncio.run(main())
    assert anim.status == types_pb2.JOB_STATUS_CANCELLED
    cancelled_at = next(n for n, e in enumerate(events) if e.type == E.EVENT_TYPE_JOB_CANCELLED)
    started_after = [e.frame for e in events[cancelled_at:] if e.type == E.EVENT_TYPE_FRAME_STARTED]
    assert len(started_after) <= 1  # at most the frame already on its way
    assert queued == 0


def test_retryable_failure_fails_the_job_at_max_deliver_then_resume_completes(chaos_stack):
    failing = chaos_stack.add("renderer", env={"ANIM_FAULT": "render:2:retry"})

    async def main():
        async with AnimationClient(chaos_stack.planner_target) as client:
            job = await client.create(request(frames=4))
            events, anim = await finish(client, job.job_id)
            failing.stop()
            chaos_stack.add("renderer")
            await client.resume(job.job_id)
            _, resumed = await finish(client, job.job_id)
            return events, anim, resumed

    events, anim, resumed = asyncio.run(main())
    assert anim.status == types_pb2.JOB_STATUS_FAILED
    assert "frame 2" in anim.error and "injected retryable fault" in anim.error
    starts = [e for e in events if e.type == E.EVENT_TYPE_FRAME_STARTED and e.frame == 2]
    assert len(starts) == 1  # same attempt: re-emitted frame.started dropped by id
    failed = [e for e in events if e.type == E.EVENT_TYPE_FRAME_FAILED]
    assert len(failed) == 1 and failed[0].retryable
    assert resumed.status == types_pb2.JOB_STATUS_COMPLETED and resumed.frames_done == 4


def test_non_retryable_failure_fails_at_once(chaos_stack):
    chaos_stack.add("renderer", env={"ANIM_FAULT": "render:1:fail"})

    async def main():
        async with AnimationClient(chaos_stack.planner_target) as client:
            job = await client.create(request(frames=3))
            return await finish(client, job.job_id)

    events, anim = asyncio.run(main())
    assert anim.status == types_pb2.JOB_STATUS_FAILED
    assert "injected fault at render frame 1" in anim.error
    failed = [e for e in events if e.type == E.EVENT_TYPE_FRAME_FAILED]
    assert len(failed) == 1 and not failed[0].retryable


def test_a_renderer_that_dies_on_every_delivery_fails_the_job(chaos_stack):
    """No worker lives to publish frame.failed: the max-deliveries advisory does it."""
    fault = {"ANIM_FAULT": "render:1:crash"}

    def start_renderer() -> None:
        proc = chaos_stack.add("renderer", env=fault, start=False)
        with contextlib.suppress(LauncherError):  # it may die on a redelivery while starting
            proc.start(timeout=60)

    start_renderer()

    async def main():
        async with AnimationClient(chaos_stack.planner_target) as client:
            job = await client.create(request(frames=3))
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                anim = await client.get(job.job_id)
                if anim.status == types_pb2.JOB_STATUS_FAILED:
                    break
                if all(p.returncode is not None for p in chaos_stack.processes["renderer"]):
                    await asyncio.to_thread(start_renderer)  # like a restart policy
                await asyncio.sleep(0.5)
            conn = await connect(config.load("client", chaos_stack.env()), "test")
            try:
                queued = await pending(conn.js, "render")
            finally:
                await conn.close()
            return anim, queued

    anim, queued = asyncio.run(main())
    assert anim.status == types_pb2.JOB_STATUS_FAILED, chaos_stack.logs()
    assert anim.error.startswith("frame 1: gave up after 3 deliveries; the render worker")
    assert queued == 0  # nothing stuck in the work queue


def test_load_twenty_jobs_two_renderers(chaos_stack):
    """Every job completes, every frame exactly once. Its throughput: bench/load.py."""
    chaos_stack.add("renderer")
    chaos_stack.add("renderer")
    jobs, frames = 20, 4

    async def main():
        async with AnimationClient(chaos_stack.planner_target, timeout_s=60) as client:
            # Five creators of four jobs each: within the per-client cap (16), which holds
            # exactly under concurrent creates.
            created = await asyncio.gather(
                *(
                    client.create(request(frames=frames, seed=i, client_id=f"load-{i % 5}"))
                    for i in range(jobs)
                )
            )
            results = await asyncio.gather(*(finish(client, c.job_id, 200) for c in created))
            return created, results

    created, results = asyncio.run(main())
    assert len(created) == jobs
    for job, (events, anim) in zip(created, results, strict=True):
        assert anim.status == types_pb2.JOB_STATUS_COMPLETED, anim.error
        assert_exactly_once(chaos_stack, job.job_id, events, frames)
