"""Throughput of the distributed topology under load: frames per second of many jobs at once.

A LocalStack (nats-server, SeaweedFS, the planner, depth and assembler services and
``--renderers`` renderers, each its own process) on the ``tiny`` profile takes
``--jobs`` jobs of ``--frames`` frames, all created at once; the clock runs from the first
CreateAnimation to the last job's end, so it counts planning, rendering, depth and
assembly, and each renderer loading its models on its first frame (``--warmup`` jobs of
one frame run before the clock starts). Every job must complete with every frame rendered.
The defaults are those of the load test in tests/chaos/test_chaos.py, which checks
correctness only. Prints the settings, then a last line
``jobs=<n> frames=<n> renderers=<n> seconds=<s> frames_per_s=<f>``.

    python bench/load.py [--jobs 20] [--frames 4] [--renderers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from ghibli_anim.contracts.pb import animation_pb2, bus_pb2, types_pb2
from ghibli_anim.devtools.stack import LocalStack, tiny_cpu_env
from ghibli_anim.runtime.client import AnimationClient

IDEA = "a lantern festival by the river"


def _request(frames: int, seed: int) -> animation_pb2.CreateAnimationRequest:
    # One creator per job: the per-client cap (ANIM_MAX_JOBS_PER_CLIENT, 16) holds exactly
    # under concurrent creates, and this measures throughput, not the cap.
    return animation_pb2.CreateAnimationRequest(
        idea=IDEA, frames=frames, seed=seed, profile="tiny", client_id=f"load-{seed}"
    )


async def _run_jobs(target: str, jobs: int, frames: int, seed: int) -> tuple[int, float]:
    """Create ``jobs`` jobs at once and wait for all of them: (frames rendered, seconds)."""

    async def finish(client: AnimationClient, job_id: str) -> int:
        rendered = {
            ev.frame
            async for ev in client.watch(job_id)
            if ev.type == bus_pb2.EVENT_TYPE_FRAME_RENDERED
        }
        anim = await client.get(job_id)
        if anim.status != types_pb2.JOB_STATUS_COMPLETED or len(rendered) != frames:
            raise RuntimeError(
                f"job {job_id} ended {types_pb2.JobStatus.Name(anim.status)} with "
                f"{len(rendered)} of {frames} frames: {anim.error}"
            )
        return len(rendered)

    async with AnimationClient(target, timeout_s=60) as client:
        started = time.monotonic()
        created = await asyncio.gather(
            *(client.create(_request(frames, seed + i)) for i in range(jobs))
        )
        done = await asyncio.gather(*(finish(client, c.job_id) for c in created))
        return sum(done), time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20, help="jobs created at once")
    parser.add_argument("--frames", type=int, default=4, help="frames per job")
    parser.add_argument("--renderers", type=int, default=2, help="renderer processes")
    parser.add_argument(
        "--warmup", type=int, default=0, help="jobs of one frame before the clock starts"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per service")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds for all jobs")
    args = parser.parse_args()
    for name in ("jobs", "frames", "renderers", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}: must be at least 1")

    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        work = Path(tmp)
        env = tiny_cpu_env(work / "cache", args.threads)
        stack = LocalStack(work / "stack", env=env, replicas={"renderer": args.renderers})
        print(f"starting the stack with {args.renderers} renderer(s)...", flush=True)
        with stack:
            if args.warmup:
                print(f"warming up with {args.warmup} job(s) of one frame...", flush=True)
                asyncio.run(_run_jobs(stack.planner_target, args.warmup, 1, 10_000))
            print(f"{args.jobs} jobs x {args.frames} frames...", flush=True)
            frames, seconds = asyncio.run(
                asyncio.wait_for(
                    _run_jobs(stack.planner_target, args.jobs, args.frames, 0), args.timeout
                )
            )
    print(
        f"jobs={args.jobs} frames={frames} renderers={args.renderers} "
        f"seconds={seconds:.1f} frames_per_s={frames / seconds:.2f}"
    )


if __name__ == "__main__":
    main()
