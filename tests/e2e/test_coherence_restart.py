"""Colour coherence, camera, sharpening and in-betweens through the distributed chain, with the
renderer killed mid-job: the frames rendered after the restart keep frame 0's colour reference.

Profile ``tiny`` (random weights): the frames are noise, but their colours can still be
matched and measured, so the check is numeric: each frame's recorded CIEDE2000 to frame 0 is
recomputed here from the stored PNGs.
"""

from __future__ import annotations

import asyncio
import io
import json
import zipfile

import pytest
from PIL import Image

from ghibli_anim.contracts import config, keys
from ghibli_anim.contracts.pb import animation_pb2, bus_pb2, types_pb2
from ghibli_anim.devtools.stack import LocalStack
from ghibli_anim.runtime.client import AnimationClient
from ghibli_anim.runtime.store.s3 import S3Store
from ghibli_anim.services.assembler.assemble import count_frames_gif, count_frames_webp, probe_mp4
from ghibli_anim.services.renderer.continuity import color_distance

pytestmark = pytest.mark.timeout(300)

E = bus_pb2
N = 5
KILL_AT = 2  # the renderer dies when frame 2 starts


@pytest.fixture
def stack(tmp_path, tiny_cache_dir):
    env = {
        "ANIM_CACHE_DIR": str(tiny_cache_dir),
        "ANIM_PROFILE": "tiny",
        # A dead renderer's message comes back after AckWait: keep it short.
        "ANIM_ACK_WAIT_S": "3",
    }
    s = LocalStack(tmp_path, services=("planner", "renderer", "assembler"), env=env)
    try:
        s.start()
        yield s
    except BaseException:
        print(s.logs())
        raise
    finally:
        s.stop()


def test_reference_survives_a_renderer_restart(stack):
    renderer = stack.service("renderer")
    old_pid = renderer.pid
    req = animation_pb2.CreateAnimationRequest(
        idea="a paper boat drifts down a rainy street",
        frames=N,
        seed=11,
        color_coherence="lab",
        camera="0:zoom=1.05 rotate=2",
        sharpen="0:0.2, 4:0.6",
        interpolate=1,
        formats=["gif", "mp4", "webp", "zip", "contact"],
    )

    async def run():
        async with AnimationClient(stack.planner_target, timeout_s=30) as client:
            job = (await client.create(req)).job_id
            events = []
            killed = False

            async def watch():
                nonlocal killed
                async for event in client.watch(job):
                    events.append(event)
                    if (
                        not killed
                        and event.type == E.EVENT_TYPE_FRAME_STARTED
                        and event.frame == KILL_AT
                    ):
                        await asyncio.to_thread(renderer.kill)
                        killed = True
                        await asyncio.to_thread(renderer.start, 120)

            await asyncio.wait_for(watch(), 240)
            return job, events, killed, await client.get(job)

    job_id, events, killed, anim = asyncio.run(run())
    assert killed and renderer.pid != old_pid
    assert anim.status == types_pb2.JOB_STATUS_COMPLETED, stack.logs()

    # The restarted renderer rendered frames KILL_AT.. (frame KILL_AT possibly twice).
    started_after = [
        e.frame for e in events[_kill_index(events) + 1 :] if e.type == E.EVENT_TYPE_FRAME_STARTED
    ]
    assert set(range(KILL_AT + 1, N)) <= set(started_after)

    store = S3Store.from_settings(config.load("client", stack.env()))
    frames = [_image(store.get(keys.frame_key(job_id, i))) for i in range(N)]
    records = [json.loads(store.get(keys.frame_record_key(job_id, i))) for i in range(N)]
    reference_key = keys.frame_key(job_id, 0)
    assert records[0]["color"]["delta_e_mean_color"] == 0.0  # its own reference
    for i in range(1, N):
        color = records[i]["color"]
        assert (color["mode"], color["reference_key"]) == ("lab", reference_key), i
        # The recorded distance is the real one between the stored frames...
        measured = color_distance(frames[i], frames[0])
        assert color["delta_e_mean_color"] == pytest.approx(measured.mean_color, abs=0.01)
        assert color["delta_e_pixels"] == pytest.approx(measured.per_pixel, abs=0.01)
        # ...and matching pulled the frame's mean colour onto frame 0's.
        assert color["delta_e_mean_color"] < 0.25, (i, color)
        assert color["delta_e_mean_color"] <= color["delta_e_mean_color_before"]
        # The previous frame's move, and the sharpen schedule, ran as resolved.
        assert records[i]["camera"] == {"zoom": 1.05, "pan_x": 0.0, "pan_y": 0.0, "rotate": 2.0}
        assert records[i]["sharpen"] == pytest.approx(0.2 + 0.1 * i)

    # The raw frames did drift (by more than the matched ones are allowed to), so the
    # check above has teeth: the tiny model drifts slowly, but it drifts.
    assert max(r["color"]["delta_e_mean_color_before"] for r in records) > 0.5

    manifest = json.loads(store.get(keys.manifest_key(job_id)))
    for entry in manifest["frames"][1:]:
        assert entry["record"]["color"]["reference_key"] == reference_key
        assert entry["record"]["spec"]["color_reference_key"] == reference_key

    # One in-between per pair: 9 frames at 16 fps (the tiny profile plays at 8).
    n_out = (N - 1) * 2 + 1
    info = probe_mp4(store.get(keys.output_key(job_id, "mp4")))
    assert (info.frames, info.fps) == (n_out, 16.0)
    assert count_frames_webp(store.get(keys.output_key(job_id, "webp")))[0] == n_out
    assert count_frames_gif(store.get(keys.output_key(job_id, "gif")))[0] == n_out
    with zipfile.ZipFile(io.BytesIO(store.get(keys.output_key(job_id, "zip")))) as zf:
        assert len(zf.namelist()) == N
    assert _image(store.get(keys.output_key(job_id, "contact"))).width > frames[0].width


def _kill_index(events) -> int:
    return next(
        n
        for n, e in enumerate(events)
        if e.type == E.EVENT_TYPE_FRAME_STARTED and e.frame == KILL_AT
    )


def _image(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")
