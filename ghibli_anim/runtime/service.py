"""Running a service: config, logs, NATS, store, gRPC with health, consumers, drain.

Every service (planner, renderer, depth, assembler) is a ``Service`` subclass
with its consumers, gRPC servicers and health checks; ``run_service`` runs one
until a stop event, and ``serve`` is ``ghibli-anim serve NAME``. The embedded
mode runs several with ``run_service`` on one event loop.

Start-up, in order: ``preflight`` (what needs only this machine: the renderer and
the depth worker check their torch device, see torch_service.py), NATS, the store,
``start``, the gRPC server (liveness SERVING, readiness NOT_SERVING), ``prepare`` in
a thread of its own (the renderer and the depth worker load their models), the
consumers, and from then on readiness follows the checks. So a replica is Ready only
once it can do its work, and takes none before. A service that can never work here
(an unusable device, models that cannot load) raises :class:`CannotServe`: the
process exits 1 with one line saying what is wrong and what to do, instead of going
Ready and failing every message.

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
import sys
import threading
from collections.abc import Awaitable, Callable

from ghibli_anim.contracts.config import Settings
from ghibli_anim.runtime import metrics, tracing
from ghibli_anim.runtime.auth import BearerAuth, Tokens, server_credentials
from ghibli_anim.runtime.bus.connection import Bus, connect
from ghibli_anim.runtime.bus.consumer import WorkConsumer, pending
from ghibli_anim.runtime.bus.names import JOB_LEVEL_FRAME
from ghibli_anim.runtime.bus.publish import new_event, publish_event, send_event
from ghibli_anim.runtime.grpcserver import GrpcServer, ServiceBinding
from ghibli_anim.runtime.store.base import Store
from ghibli_anim.runtime.store.open import open_store

log = logging.getLogger(__name__)

# A key no job ever has: stat() on it answers "missing" when the store is up.
_PROBE_KEY = "jobs/00000000000000000000000000000000/plan.json"


class CannotServe(RuntimeError):
    """This process cannot serve as configured (an unusable device, models that cannot
    load); the message says what is wrong and what to do. ``ghibli-anim serve`` prints
    it as its one error line and exits 1: a restart helps only once the cause is fixed."""


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

    async def preflight(self) -> None:
        """Checks that need nothing but this machine, before NATS is reached: raise
        :class:`CannotServe` when the service can never work here."""

    async def start(self, bus: Bus, store: Store) -> None:
        self.bus = bus
        self.store = store

    def prepare(self) -> None:
        """Get ready to take work (load models), after ``start`` and before the consumers
        start, while the gRPC server answers with readiness NOT_SERVING. Runs in a thread
        of its own; a stop meanwhile does not wait for it. Raise :class:`CannotServe`
        when that cannot succeed."""

    def bindings(self) -> list[ServiceBinding]:
        return []

    async def emit(self, event_type: int, work, *, acked: bool = True, **fields):
        """Publish an event about ``work``: its job, frame (-1 for job-level work) and
        attempt, caused by what caused the work, from this service. ``acked=False``: do
        not wait for the stream's acknowledgement (:func:`send_event`, for events that only
        inform)."""
        event = new_event(
            event_type,
            work.job_id,
            getattr(work, "frame", JOB_LEVEL_FRAME),
            work.attempt,
            work.causation_id,
            service=self.name,
            **fields,
        )
        if acked:
            await publish_event(self.bus.js, event)
        else:
            await send_event(self.bus.nc, event)
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


async def _prepare(service: Service, stop: asyncio.Event) -> bool:
    """``service.prepare()`` in a daemon thread: True once it returned, False when
    ``stop`` came first (the process then exits without waiting for a load that may take
    minutes; asyncio's own threads would hold the exit until it ends)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if done.done():
            return
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)

    def work() -> None:
        error: BaseException | None = None
        try:
            service.prepare()
        except BaseException as exc:  # handed to the loop, raised there
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
            loop.call_soon_threadsafe(settle, error)

    threading.Thread(target=work, name=f"{service.name}-prepare", daemon=True).start()
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({done, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if not done.done():
        log.info("stopped while preparing")
        return False
    done.result()  # raises what prepare() raised
    return True


async def run_service(
    service: Service,
    stop: asyncio.Event,
    *,
    ready: Callable[[GrpcServer], None] | None = None,
) -> None:
    """Run ``service`` until ``stop`` is set, then shut it down gracefully."""
    settings = service.settings
    tracing.setup(service.name, settings["OTEL_EXPORTER_OTLP_ENDPOINT"])
    try:
        await service.preflight()
    except BaseException:
        tracing.shutdown(service.name)
        raise
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
            prepared=False,  # not Ready before prepare() has run
        )
        await server.start()
        if metrics_port is not None:
            metrics.register_gpu_collector()
            service.metrics_port = metrics.serve(metrics_host, metrics_port)
            serving_metrics = True
            scrape_source = metrics.SCRAPE_TIME.add(
                asyncio.get_running_loop(), lambda: _scrape(service, bus)
            )
        if await _prepare(service, stop):
            for consumer in service.consumers:
                await consumer.start()
            await server.mark_prepared()
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


GIL_SWITCH_INTERVAL_S = 0.0005
"""How long a thread that wants the GIL waits before asking its holder to let go (Python's
default: 5 ms). A service's event loop shares the interpreter with worker threads (the torch
thread, PNG encoders, store calls); with the default, a message or a finished write can wait
up to 5 ms for the loop while a worker runs Python, on every hop of a frame's path.
In eight interleaved pairs of ``bench/chain_host.py`` runs (2026-12-05, the 2-core
development machine) the distributed chain was faster with 0.5 ms in six (by 2 ms a frame,
the median difference) and level in two."""


def use_short_gil_switches() -> None:
    """Give this process ``GIL_SWITCH_INTERVAL_S``: service processes and the embedded stack
    call it at start (an application embedding the library chooses its own)."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)


def install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
