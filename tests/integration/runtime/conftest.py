"""Fixtures of the runtime's integration tests: a bus on a fresh nats-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from support.bus import ACK_WAIT, MAX_DELIVER, settings_for

from ghibli_anim.runtime.bus.connection import Bus, connect
from ghibli_anim.runtime.bus.topology import init_bus
from ghibli_anim.runtime.processes import NatsServer


@pytest.fixture
async def nbus(nats_server: NatsServer) -> AsyncIterator[Bus]:
    """A connection to a fresh server on which ``init_bus`` has run."""
    connection = await connect(settings_for(nats_server), "test")
    await init_bus(connection.js, ack_wait_s=ACK_WAIT, max_deliver=MAX_DELIVER)
    try:
        yield connection
    finally:
        await asyncio.wait_for(connection.close(), 10)
