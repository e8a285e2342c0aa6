"""The depth service: anim.work.depth and gRPC DepthService.EstimateDepth.

Both run the same estimator on the same profile's depth model, loaded once per
model and process; inference runs in a worker thread. At start the device is
checked, and (``ANIM_PRELOAD``) the depth model of ANIM_PROFILE loads before the
service reports ready and takes work.
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading

import grpc
from PIL import Image

from ghibli_anim.contracts import events, keys, lifecycle
from ghibli_anim.contracts.pb import bus_pb2, depth_pb2, depth_pb2_grpc
from ghibli_anim.contracts.profiles import load_profile
from ghibli_anim.runtime import faults
from ghibli_anim.runtime.bus.connection import Bus
from ghibli_anim.runtime.bus.consumer import Delivery, Failure, NonRetryable, work_consumer
from ghibli_anim.runtime.grpcserver import ServiceBinding
from ghibli_anim.runtime.jobstore import JobNotFound, JobStore
from ghibli_anim.runtime.png import encode_png
from ghibli_anim.runtime.service import CannotServe
from ghibli_anim.runtime.store.base import NotFound
from ghibli_anim.runtime.torch_service import TorchService

log = logging.getLogger(__name__)


class DepthService(TorchService):
    name = "depth"

    async def start(self, bus_: Bus, store) -> None:
        await super().start(bus_, store)
        self.jobs = await JobStore.open(bus_.js)
        self._estimators: dict[str, object] = {}
        self._lock = threading.Lock()
        self.consumers = [
            work_consumer(bus_.js, "depth", bus_pb2.DepthWork, self.handle, on_give_up=self.give_up)
        ]

    def load_models(self) -> dict[str, str]:
        """The depth model of ANIM_PROFILE (a profile without one has none to load)."""
        try:
            profile = load_profile(None, self.settings)
        except ValueError as exc:  # the profiles file or ANIM_PROFILE
            raise CannotServe(f"{self.name} cannot serve: {exc}") from exc
        if not profile.depth_model:
            return {}
        estimator = self._estimator(profile.depth_model)
        return {"device": str(estimator.device), "depth_model": profile.depth_model}

    def _estimator(self, model_ref: str):
        from ghibli_anim.runtime.depth_maps import DepthEstimator

        with self._lock:
            if model_ref not in self._estimators:
                self._estimators[model_ref] = DepthEstimator(model_ref, self.settings)
            return self._estimators[model_ref]

    def estimate_key(self, image_key: str, output_key: str, model_ref: str) -> tuple[int, int]:
        """Depth of the image at image_key, written as PNG to output_key."""
        try:
            data = self.store.get(image_key)
        except NotFound:
            raise ValueError(f"image_key: {image_key} is not in the store") from None
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except Exception as exc:
            raise ValueError(f"image_key: not a readable image ({exc})") from None
        try:
            depth = self._estimator(model_ref).estimate_array(image.convert("RGB"))
        except OSError as exc:
            raise ValueError(f"depth_model: cannot load {model_ref!r} ({exc})") from exc
        # Encoded as the renderer encodes the maps it makes: the same bytes either way.
        self.store.put(output_key, encode_png(depth), "image/png")
        return depth.shape[1], depth.shape[0]

    async def handle(self, work: bus_pb2.DepthWork, delivery: Delivery) -> None:
        job_id = keys.check_job_id(work.job_id)
        try:
            state, _ = await self.jobs.get(job_id)
        except JobNotFound:
            return
        if state.status != lifecycle.RENDERING:
            return
        image_key = keys.check_key(work.image_key, "image_key")
        output_key = keys.check_key(work.output_key, "output_key")
        if keys.job_id_of_key(image_key) != job_id or keys.job_id_of_key(output_key) != job_id:
            raise NonRetryable("image_key/output_key: must belong to the work's job")
        await faults.hit("depth", work.frame)
        try:
            await asyncio.to_thread(
                self.estimate_key, image_key, output_key, work.profile.depth_model
            )
        except ValueError as exc:
            raise NonRetryable(str(exc)) from exc
        await self.emit(
            events.DEPTH_READY,
            work,
            key=output_key,
        )

    async def give_up(self, work: bus_pb2.DepthWork, failure: Failure) -> None:
        await self.emit(
            events.DEPTH_FAILED,
            work,
            reason=failure.reason,
            retryable=failure.retryable,
        )

    def bindings(self) -> list[ServiceBinding]:
        return [
            ServiceBinding(
                name=depth_pb2.DESCRIPTOR.services_by_name["DepthService"].full_name,
                add=depth_pb2_grpc.add_DepthServiceServicer_to_server,
                servicer=_DepthServicer(self),
            )
        ]


class _DepthServicer(depth_pb2_grpc.DepthServiceServicer):
    def __init__(self, service: DepthService) -> None:
        self.service = service

    async def EstimateDepth(self, request, context):
        try:
            image_key = keys.check_key(request.image_key, "image_key")
            if request.output_key:
                output_key = keys.check_key(request.output_key, "output_key")
            else:
                job_id = keys.job_id_of_key(image_key)
                if job_id is None or "/frames/" not in image_key:
                    raise ValueError(
                        "output_key: required unless image_key is a frame key "
                        "(jobs/{id}/frames/NNNN.png)"
                    )
                index = int(image_key.rsplit("/", 1)[-1].split(".")[0])
                output_key = keys.depth_key(job_id, index)
            profile = load_profile(
                request.profile or self.service.settings["ANIM_PROFILE"], self.service.settings
            )
            width, height = await asyncio.to_thread(
                self.service.estimate_key, image_key, output_key, profile.depth_model
            )
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return depth_pb2.EstimateDepthResponse(depth_key=output_key, width=width, height=height)


SERVICE = DepthService
