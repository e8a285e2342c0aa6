"""What a completed job's file list costs: one HEAD per stored file, one after another or
``stat_many``'s side by side.

``GetAnimation`` on a completed job states the size, sha256 and content type of every file
the job stored (``JobsApi.view``): its frames, their records and depth maps, the planning
files and the outputs, about three objects a frame. Each is a HEAD request to the S3
server. This script stores a job of that shape (small objects: a HEAD's cost does not
depend on the size) in a local SeaweedFS, the development stack's S3 server, and times
the same listing both ways, alternating, through the project's ``S3Store``:

* ``one after another``: ``S3Store.stat`` for each key;
* ``stat_many``: ``S3Store.stat_many`` (``STAT_CONCURRENCY`` HEADs in flight).

It prints the median of each and their ratio. On loopback a HEAD is a millisecond or so of
the server's CPU, which the two cores here bound; against an S3 server across a network
each HEAD also waits a round trip, which the side-by-side requests overlap. With
``--latency-ms N`` the HEADs go through a local TCP relay that holds every chunk N ms
each way, as a network would.

    python bench/store_stat.py [--frames 120] [--reps 7] [--latency-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from store_put import seaweed_store  # its SeaweedFS and store, as it measures PUTs

from ghibli_anim.contracts import keys
from ghibli_anim.devtools.stack import ACCESS_KEY, BUCKET, SECRET_KEY
from ghibli_anim.devtools.tcp_relay import TcpRelay
from ghibli_anim.runtime.processes import LOOPBACK
from ghibli_anim.runtime.store.s3 import STAT_CONCURRENCY, S3Store


@contextmanager
def delayed(target_port: int, latency_s: float) -> Iterator[int]:
    """A relay to ``target_port`` (``devtools/tcp_relay.py``) that holds each chunk
    ``latency_s`` both ways, on a thread of its own; yields its port."""
    loop = asyncio.new_event_loop()
    relay = loop.run_until_complete(TcpRelay(LOOPBACK, target_port, delay_s=latency_s).start())
    thread = threading.Thread(target=loop.run_forever, name="delay-relay", daemon=True)
    thread.start()
    try:
        yield relay.port
    finally:
        asyncio.run_coroutine_threadsafe(relay.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def store_job(store: S3Store, frames: int) -> list[str]:
    """A completed job's objects (frames, records, depth maps, plan, outputs); its keys."""
    job_id = uuid.uuid4().hex
    stored = [keys.plan_key(job_id), keys.manifest_key(job_id), keys.output_key(job_id, "gif")]
    for i in range(frames):
        stored += [keys.frame_key(job_id, i), keys.frame_record_key(job_id, i)]
        stored.append(keys.depth_key(job_id, i))
    for key in stored:
        store.put(key, b"x" * 64)
    return store.list(keys.job_prefix(job_id))


def measure(store: S3Store, frames: int, reps: int, latency_ms: float = 0.0) -> None:
    listed = store_job(store, frames)
    if latency_ms > 0:
        host, port = store.endpoint.rsplit(":", 1)
        with delayed(int(port), latency_ms / 1000) as relay_port:
            far = S3Store(f"{host}:{relay_port}", ACCESS_KEY, SECRET_KEY, BUCKET, secure=False)
            print(f"through a relay that holds each chunk {latency_ms:g} ms each way")
            time_both(far, listed, frames, reps)
    else:
        time_both(store, listed, frames, reps)


def time_both(store: S3Store, listed: list[str], frames: int, reps: int) -> None:
    ways = {
        "one after another": lambda: [store.stat(key) for key in listed],
        f"stat_many ({STAT_CONCURRENCY} in flight)": lambda: store.stat_many(listed),
    }
    for way in ways.values():  # warm: connections
        way()
    times: dict[str, list[float]] = {label: [] for label in ways}
    for _ in range(reps):
        for label, way in ways.items():
            started = time.perf_counter()
            infos = way()
            times[label].append(time.perf_counter() - started)
            assert all(info is not None for info in infos)
    print(f"a completed job of {frames} frames: {len(listed)} files (median of {reps})")
    medians = {label: statistics.median(values) for label, values in times.items()}
    for label, value in medians.items():
        print(f"{label:<28} {1000 * value:>9.1f} ms  {1e6 * value / len(listed):>7.0f} us a file")
    first, second = medians.values()
    print(f"ratio (one after another / stat_many): {first / second:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=120, help="frames of the job")
    parser.add_argument("--reps", type=int, default=7, help="times each way is timed")
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="held each way per chunk (0: loopback)"
    )
    args = parser.parse_args()
    for name in ("frames", "reps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}: must be at least 1, got {getattr(args, name)}")
    if not 0 <= args.latency_ms <= 1000:
        parser.error(f"--latency-ms: must be in 0..1000, got {args.latency_ms:g}")
    with seaweed_store("bench-store-stat-") as (store, _):
        measure(store, args.frames, args.reps, args.latency_ms)


if __name__ == "__main__":
    main()
