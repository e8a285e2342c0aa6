"""runtime/tracing.py without a bus: trace context in message headers and gRPC metadata,
client and server spans, and OTLP export only when an endpoint is set."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import textwrap

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from support.spans import capture_spans

from ghibli_anim.contracts.pb import animation_pb2, animation_pb2_grpc, bus_pb2
from ghibli_anim.runtime import tracing
from ghibli_anim.runtime.auth import BearerAuth, Tokens
from ghibli_anim.runtime.client import AnimationClient


def test_trace_context_rides_in_message_headers() -> None:
    assert tracing.inject({"Nats-Msg-Id": "x"}) == {"Nats-Msg-Id": "x"}  # no span: nothing
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("publisher") as span:
        headers = tracing.inject({"Nats-Msg-Id": "x"})
    ids = span.get_span_context()
    assert headers["traceparent"].startswith(f"00-{ids.trace_id:032x}-{ids.span_id:016x}-")
    with tracer.start_as_current_span("consumer", context=tracing.extract(headers)) as child:
        assert child.get_span_context().trace_id == ids.trace_id
        assert child.parent.span_id == ids.span_id


class _Servicer(animation_pb2_grpc.AnimationServiceServicer):
    async def GetAnimation(self, request, context):
        if request.job_id == "bad":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "job_id: not a job id")
        if request.job_id == "broken":
            await context.abort(grpc.StatusCode.INTERNAL, "the store is away")
        return animation_pb2.Animation(job_id=request.job_id)

    async def WatchAnimation(self, request, context):
        for frame in range(1000):
            yield bus_pb2.Event(job_id=request.job_id, frame=frame)
            await asyncio.sleep(0)


GET = "/animation.v1.AnimationService/GetAnimation"

WATCH = "/animation.v1.AnimationService/WatchAnimation"


async def test_grpc_calls_get_a_client_and_a_server_span_under_the_callers(caplog) -> None:
    server = grpc.aio.server(interceptors=tracing.grpc_server_interceptors("planner"))
    animation_pb2_grpc.add_AnimationServiceServicer_to_server(_Servicer(), server)
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        with capture_spans() as exporter:
            async with AnimationClient(f"127.0.0.1:{port}") as client:
                with trace.get_tracer("test").start_as_current_span("caller") as caller:
                    await client.get("j")
                    for job_id in ("bad", "broken"):
                        with pytest.raises(grpc.aio.AioRpcError):
                            await client.get(job_id)
                    # Probes make no span, on either side.
                    await health_pb2_grpc.HealthStub(client.channel).Check(
                        health_pb2.HealthCheckRequest()
                    )
                    # A client that drops a stream half way (the page closed).
                    call = client.stub.WatchAnimation(
                        animation_pb2.WatchAnimationRequest(job_id="j")
                    )
                    assert (await call.read()).frame == 0
                    call.cancel()
                    # The client's span of a dropped stream ends when the call is collected.
                    del call
                    gc.collect()
            deadline = asyncio.get_running_loop().time() + 10
            while len(exporter.get_finished_spans()) < 9:  # 4 calls x 2 sides + caller
                assert asyncio.get_running_loop().time() < deadline, exporter.get_finished_spans()
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.1)  # time for a span that should not be there
            spans = exporter.get_finished_spans()
    finally:
        await server.stop(0)
    assert sorted(s.name for s in spans) == sorted([GET] * 6 + [WATCH] * 2 + ["caller"])
    by_id = {s.context.span_id: s for s in spans}
    servers = [s for s in spans if s.kind == trace.SpanKind.SERVER]
    assert len(servers) == 4
    ids = caller.get_span_context()
    for server_span in servers:
        # The client's span rode in the call's metadata; it hangs under the caller's.
        client_span = by_id[server_span.parent.span_id]
        assert client_span.kind == trace.SpanKind.CLIENT and client_span.name == server_span.name
        assert client_span.parent.span_id == ids.span_id
        assert server_span.context.trace_id == ids.trace_id
        assert server_span.attributes["rpc.system"] == "grpc"
        assert server_span.attributes["rpc.service"] == "animation.v1.AnimationService"
    gets = {s.attributes["rpc.grpc.status_code"]: s for s in servers if s.name == GET}
    ok, bad, broken = gets[0], gets[3], gets[13]  # OK, INVALID_ARGUMENT, INTERNAL
    (watch,) = [s for s in servers if s.name == WATCH]
    assert watch.attributes["rpc.method"] == "WatchAnimation"
    assert ok.status.status_code == trace.StatusCode.UNSET
    # A refused request is the caller's fault: an error on the client's span only.
    assert bad.status.status_code == trace.StatusCode.UNSET
    assert by_id[bad.parent.span_id].status.status_code == trace.StatusCode.ERROR
    assert broken.status.status_code == trace.StatusCode.ERROR
    assert "the store is away" in broken.status.description
    assert "Failed to detach context" not in caplog.text


async def test_calls_refused_by_authentication_still_get_a_server_span() -> None:
    # The order of run_service: tracing before the interceptor that may refuse.
    auth = BearerAuth(Tokens({"alice": b"t" * 16}))
    server = grpc.aio.server(interceptors=[*tracing.grpc_server_interceptors("planner"), auth])
    animation_pb2_grpc.add_AnimationServiceServicer_to_server(_Servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        with capture_spans() as exporter:
            async with AnimationClient(f"127.0.0.1:{port}") as client:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await client.get("j")
            deadline = asyncio.get_running_loop().time() + 10
            while not [s for s in exporter.get_finished_spans() if s.kind == trace.SpanKind.SERVER]:
                assert asyncio.get_running_loop().time() < deadline, exporter.get_finished_spans()
                await asyncio.sleep(0.02)
            spans = exporter.get_finished_spans()
    finally:
        await server.stop(0)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    (span,) = [s for s in spans if s.kind == trace.SpanKind.SERVER]
    assert span.name == GET
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]


def test_spans_go_by_otlp_to_the_collector_only_when_an_endpoint_is_set() -> None:
    # A fresh process: the tracer provider is chosen once per process.
    script = textwrap.dedent(
        """
        import asyncio
        import threading
        from http.server import BaseHTTPRequestHandler, HTTPServer
        import grpc
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )
        from ghibli_anim.contracts.pb import animation_pb2, animation_pb2_grpc
        from ghibli_anim.runtime import tracing
        from ghibli_anim.runtime.client import AnimationClient

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

        class Servicer(animation_pb2_grpc.AnimationServiceServicer):
            async def GetAnimation(self, request, context):
                return animation_pb2.Animation(job_id=request.job_id)

        async def get():
            grpc_server = grpc.aio.server(interceptors=tracing.grpc_server_interceptors("planner"))
            animation_pb2_grpc.add_AnimationServiceServicer_to_server(Servicer(), grpc_server)
            port = grpc_server.add_insecure_port("127.0.0.1:0")
            await grpc_server.start()
            async with AnimationClient(f"127.0.0.1:{port}") as client:
                await client.get("j1")
            await grpc_server.stop(0)

        with tracing.span("planner", "job", {"anim.job_id": "j1"}):
            # No SDK on the client's side: no client span, the caller's context goes on.
            asyncio.run(get())
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
                        ids = (s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex() or "-")
                        out.append((path, attrs["service.name"], s.name, *ids))
        for row in sorted(out):
            print(*row)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()]
    # The gRPC server span names no service: its provider's resource does.
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("/v1/traces", "ghibli-anim-planner", "/animation.v1.AnimationService/GetAnimation"),
        ("/v1/traces", "ghibli-anim-planner", "job"),
        ("/v1/traces", "ghibli-anim-renderer", "render"),
    ]
    call, job, render = rows
    assert call[3] == job[3] == render[3]  # two services, one trace
    assert call[5] == job[4] and render[5] == job[4]
