"""`ghibli-anim bus init | store init | config | limits`: setting up and looking around.

``bus init`` creates or updates the streams, KV buckets and durable consumers (a compose
step and a Kubernetes Job run it; services only bind); ``store init`` creates the bucket;
``config`` prints every ``ANIM_*`` variable with secrets masked; ``limits`` the bounds
every edge enforces.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Sequence

from ghibli_anim.contracts import config, limits

COMMANDS = ("bus", "store", "config", "limits")
# How long `bus init` and `store init` wait for their server: in compose they may start
# while it is still starting.
BUS_TIMEOUT_S = 15.0
STORE_TIMEOUT_S = 30.0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    bus = sub.add_parser("bus", help="NATS streams, KV buckets and consumers")
    bus_sub = bus.add_subparsers(dest="bus_command", required=True)
    p = bus_sub.add_parser("init", help="create or update streams, buckets and durables")
    p.add_argument("--url", default=os.environ.get("ANIM_NATS_URL", "nats://127.0.0.1:4222"))
    p.add_argument(
        "--replicas",
        type=int,
        choices=(1, 3, 5),
        default=1,
        help="copies of each stream and bucket: 1, or 3 (or 5) in a NATS cluster",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=BUS_TIMEOUT_S,
        help=f"seconds to wait for NATS to answer (default {BUS_TIMEOUT_S:g})",
    )
    store = sub.add_parser("store", help="the object store")
    store_sub = store.add_subparsers(dest="store_command", required=True)
    p = store_sub.add_parser("init", help="create the bucket ANIM_S3_BUCKET if it does not exist")
    p.add_argument(
        "--timeout",
        type=float,
        default=STORE_TIMEOUT_S,
        help=f"seconds to keep retrying an S3 server that does not answer "
        f"(default {STORE_TIMEOUT_S:g})",
    )
    sub.add_parser("config", help="print every ANIM_* variable (secrets masked)")
    sub.add_parser("limits", help="print the limits every edge enforces")


def _check_timeout(value: float) -> float:
    if not value > 0:
        raise ValueError(f"--timeout: must be > 0 seconds, got {value:g}")
    return value


def run(args: argparse.Namespace) -> int:
    if args.command == "bus":
        return asyncio.run(_bus_init(args.url, args.replicas, _check_timeout(args.timeout)))
    if args.command == "store":
        from ghibli_anim.runtime.store.open import open_store

        timeout = _check_timeout(args.timeout)
        settings = config.load("client", {**os.environ, "ANIM_STORE": "s3"})
        open_store(settings, retry_budget_s=timeout).ensure_bucket()
        print(f"bucket {settings['ANIM_S3_BUCKET']} ready at {settings['ANIM_S3_ENDPOINT']}")
        return 0
    if args.command == "config":
        print_table(config.describe(), ("variable", "value", "meaning"))
        return 0
    print_table(limits.table(), ("field", "allowed"))
    return 0


async def _bus_init(url: str, replicas: int = 1, timeout_s: float = BUS_TIMEOUT_S) -> int:
    """Streams, KV buckets and durables, created or updated in place."""
    from ghibli_anim.runtime.bus.connection import connect
    from ghibli_anim.runtime.bus.names import EVENTS_STREAM, IDEM_BUCKET, JOBS_BUCKET, WORK_STREAM
    from ghibli_anim.runtime.bus.topology import init_bus_from_settings

    settings = config.load("client", {**os.environ, "ANIM_NATS_URL": url})
    conn = await connect(settings, "bus-init", first_connect_timeout_s=timeout_s)
    try:
        await init_bus_from_settings(conn.js, settings, replicas=replicas)
    finally:
        await conn.close()
    print(
        f"bus ready at {url}: streams {WORK_STREAM}, {EVENTS_STREAM}; "
        f"buckets {JOBS_BUCKET}, {IDEM_BUCKET}"
    )
    return 0


def print_table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> None:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    for row in [headers, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
