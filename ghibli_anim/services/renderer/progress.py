"""frame.progress events: denoising steps reported while a frame renders.

The diffusers step callback runs in the torch worker thread; ``on_step`` turns
it into an event there and hands it to the event loop, where one task publishes
the events of the frame one after another (so they reach the stream in step
order). Throttled: at most one event per ``PROGRESS_INTERVAL_S`` for a frame,
plus the last step of every pipeline call, so a frame's progress always ends at
the number of steps that ran. Each event has ``step``, ``steps`` (of the
pipeline call) and ``reason`` = ``elapsed S s``: seconds since the frame started.
They are sent without waiting for the stream's acknowledgement (``send_event``):
on the renderer's connection, so still before its ``frame.rendered``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from nats.aio.client import Client as NATS

from ghibli_anim.contracts import events
from ghibli_anim.contracts.pb import bus_pb2
from ghibli_anim.runtime import metrics
from ghibli_anim.runtime.bus.publish import new_event, send_event

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.25
"""At most about four progress events a second per frame (one frame of a job runs at a time)."""
CLOSE_TIMEOUT_S = 10.0
"""How long the end of a frame waits for its last progress events to be published."""


def elapsed_reason(seconds: float) -> str:
    """The ``reason`` text of a progress event."""
    return f"elapsed {seconds:.3f} s"


class ProgressReporter:
    """The frame.progress events of one render; create it on the event loop."""

    def __init__(
        self,
        nc: NATS,
        work: bus_pb2.RenderWork,
        service: str,
        *,
        interval_s: float = PROGRESS_INTERVAL_S,
        started: float | None = None,
    ) -> None:
        self._nc = nc
        self._work = work
        self._service = service
        self._interval_s = interval_s
        self._started = time.monotonic() if started is None else started
        self._last_sent = self._started
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[bus_pb2.Event | None] = asyncio.Queue()
        # Created here, so it runs in the current trace context (the frame's span).
        self._task = asyncio.create_task(self._publish_all(), name="frame-progress")
        self.sent = 0
        self.steps_seen = 0

    def on_step(self, step: int, total: int) -> None:
        """The diffusers step callback (any thread): ``step`` of ``total`` done."""
        self.steps_seen += 1
        metrics.renderer().denoise_steps.inc()
        now = time.monotonic()
        if step < total and now - self._last_sent < self._interval_s:
            return
        self._last_sent = now
        work = self._work
        event = new_event(
            events.FRAME_PROGRESS,
            work.job_id,
            work.frame,
            work.attempt,
            work.causation_id,
            service=self._service,
            step=step,
            steps=total,
            reason=elapsed_reason(now - self._started),
        )
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
        except RuntimeError:  # the loop is closing: progress is only informative
            return
        self.sent += 1

    async def _publish_all(self) -> None:
        while (event := await self._queue.get()) is not None:
            try:
                await send_event(self._nc, event)
            except Exception as exc:  # a lost progress event must not fail the frame
                log.warning(
                    "progress event not published: %s",
                    exc,
                    extra={"job_id": event.job_id, "frame": event.frame, "step": event.step},
                )

    async def close(self) -> None:
        """Publish what is queued, then stop (before the frame's next event)."""
        self._queue.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._task), CLOSE_TIMEOUT_S)
        except TimeoutError:
            log.warning("progress events still pending; dropping them")
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
