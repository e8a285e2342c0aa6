"""The chain end to end: four services as OS processes against real NATS and SeaweedFS.

Profile ``tiny`` (random weights): frames are noise, so these tests check
plumbing, ordering, causation, files and bytes, never looks.
"""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import textwrap

import grpc
import nats
import pytest
from PIL import Image
from support.bad_input import counts

from ghibli_anim.contracts import keys
from ghibli_anim.contracts.pb import animation_pb2, bus_pb2, types_pb2
from ghibli_anim.devtools.stack import LocalStack, ServiceProcess, wait_for_health
from ghibli_anim.runtime.bus.names import REQUEST_CREATE
from ghibli_anim.runtime.client import AnimationClient
from ghibli_anim.runtime.store.s3 import S3Store
from ghibli_anim.services.assembler.assemble import count_frames_gif, count_frames_mp4

pytestmark = pytest.mark.timeout(600)

E = bus_pb2


def s3_store(stack: LocalStack) -> S3Store:
    from ghibli_anim.contracts import config

    return S3Store.from_settings(config.load("client", stack.env()))


def request(**fields) -> animation_pb2.CreateAnimationRequest:
    base = {"idea": "a dragon glides over a medieval town at dusk", "frames": 5, "seed": 7}
    base.update(fields)
    return animation_pb2.CreateAnimationRequest(**base)


async def run_job(target: str, req) -> tuple[str, list[bus_pb2.Event], animation_pb2.Animation]:
    async with AnimationClient(target, timeout_s=30) as client:
        resp = await client.create(req)
        events = [ev async for ev in client.watch(resp.job_id)]
        return resp.job_id, events, await client.get(resp.job_id)


def _index(events, kind, frame):
    return next(n for n, e in enumerate(events) if e.type == kind and e.frame == frame)


def test_five_frames_with_depth_over_grpc(stack):
    job_id, events, anim = asyncio.run(run_job(stack.planner_target, request(depth=True)))
    assert anim.status == types_pb2.JOB_STATUS_COMPLETED, stack.logs()
    assert anim.frames_done == 5 and anim.planner_backend == "offline"
    seqs = [e.sequence for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert events[0].type == E.EVENT_TYPE_JOB_CREATED
    assert events[-1].type == E.EVENT_TYPE_JOB_COMPLETED
    by_id = {e.event_id: e for e in events}
    for i in range(4):
        rendered = _index(events, E.EVENT_TYPE_FRAME_RENDERED, i)
        started_next = _index(events, E.EVENT_TYPE_FRAME_STARTED, i + 1)
        assert rendered < started_next
        # The renderer made frame i's depth map with it: frame.rendered{i} names it, and
        # it caused render work i+1 directly (no depth work, no depth.ready).
        assert events[rendered].depth_key == keys.depth_key(job_id, i)
        assert events[started_next].causation_id == events[rendered].event_id
    assert not [e for e in events if e.type == E.EVENT_TYPE_DEPTH_READY]
    assert events[_index(events, E.EVENT_TYPE_FRAME_RENDERED, 4)].depth_key == ""
    first = events[_index(events, E.EVENT_TYPE_FRAME_STARTED, 0)]
    assert by_id[first.causation_id].type == E.EVENT_TYPE_JOB_PLANNED
    for e in events:
        assert e.job_id == job_id and e.HasField("time")

    store = s3_store(stack)
    prefix = keys.job_prefix(job_id)
    stored = set(store.list(prefix))
    frames = {k for k in stored if k.startswith(prefix + "frames/") and k.endswith(".png")}
    depth_maps = {k for k in stored if k.startswith(prefix + "depth/")}
    assert frames == {keys.frame_key(job_id, i) for i in range(5)}
    assert depth_maps == {keys.depth_key(job_id, i) for i in range(4)}
    for fmt in ("gif", "mp4", "webp"):
        assert keys.output_key(job_id, fmt) in stored
    assert {keys.manifest_key(job_id), keys.plan_key(job_id)} <= stored
    assert count_frames_gif(store.get(keys.output_key(job_id, "gif")))[0] == 5
    assert count_frames_mp4(store.get(keys.output_key(job_id, "mp4")))[0] == 5
    names = {o.name for o in anim.outputs}
    assert {"animation.gif", "animation.mp4", "animation.webp", "manifest.json"} <= names
    for out in anim.outputs:
        assert out.url.startswith("http://") and len(out.sha256) == 64


def test_job_created_over_the_bus_request_subject(stack):
    async def main():
        nc = await nats.connect(stack.nats.url)
        try:
            reply = await nc.request(
                REQUEST_CREATE, request(frames=3).SerializeToString(), timeout=10
            )
            out = animation_pb2.CreateReply.FromString(reply.data)
            assert out.WhichOneof("result") == "response", out
            bad = await nc.request(
                REQUEST_CREATE, request(frames=0).SerializeToString(), timeout=10
            )
            err = animation_pb2.CreateReply.FromString(bad.data)
            assert err.error.code == "INVALID_ARGUMENT"
            assert err.error.message == "frames: must be an integer in 1..120, got 0"
        finally:
            await nc.close()
        async with AnimationClient(stack.planner_target) as client:
            events = [e async for e in client.watch(out.response.job_id)]
            return events, await client.get(out.response.job_id)

    events, anim = asyncio.run(main())
    assert anim.status == types_pb2.JOB_STATUS_COMPLETED, stack.logs()
    assert sum(e.type == E.EVENT_TYPE_FRAME_RENDERED for e in events) == 3


@pytest.mark.parametrize("job_id", ["0" * 32, "not-a-job"])
def test_unknown_or_malformed_job_ids(stack, job_id):
    async def main():
        async with AnimationClient(stack.planner_target) as client:
            for call in (client.get, client.cancel):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call(job_id)
                yield info.value

    async def collect():
        return [e async for e in main()]

    for err in asyncio.run(collect()):
        expected = (
            grpc.StatusCode.NOT_FOUND if job_id == "0" * 32 else grpc.StatusCode.INVALID_ARGUMENT
        )
        assert err.code() == expected
        assert err.details().startswith("job_id:")


def test_repeated_idempotency_key_returns_the_same_job(stack):
    async def main():
        async with AnimationClient(stack.planner_target) as client:
            req = request(frames=1, idempotency_key="retry-me")
            first = await client.create(req)
            second = await client.create(req)
            [e async for e in client.watch(first.job_id)]
            return first, second

    before_kv, _ = counts(stack)
    first, second = asyncio.run(main())
    assert not first.existing and second.existing and first.job_id == second.job_id
    assert counts(stack)[0] == before_kv + 1


def test_same_bytes_embedded_and_distributed(stack, tiny_cache_dir, tmp_path, monkeypatch):
    from ghibli_anim.embedded import EmbeddedStack

    req = request(frames=3, seed=1234, depth=True)
    job_id, _, anim = asyncio.run(run_job(stack.planner_target, req))
    assert anim.status == types_pb2.JOB_STATUS_COMPLETED
    store = s3_store(stack)
    distributed = [store.get(keys.frame_key(job_id, i)) for i in range(3)]

    env = {
        **os.environ,
        "ANIM_CACHE_DIR": str(tiny_cache_dir),
        "ANIM_PROFILE": "tiny",
        "ANIM_RUNS_DIR": str(tmp_path / "runs"),
    }

    async def embedded():
        async with EmbeddedStack(env=env) as emb:
            return await run_job(emb.planner_target, req)

    local_id, _, local = asyncio.run(embedded())
    assert local.status == types_pb2.JOB_STATUS_COMPLETED
    local_frames = [
        (tmp_path / "runs" / local_id / "frames" / f"{i:04d}.png").read_bytes() for i in range(3)
    ]
    assert local_frames == distributed
    assert Image.open(io.BytesIO(local_frames[0])).size == (64, 64)


def test_generate_from_a_subprocess(tiny_cache_dir, tmp_path):
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ANIM_")},
        "ANIM_CACHE_DIR": str(tiny_cache_dir),
        "ANIM_RUNS_DIR": str(tmp_path / "runs"),
    }
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "ghibli_anim.cli",
            "generate",
            "a cat on a roof",
            "--frames",
            "3",
            "--profile",
            "tiny",
            "--seed",
            "3",
            "--depth",
            "--format",
            "gif,mp4,webp,zip",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    (job_dir,) = (tmp_path / "runs").iterdir()
    assert keys.is_job_id(job_dir.name)
    files = {str(p.relative_to(job_dir)) for p in job_dir.rglob("*") if p.is_file()}
    assert files == {
        "plan.json",
        "plan_attempts.json",
        "manifest.json",
        "frames/0000.png",
        "frames/0001.png",
        "frames/0002.png",
        "frames/0000.json",
        "frames/0001.json",
        "frames/0002.json",
        "depth/0000.png",
        "depth/0001.png",
        "animation.gif",
        "animation.mp4",
        "animation.webp",
        "frames.zip",
        "job.json",  # how the run ended: what `generate --from-run` checks before a fork
    }
    assert "notice: offline planner" in out.stderr


@pytest.mark.parametrize("name", ["planner", "assembler"])
def test_serve_starts_where_torch_cannot_be_imported(stack, tmp_path, name):
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        textwrap.dedent("""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        sys.modules["diffusers"] = None
    """)
    )
    env = {**stack.env(), "PYTHONPATH": str(blocker)}
    proc = ServiceProcess(name, tmp_path / name, env)
    try:
        proc.start(timeout=60)
        assert wait_for_health(proc.target, 1)  # SERVING
    finally:
        proc.stop()
    check = subprocess.run(
        [sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True
    )
    assert check.returncode != 0  # the blocker really blocks
