"""services/assembler/interpolate.py: optical-flow in-betweens, and the clip they make in
every output format."""

from __future__ import annotations

import io
import math
import zipfile
from collections.abc import Sequence

import cv2
import numpy as np
import pytest
from PIL import Image

from ghibli_anim.services.assembler.assemble import (
    assemble,
    count_frames_gif,
    count_frames_webp,
    gif_timeline,
    output_fps,
    probe_mp4,
)
from ghibli_anim.services.assembler.interpolate import (
    FLOW_METHODS,
    FlowInterpolator,
    Interpolator,
    check_interpolate,
    insert_inbetweens,
)
from ghibli_anim.services.renderer.continuity import Camera, warp_camera

H, W = 64, 96

SIDE = 16

TOP = 24

SQUARE = (230, 200, 40)


def background() -> np.ndarray:
    """A soft grey texture (so the flow of the background is defined: it stands still)."""
    rng = np.random.default_rng(1)
    coarse = (rng.random((H // 4, W // 4)) * 60 + 60).astype(np.float32)
    grey = cv2.resize(coarse, (W, H), interpolation=cv2.INTER_CUBIC)
    return np.clip(np.repeat(grey[..., None], 3, axis=-1), 0, 255)


def scene(x: int) -> np.ndarray:
    """The yellow square with its left edge at column ``x`` over the still background."""
    img = background()
    img[TOP : TOP + SIDE, x : x + SIDE] = SQUARE
    return np.rint(img).astype(np.uint8)


def square_mask(img: np.ndarray) -> np.ndarray:
    """Where the picture is the square's yellow (red well above blue; the grey never is)."""
    return (img[..., 0].astype(int) - img[..., 2].astype(int)) > 95


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def cross_fade(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    return np.rint(a.astype(np.float32) * (1 - t) + b.astype(np.float32) * t).astype(np.uint8)


@pytest.mark.parametrize("method", FLOW_METHODS)
def test_middle_frame_puts_the_square_halfway(method: str) -> None:
    a, b = scene(20), scene(28)  # the square moves right by 8 px
    (middle,) = FlowInterpolator(method).between(a, b, [0.5])
    truth = square_mask(scene(24))
    assert iou(square_mask(middle), truth) >= 0.9
    cols = np.nonzero(square_mask(middle).any(axis=0))[0]
    assert abs((cols.min() + cols.max()) / 2 - (24 + (SIDE - 1) / 2)) <= 1.0  # centred at +4
    # Occlusion-aware: the strip the square uncovers shows background, with no ghost of the
    # square (a cross-fade leaves a half-yellow one there). The flow smears a little over the
    # square's edge, so the background there is close, not exact.
    fade = cross_fade(a, b, 0.5)
    uncovered = (slice(TOP, TOP + SIDE), slice(20, 24))
    assert not square_mask(middle)[TOP : TOP + SIDE, 20:23].any()  # a pixel off the edge
    error = np.abs(middle[uncovered].astype(int) - scene(24)[uncovered]).mean()
    assert error < 0.6 * np.abs(fade[uncovered].astype(int) - scene(24)[uncovered]).mean()
    # Negative control: a 50/50 cross-fade of the same pair fails the position check.
    assert iou(square_mask(fade), truth) < 0.9


def test_three_inbetweens_follow_the_motion() -> None:
    a, b = scene(20), scene(28)
    frames = FlowInterpolator().between(a, b, [0.25, 0.5, 0.75])
    for frame, x in zip(frames, (22, 24, 26), strict=True):
        assert iou(square_mask(frame), square_mask(scene(x))) >= 0.9
        assert np.abs(frame.astype(int) - scene(x)).mean() < 3  # the whole picture, too
    fades = [cross_fade(a, b, t) for t in (0.25, 0.5, 0.75)]
    assert (
        sum(
            iou(square_mask(f), square_mask(scene(x))) >= 0.9
            for f, x in zip(fades, (22, 24, 26), strict=True)
        )
        < 3
    )


@pytest.mark.parametrize(
    ("move", "half"),
    [
        (Camera(zoom=1.1), Camera(zoom=1.1**0.5)),
        (Camera(rotate=6.0), Camera(rotate=3.0)),
        (Camera(pan_x=0.08, pan_y=-0.04), Camera(pan_x=0.04, pan_y=-0.02)),
    ],
    ids=["zoom", "rotate", "pan"],
)
def test_camera_moves_interpolate_to_the_half_move(move: Camera, half: Camera) -> None:
    rng = np.random.default_rng(0)
    noise = cv2.GaussianBlur((rng.random((128, 128, 3)) * 255).astype(np.float32), (0, 0), 2.5)
    a = cv2.normalize(noise, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    b, truth = warp_camera(a, move), warp_camera(a, half)
    (mid,) = FlowInterpolator().between(a, b, [0.5])
    inner = (slice(16, -16), slice(16, -16))  # the borders are reflections, not scene
    error = np.abs(mid.astype(float) - truth)[inner].mean()
    fade_error = np.abs(cross_fade(a, b, 0.5).astype(float) - truth)[inner].mean()
    assert error < 1.5 and error < 0.25 * fade_error


def test_still_pair_stays_still() -> None:
    a = scene(30)
    (mid,) = FlowInterpolator().between(a, a.copy(), [0.5])
    assert np.abs(mid.astype(int) - a).max() <= 1


class FadeInterpolator:
    """A second, trivial engine: proves the protocol is all an engine needs."""

    name = "fade"

    def __init__(self) -> None:
        self.calls: list[tuple[float, ...]] = []

    def between(self, a: np.ndarray, b: np.ndarray, times: Sequence[float]) -> list[np.ndarray]:
        self.calls.append(tuple(times))
        return [cross_fade(a, b, t) for t in times]


def test_insert_inbetweens_counts_order_and_cuts() -> None:
    frames = [scene(x) for x in (10, 18, 26, 34)]
    engine = FadeInterpolator()
    assert isinstance(engine, Interpolator)
    out = insert_inbetweens(frames, 3, engine, cuts={2})
    assert len(out) == (4 - 1) * 4 + 1
    assert all(out[4 * i] is frames[i] for i in range(4))  # the rendered frames stay in place
    assert engine.calls == [(0.25, 0.5, 0.75)] * 2  # the cut pair was not interpolated
    # Across the cut (frames 1 -> 2): hold the outgoing frame, then the incoming one.
    assert [o is frames[1] for o in out[5:8]] == [True, True, False]
    assert out[7] is frames[2]
    assert insert_inbetweens(frames, 0) == frames
    assert len(insert_inbetweens(frames[:1], 3)) == 1


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match=r"interpolate: must be one of 0, 1, 3, got 2"):
        check_interpolate(2)
    with pytest.raises(ValueError, match=r"times: each must be strictly between 0 and 1"):
        FlowInterpolator().between(scene(0), scene(1), [1.0])
    with pytest.raises(ValueError, match=r"b: shape \(32, 96, 3\) differs"):
        FlowInterpolator().between(scene(0), scene(1)[:32], [0.5])
    with pytest.raises(ValueError, match=r"method: must be one of dis, farneback"):
        FlowInterpolator("rife")


# --- the clip in every format ---------------------------------------------------------------

N = 5

STEP = 6


@pytest.fixture(scope="module", params=[1, 3], ids=lambda k: f"K{k}")
def clip(request: pytest.FixtureRequest) -> dict:
    k = request.param
    fps = 24 if k == 3 else 12  # 24 x 4 = 96 fps: above what a GIF can play
    frames = [Image.fromarray(scene(4 + STEP * i)) for i in range(N)]
    notes: list[str] = []
    out = assemble(
        frames,
        fps,
        ["gif", "mp4", "webp", "zip", "contact"],
        prompts=[f"a yellow kite, frame {i}" for i in range(N)],
        interpolate=k,
        notes=notes,
    )
    return {"k": k, "fps": fps, "frames": frames, "out": out, "notes": notes}


def test_every_format_decodes_to_the_right_count_size_and_fps(clip: dict) -> None:
    k, fps, out = clip["k"], clip["fps"], clip["out"]
    n_out = (N - 1) * (k + 1) + 1
    rate = output_fps(fps, k)
    assert rate == fps * (k + 1)
    info = probe_mp4(out["mp4"][0])
    assert (info.frames, info.width, info.height, info.fps) == (n_out, W, H, rate)
    assert count_frames_webp(out["webp"][0])[:3] == (n_out, W, H)
    assert count_frames_webp(out["webp"][0])[3] == pytest.approx(rate, rel=0.01)
    step, gif_fps = gif_timeline(rate)
    n_gif, gw, gh, gif_played = count_frames_gif(out["gif"][0])
    assert (n_gif, gw, gh) == (math.ceil(n_out / step), W, H)
    delay_ms = max(20, round(1000 / gif_fps / 10) * 10)
    assert gif_played == pytest.approx(1000 / delay_ms)
    if k == 3:
        assert step == 2 and gif_fps == 48
        assert clip["notes"] and "above GIF's 50 fps" in clip["notes"][0]
    else:
        assert step == 1 and gif_fps == rate and clip["notes"] == []
    # The clip keeps its duration (within a GIF's 10 ms timing grid).
    duration = (N - 1 + 1 / (k + 1)) / fps
    assert n_gif * delay_ms / 1000 == pytest.approx(duration, rel=0.2)
    # frames.zip and the contact sheet hold the rendered frames only.
    with zipfile.ZipFile(io.BytesIO(out["zip"][0])) as zf:
        assert len(zf.namelist()) == N
    with Image.open(io.BytesIO(out["contact"][0])) as sheet:
        assert sheet.format == "PNG"


def test_the_mp4_inbetweens_are_motion_not_fades(clip: dict, tmp_path) -> None:
    import imageio_ffmpeg

    k = clip["k"]
    path = tmp_path / "clip.mp4"
    path.write_bytes(clip["out"]["mp4"][0])
    reader = imageio_ffmpeg.read_frames(str(path))
    next(reader)
    decoded = [np.frombuffer(buf, np.uint8).reshape(H, W, 3) for buf in reader]
    # Frame j of the clip shows the square at 4 + STEP * j / (K + 1).
    for j, frame in enumerate(decoded):
        x = 4 + STEP * j / (k + 1)
        if x != int(x):
            continue  # sub-pixel positions have no exact truth image
        assert iou(square_mask(frame), square_mask(scene(int(x)))) >= 0.85, j
