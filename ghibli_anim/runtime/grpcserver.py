"""A gRPC server with honest health and reflection, shared by every service.

Health (``grpc.health.v1``) reports SERVING only once the service is prepared (its
models loaded: ``mark_prepared``) and while every dependency check passes (NATS
connected, store reachable); checks run every few seconds in the background. On
shutdown the status turns NOT_SERVING first, so load balancers stop sending work
before the server goes away. The health service ``liveness`` is SERVING as long as
the process answers at all (liveness probes), loading models included.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

log = logging.getLogger(__name__)

Check = Callable[[], Awaitable[None]]  # raises when the dependency is unhealthy

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
LIVENESS = "liveness"
"""The health service name liveness probes ask: SERVING while this process answers gRPC,
whatever its dependencies say and through a drain. ``""`` and the bound services' names
report readiness: the service is prepared (a renderer's models are loaded), NATS and the
store answer, and the service is not stopping. An outage of NATS or S3 must make pods
unready, never restart them (a renderer would reload its models)."""


def rewrap_handler(
    handler: grpc.RpcMethodHandler,
    unary: Callable[[Callable], Callable],
    streaming: Callable[[Callable], Callable],
) -> grpc.RpcMethodHandler:
    """``handler`` with its behaviour wrapped by ``unary`` (unary-unary methods) or
    ``streaming`` (unary-stream methods); what interceptors use to run code around
    a call. Other shapes come back unchanged (the API has none)."""
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            unary(handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            streaming(handler.unary_stream),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler


@dataclass
class ServiceBinding:
    """A servicer and how to add it to a server."""

    name: str  # full service name, e.g. "animation.v1.AnimationService"
    add: Callable[[object, grpc.aio.Server], None]
    servicer: object


def server_keepalive(seconds: float) -> list[tuple[str, int]]:
    """Channel options: ping clients every ``seconds`` (a dead one is dropped after twice
    that), and accept clients' own pings however often they come (down to one a second)
    without ever sending GOAWAY for them: a watch stream carries no data while its job
    is quiet, and the client's pings are what keep a NAT or a proxy from dropping it."""
    ms = max(1000, int(seconds * 1000))
    return [
        ("grpc.keepalive_time_ms", ms),
        ("grpc.keepalive_timeout_ms", ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 1000),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.http2.min_time_between_pings_ms", ms),
        ("grpc.http2.max_pings_without_data", 0),
    ]


@dataclass
class GrpcServer:
    host: str
    port: int
    bindings: Sequence[ServiceBinding]
    checks: dict[str, Check] = field(default_factory=dict)
    check_interval_s: float = 2.0
    max_concurrent_rpcs: int | None = None
    interceptors: Sequence[grpc.aio.ServerInterceptor] = ()
    credentials: grpc.ServerCredentials | None = None  # TLS / mTLS; None = plaintext
    keepalive_s: float = 10.0
    """Ping each client connection this often; drop it when no answer comes within as long."""
    prepared: bool = True
    """False holds readiness at NOT_SERVING, whatever the checks say, until
    ``mark_prepared()``: a service still loading its models answers liveness only."""

    def __post_init__(self) -> None:
        self.health = HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.bound_port = 0
        self.last_errors: dict[str, str] = {}
        self._monitor: asyncio.Task | None = None
        self._stopping = False
        # One refresh at a time: a slow one must not publish its answer over a newer one.
        self._refreshing = asyncio.Lock()

    async def start(self) -> int:
        """Bind and start; returns the bound port (useful with port 0)."""
        self.server = grpc.aio.server(
            maximum_concurrent_rpcs=self.max_concurrent_rpcs,
            interceptors=list(self.interceptors),
            options=[
                ("grpc.max_receive_message_length", 1024 * 1024),
                *server_keepalive(self.keepalive_s),
            ],
        )
        for binding in self.bindings:
            binding.add(binding.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = [b.name for b in self.bindings]
        reflection.enable_server_reflection(
            [
                *names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            self.server,
        )
        address = f"{self.host}:{self.port}"
        try:
            if self.credentials is not None:
                self.bound_port = self.server.add_secure_port(address, self.credentials)
            else:
                self.bound_port = self.server.add_insecure_port(address)
        except RuntimeError:  # grpcio raises where older releases returned 0
            self.bound_port = 0
        if self.bound_port == 0:
            raise OSError(
                f"ANIM_GRPC_PORT: cannot bind {address}: the port is in use, or "
                "ANIM_GRPC_HOST is not an address of this machine"
            )
        # grpcio's servicer starts with "" SERVING: until the first checks have run, a
        # readiness probe must not see a service that is not ready.
        await self._set_readiness(NOT_SERVING)
        await self.server.start()
        await self.health.set(LIVENESS, SERVING)
        await self.refresh_health()
        self._monitor = asyncio.create_task(self._watch_health(), name="grpc-health")
        log.info("grpc listening", extra={"port": self.bound_port, "services": ",".join(names)})
        return self.bound_port

    async def refresh_health(self) -> bool:
        """Run every check once and publish the result."""
        async with self._refreshing:
            return await self._refresh()

    async def _refresh(self) -> bool:
        errors: dict[str, str] = {}
        for name, check in self.checks.items():
            try:
                await asyncio.wait_for(check(), timeout=max(1.0, self.check_interval_s))
            except Exception as exc:  # any failure means not serving
                errors[name] = f"{type(exc).__name__}: {exc}"
        if errors != self.last_errors and errors:
            log.warning(
                "unhealthy", extra={"checks": "; ".join(f"{k}={v}" for k, v in errors.items())}
            )
        self.last_errors = errors
        status = SERVING if not errors and self.prepared and not self._stopping else NOT_SERVING
        await self._set_readiness(status)
        return status == SERVING

    async def _set_readiness(self, status: int) -> None:
        """Readiness ("" and each service's name), which probes and balancers ask."""
        for name in ["", *[b.name for b in self.bindings]]:
            await self.health.set(name, status)

    async def _watch_health(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.check_interval_s)
            await self.refresh_health()

    async def mark_prepared(self) -> bool:
        """The service is ready to take work: readiness follows the checks from now on
        (published at once, not at the next check). Returns whether it is SERVING."""
        self.prepared = True
        return await self.refresh_health()

    async def mark_not_serving(self) -> None:
        """First step of a graceful shutdown: probes fail, traffic moves away."""
        self._stopping = True
        if self._monitor:
            self._monitor.cancel()
        async with self._refreshing:  # after a refresh in flight, which saw no stop yet
            await self._set_readiness(NOT_SERVING)

    async def stop(self, grace_s: float = 5.0) -> None:
        await self.mark_not_serving()
        if self.server is not None:
            await self.server.stop(grace_s)
