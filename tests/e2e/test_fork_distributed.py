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


def test_extend_over_grpc_gives_the_bytes_of_embedded(stack, tiny_cache_dir, tmp_path) -> None:
    """An extension is a fork from K = N with more frames: the planner (offline here)
    continues the parent's three shots to five, frames 3 and 4 alone are rendered, and the
    distributed stack and the embedded mode give the same bytes."""
    from ghibli_anim.embedded import EmbeddedStack

    def three(**fields) -> animation_pb2.CreateAnimationRequest:
        req = _request(SHOTS[:3], **fields)
        req.depth = False  # the cheapest chain
        return req

    def extension(parent: str) -> animation_pb2.CreateAnimationRequest:
        req = three(fork=animation_pb2.ForkFrom(parent_job_id=parent, from_frame=3))
        req.frames = 5  # storyboard_json holds the parent's shots: the planner adds two
        return req

    async def parent_then_extension(target: str) -> tuple[str, str, list]:
        parent, _, anim = await run_job(target, three())
        assert anim.status == types_pb2.JOB_STATUS_COMPLETED, anim.error
        ext, ext_events, anim = await run_job(target, extension(parent))
        assert anim.status == types_pb2.JOB_STATUS_COMPLETED, anim.error
        assert (anim.frames_total, anim.frames_done) == (5, 5)
        return parent, ext, ext_events

    store = s3_store(stack)
    parent, ext, ext_events = asyncio.run(parent_then_extension(stack.planner_target))
    assert [e.frame for e in ext_events if e.type == events.FRAME_STARTED] == [3, 4]
    distributed = [store.get(keys.frame_key(ext, i)) for i in range(5)]
    assert distributed[:3] == [store.get(keys.frame_key(parent, i)) for i in range(3)]
    board = json.loads(store.get(keys.plan_key(ext)))
    assert [s["prompt"] for s in board["frames"][:3]] == [s["prompt"] for s in SHOTS[:3]]
    assert len(board["frames"]) == 5 and board["planner"]["backend"] == "offline"

    async def refused() -> list[str]:
        details = []
        async with AnimationClient(stack.planner_target) as client:
            for from_frame, frames in ((4, 6), (3, 3)):
                req = extension(parent)
                req.fork.from_frame, req.frames = from_frame, frames
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await client.create(req)
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                details.append(info.value.details())
        return details

    beyond, same_length = asyncio.run(refused())
    assert beyond.startswith(f"fork.from_frame: must be in 1..3 (job {parent} has 3 frames"), beyond
    assert same_length.startswith("fork.from_frame: must be in 1..2 (the fork has 3 frames)")

    runs = tmp_path / "runs"
    env = {
        "ANIM_CACHE_DIR": str(tiny_cache_dir),
        "ANIM_PROFILE": "tiny",
        "ANIM_RUNS_DIR": str(runs),
    }

    async def embedded() -> tuple[str, str, list]:
        async with EmbeddedStack(env=env) as emb:
            return await parent_then_extension(emb.planner_target)

    _, local_ext, _ = asyncio.run(embedded())
    local = [(runs / local_ext / "frames" / f"{i:04d}.png").read_bytes() for i in range(5)]
    assert local == distributed
    assert (runs / local_ext / "animation.gif").read_bytes() == store.get(
        keys.output_key(ext, "gif")
    )
    assert json.loads((runs / local_ext / "plan.json").read_text())["frames"] == board["frames"]
