"""Operating the chain: watch and resume a stream, cancel, list, submit --wait,
SIGTERM drain and honest health."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import grpc
import pytest

from ghibli_anim.cli import main as cli
from ghibli_anim.contracts import keys
from ghibli_anim.contracts.pb import animation_pb2, bus_pb2, types_pb2
from ghibli_anim.devtools.stack import LocalStack, ServiceProcess, wait_for_health
from ghibli_anim.runtime.bus.connection import connect
from ghibli_anim.runtime.bus.watch import read_job_events
from ghibli_anim.runtime.client import AnimationClient, DownloadError, download_files

pytestmark = pytest.mark.timeout(300)

SERVING = 1
NOT_SERVING = 2


def request(**fields) -> animation_pb2.CreateAnimationRequest:
    base = {"idea": "a paper boat drifts down a rainy street", "frames": 3, "seed": 11}
    base.update(fields)
    return animation_pb2.CreateAnimationRequest(**base)


def test_watch_resumes_after_a_sequence(stack):
    async def main():
        async with AnimationClient(stack.planner_target) as client:
            job = await client.create(request())
            everything = [e async for e in client.watch(job.job_id)]
            middle = everything[3].sequence
            rest = [e async for e in client.watch(job.job_id, after_sequence=middle)]
            past_end = [e async for e in client.watch(job.job_id, after_sequence=10**9)]
            return everything, rest, past_end

    everything, rest, past_end = asyncio.run(main())
    assert everything[-1].type == bus_pb2.EVENT_TYPE_JOB_COMPLETED
    assert [e.event_id for e in rest] == [e.event_id for e in everything[4:]]
    assert past_end == []  # a finished job past its last event ends at once


def test_cancel_and_list(stack):
    async def main():
        async with AnimationClient(stack.planner_target) as client:
            job = await client.create(request(frames=60, idea="a long walk through a forest"))
            async for event in client.watch(job.job_id):
                if event.type == bus_pb2.EVENT_TYPE_FRAME_RENDERED:
                    break
            cancelled = await client.cancel(job.job_id)
            tail = [e async for e in client.watch(job.job_id)]
            final = await client.get(job.job_id)
            again = await client.cancel(job.job_id)  # cancelling twice is harmless
            done = await client.create(request(frames=1))
            [e async for e in client.watch(done.job_id)]
            with pytest.raises(grpc.aio.AioRpcError) as too_late:
                await client.cancel(done.job_id)
            listed = await client.list(page_size=2)
            return cancelled, tail, final, again, too_late.value, listed, job.job_id, done.job_id

    cancelled, tail, final, again, too_late, listed, job_id, done_id = asyncio.run(main())
    assert cancelled.status == types_pb2.JOB_STATUS_CANCELLED
    kinds = [e.type for e in tail]
    assert bus_pb2.EVENT_TYPE_JOB_CANCELLED in kinds
    # A renderer that checked the job just before the cancel may still start one frame.
    after = kinds[kinds.index(bus_pb2.EVENT_TYPE_JOB_CANCELLED) :]
    assert after.count(bus_pb2.EVENT_TYPE_FRAME_STARTED) <= 1
    assert final.status == types_pb2.JOB_STATUS_CANCELLED and final.frames_done < 60
    assert again.status == types_pb2.JOB_STATUS_CANCELLED
    assert too_late.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "COMPLETED" in too_late.details()
    assert job_id in {a.job_id for a in listed}  # pages of 2 walked to the end
    assert len({a.job_id for a in listed}) == len(listed)  # each job once
    assert [a.job_id for a in listed][:2] == [done_id, job_id]  # newest first


def test_cli_list_is_newest_first_by_client_and_status(stack, capsys):
    async def main():
        async with AnimationClient(stack.planner_target) as client:
            made = []
            for client_id in ("lister", "lister", "someone-else"):
                job = await client.create(request(frames=60, client_id=client_id))
                await client.cancel(job.job_id)
                made.append(job.job_id)
            return made

    first, second, other = asyncio.run(main())

    def listed(*flags: str) -> list[str]:
        capsys.readouterr()
        assert cli.main(["list", "--server", stack.planner_target, *flags]) == 0
        return [line.split()[0] for line in capsys.readouterr().out.splitlines()]

    assert listed("--client", "lister") == [second, first]
    assert listed("--limit", "1") == [other]
    assert listed("--client", "lister", "--status", "cancelled", "--limit", "5") == [
        second,
        first,
    ]
    assert listed("--client", "lister", "--status", "COMPLETED") == []
    with pytest.raises(SystemExit) as refused:
        cli.main(["list", "--server", stack.planner_target, "--limit", "0"])
    assert refused.value.code == 2
    assert "--limit: must be an integer of at least 1, got '0'" in capsys.readouterr().err


def test_resume_continues_a_cancelled_job_from_the_first_missing_frame(stack):
    async def main():
        async with AnimationClient(stack.planner_target) as client:
            job = await client.create(request(frames=8, depth=True, idea="a kite over hills"))
            async for event in client.watch(job.job_id):
                if event.type == bus_pb2.EVENT_TYPE_FRAME_RENDERED and event.frame == 1:
                    break
            await client.cancel(job.job_id)
            [e async for e in client.watch(job.job_id)]
            resumed = await client.resume(job.job_id)
            events = [e async for e in client.watch(job.job_id)]
            with pytest.raises(grpc.aio.AioRpcError) as done_already:
                await client.resume(job.job_id)
            return job.job_id, resumed, events, await client.get(job.job_id), done_already.value

    job_id, resumed, events, final, done_already = asyncio.run(main())
    assert resumed.attempt == 2
    assert final.status == types_pb2.JOB_STATUS_COMPLETED, final.error
    assert final.frames_done == 8
    assert events[-1].type == bus_pb2.EVENT_TYPE_JOB_COMPLETED and events[-1].attempt == 2
    assert done_already.code() == grpc.StatusCode.FAILED_PRECONDITION
    from ghibli_anim.contracts import config
    from ghibli_anim.runtime.store.s3 import S3Store

    store = S3Store.from_settings(config.load("client", stack.env()))
    records = [json.loads(store.get(keys.frame_record_key(job_id, i))) for i in range(8)]
    # Frames 0 and 1 were done before the cancel and were not rendered again.
    assert records[0]["attempt"] == records[1]["attempt"] == 1
    assert records[-1]["attempt"] == 2


def test_delete_removes_everything_of_a_job_and_nothing_else(stack):
    from ghibli_anim.contracts import config
    from ghibli_anim.runtime.store.s3 import S3Store

    store = S3Store.from_settings(config.load("client", stack.env()))

    async def main():
        async with AnimationClient(stack.planner_target) as client:
            keep = await client.create(request(frames=1, idea="a snail on a leaf"))
            gone = await client.create(request(frames=2, idea="a heron in the reeds"))
            for job in (keep, gone):
                [e async for e in client.watch(job.job_id)]
            before = len(store.list(keys.job_prefix(keep.job_id)))
            deleted = await client.delete(gone.job_id)
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await client.get(gone.job_id)
            running = await client.create(request(frames=40, idea="a slow sunrise"))
            with pytest.raises(grpc.aio.AioRpcError) as busy:
                await client.delete(running.job_id)
            await client.cancel(running.job_id)
            conn = await connect(config.load("client", stack.env()), "test")
            try:
                gone_events = await read_job_events(conn.js, gone.job_id)
                kept_events = await read_job_events(conn.js, keep.job_id)
            finally:
                await conn.close()
            return keep, gone, before, deleted, missing.value, busy.value, gone_events, kept_events

    keep, gone, before, deleted, missing, busy, gone_events, kept_events = asyncio.run(main())
    assert deleted.objects_deleted >= 8
    assert store.list(keys.job_prefix(gone.job_id)) == []
    assert len(store.list(keys.job_prefix(keep.job_id))) == before
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    assert busy.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert gone_events == [] and kept_events


def test_submit_wait_downloads_the_job_tree_and_checks_sha256(stack, tmp_path):
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANIM_")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ghibli_anim.cli",
            "submit",
            "a fox in the snow",
            "--frames",
            "2",
            "--seed",
            "5",
            "--server",
            stack.planner_target,
            "--wait",
            "--out",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert files == {
        "plan.json",
        "plan_attempts.json",
        "manifest.json",
        "frames/0000.png",
        "frames/0001.png",
        "frames/0000.json",
        "frames/0001.json",
        "animation.gif",
        "animation.mp4",
        "animation.webp",
        "contact_sheet.png",
    }
    job_id = result.stderr.split("job ", 1)[1].split()[0]
    from ghibli_anim.contracts import config
    from ghibli_anim.runtime.store.s3 import S3Store

    store = S3Store.from_settings(config.load("client", stack.env()))
    for name in files:
        assert (out / name).read_bytes() == store.get(keys.job_prefix(job_id) + name)
    assert str(out / "animation.gif") in result.stdout


def test_a_download_with_a_wrong_sha256_leaves_nothing(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"frame bytes")
    job = "c" * 32
    good = hashlib.sha256(b"frame bytes").hexdigest()
    file = animation_pb2.Animation().outputs.add(
        name="animation.gif", key=f"jobs/{job}/animation.gif", url=src.as_uri(), sha256="0" * 64
    )
    with pytest.raises(DownloadError, match="sha256"):
        download_files([file], job, tmp_path / "out")
    assert not any((tmp_path / "out").rglob("*.gif*"))
    file.sha256 = good
    (written,) = download_files([file], job, tmp_path / "out")
    assert written.read_bytes() == b"frame bytes"


def test_sigterm_stops_a_service_gracefully(stack, tmp_path):
    proc = ServiceProcess("renderer", tmp_path / "renderer", stack.env())
    proc.start(timeout=60)
    assert wait_for_health(proc.target, SERVING)
    os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while proc.returncode is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.returncode == 0, proc.log_path.read_text()[-3000:]
    log = proc.log_path.read_text()
    assert "shutting down" in log and "service stopped" in log


def test_health_follows_the_dependencies(tiny_cache_dir, tmp_path):
    """Planner health is SERVING only while NATS answers."""
    env = {"ANIM_CACHE_DIR": str(tiny_cache_dir), "ANIM_PROFILE": "tiny"}
    with LocalStack(tmp_path, services=("planner",), env=env) as s:
        target = s.planner_target
        assert wait_for_health(target, SERVING), s.logs()
        s.nats.kill()
        assert wait_for_health(target, NOT_SERVING), s.logs()
        s.nats.start()
        assert wait_for_health(target, SERVING), s.logs()
