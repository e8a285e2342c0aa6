"""runtime/client.py: every gRPC call the project makes has a deadline. Against a server that
never answers, it fails with DEADLINE_EXCEEDED once its deadline has passed, not later.

Two kinds of unresponsive server: a plain TCP listener that accepts connections
and never speaks HTTP/2, and a real gRPC server whose handlers never return.

And the calls that only read are tried again on UNAVAILABLE, a few times, while the calls
that change a job are not (a real gRPC server that answers UNAVAILABLE at first).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest

from ghibli_anim.contracts.pb import animation_pb2, animation_pb2_grpc
from ghibli_anim.runtime.client import READ_ATTEMPTS, AnimationClient, upload_init_image

pytestmark = pytest.mark.timeout(120)

DEADLINE_S = 0.5

# Generous slack for a loaded machine; what matters is "soon after the deadline", not never.
SLACK_S = 5.0

JOB = "0" * 32


@asynccontextmanager
async def silent_listener() -> AsyncIterator[str]:
    """A TCP port that accepts connections and never sends a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    server.setblocking(False)
    accepted: list[socket.socket] = []

    async def accept() -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(server)
            accepted.append(conn)  # held open, never answered

    task = asyncio.create_task(accept())
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        task.cancel()
        for conn in accepted:
            conn.close()
        server.close()


class Hanging(animation_pb2_grpc.AnimationServiceServicer):
    """Every call waits forever (a planner stuck behind a dead dependency)."""

    async def _hang(self, request, context):
        await asyncio.Event().wait()

    CreateAnimation = GetAnimation = CancelAnimation = ResumeAnimation = _hang
    ListAnimations = DeleteAnimation = CreateUpload = ForkAnimation = ExtendAnimation = _hang

    async def WatchAnimation(self, request, context):
        await asyncio.Event().wait()
        yield  # pragma: no cover - never reached


@asynccontextmanager
async def hanging_server() -> AsyncIterator[str]:
    server = grpc.aio.server()
    animation_pb2_grpc.add_AnimationServiceServicer_to_server(Hanging(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


def calls(client: AnimationClient, png: Path) -> dict[str, Callable[[], Awaitable[object]]]:
    """Every call of the client the CLI, the web page and the embedded mode use."""

    async def watch() -> None:
        async for _ in client.watch(JOB, timeout_s=DEADLINE_S):
            pass

    return {
        "CreateAnimation": lambda: client.create(
            animation_pb2.CreateAnimationRequest(idea="a kite", frames=1)
        ),
        "GetAnimation": lambda: client.get(JOB),
        "CancelAnimation": lambda: client.cancel(JOB),
        "ResumeAnimation": lambda: client.resume(JOB),
        "DeleteAnimation": lambda: client.delete(JOB),
        "ListAnimations": lambda: client.list(),
        "CreateUpload": lambda: upload_init_image(client, png),
        "ForkAnimation": lambda: client.fork(
            animation_pb2.ForkAnimationRequest(
                fork=animation_pb2.ForkFrom(parent_job_id=JOB, from_frame=1)
            )
        ),
        "ExtendAnimation": lambda: client.extend(
            animation_pb2.ExtendAnimationRequest(parent_job_id=JOB, frames=1)
        ),
        "WatchAnimation": watch,
    }


@pytest.mark.parametrize("server", [silent_listener, hanging_server])
async def test_calls_to_an_unresponsive_server_exceed_their_deadline(server, tmp_path):
    png = tmp_path / "init.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)  # the client checks the signature only

    async def outcome(call: Callable[[], Awaitable[object]]) -> tuple[str, float]:
        start = time.monotonic()
        try:
            await asyncio.wait_for(call(), DEADLINE_S + SLACK_S)
        except grpc.aio.AioRpcError as exc:
            return exc.code().name, time.monotonic() - start
        except TimeoutError:
            return "no answer within the deadline and the slack", time.monotonic() - start
        return "OK", time.monotonic() - start

    async with server() as target, AnimationClient(target, timeout_s=DEADLINE_S) as client:
        named = calls(client, png)
        results = await asyncio.gather(*(outcome(call) for call in named.values()))
    for name, (code, elapsed) in zip(named, results, strict=True):
        assert code == "DEADLINE_EXCEEDED", (name, code)
        assert DEADLINE_S * 0.9 <= elapsed < DEADLINE_S + SLACK_S, (name, elapsed)


class Flaky(animation_pb2_grpc.AnimationServiceServicer):
    """Answers UNAVAILABLE (as a planner that cannot reach NATS does) to the first
    ``failures`` tries of each call, then answers; counts the tries."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.tries: dict[str, int] = {}

    async def _answer(self, name: str, context, reply):
        self.tries[name] = self.tries.get(name, 0) + 1
        if self.tries[name] <= self.failures:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the planner cannot reach NATS")
        return reply

    async def GetAnimation(self, request, context):
        return await self._answer("GetAnimation", context, animation_pb2.Animation(job_id=JOB))

    async def ListAnimations(self, request, context):
        return await self._answer("ListAnimations", context, animation_pb2.ListAnimationsResponse())

    async def CancelAnimation(self, request, context):
        return await self._answer("CancelAnimation", context, animation_pb2.Animation(job_id=JOB))


@asynccontextmanager
async def flaky_server(failures: int) -> AsyncIterator[tuple[AnimationClient, Flaky]]:
    """A Flaky server and a client of it."""
    servicer = Flaky(failures)
    server = grpc.aio.server()
    animation_pb2_grpc.add_AnimationServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with AnimationClient(f"127.0.0.1:{port}", timeout_s=30) as client:
            yield client, servicer
    finally:
        await server.stop(0)


async def test_reads_are_tried_again_on_unavailable_and_changes_are_not():
    async with flaky_server(failures=READ_ATTEMPTS - 1) as (client, servicer):
        assert (await client.get(JOB)).job_id == JOB
        assert await client.list() == []
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.cancel(JOB)  # it may have been done: only its answer lost
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.tries == {
        "GetAnimation": READ_ATTEMPTS,
        "ListAnimations": READ_ATTEMPTS,
        "CancelAnimation": 1,
    }


async def test_a_read_gives_up_after_its_tries():
    async with flaky_server(failures=READ_ATTEMPTS) as (client, servicer):
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.get(JOB)
        # Two pauses, of at most 0.25 s and then 0.5 s.
        assert time.monotonic() - started < 0.75 + SLACK_S
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert caught.value.details() == "the planner cannot reach NATS"
    assert servicer.tries == {"GetAnimation": READ_ATTEMPTS}
