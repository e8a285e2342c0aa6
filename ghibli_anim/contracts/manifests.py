"""Building manifest.json from a job's state and its frame records.

The conductor rewrites the manifest after every frame; the assembler writes the
final one with the outputs. Both build it here, from the same inputs: the job's
KV state (request, profile, specs) and each frame's ``frames/{i:04d}.json``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from google.protobuf.json_format import MessageToDict

from ghibli_anim.contracts import keys
from ghibli_anim.contracts.pb import animation_pb2, types_pb2
from ghibli_anim.contracts.storyboard import Manifest, ManifestFrame, OutputFile


def _status_name(status: int) -> str:
    return types_pb2.JobStatus.Name(status).removeprefix("JOB_STATUS_")


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
        status=_status_name(state.status),
        error=state.error,
    )


def frame_entry(state: animation_pb2.JobState, index: int, record: dict[str, Any]) -> ManifestFrame:
    spec = state.frame_specs[index] if index < len(state.frame_specs) else None
    has_depth = index + 1 < len(state.frame_specs) and bool(state.frame_specs[index + 1].depth_key)
    entry = {
        "index": index,
        "key": keys.frame_key(state.job_id, index),
        "sha256": record["sha256"],
        "record": record,
        "depth_key": keys.depth_key(state.job_id, index) if has_depth else None,
    }
    if spec is not None:
        entry["record"] = {
            "spec": MessageToDict(
                spec, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            )
            | {"profile": spec.profile.name},
            **record,
        }
    return ManifestFrame.model_validate(entry)


def with_frame(manifest: Manifest, entry: ManifestFrame) -> Manifest:
    frames = [f for f in manifest.frames if f.index != entry.index] + [entry]
    return manifest.model_copy(update={"frames": sorted(frames, key=lambda f: f.index)})


def with_frame_json(
    current: bytes | None, state: animation_pb2.JobState, index: int, record: dict[str, Any]
) -> bytes:
    """The running manifest with frame ``index`` added, as JSON bytes.

    Called after every frame, so it stays linear in the manifest's size: only the
    new entry goes through the model; the rest, which this code wrote itself, is
    carried as plain JSON (re-validating a 120-frame manifest per frame cost more
    than the frame's orchestration). The assembler validates the final one whole.
    """
    entry = frame_entry(state, index, record).model_dump(mode="json")
    doc = json.loads(current) if current is not None else base(state).model_dump(mode="json")
    doc["status"] = _status_name(state.status)
    doc["title"] = state.title
    frames = [f for f in doc.get("frames", []) if f.get("index") != index]
    doc["frames"] = sorted([*frames, entry], key=lambda f: f["index"])
    return json.dumps(doc, indent=2, ensure_ascii=False).encode()


def output_entry(job_id: str, fmt: str, size: int, sha256: str, content_type: str) -> OutputFile:
    key = keys.output_key(job_id, fmt)
    return OutputFile(
        name=key.rsplit("/", 1)[-1],
        key=key,
        size_bytes=size,
        sha256=sha256,
        content_type=content_type,
    )
