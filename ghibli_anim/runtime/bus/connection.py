"""The NATS connection of a service: reconnects forever and logs why it dropped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext

from ghibli_anim.contracts.config import Settings

log = logging.getLogger(__name__)

UNAVAILABLE: tuple[type[Exception], ...] = (
    nats.errors.TimeoutError,  # and the flush, drain and fetch timeouts, its subclasses
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.NoRespondersError,
    nats.errors.NoServersError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.NoStreamResponseError,
)
"""What a call on the bus raises while NATS is away, restarting, or has not yet started
JetStream: the same call may well succeed a moment later. A request made while the
connection is reconnecting waits in the client's buffer and can time out unanswered."""


@dataclass
class Bus:
    """A NATS connection and its JetStream context."""

    nc: Client
    js: JetStreamContext
    name: str

    async def close(self) -> None:
        """Drain (flush publishes, finish subscriptions), then close.

        Stop every ``WorkConsumer`` first: a pull subscription whose fetch timed
        out makes ``drain()`` hang unless it was unsubscribed.
        """
        if self.nc.is_closed:
            return
        try:
            await self.nc.drain()
        except Exception as exc:  # drain fails when the server is gone; close anyway
            log.warning("nats drain failed: %s", exc, extra={"connection": self.name})
        if not self.nc.is_closed:
            await self.nc.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def connect(
    settings: Settings,
    name: str,
    *,
    first_connect_timeout_s: float | None = None,
    reconnect_wait_s: float = 1.0,
    api_timeout_s: float = 5.0,
) -> Bus:
    """Connect to ``ANIM_NATS_URL`` as ``name`` (shown in the server's connection list).

    Reconnects forever, ``reconnect_wait_s`` apart, including the first
    connection (a service may start before NATS): pass
    ``first_connect_timeout_s`` to give up instead (CLI clients).
    Authenticates with ``ANIM_NATS_CREDS`` or ``ANIM_NATS_USER``/``PASSWORD``.
    """
    url = settings["ANIM_NATS_URL"]
    if not url:
        raise ValueError("ANIM_NATS_URL: required to connect to NATS")
    servers = [s.strip() for s in str(url).split(",") if s.strip()]

    async def on_error(exc: Exception) -> None:
        log.warning("nats error: %s", exc, extra={"connection": name})

    async def on_disconnect() -> None:
        if nc.is_closed or nc.is_draining:
            return  # our own close(), not a lost server
        log.warning("nats disconnected; reconnecting", extra={"connection": name})

    async def on_reconnect() -> None:
        log.info(
            "nats reconnected to %s",
            nc.connected_url.netloc if nc.connected_url else "?",
            extra={"connection": name},
        )

    async def on_close() -> None:
        log.info("nats connection closed", extra={"connection": name})

    options: dict[str, Any] = {
        "servers": servers,
        "name": name,
        "error_cb": on_error,
        "disconnected_cb": on_disconnect,
        "reconnected_cb": on_reconnect,
        "closed_cb": on_close,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": reconnect_wait_s,
        # Notice a dead server within a minute rather than the default four.
        "ping_interval": 20,
        "max_outstanding_pings": 3,
        "drain_timeout": 10,
    }
    if settings["ANIM_NATS_CREDS"]:
        options["user_credentials"] = settings["ANIM_NATS_CREDS"]
    elif settings["ANIM_NATS_USER"]:
        options["user"] = settings["ANIM_NATS_USER"]
        options["password"] = settings["ANIM_NATS_PASSWORD"]

    nc = Client()
    try:
        await asyncio.wait_for(nc.connect(**options), first_connect_timeout_s)
    except TimeoutError:
        with contextlib.suppress(Exception):
            await nc.close()
        raise ConnectionError(
            f"ANIM_NATS_URL: no NATS server answered at {url} within {first_connect_timeout_s:g} s"
        ) from None
    return Bus(nc=nc, js=nc.jetstream(timeout=api_timeout_s), name=name)
