"""`ghibli-anim serve NAME` and `ghibli-anim probe`: running a service, asking its health.

``serve planner|renderer|depth|assembler`` runs one bus service (configured by ``ANIM_*``
variables) until SIGTERM or SIGINT, then drains and exits 0; ``serve web`` runs the web
page. ``probe`` exits 0 only when a gRPC server's ``grpc.health.v1`` status is SERVING
(container health checks).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from ghibli_anim.contracts import config

COMMANDS = ("serve", "probe")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run one service (reads ANIM_* variables)")
    p.add_argument("service", choices=(*config.SERVICES, "web"))
    p = sub.add_parser(
        "probe", help="exit 0 only when a gRPC server's grpc.health.v1 status is SERVING"
    )
    p.add_argument(
        "--target",
        default="",
        help="HOST:PORT (default 127.0.0.1:$ANIM_GRPC_PORT, else 127.0.0.1:50051)",
    )
    p.add_argument(
        "--service", default="", help="grpc.health.v1 service name (default: the whole server)"
    )
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")


def run(args: argparse.Namespace) -> int:
    if args.command == "probe":
        return _probe(args.target, args.service, args.timeout)
    if args.service == "web":
        from ghibli_anim.services.web.service import serve as serve_web  # HTTP, not the bus

        return serve_web()
    return serve(args.service)


def serve(name: str) -> int:
    """One bus service until SIGTERM or SIGINT; 0 after a graceful stop."""
    from ghibli_anim.runtime import logs
    from ghibli_anim.runtime.service import (
        install_stop_signals,
        run_service,
        use_short_gil_switches,
    )
    from ghibli_anim.services.registry import build

    use_short_gil_switches()
    settings = config.load(name)  # a ConfigError names the variable (exit 2)
    logs.setup_from_settings(name, settings)

    async def main() -> None:
        stop = asyncio.Event()
        install_stop_signals(stop)
        await run_service(build(name, settings), stop)

    # A collector asked for without the SDK (TracingConfigError, exit 2), a metrics port
    # already taken (MetricsPortError, exit 1): one line each, from cli/errors.py.
    asyncio.run(main())
    return 0


def _probe(target: str, service: str, timeout: float) -> int:
    """`probe`: 0 when the grpc.health.v1 status is SERVING, else 1 (container health checks)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if not target:
        port = os.environ.get("ANIM_GRPC_PORT") or str(config.GRPC_PORTS["planner"])
        target = f"127.0.0.1:{port}"
    if not timeout > 0:
        raise ValueError(f"--timeout: must be > 0 seconds, got {timeout}")
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as exc:
            print(f"{target}: no health answer ({exc.code().name})", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{target}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1
