"""services/renderer/service.py: rendering the job's next frame ahead of its work.

Once frame i is rendered, the renderer starts frame i+1 from frame i's pixels and depth map
in memory, while frame i is stored and announced; the work for frame i+1 takes it when it
arrives. These tests drive ``RendererService.handle`` with the works the conductor makes
(``render_work``) for a depth-guided, colour-matched job with camera moves, on the tiny
models, the bus and job store on the in-memory JetStream (tests/support/memory_js.py) and
files on a LocalStore: frames rendered ahead are byte for byte the frames rendered when their
work arrives, a work for anything else drops the frame rendered ahead, and a work whose spec
differs from the one rendered ahead is rendered from its own spec.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from pathlib import Path

import pytest
from support.jetstream_cases import published
from support.memory_js import memory_bus

from ghibli_anim.contracts import config, events, keys, lifecycle
from ghibli_anim.contracts.pb import animation_pb2, bus_pb2
from ghibli_anim.contracts.profiles import load_profile
from ghibli_anim.contracts.storyboard import Storyboard
from ghibli_anim.runtime.bus.consumer import Delivery
from ghibli_anim.runtime.bus.names import EVENTS_STREAM
from ghibli_anim.runtime.store.local import LocalStore
from ghibli_anim.services.planner.conductor import render_work
from ghibli_anim.services.planner.frame_specs import resolve_frames
from ghibli_anim.services.renderer.service import RendererService

JOB, OTHER = "a1" * 16, "b2" * 16
N = 4


def _settings(cache_dir: Path, ahead: bool):
    return config.load(
        "client",  # the renderer's variables without a NATS URL: the bus is in memory
        {
            "ANIM_CACHE_DIR": str(cache_dir),
            "ANIM_STORE": "local",
            "ANIM_DEVICE": "cpu",
            "ANIM_DTYPE": "float32",
            "ANIM_RENDER_AHEAD": "true" if ahead else "false",
        },
    )


async def _renderer(tmp_path: Path, cache_dir: Path, ahead: bool) -> RendererService:
    service = RendererService(_settings(cache_dir, ahead))
    store = LocalStore(tmp_path / ("ahead" if ahead else "plain"))
    await service.start(memory_bus(), store)
    return service


def _job(job_id: str, cache_dir: Path, seed: int = 7) -> animation_pb2.JobState:
    settings = _settings(cache_dir, True)
    board = Storyboard.model_validate(
        {
            "title": "t",
            "frames": [
                {"prompt": f"a lantern over the field, shot {i}", "camera": {"zoom": 1.04}}
                for i in range(N)
            ],
        }
    )
    request = animation_pb2.CreateAnimationRequest(
        idea="a lantern", frames=N, width=64, height=64, steps=8, depth=True
    )
    specs = resolve_frames(job_id, request, seed, board, load_profile("tiny", settings))
    state = animation_pb2.JobState(job_id=job_id, status=lifecycle.RENDERING, attempt=1, frames=N)
    state.frame_specs.extend(specs)
    for i in range(N):
        state.frame_states.add(index=i)
    return state


def _delivery() -> Delivery:
    return Delivery(msg=None, num_delivered=1, max_deliver=5, stream_sequence=1)


async def _render(service: RendererService, state: animation_pb2.JobState, i: int) -> None:
    await service.handle(render_work(state, i, "cause").message, _delivery())


def _outputs(service: RendererService, job_id: str) -> tuple[list[bytes], list[bytes], list]:
    frames = [service.store.get(keys.frame_key(job_id, i)) for i in range(N)]
    depth = [service.store.get(keys.depth_key(job_id, i)) for i in range(N - 1)]
    records = [json.loads(service.store.get(keys.frame_record_key(job_id, i))) for i in range(N)]
    return frames, depth, records


@pytest.fixture
async def plain(tmp_path, tiny_cache_dir):
    service = await _renderer(tmp_path, tiny_cache_dir, ahead=False)
    state = _job(JOB, tiny_cache_dir)
    await service.jobs.create(state)
    for i in range(N):
        await _render(service, state, i)
    yield _outputs(service, JOB)
    await service.close()


async def test_frames_rendered_ahead_are_the_frames_rendered_on_arrival(
    plain, tmp_path, tiny_cache_dir
) -> None:
    service = await _renderer(tmp_path, tiny_cache_dir, ahead=True)
    state = _job(JOB, tiny_cache_dir)
    await service.jobs.create(state)
    for i in range(N):
        await _render(service, state, i)
    frames, depth, records = _outputs(service, JOB)
    assert (frames, depth) == plain[:2]
    assert [r["rendered_ahead"] for r in records] == [False, True, True, True]
    assert [r["source_read"] for r in records] == [None, "memory", "memory", "memory"]
    assert not any(r["rendered_ahead"] for r in plain[2])
    # Frame 1 onwards: the same record apart from how long things took.
    timing = {"elapsed_s", "load_s", "rendered_ahead", "source_read"}
    for ahead, on_arrival in zip(records, plain[2], strict=True):
        assert {k: v for k, v in ahead.items() if k not in timing} == {
            k: v for k, v in on_arrival.items() if k not in timing
        }
    # Every frame announced once, in order, each with its progress before it.
    sent = [
        bus_pb2.Event.FromString(m.data) for m in await published(service.bus.js, EVENTS_STREAM)
    ]
    order = [(e.type, e.frame) for e in sent if e.type != events.FRAME_PROGRESS]
    assert order == [
        (kind, i) for i in range(N) for kind in (events.FRAME_STARTED, events.FRAME_RENDERED)
    ]
    for i in range(N):
        steps = [e.step for e in sent if e.type == events.FRAME_PROGRESS and e.frame == i]
        assert steps and steps == sorted(steps) and steps[-1] == records[i]["steps_effective"]
    await service.close()


async def test_a_work_for_another_job_drops_the_frame_rendered_ahead(
    plain, tmp_path, tiny_cache_dir
) -> None:
    service = await _renderer(tmp_path, tiny_cache_dir, ahead=True)
    state, other = _job(JOB, tiny_cache_dir), _job(OTHER, tiny_cache_dir, seed=8)
    await service.jobs.create(state)
    await service.jobs.create(other)
    await _render(service, state, 0)
    dropped = service._ahead
    assert dropped is not None and (dropped.job_id, dropped.frame) == (JOB, 1)
    await _render(service, other, 0)  # frame 1 of JOB is not wanted here any more
    assert dropped.steps.abandoned.is_set()  # it stops at its next denoising step
    await asyncio.wait({dropped.task}, timeout=60)
    assert dropped.task.done() and service._ahead is not dropped
    for i in range(1, N):
        await _render(service, state, i)
    frames, depth, records = _outputs(service, JOB)
    assert (frames, depth) == plain[:2]
    assert records[1]["rendered_ahead"] is False and records[1]["source_read"] == "memory"
    await service.close()


async def test_a_work_whose_spec_differs_is_rendered_from_its_own_spec(
    plain, tmp_path, tiny_cache_dir
) -> None:
    service = await _renderer(tmp_path, tiny_cache_dir, ahead=True)
    state = _job(JOB, tiny_cache_dir)
    await service.jobs.create(state)
    await _render(service, state, 0)
    changed = animation_pb2.JobState()
    changed.CopyFrom(state)
    changed.frame_specs[1].seed += 1  # e.g. a resumed job whose plan was edited
    await _render(service, changed, 1)
    record = json.loads(service.store.get(keys.frame_record_key(JOB, 1)))
    assert record["rendered_ahead"] is False and record["seed"] == state.frame_specs[1].seed + 1
    assert service.store.get(keys.frame_key(JOB, 1)) != plain[0][1]
    await service.close()


class _Gates:
    """The renderer's ``_render`` held at a gate for each frame in ``held``, until released;
    notes when each frame's render starts, and at what depth of its thread's stack."""

    def __init__(self, service: RendererService, held: range) -> None:
        self.gates = {i: threading.Event() for i in held}
        self.started = {i: threading.Event() for i in range(N)}
        self.depth: dict[int, int] = {}
        render = service._render

        def gated(spec, *args, **kwargs):
            self.depth[spec.index] = _stack_depth()
            self.started[spec.index].set()
            if spec.index in self.gates:
                self.gates[spec.index].wait(60)
            return render(spec, *args, **kwargs)

        service._render = gated

    def release_all(self) -> None:
        for gate in self.gates.values():
            gate.set()


async def _queued_behind(service: RendererService, frame: int) -> None:
    for _ in range(600):
        if service._ahead is not None and service._ahead.frame == frame:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"frame {frame} was not queued to render ahead")


def _stack_depth() -> int:
    depth, frame = 0, sys._getframe()
    while frame is not None:
        depth, frame = depth + 1, frame.f_back
    return depth


async def test_the_next_frame_follows_a_frame_ahead_without_the_event_loop(
    plain, tmp_path, tiny_cache_dir
) -> None:
    # Frame 1's work arrives while frame 1 is still rendering ahead: frame 2 must start in
    # the thread that finishes frame 1, even while the event loop is busy elsewhere.
    service = await _renderer(tmp_path, tiny_cache_dir, ahead=True)
    state = _job(JOB, tiny_cache_dir)
    await service.jobs.create(state)
    gates = _Gates(service, held=range(1, 2))
    try:
        await _render(service, state, 0)  # frame 1 starts ahead and waits at the gate
        assert gates.started[1].wait(30)
        second = asyncio.ensure_future(_render(service, state, 1))
        await _queued_behind(service, 2)  # frame 1's work has queued frame 2 behind it
        assert not gates.started[2].is_set()
        gates.release_all()
        # The event loop stays blocked here: only the torch thread can start frame 2 now.
        assert gates.started[2].wait(20), "frame 2 waited for the event loop"
        await second
    finally:
        gates.release_all()
    for i in range(2, N):
        await _render(service, state, i)
    frames, depth, records = _outputs(service, JOB)
    assert (frames, depth) == plain[:2]
    assert [r["rendered_ahead"] for r in records] == [False, True, True, True]
    await service.close()


async def test_a_chain_of_frames_ahead_runs_in_a_loop_not_ever_deeper(
    plain, tmp_path, tiny_cache_dir
) -> None:
    # Every work arrives while its frame is still rendering ahead, so each frame is started
    # by the thread that finishes the one before: at the same depth of that thread's stack
    # (a recursion would hold every frame it rendered, and end in RecursionError).
    service = await _renderer(tmp_path, tiny_cache_dir, ahead=True)
    state = _job(JOB, tiny_cache_dir)
    await service.jobs.create(state)
    gates = _Gates(service, held=range(1, N))
    try:
        await _render(service, state, 0)  # frame 1 starts ahead and waits at its gate
        for i in range(1, N):
            assert await asyncio.to_thread(gates.started[i].wait, 30)
            handler = asyncio.ensure_future(_render(service, state, i))
            if i + 1 < N:
                await _queued_behind(service, i + 1)
            gates.gates[i].set()
            await handler
    finally:
        gates.release_all()
    frames, depth_maps, records = _outputs(service, JOB)
    assert (frames, depth_maps) == plain[:2]
    assert [r["rendered_ahead"] for r in records] == [False, True, True, True]
    assert gates.depth[1] == gates.depth[2] == gates.depth[3], gates.depth
    await service.close()
