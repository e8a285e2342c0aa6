"""`ghibli-anim up-local`: the distributed topology as local processes (no Docker).

NATS with the deployment's own ``nats.conf`` (a user and random password per service),
SeaweedFS as the S3 server, and every service and the web page as ``ghibli-anim serve``
processes, until Ctrl-C or SIGTERM. A process that exits without being asked to (a
crash, a SIGKILL) is started again on the same ports and data folder after a short
back-off, as compose's ``restart: unless-stopped`` does (``--no-restart`` turns that
off). A development tool: it runs :class:`ghibli_anim.devtools.stack.LocalStack`.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from pathlib import Path

from ghibli_anim.contracts.config import SERVICES

COMMANDS = ("up-local",)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "up-local", help="run NATS, SeaweedFS and every service as local processes (no Docker)"
    )
    p.add_argument("--dir", type=Path, default=Path(".local-stack"), help="data and logs folder")
    p.add_argument("--replicas", default="", help="replicas per service, e.g. renderer=2,depth=1")
    p.add_argument(
        "--no-restart",
        dest="restart",
        action="store_false",
        help="leave a crashed process down (by default it is started again, as compose does)",
    )


def run(args: argparse.Namespace) -> int:
    """The distributed topology as processes until Ctrl-C (what `make up-local` runs)."""
    from ghibli_anim.devtools.stack import LocalStack
    from ghibli_anim.runtime import logs

    replicas: dict[str, int] = {}
    for item in filter(None, (p.strip() for p in args.replicas.split(","))):
        name, _, count = item.partition("=")
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"--replicas: expected NAME=COUNT with COUNT >= 1, got {item!r}")
        replicas[name] = int(count)
    # The deployment's nats.conf with its per-service users, as compose runs it.
    # Your ANIM_* settings reach the services, except those the stack itself decides.
    own = ("ANIM_NATS_", "ANIM_S3_", "ANIM_STORE", "ANIM_GRPC_", "ANIM_WEB_", "ANIM_PLANNER_TARGET")
    env = {k: v for k, v in os.environ.items() if k.startswith("ANIM_") and not k.startswith(own)}
    stack = LocalStack(
        args.dir.resolve(),
        services=(*SERVICES, "web"),
        env=env,
        replicas=replicas,
        nats_auth=True,
        restart_crashed=args.restart,
    )
    # The supervisor's lines (a crash, a start again) on stderr; the services log to files.
    logs.setup("up-local", fmt="text", level="WARNING")
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    with stack:
        print(f"planner  {stack.planner_target}  (gRPC AnimationService)")
        print(f"web      {stack.web_url}  (submit an idea, watch the frames land)")
        print(f"nats     {stack.nats.url}")
        print(f"s3       {stack.s3.url}  bucket {stack.env()['ANIM_S3_BUCKET']}")
        print(f"logs     {args.dir / 'services'}")
        print(
            f"try: ghibli-anim submit 'a dragon over a town' --frames 5 "
            f"--server {stack.planner_target} --wait"
        )
        print("Ctrl-C stops everything.", flush=True)
        try:
            while not stopped.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass
        print("stopping...", flush=True)
    return 0
