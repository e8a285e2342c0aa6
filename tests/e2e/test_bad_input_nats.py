"""Bad input on the bus (NATS): every CreateAnimation field of the table in
support/bad_input.py sent to the request subject ``anim.request.create`` (the reply's
BusError carries the same code and text as gRPC), garbage on each work subject dropped
while the workers go on, and a repeated idempotency key giving the same job and nothing new.

The last two create jobs on the session's stack. This module's name sorts after the other
test_bad_input_* modules, so every refusal runs while the stack holds no job, as
``assert_refused`` counts KV keys and stored objects before and after."""

from __future__ import annotations

import asyncio
import time

import nats
import pytest
from support.bad_input import IDEA, Case, counts, create_params, refuse_create

from ghibli_anim.contracts import keys
from ghibli_anim.contracts.pb import animation_pb2, bus_pb2, types_pb2
from ghibli_anim.runtime.bus.names import REQUEST_CREATE, WORK_STREAM, work_subject
from ghibli_anim.runtime.client import AnimationClient

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("case", create_params("bus"))
def test_bad_create_request(stack, case: Case, tmp_path, capsys):
    refuse_create(stack, case, "bus", tmp_path, capsys)


GARBAGE = b"\x0a\xff\xff\xff\xff\x0fnot a protobuf"
WORKERS = {"plan": "planner", "render": "renderer", "depth": "depth", "assemble": "assembler"}


def test_garbage_on_work_subjects_is_dropped_and_workers_go_on(stack):
    async def main() -> tuple[list, animation_pb2.Animation]:
        nc = await nats.connect(stack.nats.url)
        js = nc.jetstream()
        try:
            for step in WORKERS:
                await js.publish(work_subject(step), GARBAGE)
            # Each durable hands its garbage to a worker, which terminates it.
            deadline = time.monotonic() + 60
            while True:
                infos = [await js.consumer_info(WORK_STREAM, step) for step in WORKERS]
                if all(i.num_pending == 0 and i.num_ack_pending == 0 for i in infos):
                    break
                assert time.monotonic() < deadline, infos
                await asyncio.sleep(0.1)
        finally:
            await nc.close()
        async with AnimationClient(stack.planner_target) as client:
            job = await client.create(
                animation_pb2.CreateAnimationRequest(idea=IDEA, frames=2, depth=True)
            )
            events = [e async for e in client.watch(job.job_id, timeout_s=120)]
            return events, await client.get(job.job_id)

    events, anim = asyncio.run(main())
    assert anim.status == types_pb2.JOB_STATUS_COMPLETED, (anim.error, stack.logs())
    # Planning, rendering (with the depth map the renderer makes) and assembly all ran.
    [rendered] = [e for e in events if e.type == bus_pb2.EVENT_TYPE_FRAME_RENDERED and e.frame == 0]
    assert rendered.depth_key == keys.depth_key(anim.job_id, 0)
    for step, service in WORKERS.items():
        log = stack.service(service).log_path.read_text()
        assert f"dropping unusable message on {work_subject(step)}" in log, service


def test_repeated_idempotency_key_gives_the_same_job_and_nothing_new(stack):
    request = animation_pb2.CreateAnimationRequest(
        idea=IDEA, frames=1, idempotency_key="bad-input-retry", formats=["gif"]
    )

    async def first() -> str:
        async with AnimationClient(stack.planner_target) as client:
            job = await client.create(request)
            assert not job.existing
            [e async for e in client.watch(job.job_id, timeout_s=120)]
            return job.job_id

    job_id = asyncio.run(first())
    before = counts(stack)

    async def again() -> list[tuple[str, bool]]:
        async with AnimationClient(stack.planner_target) as client:
            over_grpc_ = await client.create(request)
        nc = await nats.connect(stack.nats.url)
        try:
            msg = await nc.request(REQUEST_CREATE, request.SerializeToString(), timeout=30)
        finally:
            await nc.close()
        over_bus_ = animation_pb2.CreateReply.FromString(msg.data).response
        return [(r.job_id, r.existing) for r in (over_grpc_, over_bus_)]

    assert asyncio.run(again()) == [(job_id, True), (job_id, True)]
    assert counts(stack) == before
    assert keys.is_job_id(job_id)
