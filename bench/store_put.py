"""What one frame's store writes cost: the renderer's three PUTs, alone and side by side.

Each rendered frame is stored as three objects: its PNG, its depth map's PNG and its record
(JSON). This script writes objects of those kinds and sizes (the stand-in painting
``bench/chain_host.py`` renders and a depth-like map, both encoded by ``runtime/png.py``, and a
record of a typical frame record's size) through the project's ``S3Store`` to a local
SeaweedFS, the S3 server of the development stack, and prints per PUT, for each kind alone:

* ``wall``: the time ``S3Store.put`` takes;
* ``client CPU``: this process's CPU time (minio's signing, urllib3, our hashing);
* ``server CPU``: SeaweedFS's CPU time (S3 gateway, filer and volume server in one process).

Then the three of a frame written side by side from three threads, as the renderer writes
them (``services/renderer/service.py``, ``_write``): the wall time of the slowest, which is
what a frame's ``renderer store`` span measures on an idle machine. In ``bench/chain_host.py``
the same writes share two cores with the rest of the chain and take longer.

    python bench/store_put.py [--frames 100]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from ghibli_anim.contracts import keys
from ghibli_anim.devtools import procfs, standin
from ghibli_anim.devtools.seaweed import SeaweedS3
from ghibli_anim.devtools.stack import ACCESS_KEY, BUCKET, SECRET_KEY
from ghibli_anim.runtime.png import encode_png
from ghibli_anim.runtime.store.s3 import S3Store

RECORD_BYTES = 3000
"""About the size of a frame record with its spec (``frames/NNNN.json``)."""


def payloads(size: int) -> dict[str, tuple[Callable[[str, int], str], bytes, str]]:
    """Per kind: (its store key of a job and frame, bytes, content type) of one frame's three
    objects."""
    from png_options import depth_like  # the same depth-like map the PNG benchmark encodes

    record = json.dumps({"pad": "x" * RECORD_BYTES}, indent=2).encode()
    return {
        "frame": (keys.frame_key, encode_png(standin.painting(size, size)), "image/png"),
        "depth map": (keys.depth_key, encode_png(depth_like(size)), "image/png"),
        "record": (keys.frame_record_key, record, "application/json"),
    }


def measure(store: S3Store, server_pid: int, frames: int, size: int) -> None:
    objects = payloads(size)
    print(
        f"{'per PUT (median of ' + str(frames) + ')':<24} {'KiB':>7} {'wall ms':>8}"
        f" {'client CPU ms':>14} {'server CPU ms':>14}"
    )
    for label, (key_of, data, content_type) in objects.items():
        job_id = uuid.uuid4().hex
        for i in range(5):  # warm: connections, the volume's first writes
            store.put(key_of(uuid.uuid4().hex, i), data, content_type)
        walls = []
        client0, server0 = time.process_time(), procfs.cpu_seconds(server_pid)
        for i in range(frames):
            started = time.perf_counter()
            store.put(key_of(job_id, i), data, content_type)
            walls.append(time.perf_counter() - started)
        client = (time.process_time() - client0) / frames
        server = (procfs.cpu_seconds(server_pid) - server0) / frames
        print(
            f"{label:<24} {len(data) / 1024:>7.1f} {1000 * statistics.median(walls):>8.2f}"
            f" {1000 * client:>14.2f} {1000 * server:>14.2f}"
        )
    job_id = uuid.uuid4().hex
    walls = []
    with ThreadPoolExecutor(len(objects)) as pool:
        for i in range(frames):
            started = time.perf_counter()
            writes = [
                pool.submit(store.put, key_of(job_id, i), data, content_type)
                for key_of, data, content_type in objects.values()
            ]
            for write in writes:
                write.result()
            walls.append(time.perf_counter() - started)
    print(f"the three side by side: {1000 * statistics.median(walls):.2f} ms a frame (median)")


@contextmanager
def seaweed_store(prefix: str) -> Iterator[tuple[S3Store, int]]:
    """A store on a SeaweedFS of its own in a temporary folder, and the server's pid."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        server = SeaweedS3(Path(tmp) / "s3", ACCESS_KEY, SECRET_KEY).start()
        try:
            store = S3Store(server.endpoint, ACCESS_KEY, SECRET_KEY, BUCKET, secure=False)
            store.ensure_bucket()
            assert server.pid is not None
            print(f"SeaweedFS at {server.endpoint}, {os.cpu_count()} cores")
            yield store, server.pid
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100, help="PUTs of each kind")
    parser.add_argument("--size", type=int, default=512, help="frame width and height")
    args = parser.parse_args()
    if args.frames < 1:
        parser.error(f"--frames: must be at least 1, got {args.frames}")
    with seaweed_store("bench-store-put-") as (store, server_pid):
        measure(store, server_pid, args.frames, args.size)


if __name__ == "__main__":
    main()
