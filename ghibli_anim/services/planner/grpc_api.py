"""gRPC AnimationService and the bus request subjects: thin shells over :class:`JobsApi`.

Both edges give the same error code and text for the same bad request; the text
names the field and the allowed range.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
from google.protobuf import empty_pb2, message_factory, unknown_fields
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

from ghibli_anim.contracts import limits
from ghibli_anim.contracts.lifecycle import InvalidTransition
from ghibli_anim.contracts.pb import animation_pb2, animation_pb2_grpc
from ghibli_anim.runtime.bus.connection import UNAVAILABLE as BUS_UNAVAILABLE
from ghibli_anim.runtime.bus.names import (
    REQUEST_APPROVE,
    REQUEST_CREATE,
    REQUEST_EXTEND,
    REQUEST_FORK,
)
from ghibli_anim.runtime.jobstore import JobNotFound
from ghibli_anim.runtime.store.base import StoreUnavailable
from ghibli_anim.services.planner.jobs_api import (
    FailedPrecondition,
    JobsApi,
    ParentNotFound,
    QuotaExceeded,
)

log = logging.getLogger(__name__)

BACKEND_UNAVAILABLE = "the planner cannot reach "
"""How the message of an UNAVAILABLE from the planner itself begins: the planner is
running, what it needs is not (the CLI leaves out its "is the planner running?" hint)."""


def classify(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message an exception becomes at the edges."""
    if isinstance(exc, JobNotFound):
        return grpc.StatusCode.NOT_FOUND, f"job_id: {exc}"
    if isinstance(exc, ParentNotFound):
        return grpc.StatusCode.NOT_FOUND, str(exc)
    if isinstance(exc, QuotaExceeded):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
    if isinstance(exc, FailedPrecondition | InvalidTransition):
        return grpc.StatusCode.FAILED_PRECONDITION, str(exc)
    if isinstance(exc, ValueError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    # Not the caller's fault and not a bug: NATS or S3 is away for a moment (a restart, a
    # failover). UNAVAILABLE tells clients to try again (the watch reopens by itself);
    # where the servers are stays in the log, not in the answer.
    for kinds, what in ((BUS_UNAVAILABLE, "NATS"), (StoreUnavailable, "the object store")):
        if isinstance(exc, kinds):
            log.warning("%s not answering: %s: %s", what, type(exc).__name__, exc)
            return grpc.StatusCode.UNAVAILABLE, (
                f"{BACKEND_UNAVAILABLE}{what} ({type(exc).__name__}); try again shortly"
            )
    log.error("internal error", exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}"


def _bad_utf8_field(descriptor: Descriptor, data: bytes) -> str | None:
    """The name of the first top-level string field whose bytes are not UTF-8, if any.

    protobuf's own error does not name the field: the bytes are parsed again as a message
    with no fields, which keeps every field as an unknown (number, wire type, bytes).
    """
    try:
        parsed = empty_pb2.Empty.FromString(data)
    except DecodeError:
        return None  # broken wire format, not a text problem
    for item in unknown_fields.UnknownFieldSet(parsed):
        field = descriptor.fields_by_number.get(item.field_number)
        if field is None or field.type != FieldDescriptor.TYPE_STRING:
            continue
        try:
            bytes(item.data).decode("utf-8")
        except UnicodeDecodeError:
            return field.name
    return None


def decode_request(message_type: type[Message], data: bytes) -> Message:
    """Parse a request; a ValueError naming the field (or the request) when it does not
    parse, e.g. ``idea: must be UTF-8 text`` for a string field holding other bytes."""
    try:
        return message_type.FromString(data)
    except DecodeError as exc:
        name = message_type.DESCRIPTOR.name
        field = _bad_utf8_field(message_type.DESCRIPTOR, data)
        if field is not None:
            raise ValueError(f"{field}: must be UTF-8 text ({name} not decoded)") from None
        raise ValueError(f"request: not a valid {name} ({exc})") from None


@dataclass(frozen=True)
class Undecodable:
    """A request that did not parse, carried to the handler so it can answer
    INVALID_ARGUMENT naming the field (gRPC's own answer would be a bare INTERNAL)."""

    message: str


def _lenient(message_type: type[Message]):
    def deserialize(data: bytes) -> Message | Undecodable:
        try:
            return decode_request(message_type, data)
        except ValueError as exc:
            return Undecodable(str(exc))

    return deserialize


def _guarded(method, streaming: bool):
    if streaming:

        async def stream(request, context):
            if isinstance(request, Undecodable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
            async for item in method(request, context):
                yield item

        return stream

    async def unary(request, context):
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return await method(request, context)

    return unary


def add_animation_service(servicer: AnimationServicer, server: grpc.aio.Server) -> None:
    """Like the generated ``add_AnimationServiceServicer_to_server``, but a request that
    does not parse reaches the servicer's edge and becomes INVALID_ARGUMENT with the
    same text as on the bus."""
    service = animation_pb2.DESCRIPTOR.services_by_name["AnimationService"]
    handlers = {}
    for method in service.methods:
        request_type = message_factory.GetMessageClass(method.input_type)
        response_type = message_factory.GetMessageClass(method.output_type)
        make = (
            grpc.unary_stream_rpc_method_handler
            if method.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = make(
            _guarded(getattr(servicer, method.name), method.server_streaming),
            request_deserializer=_lenient(request_type),
            response_serializer=response_type.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)


class AnimationServicer(animation_pb2_grpc.AnimationServiceServicer):
    def __init__(self, api: JobsApi) -> None:
        self.api = api

    async def _call(self, context, coro):
        try:
            return await coro
        except Exception as exc:
            code, message = classify(exc)
            await context.abort(code, message)

    async def CreateAnimation(self, request, context):
        return await self._call(context, self.api.create(request))

    async def GetAnimation(self, request, context):
        return await self._call(context, self.api.get(request.job_id))

    async def WatchAnimation(self, request, context):
        try:
            async for event in self.api.watch(request.job_id, request.after_sequence):
                yield event
        except Exception as exc:
            code, message = classify(exc)
            await context.abort(code, message)

    async def CancelAnimation(self, request, context):
        return await self._call(context, self.api.cancel(request.job_id))

    async def ResumeAnimation(self, request, context):
        return await self._call(context, self.api.resume(request.job_id))

    async def ListAnimations(self, request, context):
        return await self._call(
            context,
            self.api.list(request.page_size, request.page_token, request.status, request.client_id),
        )

    async def DeleteAnimation(self, request, context):
        return await self._call(context, self.api.delete(request.job_id))

    async def CreateUpload(self, request, context):
        return await self._call(
            context, self.api.create_upload(request.content_type, request.size_bytes)
        )

    async def ApproveAnimation(self, request, context):
        return await self._call(context, self.api.approve(request.job_id, request.storyboard_json))

    async def ForkAnimation(self, request, context):
        return await self._call(context, self.api.fork(request))

    async def ExtendAnimation(self, request, context):
        return await self._call(context, self.api.extend(request))


@dataclass(frozen=True)
class BusCall:
    """One job API call as core request/reply on the bus: its request, its reply (a
    ``oneof result`` of the response field and ``error``) and the call."""

    request_type: type[Message]
    reply_type: type[Message]
    response_field: str
    call: Callable[[JobsApi, Message], Awaitable[Message]]


BUS_CALLS: dict[str, BusCall] = {
    REQUEST_CREATE: BusCall(
        animation_pb2.CreateAnimationRequest,
        animation_pb2.CreateReply,
        "response",
        lambda api, req: api.create(req),
    ),
    REQUEST_APPROVE: BusCall(
        animation_pb2.ApproveAnimationRequest,
        animation_pb2.ApproveReply,
        "animation",
        lambda api, req: api.approve(req.job_id, req.storyboard_json),
    ),
    REQUEST_FORK: BusCall(
        animation_pb2.ForkAnimationRequest,
        animation_pb2.CreateReply,
        "response",
        lambda api, req: api.fork(req),
    ),
    REQUEST_EXTEND: BusCall(
        animation_pb2.ExtendAnimationRequest,
        animation_pb2.CreateReply,
        "response",
        lambda api, req: api.extend(req),
    ),
}
"""The requests the planner answers on the bus, by subject."""


async def handle_bus_request(api: JobsApi, subject: str, data: bytes) -> bytes:
    """``anim.request.*``: the same requests, validation and error text as gRPC."""
    call = BUS_CALLS[subject]
    reply = call.reply_type()
    if len(data) > limits.REQUEST_BYTES:
        reply.error.code = grpc.StatusCode.INVALID_ARGUMENT.name
        reply.error.message = (
            f"request: must be at most {limits.REQUEST_BYTES} bytes, got {len(data)}"
        )
        return reply.SerializeToString()
    try:
        request = decode_request(call.request_type, data)
    except ValueError as exc:
        reply.error.code = grpc.StatusCode.INVALID_ARGUMENT.name
        reply.error.message = str(exc)
        return reply.SerializeToString()
    try:
        getattr(reply, call.response_field).CopyFrom(await call.call(api, request))
    except Exception as exc:
        code, message = classify(exc)
        reply.error.code = code.name
        reply.error.message = message
    return reply.SerializeToString()
