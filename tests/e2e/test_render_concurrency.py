"""One renderer holding two works at once (``ANIM_RENDER_CONCURRENCY=2``): jobs interleave
on it, and each still gets every frame exactly once, with the bytes it gets alone.

Embedded mode (the real services in this process, a real nats-server, files in a
LocalStore), profile ``tiny``: depth on, colour coherence ``lab``, the storyboard's camera
moves, so every frame depends on the one before it through the frame, its depth map and the
colour reference. Phase one runs two jobs one after the other; phase two runs the same two
requests at once. Read-ahead (``ANIM_RENDER_AHEAD``) is on, as by default.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from ghibli_anim.contracts import keys
from ghibli_anim.contracts.pb import animation_pb2, bus_pb2, types_pb2
from ghibli_anim.embedded import EmbeddedStack
from ghibli_anim.runtime.client import AnimationClient
from ghibli_anim.runtime.store.local import LocalStore

pytestmark = pytest.mark.timeout(600)

E = bus_pb2
N = 5


def _request(seed: int) -> animation_pb2.CreateAnimationRequest:
    return animation_pb2.CreateAnimationRequest(
        idea="a paper boat drifts down a canal",
        frames=N,
        seed=seed,
        depth=True,
        steps=12,
        formats=["gif"],
    )


async def _run(client: AnimationClient, req) -> tuple[str, list[bus_pb2.Event]]:
    job = (await client.create(req)).job_id
    events = [e async for e in client.watch(job)]
    anim = await client.get(job)
    assert anim.status == types_pb2.JOB_STATUS_COMPLETED, anim.error
    return job, events


def _frames(store: LocalStore, job: str) -> list[bytes]:
    return [store.get(keys.frame_key(job, i)) for i in range(N)] + [
        store.get(keys.depth_key(job, i)) for i in range(N - 1)
    ]


def test_two_jobs_interleave_on_one_renderer_and_keep_their_bytes(tiny_cache_dir, tmp_path):
    env = {
        "ANIM_CACHE_DIR": str(tiny_cache_dir),
        "ANIM_PROFILE": "tiny",
        "ANIM_DEVICE": "cpu",
        "ANIM_DTYPE": "float32",
        "ANIM_RUNS_DIR": str(tmp_path / "runs"),
        "ANIM_RENDER_CONCURRENCY": "2",
    }

    async def main():
        async with EmbeddedStack(env=env, work_dir=tmp_path / "stack") as stack:
            async with AnimationClient(stack.planner_target, timeout_s=60) as client:
                alone = [await _run(client, _request(seed)) for seed in (11, 12)]
                together = await asyncio.gather(*(_run(client, _request(s)) for s in (11, 12)))
            return alone, together

    alone, together = asyncio.run(main())
    store = LocalStore(tmp_path / "runs")
    for (job_alone, _), (job_together, _) in zip(alone, together, strict=True):
        assert _frames(store, job_together) == _frames(store, job_alone)
    # Every frame of every job started and was rendered exactly once.
    for _, events in together:
        for kind in (E.EVENT_TYPE_FRAME_STARTED, E.EVENT_TYPE_FRAME_RENDERED):
            assert Counter(e.frame for e in events if e.type == kind) == dict.fromkeys(range(N), 1)
    # They did interleave: some frame of one job started while a frame of the other was
    # between its start and its end (two works in the renderer's hands at once).
    spans = {
        job: {
            e.frame: [
                x.time.ToNanoseconds()
                for x in events
                if x.frame == e.frame
                and x.type in (E.EVENT_TYPE_FRAME_STARTED, E.EVENT_TYPE_FRAME_RENDERED)
            ]
            for e in events
            if e.type == E.EVENT_TYPE_FRAME_STARTED
        }
        for job, events in together
    }
    frames_a, frames_b = spans.values()
    assert any(
        start < other[0] < end for start, end in frames_a.values() for other in frames_b.values()
    ) or any(
        start < other[0] < end for start, end in frames_b.values() for other in frames_a.values()
    )
