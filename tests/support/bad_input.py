"""Bad input at every edge, shared by tests/e2e/test_bad_input_*.py: one table of field x
edge x expected code and message, and how each edge is driven and checked.

Edges: gRPC (``grpc``), the bus request subject ``anim.request.create`` (``bus``:
the reply's BusError carries the same code and text as gRPC), the command line
(``cli``: ``ghibli-anim submit``, in this process through ``cli.main``, exit code 2
and the message on stderr; a few cases run the real ``ghibli-anim`` program, for
``generate`` too), files (``--plan``, ``--from-manifest``, ``--init-image``) and
uploads (CreateUpload, a PUT to the presigned URL, then ``init_upload_id``).

Every refused request must name the field and what is allowed, and leave nothing
behind: the number of jobs in KV ``anim-jobs`` and of objects under ``jobs/`` is the
same before and after (``assert_refused``). The tests that create jobs come last
(tests/e2e/test_bad_input_nats.py, whose name sorts last), so the refusals run on a stack
that holds no job.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
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
from ghibli_anim.contracts.pb import animation_pb2, types_pb2
from ghibli_anim.devtools.stack import LocalStack
from ghibli_anim.runtime.bus.buckets import JobsBucket
from ghibli_anim.runtime.bus.names import JOBS_BUCKET, REQUEST_CREATE
from ghibli_anim.runtime.client import AnimationClient, put_presigned

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


def create_params(edge: str | None = None, *, files: bool = False) -> list:
    """pytest params of CREATE_CASES, those that send a file or an upload (``files``) or the
    others: the cases ``edge`` answers (ids ``<case>``), or with ``edge`` None each case
    over each of its edges (``(case, edge)``, ids ``<case>-<edge>``)."""
    chosen = [c for c in CREATE_CASES if (c.upload is not None or bool(c.files)) == files]
    if edge is None:
        return [pytest.param(c, e, id=f"{c.id}-{e}") for c in chosen for e in _edges(c)]
    return [pytest.param(c, id=c.id) for c in chosen if edge in _edges(c)]


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


# Jobs that may still write: other tests leave some running, and a cancelled job's
# renderer may store the frame it had in hand after the cancel.
_STILL_WRITING = frozenset(
    {
        types_pb2.JOB_STATUS_PENDING,
        types_pb2.JOB_STATUS_PLANNING,
        types_pb2.JOB_STATUS_PLANNED,
        types_pb2.JOB_STATUS_RENDERING,
        types_pb2.JOB_STATUS_ASSEMBLING,
        types_pb2.JOB_STATUS_CANCELLED,
    }
)


def counts(stack: LocalStack) -> tuple[int, int]:
    """(jobs in KV anim-jobs, objects under jobs/ in the bucket but those of jobs that may
    still write). Jobs, not keys: a job's index entries are written with it, in one atomic
    write, and jobs that other tests left running change their entries as they finish.
    Objects of no job in KV count: a refused request that wrote any shows up."""

    async def kv_jobs() -> dict[str, int]:
        nc = await nats.connect(stack.nats.url)
        try:
            js = nc.jetstream()
            kv = await js.key_value(JOBS_BUCKET)
            # The stream's subjects, not kv.keys(): its watcher may see nothing pending
            # yet on a busy machine and answer that there are no keys.
            under = await JobsBucket(kv, js, nc).keys_under(one_token=True)
            ids = [key for key in under if keys.is_job_id(key)]
            found = {}
            for job_id in ids:
                with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                    entry = await kv.get(job_id)
                    found[job_id] = animation_pb2.JobState.FromString(entry.value or b"").status
            return found
        finally:
            await nc.close()

    jobs = asyncio.run(kv_jobs())
    objects = stack.s3.client().list_objects(
        stack.env()["ANIM_S3_BUCKET"], prefix="jobs/", recursive=True
    )
    settled = sum(
        1 for obj in objects if jobs.get(keys.job_id_of_key(obj.object_name)) not in _STILL_WRITING
    )
    return len(jobs), settled


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


def refuse_create(stack: LocalStack, case: Case, edge: str, tmp_path: Path, capsys) -> None:
    """``case`` over ``edge`` (grpc, bus or cli) is refused as the table says, and leaves
    nothing behind."""
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


# -- job ids ------------------------------------------------------------------------

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


def job_id_params(edge: str) -> list:
    """(method, which) of every job call with every bad job id ``edge`` can send (the CLI
    cannot send an empty one)."""
    return [
        pytest.param(method, which, id=f"{method}-{which}")
        for method in JOB_CALLS
        for which in JOB_IDS
        if not (edge == "cli" and which == "empty")
    ]
