"""Forks over gRPC on the distributed stack (four service processes, real NATS and
SeaweedFS): a fork from K equals a fresh job with the edited storyboard byte for byte,
renders only frames K..N-1 (counted by their frame.started events), keeps its frames when
the parent is deleted (server-side copies in S3), and a parent still going is refused."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest

from ghibli_anim.contracts import events, keys
from ghibli_anim.contracts.pb import animation_pb2, types_pb2
from ghibli_anim.runtime.client import AnimationClient

from .test_chain import run_job, s3_store

pytestmark = pytest.mark.timeout(600)

SHOTS = [
    {"prompt": "a kite over a hill", "camera": {"zoom": 1.05}},
    {"prompt": "the kite climbs into clouds", "camera": {"pan_x": 0.05}},
    {"prompt": "the kite string snaps"},
    {"prompt": "the kite falls into a river"},
]


def _request(shots, **fields) -> animation_pb2.CreateAnimationRequest:
    board = {"version": 1, "title": "kite", "style": "ghibli style", "frames": shots}
    return animation_pb2.CreateAnimationRequest(
        idea="a kite on a windy day",
        frames=len(shots),
        seed=7,
        depth=True,
        formats=["gif"],
        storyboard_json=json.dumps(board),
        **fields,
    )


def test_fork_over_grpc_equals_a_fresh_job_and_outlives_its_parent(stack) -> None:
    store = s3_store(stack)
    parent, _, anim = asyncio.run(run_job(stack.planner_target, _request(SHOTS)))
    assert anim.status == types_pb2.JOB_STATUS_COMPLETED, stack.logs()
    edited = [*SHOTS[:2], {"prompt": "the kite loops twice"}, {"prompt": "the kite lands"}]
    fork_from = animation_pb2.ForkFrom(parent_job_id=parent, from_frame=2)
    fork, fork_events, anim = asyncio.run(
        run_job(stack.planner_target, _request(edited, fork=fork_from))
    )
    assert anim.status == types_pb2.JOB_STATUS_COMPLETED, stack.logs()
    fresh, _, anim = asyncio.run(run_job(stack.planner_target, _request(edited)))
    assert anim.status == types_pb2.JOB_STATUS_COMPLETED, stack.logs()

    assert [e.frame for e in fork_events if e.type == events.FRAME_STARTED] == [2, 3]

    def files(job: str) -> list[bytes]:
        found = [store.get(keys.frame_key(job, i)) for i in range(4)]
        found += [store.get(keys.depth_key(job, i)) for i in range(3)]
        return [*found, store.get(keys.output_key(job, "gif"))]

    forked = files(fork)
    assert forked == files(fresh)
    assert forked[1] == store.get(keys.frame_key(parent, 1))
    assert forked[2] != store.get(keys.frame_key(parent, 2))
    manifest = json.loads(store.get(keys.manifest_key(fork)))
    assert manifest["request"]["fork"] == {"parent_job_id": parent, "from_frame": 2}

    async def delete_parent_then_fork_again() -> str:
        async with AnimationClient(stack.planner_target) as client:
            await client.delete(parent)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.create(_request(edited, fork=fork_from))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert info.value.details().startswith(
                f"fork.parent_job_id: job {parent} has no storyboard in the store"
            )
            return info.value.details()

    asyncio.run(delete_parent_then_fork_again())
    assert files(fork) == forked


def test_a_parent_still_going_is_refused(stack) -> None:
    long_board = [{"prompt": f"shot number {i}"} for i in range(30)]

    async def main() -> None:
        async with AnimationClient(stack.planner_target) as client:
            parent = (await client.create(_request(long_board))).job_id
            try:
                fork = _request(
                    long_board, fork=animation_pb2.ForkFrom(parent_job_id=parent, from_frame=1)
                )
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await client.create(fork)
                assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                assert info.value.details().startswith(f"fork.parent_job_id: job {parent} is ")
                assert "a fork needs a completed, failed or cancelled job" in info.value.details()
            finally:
                await client.cancel(parent)

    asyncio.run(main())
