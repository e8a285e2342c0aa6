"""Running a service: config, logs, NATS, store, gRPC with health, consumers, drain.

Every service (planner, renderer, depth, assembler) is a ``Service`` subclass
with its consumers, gRPC servicers and health checks; ``run_service`` runs one
until a stop event, and ``serve`` is ``ghibli-anim serve NAME``. The embedded
mode runs several with ``run_service`` on one event loop.

Shutdown (SIGTERM, SIGINT, or the stop event): health turns NOT_SERVING, the
consumers stop fetching, the message in hand finishes (or is nakked after
ANIM_DRAIN_S), the gRPC server stops, NATS drains, exit 0.

Observability: with ANIM_METRICS_PORT set, Prometheus metrics are served on
that port (metrics.py), including gauges asked of NATS at scrape time (each
consumer's backlog, and what the service's ``collect_metrics`` adds); with
OTEL_EXPORTER_OTLP_ENDPOINT set, spans are exported (tracing.py): one per gRPC
call and one per handled message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable

from ghibli_anim.contracts.config import Settings
from ghibli_anim.runtime import metrics, tracing
from ghibli_anim.runtime.auth import BearerAuth, Tokens, server_credentials
from ghibli_anim.runtime.bus.connection import Bus, connect
from ghibli_anim.runtime.bus.consumer import WorkConsumer, pending
from ghibli_anim.runtime.bus.names import JOB_LEVEL_FRAME
from ghibli_anim.runtime.bus.publish import new_event, publish_event
from ghibli_anim.runtime.grpcserver import GrpcServer, ServiceBinding
from ghibli_anim.runtime.store.base import Store
from ghibli_anim.runtime.store.open import open_store

log = logging.getLogger(__name__)

# A key no job ever has: stat() on it answers "missing" when the store is up.
_PROBE_KEY = "jobs/00000000000000000000000000000000/plan.json"


class Service:
    """Base class: subclasses fill ``consumers`` in ``start`` and may add servicers."""

    name = "service"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.consumers: list[WorkConsumer] = []
        self.bus: Bus | None = None
        self.store: Store | None = None
        self.metrics_port: int | None = None
        """The port serving /metrics, once started (None: metrics off)."""

    async def start(self, bus: Bus, store: Store) -> None:
        self.bus = bus
        self.store = store

    def bindings(self) -> list[ServiceBinding]:
        return []

    async def emit(self, event_type: int, work, **fields):
        """Publish an event about ``work``: its job, frame (-1 for job-level work) and
        attempt, caused by what caused the work, from this service."""
        event = new_event(
            event_type,
            work.job_id,
            getattr(work, "frame", JOB_LEVEL_FRAME),
            work.attempt,
            work.causation_id,
            service=self.name,
            **fields,
        )
        await publish_event(self.bus.js, event)
        return event

    def checks(self) -> dict[str, Callable[[], Awaitable[None]]]:
        return {}

    async def close(self) -> None:
        """Release what ``start`` acquired (after the consumers stopped)."""

    async def collect_metrics(self) -> list[metrics.Sample]:
        """This service's scrape-time gauges (``metrics.SCRAPE_GAUGES``), asked for at
        each scrape; the consumers' backlog is reported by ``run_service``."""
        return []


async def _nats_check(bus: Bus) -> None:
    if not bus.nc.is_connected:
        raise ConnectionError("not connected to NATS")


async def _scrape(service: Service, bus: Bus) -> list[metrics.Sample]:
    """The scrape-time gauges of ``service``: each consumer's backlog, then its own."""
    samples: list[metrics.Sample] = []
    for consumer in service.consumers:
        try:
            count = await pending(bus.js, consumer.durable, consumer.stream)
        except Exception as exc:  # NATS away for a moment: leave it out of this scrape
            log.debug("backlog of %s unavailable: %s", consumer.durable, exc)
            continue
        samples.append(("anim_consumer_pending", {"consumer": consumer.durable}, float(count)))
    return samples + await service.collect_metrics()


async def _connect_unless_stopped(settings: Settings, name: str, stop: asyncio.Event) -> Bus | None:
    """``connect`` (which waits for NATS as long as it takes: a service may start first),
    or None once ``stop`` is set: a service that never reached NATS still stops on
    SIGTERM or Ctrl-C."""
    connecting = asyncio.ensure_future(connect(settings, name))
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({connecting, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not connecting.done():
            connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await connecting
    return None if connecting.cancelled() else connecting.result()


async def run_service(
    service: Service,
    stop: asyncio.Event,
    *,
    ready: Callable[[GrpcServer], None] | None = None,
) -> None:
    """Run ``service`` until ``stop`` is set, then shut it down gracefully."""
    settings = service.settings
    tracing.setup(service.name, settings["OTEL_EXPORTER_OTLP_ENDPOINT"])
    bus = await _connect_unless_stopped(settings, service.name, stop)
    if bus is None:
        tracing.shutdown(service.name)
        log.info("stopped before NATS answered")
        return
    store = open_store(settings)
    grace = settings["ANIM_DRAIN_S"]
    server: GrpcServer | None = None
    metrics_port = settings["ANIM_METRICS_PORT"]
    metrics_host = settings["ANIM_GRPC_HOST"]
    serving_metrics = False
    scrape_source: int | None = None
    try:
        await service.start(bus, store)
        for consumer in service.consumers:
            consumer.service = service.name

        async def store_check() -> None:
            await asyncio.to_thread(store.stat, _PROBE_KEY)

        tokens_file = settings["ANIM_AUTH_TOKENS_FILE"]
        server = GrpcServer(
            host=settings["ANIM_GRPC_HOST"],
            port=settings.grpc_port(),
            keepalive_s=settings["ANIM_GRPC_KEEPALIVE_S"],
            bindings=service.bindings(),
            checks={"nats": lambda: _nats_check(bus), "store": store_check, **service.checks()},
            max_concurrent_rpcs=settings["ANIM_MAX_CONCURRENT_RPCS"],
            # Tracing first: calls that authentication refuses still get a span.
            interceptors=[
                *tracing.grpc_server_interceptors(service.name),
                BearerAuth(Tokens.load(tokens_file) if tokens_file else None),
            ],
            credentials=server_credentials(
                settings["ANIM_TLS_CERT"], settings["ANIM_TLS_KEY"], settings["ANIM_TLS_CLIENT_CA"]
            ),
        )
        await server.start()
        if metrics_port is not None:
            metrics.register_gpu_collector()
            service.metrics_port = metrics.serve(metrics_host, metrics_port)
            serving_metrics = True
            scrape_source = metrics.SCRAPE_TIME.add(
                asyncio.get_running_loop(), lambda: _scrape(service, bus)
            )
        for consumer in service.consumers:
            await consumer.start()
        log.info("service started", extra={"grpc_port": server.bound_port})
        if ready is not None:
            ready(server)
        await stop.wait()
        log.info("shutting down")
    finally:
        if server is not None:
            await server.mark_not_serving()
        if scrape_source is not None:
            metrics.SCRAPE_TIME.remove(scrape_source)
        await asyncio.gather(*(c.stop(grace) for c in service.consumers), return_exceptions=True)
        try:
            await service.close()
        finally:
            if server is not None:
                await server.stop(grace_s=2.0)
            await bus.close()
            if serving_metrics:
                metrics.release(metrics_host, metrics_port)
            tracing.shutdown(service.name)
    log.info("service stopped")


def install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
