"""Bad input over gRPC (the planner's AnimationService): every CreateAnimation field of the
table in support/bad_input.py, unknown and malformed job ids, and the fields of the other
calls. A refused call names the field and what is allowed, and writes nothing."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from support.bad_input import (
    INVALID,
    JOB_CALLS,
    JOB_IDS,
    SERVICE,
    Case,
    assert_refused,
    create_params,
    job_id_params,
    refuse_create,
)

from ghibli_anim.contracts import limits
from ghibli_anim.contracts.pb import animation_pb2
from ghibli_anim.runtime.client import AnimationClient

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("case", create_params("grpc"))
def test_bad_create_request(stack, case: Case, tmp_path, capsys):
    refuse_create(stack, case, "grpc", tmp_path, capsys)


@pytest.mark.parametrize(("method", "which"), job_id_params("grpc"))
def test_unknown_or_malformed_job_id(stack, method, which):
    _, request_type = JOB_CALLS[method]
    job_id, code, message = JOB_IDS[which]

    def act() -> tuple[str, str]:
        async def main() -> tuple[str, str]:
            async with AnimationClient(stack.planner_target) as client:
                request = request_type(job_id=job_id)
                try:
                    if method == "WatchAnimation":
                        async for _ in client.stub.WatchAnimation(request, timeout=30):
                            pass
                    else:
                        await getattr(client.stub, method)(request, timeout=30)
                except grpc.aio.AioRpcError as exc:
                    return exc.code().name, exc.details() or ""
                return "OK", ""

        return asyncio.run(main())

    assert_refused(stack, act, code, message)


OTHER_CALLS = [
    (
        "list-page-size",
        "ListAnimations",
        animation_pb2.ListAnimationsRequest(page_size=501),
        f"page_size: must be an integer in 1..{limits.LIST_PAGE_SIZE.hi}, got 501",
    ),
    (
        "list-page-token",
        "ListAnimations",
        animation_pb2.ListAnimationsRequest(page_token="../x"),
        "page_token: must be the next_page_token of a previous page of the same listing "
        "(same client_id), got '../x'",
    ),
    (
        "list-status",
        "ListAnimations",
        animation_pb2.ListAnimationsRequest(status=99),
        "status: must be one of PENDING, PLANNING, PLANNED, RENDERING, ASSEMBLING, COMPLETED, "
        "FAILED, CANCELLED or unset, got 99",
    ),
    (
        "upload-content-type",
        "CreateUpload",
        animation_pb2.CreateUploadRequest(content_type="image/gif", size_bytes=10),
        "content_type: must be one of image/png, image/jpeg, image/webp, got 'image/gif'",
    ),
    (
        "upload-size-zero",
        "CreateUpload",
        animation_pb2.CreateUploadRequest(content_type="image/png", size_bytes=0),
        f"size_bytes: must be an integer in 1..{limits.UPLOAD_BYTES}, got 0",
    ),
    (
        "upload-size-over",
        "CreateUpload",
        animation_pb2.CreateUploadRequest(
            content_type="image/png", size_bytes=limits.UPLOAD_BYTES + 1
        ),
        f"size_bytes: must be an integer in 1..{limits.UPLOAD_BYTES}, got "
        f"{limits.UPLOAD_BYTES + 1}",
    ),
    (
        "get-not-utf8",
        "GetAnimation",
        b"\x0a\x04\xff\xfe\xfd\xfc",  # job_id = four bytes that are not UTF-8
        "job_id: must be UTF-8 text (GetAnimationRequest not decoded)",
    ),
]


@pytest.mark.parametrize(
    ("method", "request_", "message"),
    [pytest.param(m, r, msg, id=i) for i, m, r, msg in OTHER_CALLS],
)
def test_other_calls_refuse_bad_fields(stack, method, request_, message):
    def act() -> tuple[str, str]:
        async def main() -> tuple[str, str]:
            async with grpc.aio.insecure_channel(stack.planner_target) as channel:
                call = channel.unary_unary(SERVICE + method, request_serializer=None)
                data = request_ if isinstance(request_, bytes) else request_.SerializeToString()
                try:
                    await call(data, timeout=30)
                except grpc.aio.AioRpcError as exc:
                    return exc.code().name, exc.details() or ""
                return "OK", ""

        return asyncio.run(main())

    assert_refused(stack, act, INVALID, message)
