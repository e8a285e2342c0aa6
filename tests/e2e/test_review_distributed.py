"""Review before rendering on the distributed stack (four service processes, real NATS
and SeaweedFS): a job created with ``review`` waits in PLANNED with its storyboard, is
approved over gRPC with an edited storyboard, renders, and its frames, depth maps and GIF
are byte for byte those of a fresh job created with that storyboard (``--plan``). A fork
waiting for review refuses an edit of the parent's first K shots, and an edit once its copied
frames are damaged."""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import pytest

from ghibli_anim.contracts import events, keys, lifecycle
from ghibli_anim.contracts.pb import animation_pb2
from ghibli_anim.runtime.client import AnimationClient

from .test_chain import run_job, s3_store
from .test_fork_distributed import SHOTS, _request

pytestmark = pytest.mark.timeout(600)


def _board(shots) -> str:
    return json.dumps({"version": 1, "title": "kite", "style": "ghibli style", "frames": shots})


def test_review_edit_approve_render_equals_a_fresh_job(stack) -> None:
    store = s3_store(stack)
    edited = [*SHOTS[:2], {"prompt": "the kite loops twice"}, {"prompt": "the kite lands"}]

    async def review_then_approve() -> tuple[str, list]:
        async with AnimationClient(stack.planner_target, timeout_s=30) as client:
            job = (await client.create(_request(SHOTS, review=True))).job_id
            deadline = time.monotonic() + 60
            while (anim := await client.get(job)).status != lifecycle.PLANNED:
                assert time.monotonic() < deadline, (anim.status, anim.error, stack.logs())
                await asyncio.sleep(0.2)
            assert [f["prompt"] for f in json.loads(anim.storyboard_json)["frames"]] == [
                s["prompt"] for s in SHOTS
            ]
            assert not any(k.endswith(".png") for k in store.list(keys.job_prefix(job)))
            board = json.loads(anim.storyboard_json)
            board["frames"] = [{**board["frames"][i], **edited[i]} for i in range(4)]
            await client.approve(job, json.dumps(board))
            seen = [ev async for ev in client.watch(job)]
            return job, seen

    job, seen = asyncio.run(review_then_approve())
    names = [events.event_name(e.type) for e in seen]
    assert names.index("job.planned") < names.index("job.approved") < names.index("frame.started")
    assert names[-1] == "job.completed", stack.logs()
    fresh, _, anim = asyncio.run(run_job(stack.planner_target, _request(edited)))
    assert anim.status == lifecycle.COMPLETED, stack.logs()

    def files(j: str) -> list[bytes]:
        found = [store.get(keys.frame_key(j, i)) for i in range(4)]
        found += [store.get(keys.depth_key(j, i)) for i in range(3)]
        return [*found, store.get(keys.output_key(j, "gif"))]

    assert files(job) == files(fresh)
    assert json.loads(store.get(keys.plan_key(job)))["frames"][2]["prompt"] == edited[2]["prompt"]

    async def review_a_fork() -> None:
        async with AnimationClient(stack.planner_target, timeout_s=30) as client:
            fork_from = animation_pb2.ForkFrom(parent_job_id=fresh, from_frame=2)
            fork = (await client.create(_request(edited, fork=fork_from, review=True))).job_id
            deadline = time.monotonic() + 60
            while (anim := await client.get(fork)).status != lifecycle.PLANNED:
                assert time.monotonic() < deadline, (anim.status, anim.error, stack.logs())
                await asyncio.sleep(0.2)
            assert anim.frames_done == 2  # the parent's frames 0..1, copied
            changed = [{"prompt": "a different first shot"}, *edited[1:]]
            plan_before = store.get(keys.plan_key(fork))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.approve(fork, _board(changed))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert info.value.details().startswith(
                "storyboard_json: frames[0].prompt (with the style) differs from the parent's"
            )
            assert store.get(keys.plan_key(fork)) == plan_before
            # A copied frame's record deleted since creation: the job's own files are
            # damaged, not the request (FAILED_PRECONDITION, not INTERNAL), nothing written.
            store.delete(keys.frame_record_key(fork, 1))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.approve(fork, _board(edited))
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert info.value.details() == (
                "storyboard_json: fork: frame 1's record, copied from the parent at creation, "
                "is missing or unreadable"
            )
            assert store.get(keys.plan_key(fork)) == plan_before
            assert (await client.get(fork)).status == lifecycle.PLANNED
            assert (await client.cancel(fork)).status == lifecycle.CANCELLED

    asyncio.run(review_a_fork())
