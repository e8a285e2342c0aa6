"""The assembler service: anim.work.assemble -> animation.* + manifest.json -> job.assembled.

The assembler is the one writer of ``manifest.json`` (with the outputs and status
COMPLETED), and ``job.assembled`` carries the outputs it stored, so the conductor
completes the job without reading anything back. A give-up is ``assembly.failed``.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging

from PIL import Image

from ghibli_anim.contracts import events, keys, lifecycle, manifest
from ghibli_anim.contracts.pb import animation_pb2, bus_pb2, types_pb2
from ghibli_anim.runtime import faults
from ghibli_anim.runtime.bus.connection import Bus
from ghibli_anim.runtime.bus.consumer import Delivery, Failure, NonRetryable, work_consumer
from ghibli_anim.runtime.jobstore import JobNotFound, JobStore
from ghibli_anim.runtime.service import Service
from ghibli_anim.runtime.store.base import NotFound, sha256_hex

log = logging.getLogger(__name__)


def _open(data: bytes, key: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as exc:
        raise NonRetryable(f"{key}: not a readable image ({exc})") from None
    return image


class AssemblerService(Service):
    name = "assembler"

    async def start(self, bus_: Bus, store) -> None:
        await super().start(bus_, store)
        self.jobs = await JobStore.open(bus_.js)
        self.consumers = [
            work_consumer(
                bus_.js, "assemble", bus_pb2.AssembleWork, self.handle, on_give_up=self.give_up
            )
        ]

    async def handle(self, work: bus_pb2.AssembleWork, delivery: Delivery) -> None:
        job_id = keys.check_job_id(work.job_id)
        try:
            state, _ = await self.jobs.get(job_id)
        except JobNotFound:
            return
        if state.status != lifecycle.ASSEMBLING:
            log.info("assemble skipped", extra={"job_id": job_id, "status": state.status})
            return
        await faults.hit("assemble", -1)
        outputs = await asyncio.to_thread(self.assemble, state, work)
        await self.emit(
            events.JOB_ASSEMBLED,
            work,
            key=keys.manifest_key(job_id),
            outputs=[output.to_proto() for output in outputs],
        )

    def _get(self, key: str) -> bytes:
        keys.check_key(key)
        try:
            return self.store.get(key)
        except NotFound:
            raise NonRetryable(f"{key}: missing from the store") from None

    def assemble(
        self, state: animation_pb2.JobState, work: bus_pb2.AssembleWork
    ) -> list[manifest.OutputFile]:
        """Every output of the job and its manifest, stored; the outputs."""
        job_id = state.job_id
        for key in [*work.frame_keys, *work.depth_keys]:
            if keys.job_id_of_key(keys.check_key(key)) != job_id:
                raise NonRetryable(f"{key}: not a key of job {job_id}")
        pngs = [self._get(k) for k in work.frame_keys]
        frames = [_open(data, k) for data, k in zip(pngs, work.frame_keys, strict=True)]
        depth_by_key = {k: _open(self._get(k), k) for k in work.depth_keys}
        depth = [depth_by_key.get(keys.depth_key(job_id, i)) for i in range(len(frames))]
        from ghibli_anim.services.assembler.assemble import assemble

        # No motion is made up across a storyboard cut (in-betweens hold instead).
        cuts = {
            i
            for i, spec in enumerate(state.frame_specs)
            if i > 0 and spec.continuity == types_pb2.CONTINUITY_CUT
        }
        notes: list[str] = []
        try:
            encoded = assemble(
                frames,
                work.fps,
                list(work.formats),
                prompts=list(work.prompts) or None,
                depth=depth if work.depth_keys else None,
                frames_png=pngs,
                interpolate=work.interpolate,
                cuts=cuts,
                notes=notes,
            )
        except ValueError as exc:
            raise NonRetryable(str(exc)) from exc
        for note in notes:
            log.warning(note, extra={"job_id": job_id})
        final = manifest.base(state)
        for i in range(len(frames)):
            record = json.loads(self._get(keys.frame_record_key(job_id, i)))
            final = manifest.with_frame(final, manifest.frame_entry(state, i, record))
        outputs = []
        for fmt, (data, content_type) in encoded.items():
            self.store.put(keys.output_key(job_id, fmt), data, content_type)
            outputs.append(
                manifest.output_entry(job_id, fmt, len(data), sha256_hex(data), content_type)
            )
        final = final.model_copy(update={"outputs": outputs, "status": "COMPLETED"})
        self.store.put(keys.manifest_key(job_id), final.to_json().encode(), "application/json")
        return outputs

    async def give_up(self, work: bus_pb2.AssembleWork, failure: Failure) -> None:
        await self.emit(
            events.ASSEMBLY_FAILED,
            work,
            reason=failure.reason,
            retryable=failure.retryable,
        )


SERVICE = AssemblerService
