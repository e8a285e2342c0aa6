"""Metrics and traces without a bus: the metrics endpoint, scrape-time gauges, the GPU
collector, stage timing, trace context in headers and metadata, OTLP export, the
configuration, and the Grafana dashboard against the metrics the code defines."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from span_capture import capture_spans

from ghibli_anim.contracts import config
from ghibli_anim.contracts.pb import animation_pb2, animation_pb2_grpc, bus_pb2
from ghibli_anim.runtime import metrics, tracing

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy/grafana/ghibli-anim-dashboard.json"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# -- configuration -----------------------------------------------------------


def test_metrics_port_and_collector_endpoint_are_declared_and_checked() -> None:
    base = {"ANIM_STORE": "local", "ANIM_NATS_URL": "nats://127.0.0.1:4222"}
    assert config.load("renderer", base)["ANIM_METRICS_PORT"] is None  # off by default
    assert config.load("renderer", {**base, "ANIM_METRICS_PORT": "0"})["ANIM_METRICS_PORT"] == 0
    assert (
        config.load("renderer", {**base, "ANIM_METRICS_PORT": "9090"})["ANIM_METRICS_PORT"] == 9090
    )
    with pytest.raises(
        config.ConfigError, match=r"^ANIM_METRICS_PORT: must be a port in 0\.\.65535"
    ):
        config.load("renderer", {**base, "ANIM_METRICS_PORT": "70000"})
    assert config.load("planner", base)["OTEL_EXPORTER_OTLP_ENDPOINT"] == ""
    endpoint = {**base, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"}
    assert (
        config.load("planner", endpoint)["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://collector:4318"
    )
    with pytest.raises(config.ConfigError, match=r"^OTEL_EXPORTER_OTLP_ENDPOINT: must be an http"):
        config.load("planner", {**base, "OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"})


# -- the endpoint --------------------------------------------------------------


def _get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def test_one_endpoint_per_port_shared_until_its_last_user_releases_it() -> None:
    port = metrics.serve("127.0.0.1", 0)
    try:
        assert metrics.serve("127.0.0.1", 0) == port  # the embedded mode's second service
        names = {f.name for f in text_string_to_metric_families(_get(port))}
        assert "process_cpu_seconds" in names
        metrics.release("127.0.0.1", 0)
        _get(port)  # still served: one user left
    finally:
        metrics.release("127.0.0.1", 0)
    with pytest.raises(urllib.error.URLError):
        _get(port)


def test_a_taken_port_fails_naming_the_variable() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(metrics.MetricsPortError, match=f"^ANIM_METRICS_PORT: .*:{port}"):
            metrics.serve("127.0.0.1", port)


async def test_scrape_time_gauges_come_from_the_services_loop() -> None:
    collector = metrics.ScrapeTimeCollector()
    loop = asyncio.get_running_loop()

    async def backlog() -> list[metrics.Sample]:
        await asyncio.sleep(0)  # runs on the loop, as NATS calls do
        return [("anim_consumer_pending", {"consumer": "render"}, 3.0)]

    async def broken() -> list[metrics.Sample]:
        raise ConnectionError("NATS is away")

    async def jobs() -> list[metrics.Sample]:
        return metrics.jobs_samples({"COMPLETED": 2}, ("RENDERING", "COMPLETED"))

    for source in (backlog, broken, jobs):
        collector.add(loop, source)
    families = {f.name: f for f in await asyncio.to_thread(lambda: list(collector.collect()))}
    assert [(s.labels, s.value) for s in families["anim_consumer_pending"].samples] == [
        ({"consumer": "render"}, 3.0)
    ]
    assert {s.labels["state"]: s.value for s in families["anim_jobs"].samples} == {
        "RENDERING": 0.0,
        "COMPLETED": 2.0,
    }
    # On the loop's own thread it would wait for itself: it reports nothing instead.
    assert list(collector.collect()) == []


def test_gpu_collector_neither_imports_torch_nor_starts_cuda() -> None:
    script = textwrap.dedent(
        """
        import sys
        from ghibli_anim.runtime import metrics
        import ghibli_anim.services.planner.service, ghibli_anim.services.assembler.service
        assert list(metrics.GpuMemoryCollector().collect()) == []
        assert "torch" not in sys.modules, "metrics or planner/assembler imported torch"
        import torch
        assert list(metrics.GpuMemoryCollector().collect()) == [] or torch.cuda.is_initialized()
        assert not torch.cuda.is_initialized()
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# -- frame stages ------------------------------------------------------------


def test_frame_timer_observes_every_stage_once_per_frame() -> None:
    metrics.renderer()
    before = {s: sample("anim_frame_stage_seconds_count", stage=s) for s in metrics.STAGES}
    rendered = sample("anim_frames_rendered_total", mode="img2img")
    timer = metrics.FrameTimer()
    timer.add("queue_wait", 0.5)
    with timer.time("load"):
        pass
    timer.add("denoise", 1.25)
    timer.add("denoise", 0.25)
    timer.add("encode", -1.0)  # a clock quirk never makes a stage negative
    with pytest.raises(ValueError, match=r"^stage: must be one of queue_wait, load"):
        timer.add("paint", 1.0)
    timer.observe("img2img")
    assert timer.seconds["denoise"] == 1.5 and timer.seconds["encode"] == 0.0
    for stage in metrics.STAGES:
        assert sample("anim_frame_stage_seconds_count", stage=stage) == before[stage] + 1
    assert sample("anim_frames_rendered_total", mode="img2img") == rendered + 1


def test_consumer_outcomes_are_a_closed_set() -> None:
    consumer = metrics.ConsumerMetrics("render")
    before = sample("anim_messages_handled_total", consumer="render", outcome="retry")
    consumer.handled("retry", 0.1)
    assert sample("anim_messages_handled_total", consumer="render", outcome="retry") == before + 1
    with pytest.raises(ValueError, match=r"^outcome: must be one of ok, retry"):
        consumer.handled("maybe")


# -- traces ------------------------------------------------------------------


def test_trace_context_rides_in_headers_and_metadata() -> None:
    assert tracing.inject({"Nats-Msg-Id": "x"}) == {"Nats-Msg-Id": "x"}  # no span: nothing
    assert tracing.grpc_metadata(None) is None
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("publisher") as span:
        headers = tracing.inject({"Nats-Msg-Id": "x"})
        metadata = tracing.grpc_metadata((("authorization", "Bearer t"),))
    ids = span.get_span_context()
    assert headers["traceparent"].startswith(f"00-{ids.trace_id:032x}-{ids.span_id:016x}-")
    assert metadata == (("authorization", "Bearer t"), ("traceparent", headers["traceparent"]))
    with tracer.start_as_current_span("consumer", context=tracing.extract(headers)) as child:
        assert child.get_span_context().trace_id == ids.trace_id
        assert child.parent.span_id == ids.span_id


class _Servicer(animation_pb2_grpc.AnimationServiceServicer):
    async def GetAnimation(self, request, context):
        if request.job_id == "bad":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "job_id: not a job id")
        return animation_pb2.Animation(job_id=request.job_id)

    async def WatchAnimation(self, request, context):
        for frame in range(1000):
            yield bus_pb2.Event(job_id=request.job_id, frame=frame)
            await asyncio.sleep(0)


async def test_grpc_calls_get_server_spans_under_the_callers_context(caplog) -> None:
    server = grpc.aio.server(interceptors=[tracing.GrpcTracing("planner")])
    animation_pb2_grpc.add_AnimationServiceServicer_to_server(_Servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        with capture_spans() as exporter:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = animation_pb2_grpc.AnimationServiceStub(channel)
                with trace.get_tracer("test").start_as_current_span("caller") as caller:
                    md = tracing.grpc_metadata(None)
                    await stub.GetAnimation(
                        animation_pb2.GetAnimationRequest(job_id="j"), metadata=md
                    )
                    with pytest.raises(grpc.aio.AioRpcError):
                        await stub.GetAnimation(
                            animation_pb2.GetAnimationRequest(job_id="bad"), metadata=md
                        )
                    # A client that drops a stream half way (the page closed).
                    call = stub.WatchAnimation(
                        animation_pb2.WatchAnimationRequest(job_id="j"), metadata=md
                    )
                    assert (await call.read()).frame == 0
                    call.cancel()
            deadline = asyncio.get_running_loop().time() + 10
            while len(exporter.get_finished_spans()) < 4:
                assert asyncio.get_running_loop().time() < deadline, exporter.get_finished_spans()
                await asyncio.sleep(0.02)
            spans = [s for s in exporter.get_finished_spans() if s.kind == trace.SpanKind.SERVER]
    finally:
        await server.stop(0)
    ids = caller.get_span_context()
    assert len(spans) == 3
    gets = [s for s in spans if s.name == "animation.v1.AnimationService/GetAnimation"]
    (watch,) = [s for s in spans if s.name == "animation.v1.AnimationService/WatchAnimation"]
    ok = next(s for s in gets if s.attributes["rpc.grpc.status_code"] == 0)
    bad = next(s for s in gets if s.attributes["rpc.grpc.status_code"] == 3)
    for span in (ok, bad, watch):
        assert span.kind == trace.SpanKind.SERVER and span.attributes["anim.service"] == "planner"
        assert span.context.trace_id == ids.trace_id and span.parent.span_id == ids.span_id
    assert ok.status.status_code == trace.StatusCode.UNSET
    assert bad.status.status_code == trace.StatusCode.ERROR
    assert bad.status.description == "INVALID_ARGUMENT: job_id: not a job id"
    assert watch.attributes["rpc.method"] == "WatchAnimation"
    assert "Failed to detach context" not in caplog.text


def test_spans_go_by_otlp_to_the_collector_only_when_an_endpoint_is_set() -> None:
    # A fresh process: the tracer provider is chosen once per process.
    script = textwrap.dedent(
        """
        import threading
        from http.server import BaseHTTPRequestHandler, HTTPServer
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )
        from ghibli_anim.runtime import tracing

        received = []

        class Collector(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((self.path, ExportTraceServiceRequest.FromString(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        server = HTTPServer(("127.0.0.1", 0), Collector)
        threading.Thread(target=server.serve_forever, daemon=True).start()

        assert not tracing.setup("depth", "")  # no endpoint: no exporter
        with tracing.span("depth", "off") as span:
            assert not span.is_recording()

        endpoint = f"http://127.0.0.1:{server.server_port}"
        assert tracing.setup("planner", endpoint)
        assert tracing.setup("renderer", endpoint)
        with tracing.span("planner", "job", {"anim.job_id": "j1"}):
            with tracing.span("renderer", "render", {"anim.frame": 0}):
                pass
        tracing.shutdown("renderer")
        tracing.shutdown("planner")
        server.shutdown()
        out = []
        for path, request in received:
            for resource_spans in request.resource_spans:
                attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    for s in scope.spans:
                        out.append((path, attrs["service.name"], s.name, s.trace_id.hex()))
        for row in sorted(out):
            print(*row)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()]
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("/v1/traces", "ghibli-anim-planner", "job"),
        ("/v1/traces", "ghibli-anim-renderer", "render"),
    ]
    assert rows[0][3] == rows[1][3]  # two services, one trace


# -- the dashboard -----------------------------------------------------------


def _exported_samples() -> set[str]:
    """Every sample name the services can export (``anim_*``)."""
    metrics.renderer()
    metrics.planner()
    metrics.ConsumerMetrics("plan")
    from ghibli_anim.services.web import app as web_app  # the web page's own metrics

    web_app._REQUESTS.labels("/", "200")
    web_app._REQUEST_SECONDS.labels("/")

    names = set(metrics.SCRAPE_GAUGES) | {metrics.GPU_ALLOCATED, metrics.GPU_RESERVED}
    for family in REGISTRY.collect():
        names |= {s.name for s in family.samples}
    return {n for n in names if n.startswith("anim_")}


def test_dashboard_charts_every_metric_and_only_real_ones() -> None:
    board = json.loads(DASHBOARD.read_text())
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\banim_[a-z_]+", e)}
    exported = _exported_samples()
    assert used <= exported, f"the dashboard charts unknown metrics: {sorted(used - exported)}"
    families = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in exported}
    charted = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in used}
    assert families <= charted, f"metrics missing from the dashboard: {sorted(families - charted)}"
    for p in panels:
        assert p["datasource"]["uid"] == "${datasource}" and p["description"], p["title"]
    # No two panels overlap on Grafana's 24-column grid.
    cells = set()
    for p in board["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, p["title"]
                cells.add((x, y))
