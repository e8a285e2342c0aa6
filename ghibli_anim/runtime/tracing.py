"""OpenTelemetry traces: spans for each job and frame, across services.

A job is one trace. The planner opens a ``job`` span when it creates the job
(under the caller's span when the gRPC call carried one); every message then
carries the context of the span that published it in W3C trace-context headers
(``traceparent``): ``bus.publish_work``/``publish_event`` inject it into the NATS
headers, and ``bus.WorkConsumer`` extracts it and runs the handler in a span of
its own (``render``, ``depth``, ``assemble``, ``conductor frame.rendered``...),
so the chain of the DESIGN ("frame i+1 is triggered by frame i's completion")
is the chain of spans. gRPC calls carry the same header in their metadata: the
client injects it, ``GrpcTracing`` extracts it and opens a server span per call.

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

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode

from ghibli_anim import __version__
from ghibli_anim.runtime.grpcserver import rewrap_handler

log = logging.getLogger(__name__)

SCOPE = "ghibli_anim"
SERVICE_ATTRIBUTE = "anim.service"
"""Every span names the service that made it (one process may run several)."""

_providers: dict[str, Any] = {}  # service -> its SDK TracerProvider (OTLP export)
_lock = threading.Lock()

# gRPC services whose calls get no span: health probes every few seconds and reflection.
_UNTRACED = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
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


def grpc_metadata(
    metadata: tuple[tuple[str, str], ...] | None,
) -> tuple[tuple[str, str], ...] | None:
    """Client side: ``metadata`` plus the current span's context."""
    carried = inject({})
    if not carried:
        return metadata
    return (*(metadata or ()), *carried.items())


class GrpcTracing(grpc.aio.ServerInterceptor):
    """A server span per gRPC call, child of the context in the call's metadata."""

    def __init__(self, service: str) -> None:
        self.service = service

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.startswith(_UNTRACED):
            return handler
        parent = extract({k: v for k, v in details.invocation_metadata or () if isinstance(v, str)})
        rpc_service, _, rpc_method = details.method.lstrip("/").partition("/")
        name = f"{rpc_service}/{rpc_method}"
        attributes = {"rpc.system": "grpc", "rpc.service": rpc_service, "rpc.method": rpc_method}
        service = self.service

        def unary(fn):
            async def call(request, context):
                with tracer(service).start_as_current_span(
                    name,
                    context=parent,
                    kind=SpanKind.SERVER,
                    attributes={SERVICE_ATTRIBUTE: service, **attributes},
                    set_status_on_exception=False,  # the call's status code says more
                ) as current:
                    try:
                        result = await fn(request, context)
                    except Exception as exc:
                        if not isinstance(exc, grpc.aio.AbortError):  # a bug: UNKNOWN
                            current.record_exception(exc)
                            fail(current, f"{type(exc).__name__}: {exc}")
                        _status(current, context, raised=True)
                        raise
                    _status(current, context)
                    return result

            return call

        def streaming(fn):
            async def call(request, context):
                # The span is current only while the stream's body runs, never across a
                # yield: a stream the client drops is closed from another context.
                current = tracer(service).start_span(
                    name,
                    context=parent,
                    kind=SpanKind.SERVER,
                    attributes={SERVICE_ATTRIBUTE: service, **attributes},
                )
                inside = trace.set_span_in_context(current, parent)
                stream = fn(request, context)
                try:
                    while True:
                        token = otel_context.attach(inside)
                        try:
                            item = await anext(stream)
                        except StopAsyncIteration:
                            break
                        finally:
                            otel_context.detach(token)
                        yield item
                except BaseException as exc:
                    if not isinstance(exc, GeneratorExit | asyncio.CancelledError):
                        if not isinstance(exc, grpc.aio.AbortError):
                            current.record_exception(exc)
                            fail(current, f"{type(exc).__name__}: {exc}")
                        _status(current, context, raised=True)
                    raise
                else:
                    _status(current, context)
                finally:
                    current.end()
                    with contextlib.suppress(Exception):
                        await stream.aclose()

            return call

        return rewrap_handler(handler, unary, streaming)


def _status(current: trace.Span, context: grpc.aio.ServicerContext, raised: bool = False) -> None:
    """The call's status code on its span (an abort shows as an error)."""
    try:
        code = context.code()
    except Exception:  # not every context implementation answers before the end
        return
    if code is None:  # nothing set: OK, unless the handler raised (UNKNOWN)
        if not raised:
            current.set_attribute("rpc.grpc.status_code", 0)
        return
    name = getattr(code, "name", str(code))
    current.set_attribute("rpc.grpc.status_code", getattr(code, "value", (0,))[0])
    if name != "OK":
        fail(current, f"{name}: {context.details() or ''}")
