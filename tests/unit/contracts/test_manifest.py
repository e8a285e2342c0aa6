"""contracts/manifest.py: a job's manifest round-trips, errors name their paths, JSON Schema."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from ghibli_anim.contracts import keys
from ghibli_anim.contracts.manifest import (
    Manifest,
    ManifestError,
    manifest_json_schema,
    parse_manifest,
)

JOB = "0123456789abcdef0123456789abcdef"


def manifest(**extra: Any) -> dict[str, Any]:
    sha = "ab" * 32
    return {
        "version": 1,
        "job_id": JOB,
        "idea": "a dragon glides over a medieval town at dusk",
        "title": "Dragon at dusk",
        "created_at": "2026-01-02T03:04:05Z",
        "request": {"frames": 2, "fps": 12, "seed": 7},
        "profile": {"name": "tiny"},
        "planner": {"backend": "offline", "offline": True},
        "frames": [
            {
                "index": 0,
                "key": keys.frame_key(JOB, 0),
                "sha256": sha,
                "record": {"seed": 7, "steps": 10},
                "depth_key": keys.depth_key(JOB, 0),
            },
            {"index": 1, "key": keys.frame_key(JOB, 1), "sha256": sha},
        ],
        "outputs": [
            {
                "name": "animation.gif",
                "key": keys.output_key(JOB, "gif"),
                "size_bytes": 123,
                "sha256": sha,
                "content_type": "image/gif",
            }
        ],
        "status": "COMPLETED",
        **extra,
    }


def test_manifest_valid_round_trip() -> None:
    m = parse_manifest(json.dumps(manifest()))
    assert m.created_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert m.frames[0].record == {"seed": 7, "steps": 10}
    assert m.frames[1].depth_key is None
    assert m.outputs[0].size_bytes == 123
    assert m.planner is not None and m.planner.backend == "offline"
    assert parse_manifest(m.to_json()) == m
    assert Manifest(job_id=JOB, idea="x", created_at=datetime.now(UTC)).status == "PENDING"


def test_manifest_errors_name_paths() -> None:
    data = manifest(status="DONE", colour=1, job_id="nope")
    with pytest.raises(ManifestError) as info:
        parse_manifest(data)
    errs = info.value.errors
    assert any(e.startswith("job_id: must be 32 lowercase hex") for e in errs)
    assert any(e.startswith("status:") and "COMPLETED" in e for e in errs)
    assert any(e.startswith("colour: unknown field") for e in errs)

    data = manifest(created_at="2026-01-02T03:04:05")  # no time zone
    with pytest.raises(ManifestError, match=r"created_at:"):
        parse_manifest(data)

    data = manifest()
    data["frames"][1]["key"] = keys.frame_key("f" * 32, 1)  # another job's frame
    data["frames"][0]["sha256"] = "xyz"
    data["outputs"][0]["key"] = keys.output_key(JOB, "mp4")
    with pytest.raises(ManifestError) as info:
        parse_manifest(data)
    assert any(e.startswith("frames[0].sha256:") for e in info.value.errors)

    data["frames"][0]["sha256"] = "ab" * 32
    with pytest.raises(ManifestError) as info:
        parse_manifest(data)
    assert info.value.errors == [
        f"frames[1].key: must be {keys.frame_key(JOB, 1)!r}, got {keys.frame_key('f' * 32, 1)!r}",
        f"outputs[0].key: must be {keys.output_key(JOB, 'gif')!r}, "
        f"got {keys.output_key(JOB, 'mp4')!r}",
    ]


def test_manifest_json_schema() -> None:
    schema = manifest_json_schema()
    json.dumps(schema)
    assert {"version", "job_id", "idea", "created_at", "request", "profile", "planner"} <= set(
        schema["properties"]
    )
    assert {"frames", "outputs", "status"} <= set(schema["properties"])
    assert set(schema["$defs"]["ManifestFrame"]["properties"]) == {
        "index",
        "key",
        "sha256",
        "record",
        "depth_key",
    }
    assert set(schema["$defs"]["OutputFile"]["properties"]) == {
        "name",
        "key",
        "size_bytes",
        "sha256",
        "content_type",
    }
    assert "COMPLETED" in schema["properties"]["status"]["enum"]
