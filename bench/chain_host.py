"""What the chain adds to the GPU's work per frame, at full size, with instant model stand-ins.

The real chain (planner and its conductor, renderer, depth, assembler, NATS, the S3 store)
renders one job of ``--frames`` frames at ``--size`` x ``--size`` with the default features:
colour coherence ``lab``, depth on (ControlNet guided by the previous frame's depth map) and
the storyboard's camera moves. Only the model forward calls are replaced, by
:mod:`ghibli_anim.devtools.standin` (instant answers that look like painted frames, so that
decoding, colour matching and PNG encoding cost what they cost on real frames). What a frame
takes here is therefore exactly the host work, I/O and messaging on the frame's critical
path: what a GPU would wait on.

Two arms, one after the other in one run: the services in one process (``embedded``, as
``ghibli-anim generate`` runs them) and as separate processes over loopback
(``distributed``, as a deployment runs them; tiny models, one torch and one OpenCV thread
each). A warm-up job loads every model first. Per frame: the time from frame i-1's
``frame.rendered`` event to frame i's (frame 0: from its ``frame.started``). The breakdown
comes from the services' own trace spans: the renderer's stages (``frame.*`` spans), the
depth handler, the conductor's handlers, and the rest (bus hops, job-state reads and writes,
queueing: the gap no span covers). The distributed arm runs twice, on a fresh stack each
time: once with every service exporting its spans to this script by OTLP, for the
breakdown, and once without, as a deployment runs by default, for its figures (exporting
spans costs CPU, a few ms a frame here). That second run also prints the CPU time each
process of the stack used per frame, and their total over this machine's cores: with more
busy processes than cores, a floor under the time per frame.

Last line: ``host_ms_per_frame=<median> p95=<p95>`` of the distributed arm, untraced.

    python bench/chain_host.py [--frames 24] [--size 512] [--arms embedded,distributed]
                               [--no-breakdown]

``--no-breakdown`` skips the traced run: the figures only, in half the time (what
``bench/interleave.py`` runs, alternating two checkouts).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ghibli_anim.contracts.pb import animation_pb2
from ghibli_anim.devtools import procfs
from ghibli_anim.devtools.stack import LocalStack, tiny_cpu_env
from ghibli_anim.devtools.timed_jobs import timed_job
from ghibli_anim.runtime.client import AnimationClient
from ghibli_anim.runtime.processes import free_port
from ghibli_anim.runtime.service import use_short_gil_switches

SERVICES = ("planner", "renderer", "depth", "assembler")


@dataclass
class Span:
    name: str
    service: str
    frame: int | None
    job_id: str | None
    start: float  # seconds
    end: float
    parent: bytes = b""
    span_id: bytes = b""

    @property
    def ms(self) -> float:
        return (self.end - self.start) * 1000


@dataclass
class Run:
    job_id: str
    intervals_ms: list[float]
    spans: list[Span] = field(default_factory=list)
    cpu_ms: dict[str, float] = field(default_factory=dict)
    """CPU time per frame of each process of the stack (distributed arm only)."""


def _request(frames: int, size: int, seed: int) -> animation_pb2.CreateAnimationRequest:
    return animation_pb2.CreateAnimationRequest(
        idea="a paper lantern drifts over a rice field at dusk",
        frames=frames,
        profile="tiny",
        seed=seed,
        width=size,
        height=size,
        steps=20,  # img2img at the profile's strength: a handful of progress steps per frame
        depth=True,
        formats=["gif"],
    )


async def _job(target: str, req: animation_pb2.CreateAnimationRequest, on_last_frame=None) -> Run:
    async with AnimationClient(target, timeout_s=120) as client:
        job = await timed_job(client, req, on_last_frame)
    return Run(job.job_id, [t * 1000 for t in job.intervals_s])


# --- spans ------------------------------------------------------------------------------------


def _attr(attributes, key: str):
    for kv in attributes:
        if kv.key == key:
            value = kv.value
            kind = value.WhichOneof("value")
            return getattr(value, kind) if kind else None
    return None


class OtlpReceiver:
    """A minimal OTLP/HTTP trace receiver on loopback: keeps every span it is sent."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        self.spans: list[Span] = []
        self.port = free_port()
        lock = threading.Lock()
        spans = self.spans

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                got = []
                for resource in request.resource_spans:
                    for scope in resource.scope_spans:
                        for s in scope.spans:
                            got.append(
                                Span(
                                    name=s.name,
                                    service=_attr(s.attributes, "anim.service") or "",
                                    frame=_attr(s.attributes, "anim.frame"),
                                    job_id=_attr(s.attributes, "anim.job_id"),
                                    start=s.start_time_unix_nano / 1e9,
                                    end=s.end_time_unix_nano / 1e9,
                                    parent=bytes(s.parent_span_id),
                                    span_id=bytes(s.span_id),
                                )
                            )
                with lock:
                    spans.extend(got)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()
                self.wfile.write(trace_service_pb2.ExportTraceServiceResponse().SerializeToString())

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _sdk_spans(finished) -> list[Span]:
    out = []
    for s in finished:
        attrs = s.attributes or {}
        out.append(
            Span(
                name=s.name,
                service=str(attrs.get("anim.service", "")),
                frame=attrs.get("anim.frame"),
                job_id=attrs.get("anim.job_id"),
                start=s.start_time / 1e9,
                end=s.end_time / 1e9,
                parent=s.parent.span_id.to_bytes(8, "big") if s.parent else b"",
                span_id=s.context.span_id.to_bytes(8, "big"),
            )
        )
    return out


def breakdown(run: Run) -> list[tuple[str, float]]:
    """Median ms per frame (frames 1..N-1) of each part of the critical path."""
    spans = run.spans
    by_id = {s.span_id: s for s in spans}

    def frame_of(s: Span) -> int | None:
        while s is not None and s.frame is None and s.parent:
            s = by_id.get(s.parent)
        return None if s is None else s.frame

    def job_of(s: Span) -> str | None:
        while s is not None and s.job_id is None and s.parent:
            s = by_id.get(s.parent)
        return None if s is None else s.job_id

    per_frame: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for s in spans:
        if job_of(s) != run.job_id:
            continue
        i = frame_of(s)
        if i is None:
            continue
        if s.name == "render":
            per_frame[i]["renderer (whole handler)"] += s.ms
        elif s.name.startswith("frame.") and s.service == "renderer":
            per_frame[i][f"  renderer {s.name.removeprefix('frame.')}"] += s.ms
        elif s.name == "depth":
            per_frame[i + 1][
                "depth service (host side: read, decode, model I/O, encode, write)"
            ] += s.ms
        elif s.name.startswith("depth."):
            per_frame[i + 1][f"  depth {s.name.removeprefix('depth.')}"] += s.ms
        elif s.name in ("conductor frame.rendered", "conductor depth.ready"):
            per_frame[i + 1]["conductor (frame.rendered, depth.ready)"] += s.ms
    rows: dict[str, list[float]] = defaultdict(list)
    frames = range(1, len(run.intervals_ms))
    for i in frames:
        parts = per_frame.get(i, {})
        for name, ms in parts.items():
            rows[name].append(ms)
        covered = sum(ms for name, ms in parts.items() if not name.startswith("  "))
        rows["bus hops, job state, queueing (no span)"].append(run.intervals_ms[i] - covered)
    order = sorted(rows, key=lambda n: (n.startswith("bus"), n.lstrip().split(" ")[0], n))
    return [
        (name, statistics.median(rows[name] + [0.0] * (len(frames) - len(rows[name]))))
        for name in order
    ]


# --- the two arms -----------------------------------------------------------------------------


def _cpu_times(stack: LocalStack) -> dict[str, float]:
    """CPU seconds used so far by each process of ``stack`` and by this one (the watching
    client and, when traced, the span receiver)."""
    pids = {label: server.pid for label, server in stack.servers()}
    pids["this benchmark (client, span receiver)"] = os.getpid()
    return {label: procfs.cpu_seconds(pid) for label, pid in pids.items() if pid is not None}


def _distributed(work: Path, env: dict[str, str], frames: int, size: int, *, traced: bool) -> Run:
    """One job through the stack as separate processes. ``traced``: the services export
    their spans to this script, for the breakdown; exporting them costs CPU too, so the
    figures come from a run without."""
    receiver = OtlpReceiver() if traced else None
    if receiver is not None:
        env = {
            **env,
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        }
    folder = work / ("stack-traced" if traced else "stack")
    try:
        with LocalStack(folder, services=SERVICES, env=env, standin=True) as stack:
            asyncio.run(_job(stack.planner_target, _request(2, size, 1)))  # warm-up
            before = _cpu_times(stack)
            after: dict[str, float] = {}
            # Up to the last frame: the outputs' assembly that follows is not the chain's.
            run = asyncio.run(
                _job(
                    stack.planner_target,
                    _request(frames, size, 42),
                    lambda: after.update(_cpu_times(stack)),
                )
            )
        run.cpu_ms = {
            label: (after[label] - before[label]) * 1000 / frames
            for label in before
            if label in after
        }
        if receiver is not None:  # stopping the services flushed their last spans
            run.spans = list(receiver.spans)
        return run
    finally:
        if receiver is not None:
            receiver.close()


def _embedded(work: Path, env: dict[str, str], frames: int, size: int) -> Run:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from ghibli_anim.devtools import standin
    from ghibli_anim.embedded import EmbeddedStack

    standin.install()
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    async def main() -> Run:
        local = {**env, "ANIM_RUNS_DIR": str(work / "runs")}
        async with EmbeddedStack(env=local, work_dir=work / "embedded") as stack:
            await _job(stack.planner_target, _request(2, size, 1))
            return await _job(stack.planner_target, _request(frames, size, 42))

    run = asyncio.run(main())
    run.spans = _sdk_spans(exporter.get_finished_spans())
    exporter.shutdown()
    return run


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def report(arm: str, run: Run) -> tuple[float, float]:
    median, p95 = statistics.median(run.intervals_ms), _p95(run.intervals_ms)
    print(
        f"\n{arm}: {len(run.intervals_ms)} frames, ms per frame median {median:.1f}, p95 {p95:.1f}"
    )
    if run.spans:
        print(f"  {'part of the critical path (median ms per frame)':<72} {'ms':>7}")
        for name, ms in breakdown(run):
            print(f"  {name:<72} {ms:>7.1f}")
    if run.cpu_ms:
        # On a machine with fewer cores than busy processes, the chain waits for CPU:
        # the total over the cores is a floor under the time per frame.
        cores = os.cpu_count() or 1
        total = sum(run.cpu_ms.values())
        print(f"  {'CPU time by process (ms per frame, job start to last frame)':<72} {'ms':>7}")
        for label, ms in sorted(run.cpu_ms.items(), key=lambda kv: -kv[1]):
            print(f"  {'  ' + label:<72} {ms:>7.1f}")
        print(
            f"  {'  total; over ' + str(cores) + ' cores':<72} {total:>7.1f} {total / cores:>6.1f}"
        )
    return median, p95


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--size", type=int, default=512, help="frame width and height")
    parser.add_argument("--arms", default="embedded,distributed")
    parser.add_argument(
        "--no-breakdown",
        action="store_true",
        help="skip the distributed arm's traced run (its breakdown): the figures only",
    )
    args = parser.parse_args()
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = set(arms) - {"embedded", "distributed"}
    if unknown or not arms:
        parser.error(f"--arms: embedded and/or distributed, got {args.arms!r}")
    # As `ghibli-anim generate` (the embedded arm) and every service process run: this
    # process is also the watching client of the distributed arm, whichever arms run.
    use_short_gil_switches()
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-chain-host-") as tmp:
        work = Path(tmp)
        env = tiny_cpu_env(work / "cache", 1)
        if "embedded" in arms:
            results["embedded"] = report("embedded", _embedded(work, env, args.frames, args.size))
        if "distributed" in arms:
            if not args.no_breakdown:
                traced = _distributed(work, env, args.frames, args.size, traced=True)
                report("distributed, traced (for the breakdown)", traced)
            results["distributed"] = report(
                "distributed", _distributed(work, env, args.frames, args.size, traced=False)
            )
    last = results.get("distributed") or results["embedded"]
    print(f"host_ms_per_frame={last[0]:.1f} p95={last[1]:.1f}")


if __name__ == "__main__":
    main()
