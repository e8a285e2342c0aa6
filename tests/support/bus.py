"""The bus's test helpers: the settings of a test nats-server, work to consume, a recording
handler, and waiting for a condition. ``nbus`` (tests/integration/runtime/conftest.py)
initialises the bus with ACK_WAIT and MAX_DELIVER."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from nats.js import api

from ghibli_anim.contracts import config
from ghibli_anim.contracts.pb import bus_pb2
from ghibli_anim.runtime.bus.connection import Bus
from ghibli_anim.runtime.bus.consumer import Delivery, Failure, WorkConsumer, work_consumer
from ghibli_anim.runtime.bus.names import WORK_STREAM
from ghibli_anim.runtime.bus.publish import publish_work
from ghibli_anim.runtime.processes import NatsServer

ACK_WAIT = 1.0
MAX_DELIVER = 3
JOB = "0123456789abcdef0123456789abcdef"
OTHER_JOB = "fedcba9876543210fedcba9876543210"


def settings_for(server: NatsServer) -> config.Settings:
    return config.load("planner", {"ANIM_NATS_URL": server.url, "ANIM_STORE": "local"})


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def render(nb: Bus, frame: int = 0, attempt: int = 0, job: str = JOB) -> api.PubAck:
    work = bus_pb2.RenderWork(job_id=job, frame=frame, attempt=attempt, causation_id="c")
    return await publish_work(nb.js, "render", work, job_id=job, frame=frame, attempt=attempt)


async def stream_messages(nb: Bus, stream: str = WORK_STREAM) -> int:
    return (await nb.js.stream_info(stream)).state.messages


Handler = Callable[[bus_pb2.RenderWork, Delivery], Awaitable[None]]


class Recorder:
    """Handler and give-up hook that record what they saw."""

    def __init__(self, behaviour: Handler | None = None) -> None:
        self.calls: list[tuple[int, int, float]] = []  # (frame, num_delivered, time)
        self.given_up: list[tuple[bus_pb2.RenderWork, Failure]] = []
        self._behaviour = behaviour

    async def handle(self, work: bus_pb2.RenderWork, delivery: Delivery) -> None:
        self.calls.append((work.frame, delivery.num_delivered, time.monotonic()))
        if self._behaviour is not None:
            await self._behaviour(work, delivery)

    async def give_up(self, work: bus_pb2.RenderWork, failure: Failure) -> None:
        self.given_up.append((work, failure))

    def consumer(self, nb: Bus, **kwargs: object) -> WorkConsumer[bus_pb2.RenderWork]:
        return work_consumer(
            nb.js,
            "render",
            bus_pb2.RenderWork,
            self.handle,
            on_give_up=self.give_up,
            **kwargs,  # type: ignore[arg-type]
        )
