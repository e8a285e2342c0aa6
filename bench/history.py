"""The planner's API with a long job history: latency of Create, Get, List and a 1-frame job
as the number of finished jobs in the store grows.

A LocalStack on the ``tiny`` profile (nats-server, SeaweedFS, planner, renderer, depth,
assembler as processes). One real 1-frame job runs first; its final record (as the planner
wrote it) is cloned under new ids into the job bucket until it holds N finished jobs, which
the job store then indexes (``JobStore.rebuild_index``, what a planner does once for a
bucket written before the indexes: the same entries as creating each job would write).
Then, for each N: ``--samples`` CreateAnimation calls (each job cancelled at once, so the
renderers stay idle), GetAnimation of random history jobs, ListAnimations' first page,
``--jobs`` 1-frame jobs end to end (create to job.completed), and the planner's memory
(RSS); also the first page of one client's jobs and of the FAILED ones (there are none:
that call reads as far as its scan bound), and what the planner's timers read (the
unfinished jobs, the status counters, the finished jobs up to the first recent one).
Also, at the largest N, ``--burst`` concurrent creates of one client, all of which must be
answered (admitted or RESOURCE_EXHAUSTED, never an error). Prints a table, then a last
line ``create_p95_ms_<N>=<ms> list_p95_ms_<N>=<ms> e2e_ratio_<N>=<t(N)/t(0)>`` for the
largest N.

    python bench/history.py [--sizes 0,1000,10000,100000] [--samples 30] [--jobs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from pathlib import Path

import grpc

from ghibli_anim.contracts import config, keys, lifecycle
from ghibli_anim.contracts.pb import animation_pb2, bus_pb2, types_pb2
from ghibli_anim.devtools.stack import LocalStack, tiny_cpu_env
from ghibli_anim.runtime.bus.connection import connect
from ghibli_anim.runtime.client import AnimationClient
from ghibli_anim.runtime.jobstore import JobStore

IDEA = "a lantern festival by the river"


def _request(seed: int, client: str = "", frames: int = 1) -> animation_pb2.CreateAnimationRequest:
    req = animation_pb2.CreateAnimationRequest(idea=IDEA, frames=frames, seed=seed, profile="tiny")
    req.client_id = client
    return req


def _ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _cancel(client: AnimationClient, job_id: str) -> None:
    """Cancel, unless the job (one tiny frame) has finished already."""
    try:
        await client.cancel(job_id)
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
            raise


async def _one_job(client: AnimationClient, seed: int) -> float:
    started = time.monotonic()
    job = await client.create(_request(seed))
    async for event in client.watch(job.job_id):
        if event.type in (bus_pb2.EVENT_TYPE_JOB_FAILED, bus_pb2.EVENT_TYPE_JOB_CANCELLED):
            raise RuntimeError(f"job {job.job_id}: {event.reason}")
    return time.monotonic() - started


async def _seed_history(stack: LocalStack, template: animation_pb2.JobState, total: int) -> None:
    """Clone ``template`` until the job bucket holds ``total`` finished jobs, then index
    them (the planner is idle meanwhile)."""
    bus = await connect(config.load("client", stack.env()), "bench-history")
    try:
        store = await JobStore.open(bus.js)
        have = len(await store.list())
        semaphore = asyncio.Semaphore(64)

        async def put(i: int) -> None:
            state = animation_pb2.JobState()
            state.CopyFrom(template)
            state.job_id = keys.new_job_id()
            state.request.client_id = f"history-{i % 100}"
            async with semaphore:
                await store.jobs.create(state.job_id, state.SerializeToString())

        await asyncio.gather(*(put(i) for i in range(have, total)))
        started = time.monotonic()
        indexed = await store.rebuild_index()
        print(f"indexed {indexed} jobs in {time.monotonic() - started:.1f} s", flush=True)
    finally:
        await bus.close()


def _rss_mb(stack: LocalStack) -> float:
    pid = stack.processes["planner"][0].pid
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _measure(stack: LocalStack, args: argparse.Namespace, size: int) -> dict:
    async with AnimationClient(stack.planner_target, timeout_s=120) as client:
        history = [
            a.job_id
            for a in (
                await client.stub.ListAnimations(
                    animation_pb2.ListAnimationsRequest(page_size=50), timeout=120
                )
            ).animations
        ]
        creates, gets, lists, by_client, by_status = [], [], [], [], []
        for i in range(args.samples):
            started = time.monotonic()
            job = await client.create(_request(1_000_000 + i, client=f"bench-{size}"))
            creates.append(time.monotonic() - started)
            await _cancel(client, job.job_id)
            if history:
                started = time.monotonic()
                await client.get(random.choice(history))
                gets.append(time.monotonic() - started)
            started = time.monotonic()
            await client.stub.ListAnimations(
                animation_pb2.ListAnimationsRequest(page_size=50), timeout=120
            )
            lists.append(time.monotonic() - started)
            for query, times in (
                ({"client_id": f"history-{i % 100}"}, by_client),
                # No job in the history failed: the call reads as far as its scan bound.
                ({"status": types_pb2.JOB_STATUS_FAILED}, by_status),
            ):
                started = time.monotonic()
                await client.stub.ListAnimations(
                    animation_pb2.ListAnimationsRequest(page_size=50, **query), timeout=120
                )
                times.append(time.monotonic() - started)
        e2e = [await _one_job(client, 2_000_000 + i) for i in range(args.jobs)]
    return {
        "creates": creates,
        "gets": gets,
        "lists": lists,
        "by_client": by_client,
        "by_status": by_status,
        "timers": await _timers(stack, args.samples),
        "e2e": statistics.median(e2e),
        "rss": _rss_mb(stack),
    }


async def _timers(stack: LocalStack, samples: int) -> list[float]:
    """What the planner's timers read, through the job store: the unfinished jobs (time
    limit), the status counters (metrics scrape) and the finished jobs up to the first one
    within a day (retention, with nothing to expire)."""
    bus = await connect(config.load("client", stack.env()), "bench-history")
    try:
        store = await JobStore.open(bus.js)
        times = []
        for _ in range(samples):
            started = time.monotonic()
            await store.open_jobs()
            await store.counts()
            async for _ in store.finished_before(time.time() - 86400):
                pass
            times.append(time.monotonic() - started)
        return times
    finally:
        await bus.close()


async def _burst(stack: LocalStack, count: int) -> tuple[int, int, int]:
    """``count`` creates of one client at once: (admitted, refused by the cap, errors)."""
    async with AnimationClient(stack.planner_target, timeout_s=120) as client:

        async def create(i: int) -> str:
            try:
                # Long jobs: none finishes (and frees its slot) while the burst lasts.
                job = await client.create(_request(3_000_000 + i, client="burst", frames=120))
            except grpc.aio.AioRpcError as exc:
                return "refused" if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED else "error"
            return job.job_id

        outcomes = await asyncio.gather(*(create(i) for i in range(count)))
        admitted = [o for o in outcomes if o not in ("refused", "error")]
        for job_id in admitted:  # after the burst: a cancel would free a slot during it
            await _cancel(client, job_id)
    return len(admitted), outcomes.count("refused"), outcomes.count("error")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0,1000,10000,100000", help="finished jobs, ascending")
    parser.add_argument("--samples", type=int, default=30, help="calls of each kind per size")
    parser.add_argument("--jobs", type=int, default=3, help="1-frame jobs end to end per size")
    parser.add_argument("--burst", type=int, default=40, help="concurrent creates at the end")
    args = parser.parse_args()
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        parser.error(f"--sizes: expected comma-separated counts, got {args.sizes!r}")
    if sizes != sorted(sizes) or sizes[0] != 0 or any(s < 0 for s in sizes):
        parser.error(f"--sizes: must start at 0 and ascend, got {args.sizes!r}")
    for name in ("samples", "jobs", "burst"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}: must be at least 1")

    with tempfile.TemporaryDirectory(prefix="bench-history-") as tmp:
        work = Path(tmp)
        env = {**tiny_cpu_env(work / "cache"), "ANIM_MAX_JOBS_PER_CLIENT": "16"}
        stack = LocalStack(work / "stack", env=env)
        print("starting the stack...", flush=True)
        with stack:

            async def template() -> animation_pb2.JobState:
                async with AnimationClient(stack.planner_target, timeout_s=120) as client:
                    job = await client.create(_request(7))
                    async for _ in client.watch(job.job_id):
                        pass
                bus = await connect(config.load("client", stack.env()), "bench-history")
                try:
                    state, _ = await (await JobStore.open(bus.js)).get(job.job_id)
                finally:
                    await bus.close()
                if state.status != lifecycle.COMPLETED:
                    raise RuntimeError(f"the template job ended {state.status}: {state.error}")
                return state

            record = asyncio.run(template())
            rows = []
            for size in sizes:
                if size:
                    print(f"seeding {size} finished jobs...", flush=True)
                    asyncio.run(_seed_history(stack, record, size))
                print(f"measuring with {size} jobs in the history...", flush=True)
                rows.append((size, asyncio.run(_measure(stack, args, size))))
            admitted, refused, errors = asyncio.run(_burst(stack, args.burst))

    print()
    print(
        "| finished jobs | Create p50 / p95 ms | Get p50 ms | List p50 / p95 ms "
        "| List by client / by status p95 ms | timers p95 ms | 1-frame job s | planner RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for size, m in rows:
        get = f"{_ms(m['gets'], 0.5):.1f}" if m["gets"] else "-"
        print(
            f"| {size:,} | {_ms(m['creates'], 0.5):.1f} / {_ms(m['creates'], 0.95):.1f} | {get} "
            f"| {_ms(m['lists'], 0.5):.1f} / {_ms(m['lists'], 0.95):.1f} "
            f"| {_ms(m['by_client'], 0.95):.1f} / {_ms(m['by_status'], 0.95):.1f} "
            f"| {_ms(m['timers'], 0.95):.1f} | {m['e2e']:.2f} | {m['rss']:.0f} |"
        )
    print(
        f"\n{args.burst} concurrent creates of one client (cap 16) with {sizes[-1]:,} jobs: "
        f"{admitted} admitted, {refused} refused by the cap, {errors} errors"
    )
    largest, last = rows[-1]
    label = f"{largest // 1000}k" if largest >= 1000 else str(largest)
    print(
        f"create_p95_ms_{label}={_ms(last['creates'], 0.95):.1f} "
        f"list_p95_ms_{label}={_ms(last['lists'], 0.95):.1f} "
        f"e2e_ratio_{label}={last['e2e'] / rows[0][1]['e2e']:.2f}"
    )


if __name__ == "__main__":
    main()
