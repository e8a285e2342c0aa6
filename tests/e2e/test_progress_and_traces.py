"""Watching a job happen: frame.progress events, one trace per job, and the metrics of
the embedded mode, all from one job (depth on) through the real services in-process.

Spans are collected by an in-memory exporter on the process's tracer provider,
installed before the services start (they use whatever provider the process has).
Profile ``tiny``: frames are noise; these tests check plumbing and order only.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from prometheus_client.parser import text_string_to_metric_families
from support.spans import capture_spans

from ghibli_anim.contracts.pb import animation_pb2, bus_pb2, types_pb2
from ghibli_anim.embedded import EmbeddedStack
from ghibli_anim.runtime import metrics
from ghibli_anim.runtime.client import AnimationClient
from ghibli_anim.services.renderer.progress import PROGRESS_INTERVAL_S

pytestmark = pytest.mark.timeout(300)

E = bus_pb2
FRAMES = 3
ELAPSED = re.compile(r"^elapsed (\d+\.\d{3}) s$")


@dataclass
class Run:
    job_id: str
    events: list[bus_pb2.Event]
    animation: animation_pb2.Animation
    records: list[dict]
    spans: list[ReadableSpan]
    client_span: ReadableSpan
    metrics_text: str


@pytest.fixture(scope="module")
def exporter():
    with capture_spans() as exporter:
        yield exporter


@pytest.fixture(scope="module")
def run(exporter, tiny_cache_dir, tmp_path_factory) -> Run:
    tmp = tmp_path_factory.mktemp("progress")
    env = {
        "ANIM_CACHE_DIR": str(tiny_cache_dir),
        "ANIM_PROFILE": "tiny",
        "ANIM_DEVICE": "cpu",
        "ANIM_DTYPE": "float32",
        "ANIM_RUNS_DIR": str(tmp / "runs"),
        "ANIM_METRICS_PORT": "0",  # a free port, picked as it binds
    }
    # 40 steps: frame 0 (text to image) runs all of them, long enough on most
    # machines for several throttled progress events; later frames run 6 (img2img).
    request = animation_pb2.CreateAnimationRequest(
        idea="a paper lantern floats over a night market",
        frames=FRAMES,
        seed=21,
        steps=40,
        depth=True,
    )
    client_tracer = trace.get_tracer("test-client")

    async def main():
        async with EmbeddedStack(env=env, work_dir=tmp / "stack") as stack:
            async with AnimationClient(stack.planner_target, timeout_s=60) as client:
                # The client's span goes to the planner in the call's gRPC metadata.
                with client_tracer.start_as_current_span("client submit") as span:
                    job_id = (await client.create(request)).job_id
                events = [e async for e in client.watch(job_id)]
                animation = await client.get(job_id)
            url = f"http://127.0.0.1:{stack.metrics_port}/metrics"
            text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read())
        # The stack is down: every span has ended.
        return job_id, events, animation, span, text.decode()

    job_id, events, animation, span, text = asyncio.run(main())
    assert animation.status == types_pb2.JOB_STATUS_COMPLETED, animation.error
    frames_dir = Path(tmp / "runs" / job_id / "frames")
    records = [json.loads((frames_dir / f"{i:04d}.json").read_text()) for i in range(FRAMES)]
    spans = list(exporter.get_finished_spans())
    client_span = next(s for s in spans if s.context.span_id == span.get_span_context().span_id)
    return Run(job_id, events, animation, records, spans, client_span, text)


def test_progress_events_arrive_in_order_and_end_at_the_steps_that_ran(run: Run):
    events = run.events
    for i in range(FRAMES):
        started = next(
            n for n, e in enumerate(events) if e.type == E.EVENT_TYPE_FRAME_STARTED and e.frame == i
        )
        rendered = next(
            n
            for n, e in enumerate(events)
            if e.type == E.EVENT_TYPE_FRAME_RENDERED and e.frame == i
        )
        progress = [
            (n, e)
            for n, e in enumerate(events)
            if e.type == E.EVENT_TYPE_FRAME_PROGRESS and e.frame == i
        ]
        assert progress, f"frame {i}: no frame.progress event"
        assert all(started < n < rendered for n, _ in progress), f"frame {i}: out of place"
        steps = [e.step for _, e in progress]
        assert steps == sorted(set(steps)), f"frame {i}: steps not increasing: {steps}"
        effective = run.records[i]["steps_effective"]
        assert effective > 0
        assert {e.steps for _, e in progress} == {effective}
        assert steps[-1] == effective, f"frame {i}: progress ends at {steps[-1]} of {effective}"
        elapsed = [float(ELAPSED.match(e.reason).group(1)) for _, e in progress]
        assert elapsed == sorted(elapsed)
        # Throttled: every event but a frame's last comes at least an interval after
        # the one before it (and after the frame started).
        intermediate = [0.0, *elapsed[:-1]]
        assert all(
            b - a >= PROGRESS_INTERVAL_S - 0.002 for a, b in itertools.pairwise(intermediate)
        )
        assert all(
            e.service == "renderer" and e.attempt == events[started].attempt for _, e in progress
        )
    # Frame 0 runs all its steps (text to image); later frames a fraction (img2img).
    assert run.records[0]["steps_effective"] > run.records[1]["steps_effective"]


def test_one_trace_per_job_across_the_four_services(run: Run):
    job_spans = [s for s in run.spans if s.attributes.get("anim.job_id") == run.job_id]
    trace_ids = {s.context.trace_id for s in job_spans}
    assert len(trace_ids) == 1, "a job's spans are in several traces"
    (trace_id,) = trace_ids
    # The client's span started the trace: the gRPC metadata carried it.
    assert run.client_span.context.trace_id == trace_id and run.client_span.parent is None
    in_trace = [s for s in run.spans if s.context.trace_id == trace_id]
    by_id = {s.context.span_id: s for s in in_trace}
    # One tree: every span but the client's hangs under another span of the trace,
    # which is what the context in NATS headers and gRPC metadata gives.
    for s in in_trace:
        if s is not run.client_span:
            assert s.parent is not None and s.parent.span_id in by_id, s.name
    services = {s.attributes.get("anim.service") for s in in_trace}
    # The depth maps are the renderer's (made with each frame): three services take part.
    assert {"planner", "renderer", "assembler"} <= services

    def named(name: str) -> list[ReadableSpan]:
        return [s for s in in_trace if s.name == name]

    # The gRPC call: a client span under the caller's, the planner's server span under it.
    create_spans = named("/animation.v1.AnimationService/CreateAnimation")
    (call,) = [s for s in create_spans if s.kind == trace.SpanKind.CLIENT]
    (create,) = [s for s in create_spans if s.kind == trace.SpanKind.SERVER]
    assert call.parent.span_id == run.client_span.context.span_id
    assert create.parent.span_id == call.context.span_id
    (job,) = named("job")
    assert job.parent.span_id == create.context.span_id
    assert sorted(s.attributes["anim.frame"] for s in named("render")) == list(range(FRAMES))
    assert not named("depth")
    assert len(named("assemble")) == 1 and len(named("plan")) == 1
    assert {s.attributes["anim.service"] for s in named("render")} == {"renderer"}
    # Frame i+1's render descends from frame i's (the chain of the design).
    renders = sorted(named("render"), key=lambda s: s.attributes["anim.frame"])

    def ancestors(s: ReadableSpan) -> set[int]:
        out = set()
        while s.parent is not None and s.parent.span_id in by_id:
            s = by_id[s.parent.span_id]
            out.add(s.context.span_id)
        return out

    for before, after in itertools.pairwise(renders):
        assert before.context.span_id in ancestors(after)
    # Each frame's stages hang under its render span, or, for a frame rendered ahead of its
    # work, under the render.ahead span made for it (under the previous frame's render);
    # their times are on the render span. Frames but the last make the next one's depth map.
    aheads = {s.attributes["anim.frame"]: s for s in named("render.ahead")}
    assert set(aheads) <= set(range(1, FRAMES))
    for render in renders:
        i = render.attributes["anim.frame"]
        parents = {render.context.span_id}
        if i in aheads:
            parents.add(aheads[i].context.span_id)
            assert aheads[i].parent.span_id == renders[i - 1].context.span_id
        stages = {s.name for s in in_trace if s.parent and s.parent.span_id in parents}
        assert {"frame.decode", "frame.color", "frame.encode", "frame.store"} <= stages, i
        assert ("frame.depth" in stages) == (i < FRAMES - 1), i
        assert render.attributes["anim.frame.denoise_s"] > 0
    assert not [s.name for s in named("conductor frame.progress")]  # progress adds no spans


def test_the_embedded_metrics_endpoint_shows_every_service(run: Run):
    families = {f.name: f for f in text_string_to_metric_families(run.metrics_text)}

    def value(family: str, sample: str, **labels: str) -> float:
        return sum(
            s.value
            for s in families[family].samples
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
        )

    # One process runs the four services: one endpoint shows all their consumers.
    for consumer in ("plan", "render", "assemble", "conductor"):
        assert (
            value(
                "anim_messages_handled",
                "anim_messages_handled_total",
                consumer=consumer,
                outcome="ok",
            )
            >= 1
        )
    assert value("anim_frames_rendered", "anim_frames_rendered_total") >= FRAMES
    for stage in metrics.STAGES:
        assert (
            value("anim_frame_stage_seconds", "anim_frame_stage_seconds_count", stage=stage)
            >= FRAMES
        )
    assert value("anim_denoise_steps", "anim_denoise_steps_total") >= sum(
        r["steps_effective"] for r in run.records
    )
    assert value("anim_job_seconds", "anim_job_seconds_count") >= 1
