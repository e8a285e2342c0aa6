"""Prometheus metrics of every service, and the HTTP endpoint that serves them.

``ANIM_METRICS_PORT`` turns the endpoint on: ``run_service`` serves
``/metrics`` on ``ANIM_GRPC_HOST:ANIM_METRICS_PORT`` (0 = a free port, logged;
empty = no endpoint, the default, so that several services on one machine never
fight over a port). The deploy files set 9090 in every container.

What each service exports (all names start with ``anim_``):

- every work consumer (``runtime.bus.consumer.WorkConsumer``), labelled ``consumer`` = its durable
  (plan, render, depth, assemble, conductor, advisories):
  ``anim_messages_handled_total{consumer,outcome}`` (outcome: ok, retry, failed,
  invalid, interrupted), ``anim_message_redeliveries_total`` (deliveries after
  the first), ``anim_message_handle_seconds`` (handler time),
  ``anim_message_queue_wait_seconds`` (publication to the start of handling) and
  ``anim_consumer_pending`` (backlog of the durable, asked of NATS at scrape time);
- renderer: ``anim_frames_rendered_total{mode}``,
  ``anim_frames_failed_total{retryable}``, ``anim_denoise_steps_total`` and
  ``anim_frame_stage_seconds{stage}`` with the stages of ``STAGES``;
- planner: ``anim_jobs{state}`` (jobs in KV by state, counted at scrape time) and
  ``anim_job_seconds`` (creation to completion of completed jobs);
- a process that has initialised CUDA (renderer, depth):
  ``anim_gpu_memory_allocated_bytes{device}`` and
  ``anim_gpu_memory_reserved_bytes{device}``.

Plus the client library's ``process_*`` and ``python_*`` metrics. The dashboard in
deploy/grafana/ghibli-anim-dashboard.json charts these names.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    REGISTRY,
    Counter,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ghibli_anim.runtime import tracing

log = logging.getLogger(__name__)

# No `*_created` series: a timestamp per counter and histogram that doubles the series
# and that neither the dashboard nor rate() needs.
disable_created_metrics()

SCRAPE_TIMEOUT_S = 5.0
"""How long a scrape waits for a service's scrape-time values (backlog, jobs by state)."""

# 5 ms .. 10 min: a cached tiny frame and a cold real-size frame on a CPU fit.
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    600.0,
)  # fmt: skip
JOB_BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0)

OUTCOMES = ("ok", "retry", "failed", "invalid", "interrupted")
"""How a consumer finished with a message: acked, nakked for redelivery, gave up
(non-retryable or the last delivery), not the expected message (termed), handed
back at shutdown."""

STAGES = (
    "queue_wait",
    "load",
    "decode",
    "warp",
    "denoise",
    "color",
    "depth",
    "encode",
    "measure",
    "store",
)
"""Stages of a frame: time since the render work was published (queue_wait);
reading the inputs and getting the models (load: source frame, depth map, colour
reference from memory or the store, and the pipeline from the cache, which loads it
the first time); turning stored PNGs into pixels (decode); the camera move of the
source and its depth map (warp); the diffusers pipeline call (denoise: prompt
encoding, denoising steps, VAE decode); sharpening and colour matching (color); the
depth map of the new frame when the renderer makes it (depth: the depth model and its
pre- and post-processing); the PNGs to store (encode) and the colour distances the record
states (measure), both on the encoder thread, beside the depth map and the next frame;
writing the frame, its record and depth map (store)."""


# --------------------------------------------------------------------------
# Work consumers (every service)
# --------------------------------------------------------------------------

_MESSAGES_HANDLED = Counter(
    "anim_messages_handled",
    "Messages a work consumer finished with, by outcome: ok (acked), retry (nakked for "
    "redelivery), failed (gave up), invalid (not the expected message), interrupted "
    "(handed back at shutdown).",
    ["consumer", "outcome"],
)
_REDELIVERIES = Counter(
    "anim_message_redeliveries",
    "Deliveries of a message after its first (a retry, or a worker that stopped).",
    ["consumer"],
)
_HANDLE_SECONDS = Histogram(
    "anim_message_handle_seconds",
    "Time a consumer's handler spent on one delivery.",
    ["consumer"],
    buckets=LATENCY_BUCKETS,
)
_QUEUE_WAIT_SECONDS = Histogram(
    "anim_message_queue_wait_seconds",
    "Time from a message's publication to the start of its handling.",
    ["consumer"],
    buckets=LATENCY_BUCKETS,
)


@dataclass(frozen=True)
class ConsumerMetrics:
    """The series of one durable consumer."""

    consumer: str

    def __post_init__(self) -> None:
        # Every series exists from the start (at 0), so rates and dashboards
        # show a quiet consumer rather than no data.
        for outcome in OUTCOMES:
            _MESSAGES_HANDLED.labels(self.consumer, outcome)
        _REDELIVERIES.labels(self.consumer)
        _HANDLE_SECONDS.labels(self.consumer)
        _QUEUE_WAIT_SECONDS.labels(self.consumer)

    def received(self, num_delivered: int, queue_wait_s: float) -> None:
        _QUEUE_WAIT_SECONDS.labels(self.consumer).observe(queue_wait_s)
        if num_delivered > 1:
            _REDELIVERIES.labels(self.consumer).inc()

    def handled(self, outcome: str, seconds: float | None = None) -> None:
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome: must be one of {', '.join(OUTCOMES)}, got {outcome!r}")
        _MESSAGES_HANDLED.labels(self.consumer, outcome).inc()
        if seconds is not None:
            _HANDLE_SECONDS.labels(self.consumer).observe(seconds)


# --------------------------------------------------------------------------
# Renderer
# --------------------------------------------------------------------------


class RendererMetrics:
    """Frames rendered and failed, denoising steps, and frame latency by stage."""

    def __init__(self) -> None:
        self.frames_rendered = Counter(
            "anim_frames_rendered",
            "Frames rendered and stored, by mode (txt2img, img2img, controlnet_img2img).",
            ["mode"],
        )
        self.frames_failed = Counter(
            "anim_frames_failed",
            "Frames given up on (frame.failed), by whether a resume could still succeed.",
            ["retryable"],
        )
        self.denoise_steps = Counter("anim_denoise_steps", "Denoising steps run.")
        self.stage_seconds = Histogram(
            "anim_frame_stage_seconds",
            "Time of each stage of a rendered frame: " + ", ".join(STAGES) + ".",
            ["stage"],
            buckets=LATENCY_BUCKETS,
        )
        for stage in STAGES:
            self.stage_seconds.labels(stage)
        for retryable in ("true", "false"):
            self.frames_failed.labels(retryable)

    def failed(self, retryable: bool) -> None:
        self.frames_failed.labels("true" if retryable else "false").inc()


@functools.cache
def renderer() -> RendererMetrics:
    """The renderer's metrics, registered on first use (other services never show them)."""
    return RendererMetrics()


@dataclass
class FrameTimer:
    """The stage times of one frame, observed together once the frame is stored.

    ``time(stage)`` measures a block (and traces it as a span ``frame.<stage>``);
    ``add(stage, s)`` adds a duration measured elsewhere. ``observe`` puts each
    stage into ``anim_frame_stage_seconds`` and onto the current span. Threads may
    add to one timer one after another (the render runs in a worker thread).
    """

    service: str = "renderer"
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    def add(self, stage: str, seconds: float) -> None:
        if stage not in self.seconds:
            raise ValueError(f"stage: must be one of {', '.join(STAGES)}, got {stage!r}")
        self.seconds[stage] += max(0.0, seconds)

    @contextlib.contextmanager
    def time(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        with tracing.span(self.service, f"frame.{stage}"):
            try:
                yield
            finally:
                self.add(stage, time.perf_counter() - started)

    def observe(self, mode: str = "") -> None:
        """Record a rendered frame: its stages, and one more frame of ``mode``."""
        metrics = renderer()
        for stage, seconds in self.seconds.items():
            metrics.stage_seconds.labels(stage).observe(seconds)
        tracing.set_attributes({f"anim.frame.{k}_s": round(v, 6) for k, v in self.seconds.items()})
        if mode:
            metrics.frames_rendered.labels(mode).inc()


# --------------------------------------------------------------------------
# Planner
# --------------------------------------------------------------------------


class PlannerMetrics:
    """How long completed jobs took (``anim_jobs`` is a scrape-time gauge)."""

    def __init__(self) -> None:
        self.job_seconds = Histogram(
            "anim_job_seconds",
            "Time from a job's creation to its completion (completed jobs).",
            buckets=JOB_BUCKETS,
        )


@functools.cache
def planner() -> PlannerMetrics:
    """The planner's metrics, registered on first use."""
    return PlannerMetrics()


# --------------------------------------------------------------------------
# Gauges read at scrape time from the services' event loops
# --------------------------------------------------------------------------

Sample = tuple[str, dict[str, str], float]
"""(gauge name, labels, value): one value a service reports at scrape time."""

SCRAPE_GAUGES: dict[str, str] = {
    "anim_consumer_pending": "Messages waiting for a durable consumer: not yet delivered "
    "plus delivered and not yet acknowledged.",
    "anim_jobs": "Jobs in the job store, by state.",
}
"""The gauges services may report at scrape time, with their help text."""

Source = Callable[[], Awaitable[list[Sample]]]


def jobs_samples(counts: dict[str, int], states: Iterable[str]) -> list[Sample]:
    """``anim_jobs`` for every state in ``states`` (states without jobs at 0)."""
    return [("anim_jobs", {"state": state}, float(counts.get(state, 0))) for state in states]


class ScrapeTimeCollector(Collector):
    """Gauges that need NATS (a consumer's backlog, jobs by state), asked for at scrape.

    A service adds a source: a coroutine function run on the service's event loop
    (the NATS connection lives there) from the HTTP server's thread, waited for
    at most ``SCRAPE_TIMEOUT_S``. A source that fails or times out is left out of
    that scrape (and logged); the others still report. Samples of one gauge from
    several sources (the embedded mode's services) go into one family.
    """

    def __init__(self) -> None:
        self._sources: dict[int, tuple[asyncio.AbstractEventLoop, Source]] = {}
        self._next = 0
        self._lock = threading.Lock()

    def add(self, loop: asyncio.AbstractEventLoop, source: Source) -> int:
        with self._lock:
            self._next += 1
            self._sources[self._next] = (loop, source)
            return self._next

    def remove(self, token: int) -> None:
        with self._lock:
            self._sources.pop(token, None)

    def describe(self) -> list[Metric]:
        return []  # the families depend on the sources present at scrape time

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            sources = list(self._sources.values())
        families: dict[str, GaugeMetricFamily] = {}
        for loop, source in sources:
            if _on_loop(loop) or loop.is_closed():
                continue  # waiting here would block the very loop that must answer
            future = asyncio.run_coroutine_threadsafe(source(), loop)
            try:
                samples = future.result(SCRAPE_TIMEOUT_S)
            except Exception as exc:
                future.cancel()  # a timed-out source stops rather than piling up
                log.warning("scrape-time metrics unavailable: %r", exc)
                continue
            for name, labels, value in samples:
                family = families.get(name)
                if family is None:
                    family = families[name] = GaugeMetricFamily(
                        name, SCRAPE_GAUGES[name], labels=list(labels)
                    )
                family.add_metric(list(labels.values()), value)
        yield from families.values()


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


SCRAPE_TIME = ScrapeTimeCollector()
REGISTRY.register(SCRAPE_TIME)


# --------------------------------------------------------------------------
# GPU memory
# --------------------------------------------------------------------------


GPU_ALLOCATED = "anim_gpu_memory_allocated_bytes"
GPU_RESERVED = "anim_gpu_memory_reserved_bytes"


class GpuMemoryCollector(Collector):
    """GPU memory in use by this process's torch, per CUDA device, read at scrape time.

    Reports nothing unless torch is already imported and CUDA initialised here, so
    it never imports torch (planner, assembler) nor starts a CUDA context itself.
    """

    def describe(self) -> list[Metric]:
        return []  # the families depend on the devices: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        torch = sys.modules.get("torch")
        if torch is None:
            return
        try:
            if not torch.cuda.is_initialized():
                return
            count = torch.cuda.device_count()
            allocated = GaugeMetricFamily(
                GPU_ALLOCATED,
                "GPU memory held by tensors of this process.",
                labels=["device"],
            )
            reserved = GaugeMetricFamily(
                GPU_RESERVED,
                "GPU memory reserved by this process's caching allocator.",
                labels=["device"],
            )
            for index in range(count):
                allocated.add_metric([str(index)], float(torch.cuda.memory_allocated(index)))
                reserved.add_metric([str(index)], float(torch.cuda.memory_reserved(index)))
        except Exception as exc:  # a scrape must never fail because of a device error
            log.warning("gpu memory metrics unavailable: %s", exc)
            return
        yield allocated
        yield reserved


_gpu_lock = threading.Lock()
_gpu_registered = False


def register_gpu_collector() -> None:
    """Register ``GpuMemoryCollector`` once per process."""
    global _gpu_registered
    with _gpu_lock:
        if not _gpu_registered:
            REGISTRY.register(GpuMemoryCollector())
            _gpu_registered = True


# --------------------------------------------------------------------------
# The HTTP endpoint
# --------------------------------------------------------------------------


class MetricsPortError(OSError):
    """The metrics endpoint cannot listen on ANIM_METRICS_PORT."""


@dataclass
class _Endpoint:
    server: WSGIServer
    thread: threading.Thread
    users: int = 0

    @property
    def port(self) -> int:
        return int(self.server.server_port)


_endpoints: dict[tuple[str, int], _Endpoint] = {}
_endpoints_lock = threading.Lock()


def serve(host: str, port: int) -> int:
    """Serve ``/metrics`` on ``host:port`` (0 = a free port); the bound port.

    One endpoint per (host, requested port) and process: the embedded mode's
    four services share it (one registry holds all their metrics). Pair every
    call with ``release``. Raises ``MetricsPortError`` (naming ANIM_METRICS_PORT)
    when the port cannot be bound.
    """
    with _endpoints_lock:
        endpoint = _endpoints.get((host, port))
        if endpoint is None:
            try:
                server, thread = start_http_server(port, addr=host)
            except OSError as exc:
                raise MetricsPortError(
                    f"ANIM_METRICS_PORT: cannot serve metrics on {host}:{port}: {exc}"
                ) from None
            endpoint = _endpoints[(host, port)] = _Endpoint(server, thread)
            log.info("metrics listening", extra={"metrics_port": endpoint.port})
        endpoint.users += 1
        return endpoint.port


def release(host: str, port: int) -> None:
    """The caller of ``serve(host, port)`` is done; the last one stops the endpoint."""
    with _endpoints_lock:
        endpoint = _endpoints.get((host, port))
        if endpoint is None:
            return
        endpoint.users -= 1
        if endpoint.users > 0:
            return
        del _endpoints[(host, port)]
    endpoint.server.shutdown()
    endpoint.server.server_close()
    endpoint.thread.join(timeout=5)
