"""The renderer service: anim.work.render -> frames/{i}.png + frames/{i}.json -> frame.rendered.

Models load once per process (``PipelineCache``) and torch runs in a worker thread,
so heartbeats keep flowing during a long frame. Before rendering, the job's KV
state is checked: a cancelled job or a frame already done is skipped.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging

from PIL import Image

from ghibli_anim.common import bus, keys
from ghibli_anim.common.bus import NonRetryable
from ghibli_anim.common.jobs import JobNotFound, JobStore
from ghibli_anim.common.pb import bus_pb2, types_pb2
from ghibli_anim.common.service import Service
from ghibli_anim.common.store import NotFound, sha256_hex

log = logging.getLogger(__name__)


def _image(data: bytes, field: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as exc:
        raise NonRetryable(f"{field}: not a readable image ({exc})") from None
    return image.convert("RGB")


class RendererService(Service):
    name = "renderer"

    async def start(self, bus_: bus.Bus, store) -> None:
        await super().start(bus_, store)
        from ghibli_anim.renderer.frames import PipelineCache

        self.cache = PipelineCache(self.settings)
        self.jobs = await JobStore.open(bus_.js)
        self.consumers = [
            bus.work_consumer(
                bus_.js, "render", bus_pb2.RenderWork, self.handle, on_give_up=self.give_up
            )
        ]

    async def handle(self, work: bus_pb2.RenderWork, delivery: bus.Delivery) -> None:
        job_id = keys.check_job_id(work.job_id)
        i = work.frame
        try:
            state, _ = await self.jobs.get(job_id)
        except JobNotFound:
            log.info("render skipped: job deleted", extra={"job_id": job_id, "frame": i})
            return
        if state.status != types_pb2.JOB_STATUS_RENDERING:
            log.info("render skipped", extra={"job_id": job_id, "frame": i})
            return
        if i < len(state.frame_states) and state.frame_states[i].rendered:
            log.info("frame already rendered", extra={"job_id": job_id, "frame": i})
            return
        await bus.publish_event(
            self.bus.js,
            bus.new_event(
                bus_pb2.EVENT_TYPE_FRAME_STARTED,
                job_id,
                i,
                work.attempt,
                work.causation_id,
                service=self.name,
            ),
        )
        spec = work.spec
        source = await self._load(spec.source_key, "source_key") if spec.source_key else None
        depth = await self._load(spec.depth_key, "depth_key") if spec.depth_key else None
        result = await asyncio.to_thread(self._render, spec, source, depth)
        record = {
            **result.record,
            "job_id": job_id,
            "frame": i,
            "attempt": work.attempt,
            "causation_id": work.causation_id,
            "key": keys.frame_key(job_id, i),
            "sha256": sha256_hex(result.png),
        }
        await asyncio.to_thread(self._write, job_id, i, result.png, record)
        await bus.publish_event(
            self.bus.js,
            bus.new_event(
                bus_pb2.EVENT_TYPE_FRAME_RENDERED,
                job_id,
                i,
                work.attempt,
                work.causation_id,
                service=self.name,
                key=keys.frame_key(job_id, i),
            ),
        )

    def _render(self, spec, source, depth):
        from ghibli_anim.renderer.frames import render_frame

        try:
            return render_frame(
                spec, source=source, depth=depth, cache=self.cache, settings=self.settings
            )
        except (ValueError, OSError) as exc:
            # A bad spec or a missing model will not get better on retry.
            raise NonRetryable(f"{type(exc).__name__}: {exc}") from exc

    async def _load(self, key: str, field: str) -> Image.Image:
        keys.check_key(key, field)
        try:
            data = await asyncio.to_thread(self.store.get, key)
        except NotFound:
            # The previous frame should exist; it may be mid-write on a slow store.
            raise bus.Retryable(f"{field}: {key} is not in the store yet") from None
        return _image(data, field)

    def _write(self, job_id: str, i: int, png: bytes, record: dict) -> None:
        self.store.put(keys.frame_key(job_id, i), png, "image/png")
        self.store.put(
            keys.frame_record_key(job_id, i),
            json.dumps(record, indent=2, sort_keys=True).encode(),
            "application/json",
        )

    async def give_up(self, work: bus_pb2.RenderWork, failure: bus.Failure) -> None:
        await bus.publish_event(
            self.bus.js,
            bus.new_event(
                bus_pb2.EVENT_TYPE_FRAME_FAILED,
                work.job_id,
                work.frame,
                work.attempt,
                work.causation_id,
                service=self.name,
                reason=failure.reason,
                retryable=failure.retryable,
            ),
        )


SERVICE = RendererService
