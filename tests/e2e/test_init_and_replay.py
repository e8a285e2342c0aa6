"""`ghibli-anim generate` with an init image and a LoRA file, then `--from-manifest` on an
empty store; and init images the planner refuses before a job exists.

Embedded mode in this process (real nats-server, the four services, the local store) on the
tiny profile: frames are noise, so these tests check bytes, records and refusals.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import grpc
import pytest
import torch
from PIL import Image

from ghibli_anim.cli import main as cli
from ghibli_anim.contracts.model_refs import locate
from ghibli_anim.contracts.pb import animation_pb2, bus_pb2
from ghibli_anim.embedded import EmbeddedStack
from ghibli_anim.runtime.client import AnimationClient, put_presigned

pytestmark = pytest.mark.timeout(600)


def tiny_env(cache_dir: Path, **extra: str) -> dict[str, str]:
    """A CPU, float32 process on the session's tiny models (as tests/conftest.py's)."""
    return {
        "ANIM_CACHE_DIR": str(cache_dir),
        "ANIM_STORE": "local",
        "ANIM_DEVICE": "cpu",
        "ANIM_DTYPE": "float32",
        **extra,
    }


def _frames(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / "frames").glob("*.png"))}


def _records(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((folder / "frames").glob("*.json"))]


def test_init_image_lora_and_replay_from_the_manifest(
    tmp_path: Path, tiny_cache_dir: Path, tiny_settings, monkeypatch, capsys
) -> None:
    root = tmp_path / "models"
    root.mkdir()
    lora = root / "style.safetensors"
    shutil.copy(
        Path(locate("tiny:lcm_lora", tiny_settings)) / "pytorch_lora_weights.safetensors", lora
    )
    init = tmp_path / "init.jpg"
    Image.new("RGB", (80, 48), (210, 150, 60)).save(init, format="JPEG")
    runs = tmp_path / "runs"
    env = tiny_env(
        tiny_cache_dir,
        ANIM_RUNS_DIR=str(runs),
        ANIM_PROFILE="tiny",
        ANIM_MODEL_ROOTS=str(root),
        ANIM_LOG_LEVEL="WARNING",
    )
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    out1, out2 = tmp_path / "out1", tmp_path / "out2"
    rc = cli.main(
        [
            "generate",
            "a fox walks through a misty forest",
            "--frames",
            "2",
            "--seed",
            "11",
            "--lora",
            f"{lora}:0.7",
            "--init-image",
            str(init),
            "--format",
            "gif",
            "--out",
            str(out1),
            "--quiet",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    first, second = _records(out1)
    # Frame 0 is img2img from the planner's validated PNG copy of the upload.
    assert first["mode"] == "img2img" and first["source_key"].endswith("/init.png")
    init_png = Image.open(out1 / "init.png")
    assert (init_png.format, init_png.mode, init_png.size) == ("PNG", "RGB", (80, 48))
    (style,) = first["loras"]
    assert (style["format"], style["modules"], style["scale"]) == ("diffusers", 32, 0.7)
    assert style["sha256"] == hashlib.sha256(lora.read_bytes()).hexdigest()
    assert first["models"]["base_model"]["ref"] == "tiny:pipeline"
    assert first["versions"]["torch"] == torch.__version__ and first["dtype"] == "float32"
    assert (first["source_read"], second["source_read"]) == ("store", "memory")
    original = _frames(out1)
    manifest = tmp_path / "manifest.json"
    shutil.copy(out1 / "manifest.json", manifest)
    recorded = json.loads(manifest.read_text())
    assert recorded["request"]["loras"] == [f"{lora}:0.7"]
    assert recorded["frames"][1]["record"]["steps_effective"] >= 1

    # From scratch: the store is gone, and the frame cache is off (the store path).
    shutil.rmtree(runs)
    monkeypatch.setenv("ANIM_FRAME_CACHE", "0")
    capsys.readouterr()
    rc = cli.main(
        [
            "generate",
            "--from-manifest",
            str(manifest),
            "--init-image",
            str(init),
            "--out",
            str(out2),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "replay: 2/2 frames byte-identical to the manifest" in err
    assert _frames(out2) == original
    assert [r["source_read"] for r in _records(out2)] == ["store", "store"]


def _png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size).save(out, format="PNG")
    return out.getvalue()


async def test_bad_init_images_are_refused_before_the_job_starts(
    tmp_path: Path, tiny_cache_dir: Path
) -> None:
    env = tiny_env(tiny_cache_dir, ANIM_RUNS_DIR=str(tmp_path / "runs"), ANIM_PROFILE="tiny")
    good = _png((64, 64))
    cases = [
        (b"this is not an image at all", "not a PNG, JPEG or WebP image"),
        (good[: len(good) // 2], "not a readable PNG image"),
        (_png((4097, 4096), "1"), "the limit is 16777216"),
    ]
    async with (
        EmbeddedStack(env=env, work_dir=tmp_path / "stack") as stack,
        AnimationClient(stack.planner_target) as client,
    ):
        for data, message in cases:
            upload = await client.stub.CreateUpload(
                animation_pb2.CreateUploadRequest(content_type="image/png", size_bytes=len(data))
            )
            assert upload.key == f"uploads/{upload.upload_id}" and upload.expires_at.seconds
            put_presigned(upload.put_url, data, "image/png")
            request = animation_pb2.CreateAnimationRequest(
                idea="a fox", frames=2, profile="tiny", init_upload_id=upload.upload_id
            )
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await client.create(request)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert refused.value.details().startswith("init_upload_id: ")
            assert message in refused.value.details()
        missing = animation_pb2.CreateAnimationRequest(
            idea="a fox", frames=2, profile="tiny", init_upload_id="0" * 32
        )
        with pytest.raises(grpc.aio.AioRpcError, match="nothing was uploaded"):
            await client.create(missing)
        with pytest.raises(grpc.aio.AioRpcError, match="content_type: must be one of"):
            await client.stub.CreateUpload(
                animation_pb2.CreateUploadRequest(content_type="image/gif", size_bytes=10)
            )
        assert await client.list() == []  # no job was created

        # A prompt over 77 CLIP tokens: refused with the count, or cut when asked to.
        long_prompt = ", ".join(["a small red fox under a tall old tree"] * 12)
        board = json.dumps({"title": "fox", "frames": [{"prompt": long_prompt}]})
        request = animation_pb2.CreateAnimationRequest(
            idea="a fox", frames=1, profile="tiny", storyboard_json=board, formats=["gif"]
        )
        with pytest.raises(grpc.aio.AioRpcError, match=r"frames\[0\]\.prompt: \d+ CLIP tokens"):
            await client.create(request)
        request.truncate_prompts = True
        job = await client.create(request)
        events = [e async for e in client.watch(job.job_id)]
        assert events[-1].type == bus_pb2.EVENT_TYPE_JOB_COMPLETED, events[-1].reason
    record = json.loads((tmp_path / "runs" / job.job_id / "frames" / "0000.json").read_text())
    assert record["prompt_tokens"] > 77 and record["prompt_dropped"]
