"""What reading a job's state from the KV bucket costs: a direct get against the stream's
MSG.GET API.

The renderer reads the job's state (``JobStore.get``, one KV get) for every frame it renders,
and the state holds every frame's FrameSpec: ~20 KB at 24 frames, ~100 KB at 120. Through
the stream's MSG.GET API the server answers with JSON holding the value in base64; a direct
get (a bucket with ``allow_direct``, what ``bus init`` makes with one replica:
``runtime/bus/topology.py``, ``direct_reads``) answers with the stored message itself.

This script puts a real-shaped job state (the offline planner's shots resolved to FrameSpecs
for the default profile) in two buckets of a local nats-server, one read each way, and reads
it with nats-py's ``KeyValue.get`` (what ``JobStore.get`` calls), the two ways alternating. Per
read: ``wall``, this process's CPU (``client CPU``) and nats-server's (``server CPU``).

    python bench/kv_get.py [--frames 24,120] [--reads 300]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import nats
from nats.js import api

from ghibli_anim.contracts import keys, lifecycle
from ghibli_anim.contracts.pb import animation_pb2
from ghibli_anim.contracts.profiles import load_profile
from ghibli_anim.contracts.storyboard import Storyboard
from ghibli_anim.devtools import procfs
from ghibli_anim.runtime.processes import NatsServer
from ghibli_anim.services.planner.frame_specs import resolve_frames

ROUNDS = 5
"""Each way is timed this many times, alternating; the medians are printed."""


def job_state(frames: int) -> bytes:
    """A rendering job's state as the job store holds it: every FrameSpec, half the frames done."""
    job_id = keys.new_job_id()
    board = Storyboard.model_validate(
        {
            "title": "a paper lantern",
            "frames": [
                {
                    "prompt": f"a paper lantern drifts over a night market, shot {i}",
                    "camera": {"zoom": 1.04, "pan_x": 0.01},
                }
                for i in range(frames)
            ],
        }
    )
    request = animation_pb2.CreateAnimationRequest(
        idea="a paper lantern drifts over a night market", frames=frames, depth=True
    )
    specs = resolve_frames(job_id, request, 7, board, load_profile(None))
    state = animation_pb2.JobState(
        job_id=job_id, status=lifecycle.RENDERING, attempt=1, frames=frames, request=request
    )
    state.frame_specs.extend(specs)
    for i in range(frames):
        state.frame_states.add(index=i, rendered=i < frames // 2)
    return state.SerializeToString()


async def measure(url: str, server_pid: int, frame_counts: list[int], reads: int) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        buckets = {}
        for label, direct in (("MSG.GET API", False), ("direct get", True)):
            config = api.KeyValueConfig(bucket=f"state-{int(direct)}", history=1, direct=direct)
            buckets[label] = await js.create_key_value(config)
        print(
            f"{'per read (median of ' + str(ROUNDS) + ' x ' + str(reads) + ')':<34} {'KiB':>6}"
            f" {'wall ms':>8} {'client CPU ms':>14} {'server CPU ms':>14}"
        )
        for frames in frame_counts:
            value = job_state(frames)
            figures: dict[str, list[tuple[float, float, float]]] = {label: [] for label in buckets}
            for kv in buckets.values():
                await kv.put("job", value)
                await kv.get("job")  # warm
            for _ in range(ROUNDS):
                for label, kv in buckets.items():
                    wall0, client0 = time.perf_counter(), time.process_time()
                    server0 = procfs.cpu_seconds(server_pid)
                    for _ in range(reads):
                        entry = await kv.get("job")
                    assert entry.value == value
                    figures[label].append(
                        (
                            (time.perf_counter() - wall0) / reads,
                            (time.process_time() - client0) / reads,
                            (procfs.cpu_seconds(server_pid) - server0) / reads,
                        )
                    )
            medians = {}
            for label, rows in figures.items():
                wall, client, server = (statistics.median(col) for col in zip(*rows, strict=True))
                medians[label] = wall
                print(
                    f"{f'{frames} frames, {label}':<34} {len(value) / 1024:>6.1f}"
                    f" {1000 * wall:>8.3f} {1000 * client:>14.3f} {1000 * server:>14.3f}"
                )
            api_wall, direct_wall = medians.values()
            print(
                f"{frames} frames: ratio of wall times (API / direct): {api_wall / direct_wall:.2f}"
            )
    finally:
        await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", default="24,120", help="job sizes, comma separated")
    parser.add_argument("--reads", type=int, default=300, help="reads per timing")
    args = parser.parse_args()
    try:
        frame_counts = [int(f) for f in args.frames.split(",")]
    except ValueError:
        parser.error(f"--frames: expected counts like 24,120, got {args.frames!r}")
    if not frame_counts or min(frame_counts) < 1:
        parser.error(f"--frames: each count must be at least 1, got {args.frames!r}")
    if args.reads < 1:
        parser.error(f"--reads: must be at least 1, got {args.reads}")
    with tempfile.TemporaryDirectory(prefix="bench-kv-get-") as tmp:
        server = NatsServer(Path(tmp) / "nats", monitor=False).start()
        try:
            assert server.pid is not None
            asyncio.run(measure(server.url, server.pid, frame_counts, args.reads))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
