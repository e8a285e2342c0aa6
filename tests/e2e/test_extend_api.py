"""ExtendAnimation on every way in, on the distributed stack (four service processes, real
NATS and SeaweedFS), with depth on: over gRPC a parent of three frames extended by two,
its new shots left to the planner, equals a fresh job of the continued storyboard byte for
byte (frames, depth maps, GIF) while rendering frames 3 and 4 only; frame 3 needs frame
2's depth map, which the parent's renderer never made (frame 2 was its last), so the
conductor asks the depth service for it. On the bus (``anim.request.extend``) an extension
with a prompt for each new frame; ``ghibli-anim extend JOB`` against the stack; and every
bad extension is refused naming the field, with nothing written.

Every job of this module has finished before anything is counted, so the counts of jobs
and stored objects change only by what a refused extension would have written."""

from __future__ import annotations

import asyncio
import json
import subprocess
from dataclasses import dataclass

import grpc
import nats
import pytest
from support.bad_input import counts

from ghibli_anim.contracts import events, keys
from ghibli_anim.contracts.pb import animation_pb2, types_pb2
from ghibli_anim.runtime.bus.names import REQUEST_EXTEND
from ghibli_anim.runtime.client import AnimationClient

from .test_chain import s3_store
from .test_fork_api import server_cli
from .test_fork_distributed import SHOTS, _request

pytestmark = pytest.mark.timeout(600)

PARENT_SHOTS = SHOTS[:3]  # depth on (_request), seed 7


def _extend(parent: str, frames: int, **fields) -> animation_pb2.ExtendAnimationRequest:
    return animation_pb2.ExtendAnimationRequest(parent_job_id=parent, frames=frames, **fields)


async def _finish(client: AnimationClient, job_id: str):
    found = [e async for e in client.watch(job_id, timeout_s=300)]
    return found, await client.get(job_id)


def _started(found) -> list[int]:
    return [e.frame for e in found if e.type == events.FRAME_STARTED]


def _depth_works(found) -> list[int]:
    return [e.frame for e in found if e.type == events.DEPTH_READY]


@dataclass(frozen=True)
class Jobs:
    parent: str
    extension: str
    extension_events: list
    fresh: str


@pytest.fixture(scope="module")
def jobs(stack) -> Jobs:
    """A parent of three frames, its extension by two over gRPC (the planner continues
    the storyboard), and a fresh job of the extension's storyboard: all completed."""
    store = s3_store(stack)

    async def main() -> Jobs:
        async with AnimationClient(stack.planner_target) as client:
            parent = (await client.create(_request(PARENT_SHOTS))).job_id
            _, anim = await _finish(client, parent)
            assert anim.status == types_pb2.JOB_STATUS_COMPLETED, stack.logs()
            ext = await client.extend(_extend(parent, 2))
            assert not ext.existing and ext.animation.frames_total == 5
            assert ext.animation.fork == animation_pb2.ForkFrom(parent_job_id=parent, from_frame=3)
            ext_events, anim = await _finish(client, ext.job_id)
            assert anim.status == types_pb2.JOB_STATUS_COMPLETED, (anim.error, stack.logs())
            continued = json.loads(await asyncio.to_thread(store.get, keys.plan_key(ext.job_id)))
            fresh = (await client.create(_request(continued["frames"]))).job_id
            _, anim = await _finish(client, fresh)
            assert anim.status == types_pb2.JOB_STATUS_COMPLETED, stack.logs()
            return Jobs(parent, ext.job_id, ext_events, fresh)

    return asyncio.run(main())


def _files(store, job: str, frames: int = 5) -> list[bytes]:
    found = [store.get(keys.frame_key(job, i)) for i in range(frames)]
    found += [store.get(keys.depth_key(job, i)) for i in range(frames - 1)]
    return [*found, store.get(keys.output_key(job, "gif"))]


def test_extend_animation_with_depth_equals_a_fresh_job_rendering_m_frames(
    stack, jobs: Jobs
) -> None:
    store = s3_store(stack)
    assert _started(jobs.extension_events) == [3, 4]
    # Frame 2's depth map, which the parent never made, comes from the depth service.
    assert keys.depth_key(jobs.parent, 2) not in store.list(keys.job_prefix(jobs.parent))
    assert 2 in _depth_works(jobs.extension_events)
    extended = _files(store, jobs.extension)
    assert extended == _files(store, jobs.fresh)
    assert extended[:3] == [store.get(keys.frame_key(jobs.parent, i)) for i in range(3)]
    board = json.loads(store.get(keys.plan_key(jobs.extension)))
    assert [s["prompt"] for s in board["frames"][:3]] == [s["prompt"] for s in PARENT_SHOTS]
    assert len(board["frames"]) == 5
    manifest = json.loads(store.get(keys.manifest_key(jobs.extension)))
    assert manifest["request"]["fork"] == {"parent_job_id": jobs.parent, "from_frame": 3}
    assert manifest["request"]["seed"] == 7 and manifest["request"]["depth"]
    assert len(manifest["frames"]) == 5


def test_bus_extends_like_grpc(stack, jobs: Jobs) -> None:
    """anim.request.extend answers like gRPC: the new job, or the same error code and text.
    With a prompt for each new frame, those are the new shots."""
    store = s3_store(stack)
    prompts = [
        animation_pb2.PromptEdit(frame=3, prompt="the kite lands on a roof"),
        animation_pb2.PromptEdit(frame=4, prompt="a cat watches the kite"),
    ]

    async def bus(request: animation_pb2.ExtendAnimationRequest) -> animation_pb2.CreateReply:
        nc = await nats.connect(stack.nats.url)
        try:
            msg = await nc.request(REQUEST_EXTEND, request.SerializeToString(), timeout=30)
        finally:
            await nc.close()
        return animation_pb2.CreateReply.FromString(msg.data)

    async def main():
        async with AnimationClient(stack.planner_target) as client:
            refused = await bus(_extend(jobs.parent, 0))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.extend(_extend(jobs.parent, 0))
            reply = await bus(_extend(jobs.parent, 2, prompts=prompts, depth=False))
            assert reply.WhichOneof("result") == "response", reply
            found, anim = await _finish(client, reply.response.job_id)
            assert anim.status == types_pb2.JOB_STATUS_COMPLETED, (anim.error, stack.logs())
            return refused, info.value, reply.response.job_id, _started(found)

    refused, grpc_error, job, started = asyncio.run(main())
    assert refused.error.code == grpc_error.code().name == "INVALID_ARGUMENT"
    assert (
        refused.error.message
        == grpc_error.details()
        == (f"frames: must be in 1..117 (job {jobs.parent} has 3 frames, the limit is 120), got 0")
    )
    assert started == [3, 4]
    kept = [store.get(keys.frame_key(job, i)) for i in range(3)]
    assert kept == [store.get(keys.frame_key(jobs.parent, i)) for i in range(3)]
    board = json.loads(store.get(keys.plan_key(job)))
    assert [s["prompt"] for s in board["frames"][3:]] == [p.prompt for p in prompts]
    manifest = json.loads(store.get(keys.manifest_key(job)))
    specs = [frame["record"]["spec"] for frame in manifest["frames"]]
    # Depth off applies to the new frames only.
    assert specs[2]["depth_key"] and not specs[3]["depth_key"] and not specs[4]["depth_key"]


def test_cli_extend_against_the_stack(stack, jobs: Jobs, tmp_path) -> None:
    store = s3_store(stack)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return server_cli(stack.planner_target, "extend", jobs.parent, *args)

    bad = cli("--frames", "118")
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr.strip().splitlines()[-1] == (
        f"error: INVALID_ARGUMENT: frames: must be in 1..117 (job {jobs.parent} has 3 frames, "
        "the limit is 120), got 118"
    )
    out = tmp_path / "out"
    done = cli(
        "--frames", "1", "--prompt", "3:the kite lands", "--strength", "0.5",
        "--watch", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr + stack.logs()
    job = done.stderr.split("job ", 1)[1].split()[0]
    assert f"created: {jobs.parent} extended by 1 frames (from frame 3)" in done.stderr
    assert f"job {job} completed (4 frames)" in done.stderr
    assert (out / "animation.gif").read_bytes() == store.get(keys.output_key(job, "gif"))
    manifest = json.loads(store.get(keys.manifest_key(job)))
    assert manifest["request"]["fork"] == {"parent_job_id": jobs.parent, "from_frame": 3}
    specs = [frame["record"]["spec"] for frame in manifest["frames"]]
    assert specs[3]["prompt"].startswith("the kite lands") and specs[3]["strength"] == 0.5
    assert specs[2]["strength"] != 0.5  # the parent's frame, as it ran
    kept = [store.get(keys.frame_key(job, i)) for i in range(3)]
    assert kept == [store.get(keys.frame_key(jobs.parent, i)) for i in range(3)]


def test_bad_extensions_are_refused_naming_the_field_and_write_nothing(stack, jobs: Jobs) -> None:
    parent = jobs.parent
    shifted = [dict(s) for s in SHOTS[:3]] + [{"prompt": "a pond"}]
    shifted[1]["prompt"] = "the kite climbs into fog"
    five = [*PARENT_SHOTS, {"prompt": "a pond"}, {"prompt": "a heron"}]
    bad = "INVALID_ARGUMENT"
    limit = f"frames: must be in 1..117 (job {parent} has 3 frames, the limit is 120)"

    def board(shots) -> str:
        return _request(shots).storyboard_json

    cases = [
        (_extend("not-a-job", 1), bad, "parent_job_id: must be a job id"),
        (_extend("f" * 32, 1), "NOT_FOUND", f"parent_job_id: job {'f' * 32} not found"),
        (_extend(parent, 0), bad, f"{limit}, got 0"),
        (_extend(parent, 118), bad, f"{limit}, got 118"),
        (_extend(parent, -3), bad, f"{limit}, got -3"),
        (
            _extend(parent, 1, storyboard_json=board(shifted)),
            bad,
            "storyboard_json: frames[1].prompt (with the style) differs from the parent's",
        ),
        (
            _extend(parent, 1, storyboard_json=board(five)),
            bad,
            "storyboard_json: frames: expected exactly 4 frames, or the parent's 3",
        ),
        (
            _extend(parent, 2, prompts=[animation_pb2.PromptEdit(frame=3, prompt="a pond")]),
            bad,
            "prompts: without storyboard_json, give a prompt for every new frame 3..4",
        ),
        (
            _extend(parent, 1, prompts=[animation_pb2.PromptEdit(frame=2, prompt="a pond")]),
            bad,
            "prompts: without storyboard_json, give a prompt for every new frame 3..3 (or "
            "none: the planner continues the storyboard); got frame 2",
        ),
        (_extend(parent, 1, strength=2.0), bad, "strength: must be a number in (0, 1], got 2"),
        (_extend(parent, 1, color_coherence="sepia"), bad, "color_coherence: must be one of"),
    ]
    before = counts(stack)

    async def main():
        found = []
        async with AnimationClient(stack.planner_target) as client:
            for request, _, _ in cases:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await client.extend(request)
                found.append((info.value.code().name, info.value.details()))
        return found

    refused = asyncio.run(main())
    for (_, code, text), (got_code, got_text) in zip(cases, refused, strict=True):
        assert (got_code, got_text[: len(text)]) == (code, text), got_text
    assert counts(stack) == before


def test_a_running_or_deleted_parent_is_refused(stack, jobs: Jobs) -> None:
    long_board = [{"prompt": f"shot number {i}"} for i in range(30)]

    async def running_then_deleted():
        async with AnimationClient(stack.planner_target) as client:
            running = (await client.create(_request(long_board))).job_id
            try:
                with pytest.raises(grpc.aio.AioRpcError) as going:
                    await client.extend(_extend(running, 1))
            finally:
                await client.cancel(running)
            # A finished extension, then deleted: its own extension is NOT_FOUND.
            done = await client.extend(_extend(jobs.parent, 1, depth=False))
            _, anim = await _finish(client, done.job_id)
            assert anim.status == types_pb2.JOB_STATUS_COMPLETED, (anim.error, stack.logs())
            await client.delete(done.job_id)
            return running, going.value, done.job_id

    async def extend_deleted(job_id: str) -> grpc.aio.AioRpcError:
        async with AnimationClient(stack.planner_target) as client:
            with pytest.raises(grpc.aio.AioRpcError) as gone:
                await client.extend(_extend(job_id, 1))
            return gone.value

    running, going, deleted = asyncio.run(running_then_deleted())
    assert going.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert going.details().startswith(f"parent_job_id: job {running} is ")
    assert "a fork needs a completed, failed or cancelled job" in going.details()
    before = counts(stack)
    gone = asyncio.run(extend_deleted(deleted))
    assert gone.code() == grpc.StatusCode.NOT_FOUND
    assert gone.details() == f"parent_job_id: job {deleted} not found (never created, or deleted)"
    assert counts(stack) == before
