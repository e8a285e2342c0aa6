"""``ghibli-anim serve web``: the page's HTTP server (uvicorn) until SIGTERM.

The web service is HTTP, not a bus worker: it holds no NATS connection and no
store credentials, only a gRPC client of the planner (``ANIM_PLANNER_TARGET``,
with ``ANIM_CLIENT_TOKEN`` and the ``ANIM_CLIENT_TLS_*`` files). It listens on
``ANIM_WEB_HOST:ANIM_WEB_PORT`` (default 0.0.0.0:8080); ``/readyz`` answers 200
once the planner is SERVING.

On SIGTERM or SIGINT it ends every event stream first (browsers reconnect to
another replica and resume after the last event they had), then lets requests
in flight finish for up to ``ANIM_DRAIN_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Callable, Iterator

import uvicorn

from ghibli_anim.contracts import config
from ghibli_anim.contracts.config import Settings
from ghibli_anim.runtime import logs
from ghibli_anim.runtime.client import AnimationClient

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: ``run_web``'s stop event rules."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def client_from_settings(settings: Settings) -> AnimationClient:
    """The planner client with the token and TLS files of the ANIM_CLIENT_* variables."""
    return AnimationClient(
        settings["ANIM_PLANNER_TARGET"],
        token=settings["ANIM_CLIENT_TOKEN"],
        tls_ca=settings["ANIM_CLIENT_TLS_CA"],
        tls_cert=settings["ANIM_CLIENT_TLS_CERT"],
        tls_key=settings["ANIM_CLIENT_TLS_KEY"],
    )


def _profile_names(settings: Settings) -> list[str]:
    """Profile names for the form's suggestions (the planner validates the choice)."""
    from ghibli_anim.contracts.profiles import profile_names

    try:
        return profile_names(settings)
    except Exception as exc:  # suggestions only: a broken profiles file is the planner's to report
        log.warning("profile names unavailable", extra={"error": str(exc)})
        return []


class BindError(RuntimeError):
    """The page's address cannot be listened on; the message names the variables."""


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=128)
    except OSError as exc:
        raise BindError(
            f"ANIM_WEB_HOST/ANIM_WEB_PORT: cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from None


async def run_web(
    settings: Settings,
    stop: asyncio.Event,
    *,
    ready: Callable[[int], None] | None = None,
) -> None:
    """Serve the page until ``stop`` is set; ``ready(port)`` once the port is bound."""
    from ghibli_anim.services.web.app import create_app

    sock = _bind(settings["ANIM_WEB_HOST"], settings["ANIM_WEB_PORT"])
    stopping = asyncio.Event()
    client = client_from_settings(settings)
    app = create_app(client, profiles=_profile_names(settings), stopping=stopping)
    server = _Server(
        uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,  # the service's own logging setup (JSON lines)
            access_log=False,
            timeout_graceful_shutdown=max(1, int(settings["ANIM_DRAIN_S"])),
        )
    )
    port = sock.getsockname()[1]
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    stopped = asyncio.create_task(stop.wait())
    try:
        # The socket already listens: connections wait in its backlog until uvicorn accepts.
        if ready is not None:
            ready(port)
        log.info(
            "web started",
            extra={"port": port, "planner": settings["ANIM_PLANNER_TARGET"]},
        )
        await asyncio.wait({serving, stopped}, return_when=asyncio.FIRST_COMPLETED)
        log.info("shutting down")
        stopping.set()
        server.should_exit = True
        await serving
    finally:
        stopped.cancel()
        if not serving.done():
            server.force_exit = True
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving
        await client.close()
        sock.close()


def serve() -> int:
    """``ghibli-anim serve web``: exit 0 after a graceful stop.

    A bad setting (ConfigError) or an address that cannot be listened on (BindError)
    is raised: the ``ghibli-anim`` command prints it as one ``error:`` line.
    """
    settings = config.load("web")
    logs.setup_from_settings("web", settings)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_web(settings, stop)

    asyncio.run(main())
    return 0
