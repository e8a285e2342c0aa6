"""ForkAnimation on every way in, on the distributed stack (four service processes, real
NATS and SeaweedFS): over gRPC a fork from K with prompt edits equals a fresh job with the
edited storyboard byte for byte and renders frames K..N-1 only; on the bus
(``anim.request.fork``) a fork of that fork, made after its parent was deleted, renders
its one frame to the same bytes; ``ghibli-anim fork JOB`` against the stack makes the fork
its flags say; and every bad fork is refused naming the field, with nothing written.

Every job of this module has finished before anything is counted, so the counts of jobs
and stored objects change only by what a refused fork would have written."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from dataclasses import dataclass

import grpc
import nats
import pytest
from support.bad_input import counts

from ghibli_anim.contracts import events, keys
from ghibli_anim.contracts.pb import animation_pb2, types_pb2
from ghibli_anim.runtime.bus.names import REQUEST_FORK
from ghibli_anim.runtime.client import AnimationClient

from .test_chain import s3_store
from .test_fork_distributed import SHOTS, _request

pytestmark = pytest.mark.timeout(600)

EDITS = {2: "the kite loops twice", 3: "the kite lands"}
EDITED = [*SHOTS[:2], *({"prompt": text} for text in EDITS.values())]


def _fork(parent: str, from_frame: int, **fields) -> animation_pb2.ForkAnimationRequest:
    return animation_pb2.ForkAnimationRequest(
        fork=animation_pb2.ForkFrom(parent_job_id=parent, from_frame=from_frame), **fields
    )


async def _finish(client: AnimationClient, job_id: str):
    found = [e async for e in client.watch(job_id, timeout_s=300)]
    return found, await client.get(job_id)


def _started(found) -> list[int]:
    return [e.frame for e in found if e.type == events.FRAME_STARTED]


@dataclass(frozen=True)
class Jobs:
    parent: str
    fork: str
    fork_started: list[int]
    fresh: str


@pytest.fixture(scope="module")
def jobs(stack) -> Jobs:
    """A parent, its fork from frame 2 over gRPC (new prompts for frames 2 and 3), and a
    fresh job of the fork's storyboard: all completed."""

    async def main() -> Jobs:
        async with AnimationClient(stack.planner_target) as client:
            parent = (await client.create(_request(SHOTS))).job_id
            _, anim = await _finish(client, parent)
            assert anim.status == types_pb2.JOB_STATUS_COMPLETED, stack.logs()
            edits = [animation_pb2.PromptEdit(frame=i, prompt=t) for i, t in EDITS.items()]
            fork = await client.fork(_fork(parent, 2, prompts=edits))
            assert not fork.existing and fork.animation.frames_total == 4
            fork_events, anim = await _finish(client, fork.job_id)
            assert anim.status == types_pb2.JOB_STATUS_COMPLETED, stack.logs()
            # The job view names the parent and K (the page plays the parent beside it).
            assert anim.fork == animation_pb2.ForkFrom(parent_job_id=parent, from_frame=2)
            fresh = (await client.create(_request(EDITED))).job_id
            _, anim = await _finish(client, fresh)
            assert anim.status == types_pb2.JOB_STATUS_COMPLETED, stack.logs()
            assert not anim.HasField("fork")
            return Jobs(parent, fork.job_id, _started(fork_events), fresh)

    return asyncio.run(main())


def _files(store, job: str) -> list[bytes]:
    found = [store.get(keys.frame_key(job, i)) for i in range(4)]
    found += [store.get(keys.depth_key(job, i)) for i in range(3)]
    return [*found, store.get(keys.output_key(job, "gif"))]


def test_fork_animation_equals_a_fresh_job_rendering_frames_k_on(stack, jobs: Jobs) -> None:
    store = s3_store(stack)
    assert jobs.fork_started == [2, 3]
    forked = _files(store, jobs.fork)
    assert forked == _files(store, jobs.fresh)
    assert forked[:2] == [store.get(keys.frame_key(jobs.parent, i)) for i in range(2)]
    assert forked[2] != store.get(keys.frame_key(jobs.parent, 2))
    manifest = json.loads(store.get(keys.manifest_key(jobs.fork)))
    assert manifest["request"]["fork"] == {"parent_job_id": jobs.parent, "from_frame": 2}
    assert manifest["request"]["seed"] == 7  # the parent's, as resolved
    board = json.loads(store.get(keys.plan_key(jobs.fork)))
    assert [shot["prompt"] for shot in board["frames"]] == [s["prompt"] for s in EDITED]


def test_bus_forks_and_a_fork_of_a_fork_of_a_deleted_job(stack, jobs: Jobs) -> None:
    """anim.request.fork answers like gRPC: the new job, or the same error code and text.
    A fork with no changes renders the parent's bytes; a fork of it with the prompt edits
    renders the gRPC fork's; once the middle job is deleted, its fork still forks."""
    store = s3_store(stack)

    async def bus(fork: animation_pb2.ForkAnimationRequest) -> animation_pb2.CreateReply:
        nc = await nats.connect(stack.nats.url)
        try:
            msg = await nc.request(REQUEST_FORK, fork.SerializeToString(), timeout=30)
        finally:
            await nc.close()
        return animation_pb2.CreateReply.FromString(msg.data)

    async def bus_job(client: AnimationClient, fork: animation_pb2.ForkAnimationRequest):
        reply = await bus(fork)
        assert reply.WhichOneof("result") == "response", reply
        found, anim = await _finish(client, reply.response.job_id)
        assert anim.status == types_pb2.JOB_STATUS_COMPLETED, (anim.error, stack.logs())
        return reply.response.job_id, _started(found)

    async def main():
        async with AnimationClient(stack.planner_target) as client:
            refused = await bus(_fork(jobs.parent, 4))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.fork(_fork(jobs.parent, 4))
            middle = await bus_job(client, _fork(jobs.parent, 3))
            middle_last = await asyncio.to_thread(store.get, keys.frame_key(middle[0], 3))
            edits = [animation_pb2.PromptEdit(frame=i, prompt=t) for i, t in EDITS.items()]
            child = await bus_job(client, _fork(middle[0], 2, prompts=edits))
            await client.delete(middle[0])
            with pytest.raises(grpc.aio.AioRpcError) as gone:
                await client.fork(_fork(middle[0], 2))
            assert gone.value.code() == grpc.StatusCode.NOT_FOUND
            assert gone.value.details() == (
                f"fork.parent_job_id: job {middle[0]} not found (never created, or deleted)"
            )
            grandchild = await client.fork(_fork(child[0], 3))
            found, anim = await _finish(client, grandchild.job_id)
            assert anim.status == types_pb2.JOB_STATUS_COMPLETED, (anim.error, stack.logs())
            last = (grandchild.job_id, _started(found))
            return refused, info.value, middle, middle_last, child, last

    refused, grpc_error, middle, middle_last, child, grandchild = asyncio.run(main())
    assert refused.error.code == grpc_error.code().name == "INVALID_ARGUMENT"
    assert refused.error.message == grpc_error.details()
    assert (
        refused.error.message == "fork.from_frame: must be in 1..3 (the fork has 4 frames), got 4"
    )
    assert middle[1] == [3] and child[1] == [2, 3] and grandchild[1] == [3]
    parent_frames = [store.get(keys.frame_key(jobs.parent, i)) for i in range(4)]
    assert store.list(keys.job_prefix(middle[0])) == []
    forked = [store.get(keys.frame_key(jobs.fork, i)) for i in range(4)]
    for job, frames in ((child[0], forked), (grandchild[0], forked)):
        assert [store.get(keys.frame_key(job, i)) for i in range(4)] == frames
    assert forked[:2] == parent_frames[:2]
    assert middle_last == parent_frames[3]  # no changes: the parent's bytes
    manifest = json.loads(store.get(keys.manifest_key(grandchild[0])))
    assert manifest["request"]["fork"] == {"parent_job_id": child[0], "from_frame": 3}


def server_cli(target: str, *args: str) -> subprocess.CompletedProcess:
    """``ghibli-anim ARGS`` as its own process against the planner at ``target`` (no other
    ANIM_ variable of this process reaches it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANIM_")}
    return subprocess.run(
        [sys.executable, "-m", "ghibli_anim.cli", *args],
        env={**env, "ANIM_SERVER": target},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_fork_against_the_stack(stack, jobs: Jobs, tmp_path) -> None:
    store = s3_store(stack)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return server_cli(stack.planner_target, "fork", jobs.parent, *args)

    bad = cli("--from-frame", "4")
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr.strip().splitlines()[-1] == (
        "error: INVALID_ARGUMENT: fork.from_frame: must be in 1..3 (the fork has 4 frames), got 4"
    )
    out = tmp_path / "out"
    done = cli(
        "--from-frame", "3", "--prompt", "3:the kite lands", "--strength", "0.5",
        "--no-depth", "--watch", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr + stack.logs()
    job = done.stderr.split("job ", 1)[1].split()[0]
    assert f"created: a fork of {jobs.parent} from frame 3" in done.stderr
    assert f"job {job} completed (4 frames)" in done.stderr
    assert (out / "animation.gif").read_bytes() == store.get(keys.output_key(job, "gif"))
    manifest = json.loads(store.get(keys.manifest_key(job)))
    request = manifest["request"]
    assert request["fork"] == {"parent_job_id": jobs.parent, "from_frame": 3}
    assert request["strength"] == 0.5 and not request.get("depth")
    specs = [frame["record"]["spec"] for frame in manifest["frames"]]
    wanted = [shot["prompt"] for shot in SHOTS[:3]] + ["the kite lands"]
    assert all(s["prompt"].startswith(w) for s, w in zip(specs, wanted, strict=True)), specs
    # The changes apply from frame K: frame 2 ran as in the parent (depth-guided, the
    # profile's strength), frame 3 with strength 0.5 and no depth map.
    assert specs[3]["strength"] == 0.5 and specs[3]["depth_key"] == ""
    assert specs[2]["strength"] != 0.5 and specs[2]["depth_key"]
    kept = [store.get(keys.frame_key(job, i)) for i in range(3)]
    assert kept == [store.get(keys.frame_key(jobs.parent, i)) for i in range(3)]


def test_bad_forks_are_refused_naming_the_field_and_write_nothing(stack, jobs: Jobs) -> None:
    parent = jobs.parent
    shifted = json.loads(_request(SHOTS).storyboard_json)
    shifted["frames"][1]["prompt"] = "the kite climbs into fog"
    bad = "INVALID_ARGUMENT"
    cases = [
        (animation_pb2.ForkAnimationRequest(), bad, "fork: required"),
        (_fork("not-a-job", 1), bad, "fork.parent_job_id: must be a job id"),
        (_fork("f" * 32, 1), "NOT_FOUND", f"fork.parent_job_id: job {'f' * 32} not found"),
        (_fork(parent, 0), bad, "fork.from_frame: must be in 1..3 (the fork has 4 frames), got 0"),
        (
            _fork(parent, 2, prompts=[animation_pb2.PromptEdit(frame=1, prompt="a gull")]),
            bad,
            "prompts: frame 1 must be in 2..3 (frames before fork.from_frame 2 are the parent's)",
        ),
        (
            _fork(parent, 2, prompts=[animation_pb2.PromptEdit(frame=3, prompt="")]),
            bad,
            "prompts[0].prompt: must not be empty",
        ),
        (
            _fork(parent, 2, storyboard_json=json.dumps(shifted)),
            bad,
            "storyboard_json: frames[1].prompt (with the style) differs from the parent's",
        ),
        (_fork(parent, 2, storyboard_json="{"), bad, "storyboard_json: "),
        (_fork(parent, 2, strength=2.0), bad, "strength: must be a number in (0, 1], got 2"),
        (_fork(parent, 2, color_coherence="sepia"), bad, "color_coherence: must be one of"),
    ]
    before = counts(stack)

    async def refusals(client: AnimationClient) -> list[tuple[str, str]]:
        found = []
        for request, _, _ in cases:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.fork(request)
            found.append((info.value.code().name, info.value.details()))
        return found

    async def main():
        async with AnimationClient(stack.planner_target) as client:
            refused = await refusals(client)
            # A parent whose frame 1 is gone from the store (the job store still knows it).
            s3_store(stack).delete(keys.frame_key(jobs.fresh, 1))
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await client.fork(_fork(jobs.fresh, 2))
            return refused, missing.value

    refused, missing = asyncio.run(main())
    for (_, code, text), (got_code, got_text) in zip(cases, refused, strict=True):
        assert (got_code, got_text[: len(text)]) == (code, text), got_text
    assert missing.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert missing.details().startswith(
        f"fork.parent_job_id: frame 1 of job {jobs.fresh} is not in the store"
    )
    jobs_after, objects_after = counts(stack)
    assert (jobs_after, objects_after) == (before[0], before[1] - 1)  # the frame deleted


def test_a_parent_still_going_is_refused(stack) -> None:
    long_board = [{"prompt": f"shot number {i}"} for i in range(30)]

    async def main() -> grpc.aio.AioRpcError:
        async with AnimationClient(stack.planner_target) as client:
            parent = (await client.create(_request(long_board))).job_id
            try:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await client.fork(_fork(parent, 1))
                return parent, info.value
            finally:
                await client.cancel(parent)

    parent, error = asyncio.run(main())
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details().startswith(f"fork.parent_job_id: job {parent} is ")
    assert "a fork needs a completed, failed or cancelled job" in error.details()
