"""runtime/grpcserver.py: readiness follows the dependency checks and the drain; liveness
(the health service "liveness") only says the process answers."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.processes import port_taken

from ghibli_anim.runtime.grpcserver import LIVENESS, NOT_SERVING, SERVING, GrpcServer
from ghibli_anim.runtime.processes import free_port


async def _status(port: int, service: str) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
    return reply.status


async def test_liveness_ignores_dependencies_and_the_drain() -> None:
    healthy = {"nats": True}

    async def nats() -> None:
        if not healthy["nats"]:
            raise ConnectionError("nats: no servers available")

    server = GrpcServer(host="127.0.0.1", port=0, bindings=[], checks={"nats": nats})
    port = await server.start()
    try:
        assert await _status(port, "") == SERVING
        assert await _status(port, LIVENESS) == SERVING
        healthy["nats"] = False  # NATS away: unready, still alive
        assert await server.refresh_health() is False
        assert await _status(port, "") == NOT_SERVING
        assert await _status(port, LIVENESS) == SERVING
        healthy["nats"] = True
        await server.refresh_health()
        assert await _status(port, "") == SERVING
        await server.mark_not_serving()  # draining: unready, and no restart mid-drain
        assert await _status(port, "") == NOT_SERVING
        assert await _status(port, LIVENESS) == SERVING
    finally:
        await server.stop(grace_s=0.1)


async def test_not_ready_before_the_service_is_prepared() -> None:
    async def nats() -> None:  # the dependencies answer from the start
        return None

    server = GrpcServer(
        host="127.0.0.1", port=0, bindings=[], checks={"nats": nats}, prepared=False
    )
    port = await server.start()
    try:
        # Loading models: alive, not ready, whatever the checks say, and still after a check.
        assert await _status(port, "") == NOT_SERVING
        assert await _status(port, LIVENESS) == SERVING
        assert await server.refresh_health() is False
        assert await _status(port, "") == NOT_SERVING
        assert await server.mark_prepared() is True  # published at once
        assert await _status(port, "") == SERVING
    finally:
        await server.stop(grace_s=0.1)


async def test_not_ready_while_the_first_checks_run() -> None:
    """Listening comes before the first checks answer: a probe in between sees NOT_SERVING
    (grpcio's health servicer itself starts with "" SERVING)."""
    checking, answer = asyncio.Event(), asyncio.Event()

    async def nats() -> None:  # slow to answer the first time, as on a busy machine
        checking.set()
        await answer.wait()

    server = GrpcServer(host="127.0.0.1", port=0, bindings=[], checks={"nats": nats})
    starting = asyncio.create_task(server.start())
    try:
        await asyncio.wait_for(checking.wait(), timeout=10)
        assert await _status(server.bound_port, "") == NOT_SERVING
        assert await _status(server.bound_port, LIVENESS) == SERVING
        answer.set()
        assert await starting == server.bound_port
        assert await _status(server.bound_port, "") == SERVING
    finally:
        answer.set()
        await starting
        await server.stop(grace_s=0.1)


async def test_a_taken_port_is_an_error_that_names_the_setting() -> None:
    port = free_port()
    server = GrpcServer(host="127.0.0.1", port=port, bindings=[], checks={})
    expected = rf"^ANIM_GRPC_PORT: cannot bind 127\.0\.0\.1:{port}: the port is in use"
    with port_taken(port), pytest.raises(OSError, match=expected):
        await server.start()
