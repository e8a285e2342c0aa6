"""OpenTelemetry traces: spans for each job and frame, across services.

A job is one trace. The planner opens a ``job`` span when it creates the job
(under the caller's span when the gRPC call carried one); every message then
carries the context of the span that published it in W3C trace-context headers
(``traceparent``): ``runtime.bus.publish`` injects it into the NATS headers, and
``runtime.bus.consumer.WorkConsumer`` extracts it and runs the handler in a span of
its own (``render``, ``depth``, ``assemble``, ``conductor frame.rendered``...),
so the chain of the job ("frame i+1 is triggered by frame i's completion")
is the chain of spans. gRPC calls carry the same header in their metadata, through
OpenTelemetry's gRPC instrumentation: ``grpc_client_interceptors`` (on
``AnimationClient``'s channel) open a client span per call and send its context,
``grpc_server_interceptors`` (on every service's server) open the server span
under it. Those spans are named by the full method
(``/animation.v1.AnimationService/CreateAnimation``) and carry the library's
``rpc.*`` attributes, not ``anim.service``: the library has no way to add one, so
with OTLP export the service is the resource's ``service.name`` (the server uses
the service's own provider).

Export: when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set, ``setup`` gives the service
a tracer provider that sends spans by OTLP over HTTP to ``ENDPOINT/v1/traces``,
with ``service.name`` = ``ghibli-anim-<service>`` (so the embedded mode's four
services show as four). Unset, nothing is exported and spans cost next to
nothing (the API's no-op tracer), unless the process installed a tracer
provider itself (``opentelemetry.trace.set_tracer_provider``), which is then
used as it is: that is how tests collect spans in memory.

Only the OpenTelemetry API is a core dependency; the SDK and the exporter come
with the ``otel`` extra (``pip install 'ghibli-anim[otel]'``).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.grpc import (
    aio_client_interceptors,
    aio_server_interceptor,
    filters,
)
from opentelemetry.trace import SpanKind, Status, StatusCode

from ghibli_anim import __version__
from ghibli_anim.runtime.grpcserver import rewrap_handler

log = logging.getLogger(__name__)

SCOPE = "ghibli_anim"
SERVICE_ATTRIBUTE = "anim.service"
"""Spans made by ``span`` name the service that made them (one process may run several)."""

_providers: dict[str, Any] = {}  # service -> its SDK TracerProvider (OTLP export)
_lock = threading.Lock()

# gRPC calls that get no span: health probes (every few seconds) and reflection
# (grpc.reflection.v1 and v1alpha).
_TRACED_CALLS = filters.negate(
    filters.any_of(filters.health_check(), filters.service_prefix("grpc.reflection."))
)


class TracingConfigError(ValueError):
    """Traces are asked for but cannot be exported; the message names the variable."""


def setup(service: str, endpoint: str) -> bool:
    """Export ``service``'s spans to the OTLP collector at ``endpoint`` (a base URL).

    Does nothing when ``endpoint`` is empty, when this service is set up already,
    or when the process installed a tracer provider of its own. True when this
    call started an exporter.
    """
    if not endpoint:
        return False
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return False  # the process chose its provider: spans go there
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise TracingConfigError(
            f"OTEL_EXPORTER_OTLP_ENDPOINT: set to {endpoint}, but the OpenTelemetry SDK is "
            f"not installed ({exc.name}); install ghibli-anim[otel] or unset the variable"
        ) from None
    with _lock:
        if service in _providers:
            return False
        provider = TracerProvider(
            resource=Resource.create(
                {
                    "service.name": f"ghibli-anim-{service}",
                    "service.namespace": "ghibli-anim",
                    "service.version": __version__,
                }
            )
        )
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint.rstrip('/')}/v1/traces"))
        )
        _providers[service] = provider
    log.info("exporting traces", extra={"endpoint": endpoint})
    return True


def shutdown(service: str) -> None:
    """Flush and close ``service``'s exporter (at the end of ``run_service``)."""
    with _lock:
        provider = _providers.pop(service, None)
    if provider is not None:
        provider.shutdown()


def tracer(service: str) -> trace.Tracer:
    """The tracer of ``service``: its own exporter's, else the process's provider's."""
    provider = _providers.get(service)
    if provider is not None:
        return provider.get_tracer(SCOPE, __version__)
    return trace.get_tracer(SCOPE, __version__)


@contextlib.contextmanager
def span(
    service: str,
    name: str,
    attributes: Mapping[str, Any] | None = None,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    context: Context | None = None,
) -> Iterator[trace.Span]:
    """A span of ``service``, current inside the block; ``None`` attribute values are
    left out. An exception leaving the block marks the span as an error."""
    attrs = {SERVICE_ATTRIBUTE: service}
    attrs.update({k: v for k, v in (attributes or {}).items() if v is not None})
    with tracer(service).start_as_current_span(
        name, context=context, kind=kind, attributes=attrs
    ) as current:
        yield current


def set_attributes(attributes: Mapping[str, Any]) -> None:
    """Add attributes to the current span (no-op without one)."""
    current = trace.get_current_span()
    if current.is_recording():
        current.set_attributes({k: v for k, v in attributes.items() if v is not None})


def fail(current: trace.Span, reason: str) -> None:
    """Mark ``current`` as failed with ``reason``."""
    current.set_status(Status(StatusCode.ERROR, reason[:500]))


def inject(headers: dict[str, str] | None = None) -> dict[str, str]:
    """``headers`` plus the current span's context (``traceparent``...); a new dict
    when ``headers`` is None. Adds nothing when no span is current."""
    carrier = {} if headers is None else headers
    propagate.inject(carrier)
    return carrier


def extract(carrier: Mapping[str, str] | None) -> Context:
    """The context carried in NATS headers or gRPC metadata (empty when none)."""
    return propagate.extract(dict(carrier or {}))


def grpc_server_interceptors(service: str) -> list[grpc.aio.ServerInterceptor]:
    """Interceptors for ``service``'s server: a server span per gRPC call, under the
    context in the call's metadata. Put them before any that may refuse a call, so
    refused calls get a span too.

    The spans go to the service's own provider when ``setup`` gave it one, else to
    the process's. Health checks and reflection get none. The span records the
    call's status code (``rpc.grpc.status_code``); following OpenTelemetry's
    conventions, only codes that mean a server fault (UNKNOWN, INTERNAL,
    UNAVAILABLE, DEADLINE_EXCEEDED...) mark it as an error.
    """
    return [
        _StreamsEndInTheirCall(),
        aio_server_interceptor(tracer_provider=_providers.get(service), filter_=_TRACED_CALLS),
    ]


class _StreamsEndInTheirCall(grpc.aio.ServerInterceptor):
    """Runs each response stream inside its call's task and closes it there.

    grpc.aio leaves a stream whose client went away to the garbage collector, which
    closes it from another context; OpenTelemetry's server interceptor keeps its span
    current across the stream's yields, and then fails to detach it (logged as an
    error: open-telemetry/opentelemetry-python-contrib#2357, grpc/grpc#42295).
    Writing each item with ``context.write`` keeps the stream in the call's task.
    """

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None:
            return None

        def streaming(fn):
            if not inspect.isasyncgenfunction(fn):
                return fn  # already writes with context.write (health's Watch)

            async def call(request, context):
                stream = fn(request, context)
                try:
                    async for item in stream:
                        await context.write(item)
                finally:
                    await stream.aclose()  # a no-op unless the call ended half way

            return call

        return rewrap_handler(handler, lambda fn: fn, streaming)


def grpc_client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """Interceptors for a client channel: a client span per call, under the caller's
    span, whose context the call carries to the server in its metadata.

    Spans go to the process's provider; without an SDK they record nothing, but the
    caller's context still travels with the call.
    """
    return aio_client_interceptors(filter_=_TRACED_CALLS)
