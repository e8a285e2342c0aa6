"""Review before rendering through a real planner (real nats-server, the local store;
nothing renders): a job created with ``review`` waits in PLANNED with its storyboard in
GetAnimation, ListAnimations and WatchAnimation; ApproveAnimation (gRPC and
``anim.request.approve``) refuses a job that is not PLANNED and a bad edited storyboard,
writing nothing; CancelAnimation ends the wait; a waiting job holds a slot of its
client's cap and expires with ANIM_JOB_TIMEOUT_S.

Rendering an approved job, byte for byte against a fresh job, is tests/e2e/test_review*.
"""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import nats
import pytest
from support.planner import in_process_planner

from ghibli_anim.contracts import events, keys, lifecycle
from ghibli_anim.contracts.pb import animation_pb2
from ghibli_anim.runtime.bus.names import REQUEST_APPROVE
from ghibli_anim.runtime.client import AnimationClient
from ghibli_anim.runtime.store.local import LocalStore

pytestmark = pytest.mark.timeout(120)

SHOTS = [{"prompt": "a kite over a hill"}, {"prompt": "the kite climbs"}, {"prompt": "it lands"}]


def _board(shots) -> str:
    return json.dumps({"version": 1, "title": "kite", "style": "ghibli style", "frames": shots})


def _request(review: bool = True) -> animation_pb2.CreateAnimationRequest:
    return animation_pb2.CreateAnimationRequest(
        idea="a kite on a windy day", frames=3, seed=7, review=review
    )


async def _wait_status(client: AnimationClient, job_id: str, status: int, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while True:
        anim = await client.get(job_id)
        if anim.status == status:
            return anim
        assert time.monotonic() < deadline, (lifecycle.status_name(anim.status), anim.error)
        await asyncio.sleep(0.1)


async def test_a_reviewed_job_waits_planned_and_approval_checks_before_writing(
    nats_server, tmp_path, tiny_cache_dir
) -> None:
    async with (
        in_process_planner(
            nats_server, tmp_path, tiny_cache_dir, ANIM_PLANNER_BACKEND="offline"
        ) as target,
        AnimationClient(target) as client,
    ):
        job = (await client.create(_request())).job_id
        anim = await _wait_status(client, job, lifecycle.PLANNED)
        planned = json.loads(anim.storyboard_json)
        assert len(planned["frames"]) == 3 and anim.frames_done == 0
        listed = await client.list(status=lifecycle.PLANNED)
        assert [a.job_id for a in listed] == [job]
        # WatchAnimation: planned, with the notice, and no work announced after it.
        seen = []
        async for ev in client.watch(job):
            seen.append(ev)
            if ev.type == events.JOB_PLANNED:
                break
        assert [events.event_name(e.type) for e in seen] == ["job.created", "job.planned"]
        assert "waiting for review" in seen[-1].reason

        store = LocalStore(tmp_path / "runs")
        plan_before = store.get(keys.plan_key(job))
        bad = [
            (_board(SHOTS[:2]), "storyboard_json: frames: expected exactly 3 frames, got 2"),
            (_board([*SHOTS[:2], {"prompt": "x", "zoom": 2}]), "storyboard_json: "),
            (_board([*SHOTS[:2], {"prompt": "word " * 80}]), "storyboard_json: "),
            ("{", "storyboard_json: "),
        ]
        for edited, message in bad:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.approve(job, edited)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, edited
            assert info.value.details().startswith(message), info.value.details()
        over = [*SHOTS[:2], {"prompt": "word " * 80}]
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.approve(job, _board(over))
        assert "frames[2]" in info.value.details() and "77" in info.value.details()
        assert store.get(keys.plan_key(job)) == plan_before
        assert (await client.get(job)).status == lifecycle.PLANNED

        # The same approval on the bus: the same handler, codes and texts.
        nc = await nats.connect(nats_server.url)
        try:
            msg = await nc.request(
                REQUEST_APPROVE,
                animation_pb2.ApproveAnimationRequest(
                    job_id=job, storyboard_json=_board(SHOTS[:2])
                ).SerializeToString(),
                timeout=30,
            )
            reply = animation_pb2.ApproveReply.FromString(msg.data)
            assert reply.error.code == "INVALID_ARGUMENT"
            assert reply.error.message.startswith("storyboard_json: frames: expected exactly 3")
            edited = [*SHOTS[:2], {"prompt": "the kite loops twice"}]
            msg = await nc.request(
                REQUEST_APPROVE,
                animation_pb2.ApproveAnimationRequest(
                    job_id=job, storyboard_json=_board(edited)
                ).SerializeToString(),
                timeout=30,
            )
            reply = animation_pb2.ApproveReply.FromString(msg.data)
            assert reply.WhichOneof("result") == "animation", reply
            assert reply.animation.status == lifecycle.RENDERING
            # Approving again: the job is no longer waiting.
            msg = await nc.request(
                REQUEST_APPROVE,
                animation_pb2.ApproveAnimationRequest(job_id=job).SerializeToString(),
                timeout=30,
            )
            reply = animation_pb2.ApproveReply.FromString(msg.data)
            assert reply.error.code == "FAILED_PRECONDITION"
            assert reply.error.message == (
                f"job_id: job {job} is RENDERING, only a job waiting for review "
                "(PLANNED, created with review) can be approved"
            )
        finally:
            await nc.close()
        approved = await client.get(job)
        assert json.loads(approved.storyboard_json)["frames"][2]["prompt"] == "the kite loops twice"
        assert approved.planner_backend == "user"
        async for ev in client.watch(job):
            if ev.type == events.JOB_APPROVED:
                assert ev.reason == "approved with an edited storyboard"
                break

        # A job created without review is never PLANNED: approve refuses it by name.
        plain = (await client.create(_request(review=False))).job_id
        await _wait_status(client, plain, lifecycle.RENDERING)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.approve(plain)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert info.value.details().startswith(f"job_id: job {plain} is RENDERING, only a job")
        await client.cancel(plain)


async def test_cancel_while_planned_and_the_cap_counts_a_waiting_job(
    nats_server, tmp_path, tiny_cache_dir
) -> None:
    async with (
        in_process_planner(
            nats_server,
            tmp_path,
            tiny_cache_dir,
            ANIM_PLANNER_BACKEND="offline",
            ANIM_MAX_JOBS_PER_CLIENT="1",
        ) as target,
        AnimationClient(target) as client,
    ):
        job = (await client.create(_request())).job_id
        await _wait_status(client, job, lifecycle.PLANNED)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.create(_request())
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        cancelled = await client.cancel(job)
        assert cancelled.status == lifecycle.CANCELLED
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.approve(job)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert info.value.details().startswith(f"job_id: job {job} is CANCELLED")
        # Its slot is free again; a resume of the cancelled job waits for review again
        # (and takes the slot back).
        other = (await client.create(_request())).job_id
        await client.cancel(other)
        resumed = await client.resume(job)
        assert resumed.status == lifecycle.PLANNED and resumed.attempt == 2
        anim = await client.approve(job)
        assert anim.status == lifecycle.RENDERING
        await client.cancel(job)


async def test_a_job_left_waiting_for_review_expires(nats_server, tmp_path, tiny_cache_dir) -> None:
    async with (
        in_process_planner(
            nats_server,
            tmp_path,
            tiny_cache_dir,
            ANIM_PLANNER_BACKEND="offline",
            ANIM_JOB_TIMEOUT_S="3",
        ) as target,
        AnimationClient(target) as client,
    ):
        job = (await client.create(_request())).job_id
        await _wait_status(client, job, lifecycle.PLANNED)
        anim = await _wait_status(client, job, lifecycle.FAILED, timeout=30)
        assert anim.error.startswith(
            "job exceeded ANIM_JOB_TIMEOUT_S=3 while PLANNED (waiting for review)"
        ), anim.error
