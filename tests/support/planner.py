"""A real planner service inside the test's event loop (real nats-server, local store).

For tests that need the planner's gRPC API without the other services: auth,
the web page. The planner plans jobs but nothing renders them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from ghibli_anim.contracts import config
from ghibli_anim.runtime.bus.connection import connect
from ghibli_anim.runtime.bus.topology import init_bus_from_settings
from ghibli_anim.runtime.service import run_service
from ghibli_anim.services.registry import build


@contextlib.asynccontextmanager
async def in_process_planner(nats_server, tmp_path, tiny_cache_dir, **extra) -> AsyncIterator[str]:
    """Yields the planner's ``host:port``; ``extra`` adds or overrides ANIM_* variables."""
    env = {
        "ANIM_NATS_URL": nats_server.url,
        "ANIM_STORE": "local",
        "ANIM_RUNS_DIR": str(tmp_path / "runs"),
        "ANIM_GRPC_HOST": "127.0.0.1",
        "ANIM_GRPC_PORT": "0",
        "ANIM_CACHE_DIR": str(tiny_cache_dir),
        "ANIM_PROFILE": "tiny",
        "ANIM_LOG_FORMAT": "text",
        **extra,
    }
    settings = config.load("planner", env)
    conn = await connect(settings, "init", first_connect_timeout_s=10)
    await init_bus_from_settings(conn.js, settings)
    await conn.close()
    stop = asyncio.Event()
    ready: asyncio.Future = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        run_service(build("planner", settings), stop, ready=lambda s: ready.set_result(s))
    )
    server = await asyncio.wait_for(ready, 30)
    try:
        yield f"127.0.0.1:{server.bound_port}"
    finally:
        stop.set()
        await task
