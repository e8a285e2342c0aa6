"""Bad input at every edge: one table of field x edge x expected code and message.

Edges: gRPC (``grpc``), the bus request subject ``anim.request.create`` (``bus``:
the reply's BusError carries the same code and text as gRPC), the command line
(``cli``: ``ghibli-anim submit``, in this process through ``cli.main``, exit code 2
and the message on stderr; a few cases run the real ``ghibli-anim`` program, for
``generate`` too), files (``--plan``, ``--from-manifest``, ``--init-image``) and
uploads (CreateUpload, a PUT to the presigned URL, then ``init_upload_id``).

Every refused request must name the field and what is allowed, and leave nothing
behind: the number of keys in KV ``anim-jobs`` and of objects under ``jobs/`` is the
same before and after. Then: garbage on each work subject is dropped (terminated
and logged) and the workers go on, and a repeated idempotency key gives the same job.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import nats
import nats.js.errors
import pytest
from PIL import Image

from ghibli_anim.cli import main as cli
from ghibli_anim.contracts import keys, limits
from ghibli_anim.contracts.pb import animation_pb2, bus_pb2, types_pb2
from ghibli_anim.devtools.stack import LocalStack
from ghibli_anim.runtime.bus.names import JOBS_BUCKET, REQUEST_CREATE, WORK_STREAM, work_subject
from ghibli_anim.runtime.client import AnimationClient, put_presigned

pytestmark = pytest.mark.timeout(300)

IDEA = "a lantern festival by the river"
BASE = {"idea": IDEA, "frames": 2}
SERVICE = "/animation.v1.AnimationService/"
INVALID = "INVALID_ARGUMENT"
NOT_FOUND = "NOT_FOUND"
# "…" in an expected message stands for text that varies (paths, parser details):
# the message starts with the first part and holds the others, in order.
ANY = "…"


def _png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size).save(out, format="PNG")
    return out.getvalue()


GOOD_PNG = _png((64, 64))
NOT_AN_IMAGE = b"GIF89a is not one of the formats we take"
TRUNCATED_PNG = GOOD_PNG[: len(GOOD_PNG) // 2]
# 4097 x 4096 one-bit pixels: a few KB on disk, over the 16777216-pixel cap decoded.
BOMB_PNG = _png((4097, 4096), "1")


def _serialized(**fields) -> bytes:
    return animation_pb2.CreateAnimationRequest(**{**BASE, **fields}).SerializeToString()


def _non_utf8_request() -> bytes:
    """A CreateAnimationRequest whose idea holds bytes that are not UTF-8 (a proto3
    string must be): built from a valid one, since protobuf refuses to write it."""
    marker = "QQQQ"
    return _serialized(idea=marker).replace(marker.encode(), b"\xff\xfe\xfd\xfc")


def _big_storyboard(size: int) -> str:
    """Storyboard JSON of ``size`` bytes: over the request cap, under NATS's 1 MiB."""
    text = json.dumps({"title": "t", "frames": [{"prompt": "p"}, {"prompt": "q"}]})
    return text[:-1] + ', "pad": "' + "x" * (size - len(text) - 11) + '"}'


BIG_BOARD = _big_storyboard(70_000)
BIG_REQUEST_BYTES = len(_serialized(storyboard_json=BIG_BOARD))
LONG_PROMPT_BOARD = json.dumps(
    {"title": "t", "frames": [{"prompt": "x" * (limits.PROMPT_CHARS + 1)}, {"prompt": "q"}]}
)


@dataclass(frozen=True)
class Case:
    """A bad CreateAnimation request and what every edge must answer."""

    id: str
    message: str
    fields: dict = field(default_factory=dict)  # over BASE
    raw: bytes | None = None  # the request as bytes instead (what protobuf won't write)
    upload: bytes | None = None  # uploaded first; its id becomes init_upload_id
    cli: list[str] | None = None  # `submit` arguments; None: no such flag
    cli_message: str | None = None  # when the CLI refuses it itself, in its own words
    files: dict[str, bytes] = field(default_factory=dict)  # written under tmp, {NAME} in cli
    code: str = INVALID
    edges: tuple[str, ...] = ()  # default: grpc, bus, and cli when it has `cli`


def _cli(*args: str) -> list[str]:
    return [IDEA, "--frames", "2", *args]


CREATE_CASES = [
    # idea (the prompt the storyboard is planned from)
    Case("idea-empty", "idea: must not be empty…", {"idea": ""}, cli=["", "--frames", "2"]),
    Case(
        "idea-whitespace",
        "idea: must not be empty…",
        {"idea": " \t\n "},
        cli=["  ", "--frames", "2"],
    ),
    Case(
        "idea-over-long",
        f"idea: must be at most {limits.IDEA_CHARS} characters, got {limits.IDEA_CHARS + 1}",
        {"idea": "x" * (limits.IDEA_CHARS + 1)},
        cli=["x" * (limits.IDEA_CHARS + 1), "--frames", "2"],
    ),
    Case(
        "idea-control-character",
        "idea: must not contain control characters, found '\\x07'",
        {"idea": "a\x07bell"},
        cli=["a\x07bell", "--frames", "2"],
    ),
    Case(
        "idea-not-utf8",
        "idea: must be UTF-8 text…",
        raw=_non_utf8_request(),
        # What Python makes of undecodable bytes in argv (surrogateescape).
        cli=["a lantern \udcff\udcfe", "--frames", "2"],
    ),
    Case(
        "negative-prompt-over-long",
        f"negative_prompt: must be at most {limits.NEGATIVE_PROMPT_CHARS} characters, got "
        f"{limits.NEGATIVE_PROMPT_CHARS + 1}",
        {"negative_prompt": "x" * (limits.NEGATIVE_PROMPT_CHARS + 1)},
        cli=_cli("--negative", "x" * (limits.NEGATIVE_PROMPT_CHARS + 1)),
    ),
    # frames
    *(
        Case(
            f"frames-{name}",
            f"frames: must be an integer in 1..{limits.FRAMES.hi}, got {value}",
            {"frames": value},
            cli=[IDEA, "--frames", str(value)],
        )
        for name, value in (("zero", 0), ("negative", -3), ("over-limit", limits.FRAMES.hi + 1))
    ),
    Case(
        "frames-not-a-number",
        "argument --frames: invalid int value: 'two'",
        cli=[IDEA, "--frames", "two"],
        edges=("cli",),
    ),
    # size
    *(
        Case(
            f"{name}-{label}",
            f"{name}: must be an integer in 64..1024, a multiple of 8, got {value}",
            {name: value},
            cli=_cli(f"--{name}", str(value)),
        )
        for name, label, value in (
            ("width", "not-multiple-of-8", 513),
            ("width", "under-range", 32),
            ("height", "over-range", 2048),
            ("height", "not-multiple-of-8", 100),
        )
    ),
    # render settings
    *(
        Case(
            f"{name}-{value}",
            f"{name}: must be {bound.describe()}, got {shown}",
            {name: value},
            cli=_cli(f"--{name}", str(value)),
        )
        for name, bound, value, shown in (
            ("strength", limits.STRENGTH, 0.0, "0.0"),
            ("strength", limits.STRENGTH, 1.5, "1.5"),
            ("steps", limits.STEPS, 0, "0"),
            ("steps", limits.STEPS, 151, "151"),
            ("guidance", limits.GUIDANCE, -1.0, "-1.0"),
            ("guidance", limits.GUIDANCE, 31.0, "31.0"),
            ("fps", limits.FPS, 0, "0"),
            ("fps", limits.FPS, 61, "61"),
        )
    ),
    Case(
        "strength-schedule",
        "strength_schedule: at character 3: expected a number as the value, got 'abc'",
        {"strength_schedule": "0:abc"},
        cli=_cli("--strength", "0:abc"),
    ),
    Case(
        "camera-zoom",
        "camera: at character 8: must be a number in [0.8, 1.25], got 9",
        {"camera": "0:zoom=9"},
        cli=_cli("--camera", "0:zoom=9"),
    ),
    Case(
        "seed-mode",
        "seed_mode: must be one of increment, fixed, random, got 9",
        {"seed_mode": 9},
        cli=_cli("--seed-mode", "sometimes"),
        cli_message="seed_mode: must be one of increment, fixed, random, got 'sometimes'",
    ),
    Case(
        "format",
        "formats: must be a list of gif, mp4, webp, zip, contact, got 'avi'",
        {"formats": ["avi"]},
        cli=_cli("--format", "avi"),
    ),
    Case(
        "color-coherence",
        "color_coherence: must be one of lab, hsv, rgb, off, got 'sepia'",
        {"color_coherence": "sepia"},
    ),
    Case("interpolate", "interpolate: must be one of 0, 1, 3, got 2", {"interpolate": 2}),
    Case(
        "idempotency-key-over-long",
        f"idempotency_key: must be at most {limits.IDEMPOTENCY_KEY_CHARS} characters, got "
        f"{limits.IDEMPOTENCY_KEY_CHARS + 1}",
        {"idempotency_key": "k" * (limits.IDEMPOTENCY_KEY_CHARS + 1)},
        cli=_cli("--idempotency-key", "k" * (limits.IDEMPOTENCY_KEY_CHARS + 1)),
    ),
    # profile and model paths
    Case(
        "profile-unknown",
        "profile: must be one of sd15-ghibli, tiny, got 'nope'",
        {"profile": "nope"},
        cli=_cli("--profile", "nope"),
    ),
    Case(
        "lora-dot-dot",
        "loras[0]: path '../escape' is outside ANIM_MODEL_ROOTS…",
        {"loras": ["../escape"]},
        cli=_cli("--lora", "../escape"),
    ),
    Case(
        "lora-outside-roots",
        "loras[0]: path '/etc/passwd' is outside ANIM_MODEL_ROOTS…",
        {"loras": ["/etc/passwd"]},
        cli=_cli("--lora", "/etc/passwd"),
    ),
    Case(
        "base-model-outside-roots",
        "base_model: path '/srv/other/model' is outside ANIM_MODEL_ROOTS…",
        {"base_model": "/srv/other/model"},
        cli=_cli("--base", "/srv/other/model"),
    ),
    Case(
        "controlnet-dot-dot",
        "controlnet: path '../../controlnet' is outside ANIM_MODEL_ROOTS…",
        {"controlnet": "../../controlnet"},
        cli=_cli("--controlnet", "../../controlnet"),
    ),
    Case(
        "lora-store-name",
        "loras[0] (LoRA name): must be 1-64 characters of a-z, 0-9, '.', '_' or '-', "
        "starting and ending with a letter or digit, got 'Bad Name'",
        {"loras": ["store://loras/Bad Name"]},
        cli=_cli("--lora", "store://loras/Bad Name"),
    ),
    Case(
        "lora-store-dot-dot",
        "loras[0]: must be store://loras/NAME, got 'store://loras/../x'",
        {"loras": ["store://loras/../x"]},
        cli=_cli("--lora", "store://loras/../x"),
    ),
    Case(
        "base-model-store",
        "base_model: store:// references are allowed for LoRAs only",
        {"base_model": "store://loras/style"},
        cli=_cli("--base", "store://loras/style"),
    ),
    Case(
        "lora-scale",
        "loras[0] scale: must be a number in [-2, 2], got 9.0",
        {"loras": ["tiny:lcm_lora:9"]},
        cli=_cli("--lora", "tiny:lcm_lora:9"),
    ),
    # storyboard (--plan FILE)
    Case(
        "storyboard-not-json",
        "storyboard_json: …",
        {"storyboard_json": "{not json"},
        cli=_cli("--plan", "{board}"),
        files={"board": b"{not json"},
    ),
    Case(
        "storyboard-prompt-over-long",
        "storyboard_json: …frames[0].prompt…",
        {"storyboard_json": LONG_PROMPT_BOARD},
        cli=_cli("--plan", "{board}"),
        files={"board": LONG_PROMPT_BOARD.encode()},
    ),
    Case(
        "request-over-64k",
        f"request: must be at most {limits.REQUEST_BYTES} bytes, got {BIG_REQUEST_BYTES}",
        {"storyboard_json": BIG_BOARD},
        cli=_cli("--plan", "{board}"),
        # The CLI's request also carries its defaults (seed mode, ...): a few bytes more.
        cli_message=f"request: must be at most {limits.REQUEST_BYTES} bytes, got 700…",
        files={"board": BIG_BOARD.encode()},
    ),
    Case(
        "request-not-protobuf",
        "request: not a valid CreateAnimationRequest…",
        raw=b"\x0a\xff\xff\xff\xff\x0fnot a protobuf",
    ),
    # init images: the upload id, then uploads that are not what they claim
    Case(
        "init-upload-id-malformed",
        "init_upload_id: must be 32 lowercase hex characters, got 'nothex'",
        {"init_upload_id": "nothex"},
    ),
    Case(
        "init-upload-missing",
        f"init_upload_id: nothing was uploaded for {'0' * 32} (no uploads/{'0' * 32})",
        {"init_upload_id": "0" * 32},
    ),
    Case(
        "upload-not-an-image",
        "init_upload_id: the upload is not a PNG, JPEG or WebP image (by its signature)",
        upload=NOT_AN_IMAGE,
        cli=_cli("--init-image", "{image}"),
        cli_message="--init-image: …is not a PNG, JPEG or WebP image",
        files={"image": NOT_AN_IMAGE},
    ),
    Case(
        "upload-truncated",
        "init_upload_id: the upload is not a readable PNG image (…",
        upload=TRUNCATED_PNG,
        cli=_cli("--init-image", "{image}"),
        files={"image": TRUNCATED_PNG},
    ),
    Case(
        "upload-decompression-bomb",
        "init_upload_id: the image is 4097x4096 = 16781312 pixels, the limit is "
        f"{limits.UPLOAD_PIXELS}",
        upload=BOMB_PNG,
        cli=_cli("--init-image", "{image}"),
        files={"image": BOMB_PNG},
    ),
]

# CLI-only cases: files the command line reads itself.
CLI_FILE_CASES = [
    Case("plan-missing", "--plan: cannot read …", cli=_cli("--plan", "{missing}")),
    Case(
        "plan-not-utf8",
        "--plan: cannot read …utf-8",
        cli=_cli("--plan", "{board}"),
        files={"board": b'{"title": "\xff\xfe"}'},
    ),
    Case(
        "manifest-missing",
        "--from-manifest: cannot read …",
        cli=["--from-manifest", "{missing}"],
    ),
    Case(
        "manifest-not-json",
        "--from-manifest: …is not a valid manifest",
        cli=["--from-manifest", "{manifest}"],
        files={"manifest": b"not json at all"},
    ),
    Case(
        "manifest-wrong-shape",
        "--from-manifest: …is not a valid manifest",
        cli=["--from-manifest", "{manifest}"],
        files={"manifest": b'{"schema_version": 1, "frames": "many"}'},
    ),
    Case(
        "init-image-missing",
        "--init-image: cannot read …",
        cli=_cli("--init-image", "{missing}"),
    ),
]


def _edges(case: Case) -> list[str]:
    if case.edges:
        return list(case.edges)
    return ["grpc", "bus"] + (["cli"] if case.cli is not None else [])


CREATE_PARAMS = [
    pytest.param(case, edge, id=f"{case.id}-{edge}")
    for case in CREATE_CASES
    for edge in _edges(case)
]


# -- helpers ----------------------------------------------------------------------


def matches(actual: str, expected: str) -> bool:
    """Exact, or, with ``…`` in ``expected``, its parts in order from the start."""
    parts = expected.split(ANY)
    if len(parts) == 1:
        return actual == expected
    if not actual.startswith(parts[0]):
        return False
    at = len(parts[0])
    for part in parts[1:]:
        found = actual.find(part, at)
        if found < 0:
            return False
        at = found + len(part)
    return True


def counts(stack: LocalStack) -> tuple[int, int]:
    """(keys in KV anim-jobs, objects under jobs/ in the bucket)."""

    async def kv_keys() -> int:
        nc = await nats.connect(stack.nats.url)
        try:
            kv = await nc.jetstream().key_value(JOBS_BUCKET)
            try:
                return len(await kv.keys())
            except nats.js.errors.NoKeysError:
                return 0
        finally:
            await nc.close()

    objects = stack.s3.client().list_objects(
        stack.env()["ANIM_S3_BUCKET"], prefix="jobs/", recursive=True
    )
    return asyncio.run(kv_keys()), sum(1 for _ in objects)


async def upload(client: AnimationClient, data: bytes) -> str:
    """CreateUpload, then PUT the bytes to the presigned URL; the upload id."""
    resp = await client.stub.CreateUpload(
        animation_pb2.CreateUploadRequest(content_type="image/png", size_bytes=len(data)),
        timeout=10,
    )
    await asyncio.to_thread(put_presigned, resp.put_url, data, "image/png")
    return resp.upload_id


async def request_bytes(case: Case, client: AnimationClient) -> bytes:
    if case.raw is not None:
        return case.raw
    fields = dict(case.fields)
    if case.upload is not None:
        fields["init_upload_id"] = await upload(client, case.upload)
    return _serialized(**fields)


def over_grpc(stack: LocalStack, case: Case) -> tuple[str, str]:
    async def main() -> tuple[str, str]:
        async with AnimationClient(stack.planner_target, timeout_s=30) as client:
            data = await request_bytes(case, client)
            # Raw bytes, not a message object: non-UTF-8 strings cannot be written otherwise.
            call = client.channel.unary_unary(
                SERVICE + "CreateAnimation",
                request_serializer=None,
                response_deserializer=animation_pb2.CreateAnimationResponse.FromString,
            )
            try:
                resp = await call(data, timeout=30)
            except grpc.aio.AioRpcError as exc:
                return exc.code().name, exc.details() or ""
            return "OK", resp.job_id

    return asyncio.run(main())


def over_bus(stack: LocalStack, case: Case) -> tuple[str, str]:
    async def main() -> tuple[str, str]:
        async with AnimationClient(stack.planner_target, timeout_s=30) as client:
            data = await request_bytes(case, client)
        nc = await nats.connect(stack.nats.url)
        try:
            msg = await nc.request(REQUEST_CREATE, data, timeout=30)
        finally:
            await nc.close()
        reply = animation_pb2.CreateReply.FromString(msg.data)
        if reply.WhichOneof("result") == "response":
            return "OK", reply.response.job_id
        return reply.error.code, reply.error.message

    return asyncio.run(main())


def cli_args(case: Case, tmp_path: Path) -> list[str]:
    paths = {"missing": tmp_path / "missing.file"}
    for name, data in case.files.items():
        paths[name] = tmp_path / f"{name}.bin"
        paths[name].write_bytes(data)
    return [arg.format(**{k: str(v) for k, v in paths.items()}) for arg in case.cli or []]


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """``ghibli-anim ARGV`` in this process: (exit code, stderr)."""
    capsys.readouterr()
    try:
        rc = cli.main(argv)
    except SystemExit as exc:  # argparse's own errors
        rc = int(exc.code or 0)
    return rc, capsys.readouterr().err


def error_line(stderr: str) -> str:
    """The message of the CLI's last ``error:`` line, without a gRPC code."""
    lines = [line for line in stderr.splitlines() if "error: " in line]
    assert lines, stderr
    found = re.search(r"error: (?:[A-Z_]+: )?(.*)$", lines[-1])
    assert found is not None
    return found.group(1)


def assert_refused(stack: LocalStack, act: Callable[[], tuple[str, str]], code, message):
    before = counts(stack)
    got_code, got_message = act()
    assert got_code == code, (got_code, got_message)
    assert matches(got_message, message), f"{got_message!r} does not match {message!r}"
    assert counts(stack) == before, "a refused request wrote to KV or the store"


# -- the table ----------------------------------------------------------------------


@pytest.mark.parametrize(("case", "edge"), CREATE_PARAMS)
def test_bad_create_request(stack, case: Case, edge: str, tmp_path, capsys):
    if edge == "grpc":
        assert_refused(stack, lambda: over_grpc(stack, case), case.code, case.message)
    elif edge == "bus":
        assert_refused(stack, lambda: over_bus(stack, case), case.code, case.message)
    else:
        argv = ["submit", *cli_args(case, tmp_path), "--server", stack.planner_target]

        def act() -> tuple[str, str]:
            rc, err = run_cli(argv, capsys)
            return ("exit 2" if rc == 2 else f"exit {rc}"), error_line(err)

        assert_refused(stack, act, "exit 2", case.cli_message or case.message)


@pytest.mark.parametrize("case", CLI_FILE_CASES, ids=lambda c: c.id)
def test_bad_files_on_the_command_line(stack, case: Case, tmp_path, capsys):
    argv = ["submit", *cli_args(case, tmp_path), "--server", stack.planner_target]

    def act() -> tuple[str, str]:
        rc, err = run_cli(argv, capsys)
        return f"exit {rc}", error_line(err)

    assert_refused(stack, act, "exit 2", case.message)


JOB_CALLS = {
    "GetAnimation": ("status", animation_pb2.GetAnimationRequest),
    "WatchAnimation": ("watch", animation_pb2.WatchAnimationRequest),
    "CancelAnimation": ("cancel", animation_pb2.CancelAnimationRequest),
    "ResumeAnimation": ("resume", animation_pb2.ResumeAnimationRequest),
    "DeleteAnimation": ("delete", animation_pb2.DeleteAnimationRequest),
}
JOB_IDS = {
    "unknown": ("0" * 32, NOT_FOUND, f"job_id: job {'0' * 32}: not found"),
    "malformed": (
        "../etc",
        INVALID,
        "job_id: must be 32 lowercase hex characters, got '../etc'",
    ),
    "uppercase": (
        "A" * 32,
        INVALID,
        f"job_id: must be 32 lowercase hex characters, got '{'A' * 32}'",
    ),
    "empty": ("", INVALID, "job_id: must be 32 lowercase hex characters, got ''"),
}
JOB_PARAMS = [
    pytest.param(method, which, edge, id=f"{method}-{which}-{edge}")
    for method in JOB_CALLS
    for which in JOB_IDS
    for edge in ("grpc", "cli")
    if not (edge == "cli" and which == "empty")
]


@pytest.mark.parametrize(("method", "which", "edge"), JOB_PARAMS)
def test_unknown_or_malformed_job_id(stack, method, which, edge, capsys):
    command, request_type = JOB_CALLS[method]
    job_id, code, message = JOB_IDS[which]
    if edge == "grpc":

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
    else:

        def act() -> tuple[str, str]:
            rc, err = run_cli([command, job_id, "--server", stack.planner_target], capsys)
            return f"exit {rc}", error_line(err)

        # INVALID_ARGUMENT exits 2 (bad input); any other refusal exits 1.
        assert_refused(stack, act, "exit 2" if code == INVALID else "exit 1", message)


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
        "page_token: must be a token from a previous page",
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


GENERATE_CASES = [
    ("frames-zero", ["--frames", "0"], "frames: must be an integer in 1..120, got 0"),
    (
        "width",
        ["--frames", "2", "--width", "513"],
        "width: must be an integer in 64..1024, a multiple of 8, got 513",
    ),
    (
        "lora-path",
        ["--frames", "2", "--lora", "../escape"],
        "loras[0]: local path '../escape' is not allowed: ANIM_MODEL_ROOTS names no folder "
        "for models",
    ),
]


@pytest.mark.parametrize(
    ("argv", "message"), [pytest.param(a, m, id=i) for i, a, m in GENERATE_CASES]
)
def test_generate_refuses_before_starting_anything(argv, message, tmp_path, tiny_cache_dir):
    """The real program: exit 2, the message on stderr, no services started, nothing written."""
    env = {
        "PATH": str(Path(sys.executable).parent),
        "ANIM_RUNS_DIR": str(tmp_path / "runs"),
        "ANIM_CACHE_DIR": str(tiny_cache_dir),
        "ANIM_PROFILE": "tiny",
    }
    out = subprocess.run(
        [sys.executable, "-m", "ghibli_anim.cli", "generate", IDEA, *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    assert error_line(out.stderr) == message
    assert not (tmp_path / "runs").exists()


def test_submit_program_exit_code(stack):
    """The installed program, not just ``cli.main``: exit 2 and the server's message."""
    before = counts(stack)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "ghibli_anim.cli",
            "submit",
            IDEA,
            "--frames",
            "0",
            "--server",
            stack.planner_target,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    assert "error: INVALID_ARGUMENT: frames: must be an integer in 1..120, got 0" in out.stderr
    assert counts(stack) == before


# -- the bus's work subjects and idempotency ------------------------------------------

GARBAGE = b"\x0a\xff\xff\xff\xff\x0fnot a protobuf"
WORKERS = {"plan": "planner", "render": "renderer", "depth": "depth", "assemble": "assembler"}


def test_garbage_on_work_subjects_is_dropped_and_workers_go_on(stack):
    async def main() -> tuple[list, animation_pb2.Animation]:
        nc = await nats.connect(stack.nats.url)
        js = nc.jetstream()
        try:
            for step in WORKERS:
                await js.publish(work_subject(step), GARBAGE)
            # Each durable hands its garbage to a worker, which terminates it.
            deadline = time.monotonic() + 60
            while True:
                infos = [await js.consumer_info(WORK_STREAM, step) for step in WORKERS]
                if all(i.num_pending == 0 and i.num_ack_pending == 0 for i in infos):
                    break
                assert time.monotonic() < deadline, infos
                await asyncio.sleep(0.1)
        finally:
            await nc.close()
        async with AnimationClient(stack.planner_target) as client:
            job = await client.create(
                animation_pb2.CreateAnimationRequest(idea=IDEA, frames=2, depth=True)
            )
            events = [e async for e in client.watch(job.job_id, timeout_s=120)]
            return events, await client.get(job.job_id)

    events, anim = asyncio.run(main())
    assert anim.status == types_pb2.JOB_STATUS_COMPLETED, (anim.error, stack.logs())
    kinds = {e.type for e in events}
    assert bus_pb2.EVENT_TYPE_DEPTH_READY in kinds  # all four kinds of work ran
    for step, service in WORKERS.items():
        log = stack.service(service).log_path.read_text()
        assert f"dropping unusable message on {work_subject(step)}" in log, service


def test_repeated_idempotency_key_gives_the_same_job_and_nothing_new(stack):
    request = animation_pb2.CreateAnimationRequest(
        idea=IDEA, frames=1, idempotency_key="bad-input-retry", formats=["gif"]
    )

    async def first() -> str:
        async with AnimationClient(stack.planner_target) as client:
            job = await client.create(request)
            assert not job.existing
            [e async for e in client.watch(job.job_id, timeout_s=120)]
            return job.job_id

    job_id = asyncio.run(first())
    before = counts(stack)

    async def again() -> list[tuple[str, bool]]:
        async with AnimationClient(stack.planner_target) as client:
            over_grpc_ = await client.create(request)
        nc = await nats.connect(stack.nats.url)
        try:
            msg = await nc.request(REQUEST_CREATE, request.SerializeToString(), timeout=30)
        finally:
            await nc.close()
        over_bus_ = animation_pb2.CreateReply.FromString(msg.data).response
        return [(r.job_id, r.existing) for r in (over_grpc_, over_bus_)]

    assert asyncio.run(again()) == [(job_id, True), (job_id, True)]
    assert counts(stack) == before
    assert keys.is_job_id(job_id)
