"""The `ghibli-anim` command line.

Each command imports only what it needs, so `serve planner` and `serve
assembler` start without torch, and `--help` is instant.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from ghibli_anim.common import limits


def _add_render_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("idea", help="the one-line idea, e.g. 'a dragon glides over a town at dusk'")
    p.add_argument("--frames", type=int, required=True, help=f"frames ({limits.FRAMES.describe()})")
    p.add_argument("--profile", default="", help="model profile (default: ANIM_PROFILE)")
    p.add_argument("--seed", type=int, help="job seed (default: random, recorded)")
    p.add_argument("--seed-mode", default="increment", help="increment, fixed or random")
    p.add_argument("--depth", action="store_true", help="guide frames i>0 with ControlNet depth")
    p.add_argument("--negative", default="", help="negative prompt")
    p.add_argument("--width", type=int, help=f"width ({limits.WIDTH.describe()})")
    p.add_argument("--height", type=int, help=f"height ({limits.HEIGHT.describe()})")
    p.add_argument("--steps", type=int, help=f"inference steps ({limits.STEPS.describe()})")
    p.add_argument("--guidance", type=float, help=f"guidance ({limits.GUIDANCE.describe()})")
    p.add_argument(
        "--strength", type=float, help=f"img2img strength ({limits.STRENGTH.describe()})"
    )
    p.add_argument("--fps", type=int, help=f"frames per second ({limits.FPS.describe()})")
    p.add_argument(
        "--format",
        default="",
        help=f"comma list of {','.join(limits.FORMATS)} "
        f"(default {','.join(limits.DEFAULT_FORMATS)})",
    )
    p.add_argument("--plan", type=Path, help="a storyboard JSON file to use instead of planning")
    p.add_argument("--idempotency-key", default="", help="same key, same job (safe retries)")
    p.add_argument("--out", type=Path, help="copy the job's output tree into this folder")


def build_request(args: argparse.Namespace):
    """The CreateAnimationRequest for generate/submit flags (validated by the server)."""
    from ghibli_anim.common import seeds
    from ghibli_anim.common.pb import animation_pb2

    req = animation_pb2.CreateAnimationRequest(
        idea=args.idea,
        frames=args.frames,
        profile=args.profile,
        seed_mode=seeds.parse_seed_mode(args.seed_mode),
        negative_prompt=args.negative,
        depth=args.depth,
        idempotency_key=args.idempotency_key,
        formats=[f for f in args.format.split(",") if f.strip()],
    )
    for name in ("seed", "width", "height", "steps", "guidance", "strength", "fps"):
        value = getattr(args, name)
        if value is not None:
            setattr(req, name, value)
    if args.plan is not None:
        try:
            req.storyboard_json = args.plan.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--plan: cannot read {args.plan}: {exc}") from None
    return req


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ghibli-anim",
        description="Turn a one-line idea into a Studio-Ghibli-style animation.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("generate", help="render an animation on this machine (embedded mode)")
    _add_render_flags(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("submit", help="submit a job to a planner over gRPC")
    _add_render_flags(p)
    p.add_argument("--server", default=os.environ.get("ANIM_SERVER", "localhost:50051"))
    p.add_argument("--wait", action="store_true", help="watch progress, then download outputs")

    for name, text in (
        ("status", "show a job"),
        ("watch", "stream a job's events"),
        ("cancel", "cancel a job"),
        ("resume", "resume a failed or cancelled job"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("job_id")
        p.add_argument("--server", default=os.environ.get("ANIM_SERVER", "localhost:50051"))
    p = sub.add_parser("list", help="list jobs")
    p.add_argument("--server", default=os.environ.get("ANIM_SERVER", "localhost:50051"))

    p = sub.add_parser("serve", help="run one service (reads ANIM_* variables)")
    p.add_argument("service", choices=("planner", "renderer", "depth", "assembler"))

    p = sub.add_parser(
        "up-local", help="run NATS, SeaweedFS and every service as local processes (no Docker)"
    )
    p.add_argument("--dir", type=Path, default=Path(".local-stack"), help="data and logs folder")
    p.add_argument("--replicas", default="", help="replicas per service, e.g. renderer=2,depth=1")

    bus = sub.add_parser("bus", help="NATS streams, KV buckets and consumers")
    bus_sub = bus.add_subparsers(dest="bus_command", required=True)
    p = bus_sub.add_parser("init", help="create or update streams, buckets and durables")
    p.add_argument("--url", default=os.environ.get("ANIM_NATS_URL", "nats://127.0.0.1:4222"))

    models = sub.add_parser("models", help="model folders")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    p = models_sub.add_parser("tiny", help="write the tiny random-weight models (deterministic)")
    p.add_argument("dir", type=Path)
    p = models_sub.add_parser("fetch", help="download a profile's models into HF_HOME")
    p.add_argument("profile")

    sub.add_parser("config", help="print every ANIM_* variable (secrets masked)")
    sub.add_parser("limits", help="print the limits every edge enforces")
    return parser


async def _bus_init(url: str) -> int:
    """`bus init`: streams, KV buckets and durables, created or updated in place."""
    from ghibli_anim.common import bus, config

    settings = config.load("client", {**os.environ, "ANIM_NATS_URL": url})
    conn = await bus.connect(settings, "bus-init", first_connect_timeout_s=15)
    try:
        await bus.init_bus_from_settings(conn.js, settings)
    finally:
        await conn.close()
    print(
        f"bus ready at {url}: streams {bus.WORK_STREAM}, {bus.EVENTS_STREAM}; "
        f"buckets {bus.JOBS_BUCKET}, {bus.IDEM_BUCKET}"
    )
    return 0


def _up_local(args: argparse.Namespace) -> int:
    """The distributed topology as processes until Ctrl-C (what `make up-local` runs)."""
    import signal
    import threading

    from ghibli_anim.common.stack import LocalStack

    replicas: dict[str, int] = {}
    for item in filter(None, (p.strip() for p in args.replicas.split(","))):
        name, _, count = item.partition("=")
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"--replicas: expected NAME=COUNT with COUNT >= 1, got {item!r}")
        replicas[name] = int(count)
    stack = LocalStack(args.dir.resolve(), replicas=replicas)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    with stack:
        print(f"planner  {stack.planner_target}  (gRPC AnimationService)")
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


def _print_table(rows, headers) -> None:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    for row in [headers, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except ValueError as exc:  # validation errors name the field
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd == "config":
        from ghibli_anim.common import config

        _print_table(config.describe(), ("variable", "value", "meaning"))
        return 0
    if cmd == "limits":
        _print_table(limits.table(), ("field", "allowed"))
        return 0
    if cmd == "models":
        from ghibli_anim.common import models_cli

        return models_cli.run(args)
    if cmd == "bus":
        return asyncio.run(_bus_init(args.url))
    if cmd == "up-local":
        return _up_local(args)
    if cmd == "serve":
        from ghibli_anim.common.service import serve

        return serve(args.service)
    if cmd == "generate":
        from ghibli_anim import embedded

        return embedded.generate(args)
    from ghibli_anim.common import client_cli

    return client_cli.run(args)


if __name__ == "__main__":
    sys.exit(main())
