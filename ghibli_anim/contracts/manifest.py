"""The manifest: everything about a job, as ``jobs/{id}/manifest.json``.

Its request, profile and planner, what ran for every frame (the FrameSpec and the
renderer's record ``frames/{i:04d}.json``, with each PNG's sha256), the files the
assembler produced, and the job's status. A versioned JSON document with a JSON Schema
(:mod:`ghibli_anim.contracts.documents`); ``generate --from-manifest`` re-renders a run
from it alone.

One writer: the assembler, once every frame is rendered, with the outputs (:func:`base`,
:func:`frame_entry`, :func:`with_frame`, :func:`output_entry`), from the job's KV state
and the frame records. A job that stops before that keeps its frames' records
(``frames/{i:04d}.json``) and its storyboard; a resumed one gets its manifest when it
completes.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from google.protobuf.json_format import MessageToDict
from pydantic import AwareDatetime, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ghibli_anim.contracts import keys, lifecycle, limits
from ghibli_anim.contracts.documents import (
    SCHEMA_VERSION,
    SchemaError,
    Sha256,
    StrictModel,
    error_lines,
    json_schema,
    load_json,
)
from ghibli_anim.contracts.pb import animation_pb2, types_pb2
from ghibli_anim.contracts.storyboard import PlannerInfo


class ManifestError(SchemaError):
    kind = "manifest"


class ManifestFrame(StrictModel):
    """One rendered frame: where it is, its hash and what ran."""

    index: Annotated[int, Field(ge=0, le=keys.MAX_FRAME_INDEX)]
    key: str
    """Store key of the PNG, ``jobs/{id}/frames/{i:04d}.png``."""
    sha256: Sha256
    record: dict[str, Any] = Field(default_factory=dict)
    """What ran for this frame (the renderer's ``frames/{i:04d}.json``; free-form)."""
    depth_key: str | None = None
    """Store key of the depth map that guided this frame's successor, if any."""


class OutputFile(StrictModel):
    """A file the assembler produced."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,100}$")]
    key: str
    size_bytes: Annotated[int, Field(ge=0)]
    sha256: Sha256
    content_type: Annotated[str, Field(pattern=r"^[a-z]+/[a-z0-9.+-]+$")]

    def to_proto(self) -> types_pb2.OutputFile:
        """The file as the API and the bus carry it (without a URL)."""
        return types_pb2.OutputFile(
            name=self.name,
            key=self.key,
            size_bytes=self.size_bytes,
            sha256=self.sha256,
            content_type=self.content_type,
        )


class Manifest(StrictModel):
    """Everything about a job: request, profile, planner, frames, outputs, status (version 1).

    The assembler writes it when a job completes. The schema still accepts any status and
    partial ``frames`` / ``outputs``: manifests written by earlier versions while a job was
    running, or by other tools, read back as what they are.
    """

    version: Literal[1] = SCHEMA_VERSION
    job_id: str
    idea: Annotated[str, Field(min_length=1, max_length=limits.IDEA_CHARS)]
    """The request's idea as validated at creation (recorded as is, not cleaned again)."""
    title: Annotated[str, Field(max_length=limits.TITLE_CHARS)] = ""
    created_at: AwareDatetime
    request: dict[str, Any] = Field(default_factory=dict)
    """The request's settings after validation (frames, size, seed, fps, formats, ...)."""
    profile: dict[str, Any] = Field(default_factory=dict)
    """The resolved profile (models, LoRAs, scheduler)."""
    planner: PlannerInfo | None = None
    frames: list[ManifestFrame] = Field(default_factory=list)
    outputs: list[OutputFile] = Field(default_factory=list)
    status: Literal[lifecycle.STATUS_NAMES] = "PENDING"
    error: Annotated[str, Field(max_length=2000)] = ""
    """Why the job failed or was cancelled; empty otherwise."""

    @field_validator("job_id")
    @classmethod
    def _job_id(cls, value: str) -> str:
        if not keys.is_job_id(value):
            raise PydanticCustomError(
                "job_id", "must be 32 lowercase hex characters, got {got}", {"got": f"{value:.80}"}
            )
        return value

    @model_validator(mode="after")
    def _keys_belong_to_job(self) -> Manifest:
        # Keys must be exactly the ones keys.py builds for this job: a manifest can never point
        # a reader at another job's files or outside the store's layout.
        problems: list[str] = []
        seen: set[int] = set()
        for n, frame in enumerate(self.frames):
            path = f"frames[{n}]"
            if frame.index in seen:
                problems.append(f"{path}.index: frame {frame.index} is listed twice")
            seen.add(frame.index)
            want = keys.frame_key(self.job_id, frame.index)
            if frame.key != want:
                problems.append(f"{path}.key: must be {want!r}, got {frame.key!r:.120}")
            if frame.depth_key is not None:
                want = keys.depth_key(self.job_id, frame.index)
                if frame.depth_key != want:
                    problems.append(
                        f"{path}.depth_key: must be {want!r} or null, got {frame.depth_key!r:.120}"
                    )
        prefix = keys.job_prefix(self.job_id)
        for n, out in enumerate(self.outputs):
            if out.key != prefix + out.name:
                problems.append(
                    f"outputs[{n}].key: must be {prefix + out.name!r}, got {out.key!r:.120}"
                )
        if problems:
            raise PydanticCustomError(
                "pathed", "{text}", {"text": "; ".join(problems), "lines": problems}
            )
        return self

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


def parse_manifest(data: str | bytes | Mapping[str, Any]) -> Manifest:
    """Parse and validate a manifest (JSON text or a dict); raises :class:`ManifestError`."""
    obj = load_json(data, ManifestError)
    try:
        return Manifest.model_validate(obj)
    except ValidationError as exc:
        raise ManifestError(error_lines(exc, Manifest)) from None


def manifest_json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of :class:`Manifest`, version 1."""
    return json_schema(Manifest, "manifest")


# ---------------------------------------------------------------------------
# Building it from a job's state and its frame records
# ---------------------------------------------------------------------------


def base(state: animation_pb2.JobState) -> Manifest:
    created = (
        state.created_at.ToDatetime(tzinfo=UTC)
        if state.HasField("created_at")
        else (datetime.now(UTC))
    )
    request = MessageToDict(state.request, preserving_proto_field_name=True)
    request["seed"] = state.seed  # the resolved seed, also when the caller set none
    request.pop("client_id", None)
    request.pop("storyboard_json", None)
    backend = state.planner_backend
    return Manifest(
        job_id=state.job_id,
        idea=state.request.idea,
        title=state.title,
        created_at=created,
        request=request,
        profile=MessageToDict(state.profile, preserving_proto_field_name=True),
        planner={"backend": backend, "offline": backend == "offline"} if backend else None,
        status=lifecycle.status_name(state.status),
        error=state.error,
    )


def frame_entry(state: animation_pb2.JobState, index: int, record: dict[str, Any]) -> ManifestFrame:
    spec = state.frame_specs[index] if index < len(state.frame_specs) else None
    has_depth = lifecycle.needs_depth(state.frame_specs, index)
    entry = {
        "index": index,
        "key": keys.frame_key(state.job_id, index),
        "sha256": record["sha256"],
        "record": record,
        "depth_key": keys.depth_key(state.job_id, index) if has_depth else None,
    }
    if spec is not None:
        # The job's own spec, profile by name (the record's spec, with the whole profile,
        # is the one a fork reads: a fork's copied records name the parent's keys).
        entry["record"] = {
            **record,
            "spec": MessageToDict(
                spec, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            )
            | {"profile": spec.profile.name},
        }
    return ManifestFrame.model_validate(entry)


def with_frame(manifest: Manifest, entry: ManifestFrame) -> Manifest:
    frames = [f for f in manifest.frames if f.index != entry.index] + [entry]
    return manifest.model_copy(update={"frames": sorted(frames, key=lambda f: f.index)})


def output_entry(job_id: str, fmt: str, size: int, sha256: str, content_type: str) -> OutputFile:
    key = keys.output_key(job_id, fmt)
    return OutputFile(
        name=key.rsplit("/", 1)[-1],
        key=key,
        size_bytes=size,
        sha256=sha256,
        content_type=content_type,
    )
