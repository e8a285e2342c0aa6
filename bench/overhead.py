"""Orchestration overhead of the distributed chain, measured side by side.

(a) a plain in-process loop over the frame function (the same diffusers calls,
    same FrameSpecs, steps and seeds, each frame seeding the next), and
(b) the distributed chain: planner, renderer, depth and assembler as processes
    over NATS and SeaweedFS, one job of the same frames.

Both use the ``tiny`` profile after a warm-up, so model loading is not counted, the
same torch thread count (``--threads``, default 1: on a small CPU box several busy
processes oversubscribe the cores and slow a multi-threaded torch 1.5-2x, which is
not orchestration), and colour coherence off (a feature's cost, not the chain's).
Per frame, (b)'s time is the gap between consecutive ``frame.rendered`` events
(for frame 0: from ``frame.started``); overhead = (b) - (a) for that frame.
Prints a table, then a last line ``overhead_ms=<median ms per frame> ratio=<b/a>``.

    python bench/overhead.py [--frames 12] [--steps 10]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image

from ghibli_anim.contracts import config
from ghibli_anim.contracts.pb import animation_pb2
from ghibli_anim.devtools.stack import LocalStack, tiny_cpu_env
from ghibli_anim.devtools.timed_jobs import timed_job
from ghibli_anim.runtime.bus.connection import connect
from ghibli_anim.runtime.client import AnimationClient


def _request(frames: int, steps: int, seed: int) -> animation_pb2.CreateAnimationRequest:
    return animation_pb2.CreateAnimationRequest(
        idea="a dragon glides over a medieval town at dusk",
        frames=frames,
        profile="tiny",
        seed=seed,
        steps=steps,
        formats=["gif"],
        color_coherence="off",
    )


async def _distributed(target: str, req) -> tuple[list[float], str]:
    async with AnimationClient(target, timeout_s=60) as client:
        job = await timed_job(client, req)
    return job.intervals_s, job.job_id


def _plain_loop(stack: LocalStack, job_id: str, settings) -> list[float]:
    """The same FrameSpecs as the distributed job, rendered in this process."""
    from ghibli_anim.runtime.jobstore import JobStore
    from ghibli_anim.services.renderer.diffusion import render_frame
    from ghibli_anim.services.renderer.pipelines import PipelineCache

    async def specs():

        conn = await connect(config.load("client", stack.env()), "bench")
        try:
            state, _ = await (await JobStore.open(conn.js)).get(job_id)
            return list(state.frame_specs)
        finally:
            await conn.close()

    frame_specs = asyncio.run(specs())
    cache = PipelineCache(settings)
    render_frame(frame_specs[0], cache=cache, settings=settings)  # warm-up
    times = []
    previous = None
    for spec in frame_specs:
        start = time.perf_counter()
        result = render_frame(
            spec, source=previous if spec.source_key else None, cache=cache, settings=settings
        )
        times.append(time.perf_counter() - start)
        previous = Image.open(io.BytesIO(result.png)).convert("RGB")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads in both arms")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        work = Path(tmp)
        env = tiny_cpu_env(work / "cache", args.threads)
        settings = config.load("client", {**env, "ANIM_STORE": "local"})
        with LocalStack(work / "stack", env=env) as stack:
            print("warming up the distributed chain...", flush=True)
            asyncio.run(_distributed(stack.planner_target, _request(2, args.steps, 1)))
            b, job_id = asyncio.run(
                _distributed(stack.planner_target, _request(args.frames, args.steps, 42))
            )
            a = _plain_loop(stack, job_id, settings)
    print(f"{'frame':>5} {'plain ms':>10} {'chain ms':>10} {'overhead ms':>12}")
    overheads = []
    for i, (ta, tb) in enumerate(zip(a, b, strict=True)):
        overheads.append((tb - ta) * 1000)
        print(f"{i:>5} {ta * 1000:>10.1f} {tb * 1000:>10.1f} {overheads[-1]:>12.1f}")
    print(f"plain total {sum(a):.3f} s, chain total {sum(b):.3f} s, frames {args.frames}")
    print(f"overhead_ms={statistics.median(overheads):.1f} ratio={sum(b) / sum(a):.3f}")


if __name__ == "__main__":
    main()
