"""Validated ids and the store keys built from them.

Keys come from validated ids only, never from user strings (ARCHITECTURE.md "The store").
Every builder checks its inputs and raises ``ValueError`` naming the bad field.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

# Job ids are 32 lowercase hex characters (uuid4().hex): safe in NATS subjects,
# KV keys, S3 keys and folder names alike.
_JOB_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_UPLOAD_ID_RE = re.compile(r"^[0-9a-f]{32}$")
# LoRA names under loras/{name}/: a short slug (1-64 characters). check_key's loras/
# shape uses the same pattern, so every name check_name accepts makes a valid key.
NAME_PATTERN = r"[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?"
_NAME_RE = re.compile(NAME_PATTERN)

MAX_FRAME_INDEX = 9999  # frames/{i:04d} keeps four digits

JOB_PREFIX = "jobs"
UPLOAD_PREFIX = "uploads"
LORA_PREFIX = "loras"
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"

# The names the assembler writes, by format.
OUTPUT_NAMES = {
    "gif": "animation.gif",
    "mp4": "animation.mp4",
    "webp": "animation.webp",
    "zip": "frames.zip",
    "contact": "contact_sheet.png",
}


def new_job_id() -> str:
    return uuid.uuid4().hex


def new_upload_id() -> str:
    return uuid.uuid4().hex


def is_job_id(value: object) -> bool:
    return isinstance(value, str) and bool(_JOB_ID_RE.fullmatch(value))


def check_job_id(value: object, field: str = "job_id") -> str:
    if not is_job_id(value):
        raise ValueError(f"{field}: must be 32 lowercase hex characters, got {value!r:.80}")
    return value  # type: ignore[return-value]


def check_upload_id(value: object, field: str = "upload_id") -> str:
    if not (isinstance(value, str) and _UPLOAD_ID_RE.fullmatch(value)):
        raise ValueError(f"{field}: must be 32 lowercase hex characters, got {value!r:.80}")
    return value


def check_frame_index(value: object, field: str = "frame") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_FRAME_INDEX:
        raise ValueError(f"{field}: must be an integer in 0..{MAX_FRAME_INDEX}, got {value!r:.80}")
    return value


def check_name(value: object, field: str = "name") -> str:
    if not (isinstance(value, str) and _NAME_RE.fullmatch(value)):
        raise ValueError(
            f"{field}: must be 1-64 characters of a-z, 0-9, '.', '_' or '-', "
            f"starting and ending with a letter or digit, got {value!r:.80}"
        )
    return value


def job_prefix(job_id: str) -> str:
    return f"{JOB_PREFIX}/{check_job_id(job_id)}/"


def plan_key(job_id: str) -> str:
    return job_prefix(job_id) + "plan.json"


def plan_attempts_key(job_id: str) -> str:
    return job_prefix(job_id) + "plan_attempts.json"


def frame_key(job_id: str, index: int) -> str:
    return job_prefix(job_id) + f"frames/{check_frame_index(index):04d}.png"


def frame_record_key(job_id: str, index: int) -> str:
    return job_prefix(job_id) + f"frames/{check_frame_index(index):04d}.json"


def depth_key(job_id: str, index: int) -> str:
    return job_prefix(job_id) + f"depth/{check_frame_index(index):04d}.png"


def manifest_key(job_id: str) -> str:
    return job_prefix(job_id) + "manifest.json"


def init_key(job_id: str) -> str:
    """A job's validated init image (what frame 0 starts from), re-encoded as PNG."""
    return job_prefix(job_id) + "init.png"


def output_key(job_id: str, fmt: str) -> str:
    if fmt not in OUTPUT_NAMES:
        raise ValueError(f"format: must be one of {', '.join(OUTPUT_NAMES)}, got {fmt!r:.40}")
    return job_prefix(job_id) + OUTPUT_NAMES[fmt]


def upload_key(upload_id: str) -> str:
    return f"{UPLOAD_PREFIX}/{check_upload_id(upload_id)}"


def lora_key(name: str) -> str:
    return f"{LORA_PREFIX}/{check_name(name, 'lora name')}/{LORA_WEIGHT_NAME}"


def job_id_of_key(key: str) -> str | None:
    """The job id a key belongs to, or None when it is not a job key."""
    parts = key.split("/")
    if len(parts) >= 3 and parts[0] == JOB_PREFIX and is_job_id(parts[1]):
        return parts[1]
    return None


# Any key a worker may be asked to read: built by the functions above.
_VALID_KEY_RE = re.compile(
    r"^(jobs/[0-9a-f]{32}/[a-z0-9_]+(/[0-9]{4})?\.[a-z0-9]+"
    r"|uploads/[0-9a-f]{32}"
    rf"|loras/{NAME_PATTERN}/[A-Za-z0-9_.-]+)$"
)


def check_key(value: object, field: str = "key") -> str:
    """Accept only keys of the shapes above (no '..', no absolute paths)."""
    if not (isinstance(value, str) and _VALID_KEY_RE.fullmatch(value) and ".." not in value):
        raise ValueError(f"{field}: not a valid store key, got {value!r:.120}")
    return value


# ---------------------------------------------------------------------------
# The layout of the store, for the docs (ARCHITECTURE.md's table is generated from it)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyKind:
    """One kind of store key: its shape, who writes it and when."""

    pattern: str
    """With ``{job_id}``, ``{i:04d}`` (a frame index), ``{upload_id}`` or ``{name}``."""
    writer: str
    when: str
    build: Callable[[Mapping[str, object]], str]
    """The builder above that makes it, from the same ids (a test checks they agree)."""


LAYOUT: tuple[KeyKind, ...] = (
    KeyKind(
        "uploads/{upload_id}",
        "a client, through a presigned PUT",
        "before create (an init image)",
        lambda ids: upload_key(ids["upload_id"]),
    ),
    KeyKind(
        "jobs/{job_id}/init.png",
        "planner (job API)",
        "at create: the upload, validated and re-encoded",
        lambda ids: init_key(ids["job_id"]),
    ),
    KeyKind(
        "jobs/{job_id}/plan.json",
        "planner (plan step)",
        "after planning: the storyboard",
        lambda ids: plan_key(ids["job_id"]),
    ),
    KeyKind(
        "jobs/{job_id}/plan_attempts.json",
        "planner (plan step)",
        "after planning: every LLM try",
        lambda ids: plan_attempts_key(ids["job_id"]),
    ),
    KeyKind(
        "jobs/{job_id}/frames/{i:04d}.png",
        "renderer (a fork's frames before K: planner, job API, copied from the parent)",
        "per frame (a retry writes the same bytes)",
        lambda ids: frame_key(ids["job_id"], ids["i"]),
    ),
    KeyKind(
        "jobs/{job_id}/frames/{i:04d}.json",
        "renderer (a fork's frames before K: copied with them)",
        "per frame: what ran for it, the whole FrameSpec included",
        lambda ids: frame_record_key(ids["job_id"], ids["i"]),
    ),
    KeyKind(
        "jobs/{job_id}/depth/{i:04d}.png",
        "renderer",
        "per frame with depth on, except the last (the depth service's for EstimateDepth, "
        "or a frame whose renderer made none)",
        lambda ids: depth_key(ids["job_id"], ids["i"]),
    ),
    KeyKind(
        "jobs/{job_id}/manifest.json",
        "assembler",
        "at the end: request, profile, every frame and what ran, every output",
        lambda ids: manifest_key(ids["job_id"]),
    ),
    *(
        KeyKind(
            f"jobs/{{job_id}}/{file_name}",
            "assembler",
            f"at the end ({fmt} output)",
            lambda ids, fmt=fmt: output_key(ids["job_id"], fmt),
        )
        for fmt, file_name in OUTPUT_NAMES.items()
    ),
    KeyKind(
        "loras/{name}/" + LORA_WEIGHT_NAME,
        "trainer",
        "after training (`train-lora --output store://loras/NAME`)",
        lambda ids: lora_key(ids["name"]),
    ),
)
