"""Collecting the spans a test makes: an in-memory exporter on the process's tracer provider.

The services use whatever tracer provider the process has (``ghibli_anim/runtime/tracing.py``).
OpenTelemetry lets a process choose its provider once, so the first test that needs spans
installs an SDK provider and every later one adds its own in-memory exporter to it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


@contextmanager
def capture_spans() -> Iterator[InMemorySpanExporter]:
    """An exporter that keeps every span ended inside the block."""
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)  # once per process; later tests keep it
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        yield exporter
    finally:
        exporter.shutdown()  # later spans are not kept in memory
