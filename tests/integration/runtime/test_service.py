"""runtime/service.py: the start-up order of ``run_service``. ``preflight`` runs before NATS
is reached; ``prepare`` runs while the gRPC server answers liveness but not readiness; a stop
meanwhile ends the service without waiting for it; a failure of either ends ``run_service``
with it.

A small ``Service`` subclass whose ``prepare`` waits on an event stands for a renderer loading
its models; it runs in this process against a real nats-server and the local store.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ghibli_anim.contracts import config
from ghibli_anim.runtime.grpcserver import LIVENESS, NOT_SERVING, SERVING
from ghibli_anim.runtime.processes import free_port
from ghibli_anim.runtime.service import CannotServe, Service, run_service

pytestmark = pytest.mark.timeout(60)


class Loading(Service):
    """Prepares until ``release`` is set (or raises ``failure`` when given)."""

    name = "loading"

    def __init__(self, settings, failure: BaseException | None = None) -> None:
        super().__init__(settings)
        self.loading = threading.Event()
        self.release = threading.Event()
        self.failure = failure

    def prepare(self) -> None:
        self.loading.set()
        if self.failure is not None:
            raise self.failure
        self.release.wait(30)


class Refusing(Service):
    name = "refusing"

    async def preflight(self) -> None:
        raise CannotServe("refusing cannot serve on this machine: no such device")


def settings_for(nats_url: str, tmp_path: Path, port: int) -> config.Settings:
    return config.load(
        "client",
        {
            "ANIM_NATS_URL": nats_url,
            "ANIM_STORE": "local",
            "ANIM_RUNS_DIR": str(tmp_path / "runs"),
            "ANIM_GRPC_HOST": "127.0.0.1",
            "ANIM_GRPC_PORT": str(port),
        },
    )


async def status(port: int, service: str) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
    return reply.status


async def test_ready_once_prepared(nats_server, tmp_path) -> None:
    port = free_port()
    service = Loading(settings_for(nats_server.url, tmp_path, port))
    stop = asyncio.Event()
    started = asyncio.Event()
    task = asyncio.create_task(run_service(service, stop, ready=lambda _: started.set()))
    try:
        assert await asyncio.to_thread(service.loading.wait, 20)
        assert await status(port, LIVENESS) == SERVING
        assert await status(port, "") == NOT_SERVING
        assert not started.is_set()
        service.release.set()
        await asyncio.wait_for(started.wait(), 10)
        assert await status(port, "") == SERVING
    finally:
        service.release.set()
        stop.set()
        await asyncio.wait_for(task, 20)


async def test_a_stop_while_preparing_does_not_wait_for_it(nats_server, tmp_path) -> None:
    port = free_port()
    service = Loading(settings_for(nats_server.url, tmp_path, port))
    stop = asyncio.Event()
    started = asyncio.Event()
    task = asyncio.create_task(run_service(service, stop, ready=lambda _: started.set()))
    try:
        assert await asyncio.to_thread(service.loading.wait, 20)
        stop.set()  # SIGTERM while the models load (they would for another 30 s)
        await asyncio.wait_for(task, 10)
        assert not started.is_set()
        assert not service.release.is_set()  # it stopped while prepare still ran
    finally:
        service.release.set()


async def test_a_failed_prepare_ends_the_service_with_its_reason(nats_server, tmp_path) -> None:
    port = free_port()
    failure = CannotServe("loading cannot load the models of profile 'tiny': gone")
    service = Loading(settings_for(nats_server.url, tmp_path, port), failure)
    with pytest.raises(CannotServe) as ended:
        await asyncio.wait_for(run_service(service, asyncio.Event()), 20)
    assert ended.value is failure
    with pytest.raises(grpc.aio.AioRpcError):  # the server is gone with it
        await status(port, LIVENESS)


async def test_preflight_refuses_before_nats_is_waited_for(tmp_path) -> None:
    # Nothing listens at this NATS URL: a service that waited for NATS first would hang here.
    unreachable = f"nats://127.0.0.1:{free_port()}"
    service = Refusing(settings_for(unreachable, tmp_path, free_port()))
    with pytest.raises(CannotServe, match="no such device"):
        await asyncio.wait_for(run_service(service, asyncio.Event()), 10)
