"""gRPC AnimationService and the bus request subject: thin shells over PlannerCore.

Both edges give the same error code and text for the same bad request; the text
names the field and the allowed range.
"""

from __future__ import annotations

import logging

import grpc
from google.protobuf.message import DecodeError

from ghibli_anim.common import limits
from ghibli_anim.common.jobs import InvalidTransition, JobNotFound
from ghibli_anim.common.pb import animation_pb2, animation_pb2_grpc
from ghibli_anim.planner.core import FailedPrecondition, PlannerCore, QuotaExceeded

log = logging.getLogger(__name__)


def classify(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message an exception becomes at the edges."""
    if isinstance(exc, JobNotFound):
        return grpc.StatusCode.NOT_FOUND, f"job_id: {exc}"
    if isinstance(exc, QuotaExceeded):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
    if isinstance(exc, FailedPrecondition | InvalidTransition):
        return grpc.StatusCode.FAILED_PRECONDITION, str(exc)
    if isinstance(exc, ValueError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    log.error("internal error", exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}"


class AnimationServicer(animation_pb2_grpc.AnimationServiceServicer):
    def __init__(self, core: PlannerCore) -> None:
        self.core = core

    async def _call(self, context, coro):
        try:
            return await coro
        except Exception as exc:
            code, message = classify(exc)
            await context.abort(code, message)

    async def CreateAnimation(self, request, context):
        return await self._call(context, self.core.create(request))

    async def GetAnimation(self, request, context):
        return await self._call(context, self.core.get(request.job_id))

    async def WatchAnimation(self, request, context):
        try:
            async for event in self.core.watch(request.job_id, request.after_sequence):
                yield event
        except Exception as exc:
            code, message = classify(exc)
            await context.abort(code, message)

    async def CancelAnimation(self, request, context):
        return await self._call(context, self.core.cancel(request.job_id))

    async def ResumeAnimation(self, request, context):
        return await self._call(context, self.core.resume(request.job_id))

    async def ListAnimations(self, request, context):
        return await self._call(
            context, self.core.list(request.page_size, request.page_token, request.status)
        )

    async def DeleteAnimation(self, request, context):
        return await self._call(context, self.core.delete(request.job_id))

    async def CreateUpload(self, request, context):
        return await self._call(
            context, self.core.create_upload(request.content_type, request.size_bytes)
        )


async def handle_bus_create(core: PlannerCore, data: bytes) -> bytes:
    """anim.request.create: the same request, validation and error text as gRPC."""
    reply = animation_pb2.CreateReply()
    if len(data) > limits.REQUEST_BYTES:
        reply.error.code = grpc.StatusCode.INVALID_ARGUMENT.name
        reply.error.message = (
            f"request: must be at most {limits.REQUEST_BYTES} bytes, got {len(data)}"
        )
        return reply.SerializeToString()
    try:
        request = animation_pb2.CreateAnimationRequest.FromString(data)
    except DecodeError as exc:
        reply.error.code = grpc.StatusCode.INVALID_ARGUMENT.name
        reply.error.message = f"request: not a valid CreateAnimationRequest ({exc})"
        return reply.SerializeToString()
    try:
        reply.response.CopyFrom(await core.create(request))
    except Exception as exc:
        code, message = classify(exc)
        reply.error.code = code.name
        reply.error.message = message
    return reply.SerializeToString()
