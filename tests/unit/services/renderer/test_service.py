"""services/renderer/service.py: a frame that comes out NaN in float16 and is re-rendered in
float32 reaches the user as its frame.rendered event's reason (the channel the planner's
notices use) and its stored record says so; a frame still NaN in float32 fails at once, with
the reason and without a retry.

The bus and the job store run on the in-memory JetStream (tests/support/memory_js.py, whose
contract with nats-server tests/support/jetstream_cases.py checks), the files on a LocalStore.
The models are the tiny ones in real float16 on the CPU; float16 overflow is made as in
test_diffusion.py (a first VAE convolution whose sums pass float16's range).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from support.frames import ddim_spec
from support.jetstream_cases import published
from support.memory_js import memory_bus

from ghibli_anim.contracts import config, events, keys, lifecycle
from ghibli_anim.contracts.pb import animation_pb2, bus_pb2
from ghibli_anim.runtime.bus.consumer import Delivery, NonRetryable
from ghibli_anim.runtime.bus.names import EVENTS_STREAM
from ghibli_anim.runtime.store.local import LocalStore
from ghibli_anim.services.renderer.service import RendererService

JOB = "ab" * 16


@pytest.fixture
async def renderer(tmp_path: Path, tiny_cache_dir: Path) -> RendererService:
    settings = config.load(
        "client",  # the renderer's variables without a NATS URL: the bus is in memory
        {
            "ANIM_CACHE_DIR": str(tiny_cache_dir),
            "ANIM_STORE": "local",
            "ANIM_DEVICE": "cpu",
            "ANIM_DTYPE": "float16",
        },
    )
    service = RendererService(settings)
    await service.start(memory_bus(), LocalStore(tmp_path))
    return service


async def _rendering(service: RendererService, profile) -> bus_pb2.RenderWork:
    state = animation_pb2.JobState(job_id=JOB, status=lifecycle.RENDERING, attempt=1, frames=1)
    spec = state.frame_specs.add()
    spec.CopyFrom(ddim_spec(profile))
    state.frame_states.add(index=0)
    await service.jobs.create(state)
    return bus_pb2.RenderWork(job_id=JOB, frame=0, attempt=1, causation_id="cause", spec=spec)


def _vae(service: RendererService, profile):
    return service.cache.pipeline(profile, "txt2img", "DDIM")[1].base.vae


def _delivery() -> Delivery:
    return Delivery(msg=None, num_delivered=1, max_deliver=5, stream_sequence=1)


async def test_a_float32_rerender_is_announced_and_recorded(renderer, profile) -> None:
    work = await _rendering(renderer, profile)
    conv = _vae(renderer, profile).decoder.conv_in
    with torch.no_grad():
        scale = 6e4 / conv.weight.abs().max().item()
        conv.weight.copy_((conv.weight.float() * scale).half())
    await renderer.handle(work, _delivery())
    messages = await published(renderer.bus.js, EVENTS_STREAM)
    sent = [bus_pb2.Event.FromString(m.data) for m in messages]
    [rendered] = [e for e in sent if e.type == events.FRAME_RENDERED]
    assert rendered.reason == (
        "frame 0: the rendered image has NaN or inf pixels in float16, so its VAE decode was "
        "re-rendered in float32; set ANIM_DTYPE=float32 if this keeps happening"
    )
    record = json.loads(renderer.store.get(keys.frame_record_key(JOB, 0)))
    assert record["dtype"] == "float16"
    assert record["float32_retry"]["part"] == "vae"
    assert record["float32_retry"]["reason"] == "nan"


async def test_a_normal_frame_is_announced_without_a_reason(renderer, profile) -> None:
    await renderer.handle(await _rendering(renderer, profile), _delivery())
    sent = [
        bus_pb2.Event.FromString(m.data) for m in await published(renderer.bus.js, EVENTS_STREAM)
    ]
    [rendered] = [e for e in sent if e.type == events.FRAME_RENDERED]
    assert rendered.reason == ""
    record = json.loads(renderer.store.get(keys.frame_record_key(JOB, 0)))
    assert record["float32_retry"] is None


async def test_still_nan_in_float32_is_not_retried(renderer, profile) -> None:
    work = await _rendering(renderer, profile)
    with torch.no_grad():
        _vae(renderer, profile).decoder.conv_in.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonRetryable) as failed:
        await renderer.handle(work, _delivery())
    assert failed.value.reason == (
        "frame 0: the rendered image has NaN or inf pixels in float16, and still has NaN or "
        "inf pixels after re-rendering its VAE decode in float32; the base model, VAE or a "
        "LoRA of profile 'tiny' produces it"
    )
    assert renderer.store.stat(keys.frame_key(JOB, 0)) is None
