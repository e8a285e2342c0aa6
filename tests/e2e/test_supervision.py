"""A LocalStack that restarts what crashes (``restart_crashed``, what up-local runs), as
compose's ``restart: unless-stopped`` does: a process SIGKILLed from outside comes back on
the same port and a job still finishes; without supervision nothing comes back; a process
that was asked to stop stays stopped; and stop() leaves nothing running."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time

import pytest
from support.processes import alive, descendants, wait_until_gone

from ghibli_anim.contracts import config, keys
from ghibli_anim.contracts.pb import animation_pb2, bus_pb2, types_pb2
from ghibli_anim.devtools.stack import LocalStack
from ghibli_anim.runtime.client import AnimationClient
from ghibli_anim.runtime.store.s3 import S3Store

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(sys.platform != "linux", reason="reads /proc"),
]


def chaos_env(cache_dir) -> dict[str, str]:
    return {
        "ANIM_CACHE_DIR": str(cache_dir),
        "ANIM_PROFILE": "tiny",
        "ANIM_ACK_WAIT_S": "2",
        "ANIM_DRAIN_S": "5",
        "OMP_NUM_THREADS": "1",
    }


def crash(pid: int | None) -> None:
    """SIGKILL from outside, as the kernel's OOM killer would: the stack was not told."""
    assert pid is not None, "not running"
    os.kill(pid, signal.SIGKILL)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {what}"
        time.sleep(0.1)


def test_a_crashed_service_and_nats_come_back_and_the_job_finishes(tmp_path, tiny_cache_dir):
    stack = LocalStack(
        tmp_path,
        services=("planner", "renderer", "assembler"),
        env=chaos_env(tiny_cache_dir),
        restart_crashed=True,
    )
    try:
        stack.start()
        renderer = stack.service("renderer")
        port, first_pid = renderer.port, renderer.pid

        async def main():
            async with AnimationClient(stack.planner_target, timeout_s=60) as client:
                req = animation_pb2.CreateAnimationRequest(
                    idea="a lantern festival by the river", frames=6, seed=5, profile="tiny"
                )
                job = await client.create(req)
                async for event in client.watch(job.job_id):
                    if event.type == bus_pb2.EVENT_TYPE_FRAME_RENDERED and event.frame == 1:
                        break
                # The only renderer and then NATS crash mid-job: nobody else can finish it.
                crash(renderer.pid)
                # NATS too, while the renderer is starting again (it waits for NATS to be
                # ready): each comes back on its own.
                await asyncio.to_thread(
                    wait_for, lambda: renderer.pid not in (None, first_pid), 60, "renderer starting"
                )
                crash(stack.nats.pid)
                events = [e async for e in client.watch(job.job_id)]
                return job.job_id, events, await client.get(job.job_id)

        job_id, events, anim = asyncio.run(main())
        assert anim.status == types_pb2.JOB_STATUS_COMPLETED, (anim.error, stack.logs())
        rendered = {e.frame for e in events if e.type == bus_pb2.EVENT_TYPE_FRAME_RENDERED}
        assert rendered == set(range(6))
        store = S3Store.from_settings(config.load("client", stack.env()))
        pngs = [k for k in store.list(keys.job_prefix(job_id)) if k.endswith(".png")]
        assert len([k for k in pngs if "/frames/" in k]) == 6
        assert renderer.port == port and renderer.pid != first_pid
        assert stack.supervisor is not None
        assert stack.supervisor.restarts["renderer-0"] == 1
        assert stack.supervisor.restarts["nats-server"] == 1
        assert renderer.log_path.read_text().count(" start: ") == 2
    except BaseException:
        print(stack.logs())
        raise
    finally:
        stack.stop()


def test_supervision_logs_each_crash_and_start_again(tmp_path, tiny_cache_dir, caplog):
    stack = LocalStack(
        tmp_path, services=("assembler",), env=chaos_env(tiny_cache_dir), restart_crashed=True
    )
    caplog.set_level(logging.WARNING, logger="ghibli_anim.devtools.stack")
    with stack:
        assembler = stack.service("assembler")
        crash(assembler.pid)
        wait_for(lambda: stack.supervisor.restarts["assembler-0"] == 1, 60, "assembler back")
    lines = [r.getMessage() for r in caplog.records]
    assert any(
        line.startswith("assembler-0 exited with code -9 without being asked to stop")
        for line in lines
    ), lines
    assert any(line.startswith("assembler-0 started again (pid ") for line in lines), lines


def test_without_supervision_nothing_comes_back(tmp_path, tiny_cache_dir):
    with LocalStack(tmp_path, services=("assembler",), env=chaos_env(tiny_cache_dir)) as stack:
        assembler = stack.service("assembler")
        crash(assembler.pid)
        crash(stack.nats.pid)
        # Longer than a supervisor's first delay and its look at the processes.
        time.sleep(3.0)
        assert not assembler.running and not stack.nats.running
        assert stack.supervisor is None
        assert assembler.log_path.read_text().count(" start: ") == 1


def test_a_stopped_service_stays_stopped_and_stop_leaves_nothing(tmp_path, tiny_cache_dir):
    before = descendants(os.getpid())
    stack = LocalStack(
        tmp_path,
        services=("planner", "assembler"),
        env=chaos_env(tiny_cache_dir),
        restart_crashed=True,
    )
    with stack:
        started = descendants(os.getpid()) - before
        assert len(started) >= 4, started  # nats-server, SeaweedFS, planner, assembler
        assembler = stack.service("assembler")
        assembler.stop()  # asked to: not a crash
        time.sleep(3.0)
        assert not assembler.running
        # A crash right before the stack stops: whatever the supervisor does with it,
        # stop() must end it all.
        crash(stack.service("planner").pid)
    assert wait_until_gone(started, timeout=10) == set()
    assert alive(descendants(os.getpid()) - before) == set()
    assert stack.supervisor is not None and stack.supervisor.restarts["assembler-0"] == 0
