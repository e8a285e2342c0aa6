"""services/assembler/assemble.py: frame counts, sizes, timing, codec, faststart, padding,
ZIP and the contact sheet."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image, ImageDraw

from ghibli_anim.contracts import limits
from ghibli_anim.services.assembler.assemble import (
    CONTENT_TYPES,
    PNG_SIGNATURE,
    assemble,
    contact_sheet,
    count_frames_gif,
    count_frames_mp4,
    count_frames_webp,
    encode_gif,
    encode_mp4,
    encode_webp,
    encode_zip,
    gif_delay_ms,
    gif_effective_fps,
    padded_size,
    png_bytes,
    probe_mp4,
    webp_durations,
)

N = 6

FPS = 12

BG = (30, 60, 90)

SQUARE = (250, 200, 20)

SIDE = 14

STEP = 7


def square_x(i: int) -> int:
    return 2 + i * STEP


def moving_square(width: int, height: int, n: int = N) -> list[Image.Image]:
    """A yellow square sliding right over a flat blue background."""
    frames = []
    for i in range(n):
        im = Image.new("RGB", (width, height), BG)
        x, y = square_x(i), 10
        ImageDraw.Draw(im).rectangle((x, y, x + SIDE - 1, y + SIDE - 1), fill=SQUARE)
        frames.append(im)
    return frames


SIZES = [(64, 64), (70, 50)]


@pytest.fixture(scope="module", params=SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def encoded(request: pytest.FixtureRequest) -> dict[str, object]:
    width, height = request.param
    frames = moving_square(width, height)
    out = assemble(
        frames,
        FPS,
        list(limits.FORMATS),
        prompts=[f"a yellow kite over the sea, frame {i}" for i in range(N)],
        depth=[f.convert("L") for f in frames[:-1]] + [None],
    )
    return {"size": (width, height), "frames": frames, "out": out}


def near(a: tuple[int, ...], b: tuple[int, ...], tol: int) -> bool:
    return all(abs(int(x) - int(y)) <= tol for x, y in zip(a, b, strict=True))


def test_assemble_all_formats(encoded: dict) -> None:
    out = encoded["out"]
    assert list(out) == list(limits.FORMATS)
    for fmt, (data, content_type) in out.items():
        assert content_type == CONTENT_TYPES[fmt]
        assert len(data) > 100


def test_gif(encoded: dict) -> None:
    data, _ = encoded["out"]["gif"]
    w, h = encoded["size"]
    assert data[:6] == b"GIF89a"
    n, gw, gh, fps = count_frames_gif(data)
    assert (n, gw, gh) == (N, w, h)
    assert fps == pytest.approx(gif_effective_fps(FPS)) == pytest.approx(12.5)
    with Image.open(io.BytesIO(data)) as im:
        assert im.info["loop"] == 0
        for i in range(N):
            im.seek(i)
            assert im.info["duration"] == 80
            rgb = im.convert("RGB")
            # The square is where frame i put it, and nothing of frame i-1 is left.
            assert near(rgb.getpixel((square_x(i) + SIDE // 2, 16)), SQUARE, 8)
            if i:
                assert near(rgb.getpixel((square_x(i - 1) + 2, 16)), BG, 8)


def test_webp(encoded: dict) -> None:
    data, _ = encoded["out"]["webp"]
    w, h = encoded["size"]
    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    n, ww, wh, fps = count_frames_webp(data)
    assert (n, ww, wh) == (N, w, h)
    assert fps == pytest.approx(FPS, abs=0.01)
    with Image.open(io.BytesIO(data)) as im:
        assert im.info.get("loop", 0) == 0
        im.seek(N - 1)
        rgb = im.convert("RGB")
        assert near(rgb.getpixel((square_x(N - 1) + SIDE // 2, 16)), SQUARE, 24)
        assert near(rgb.getpixel((square_x(N - 2) + 2, 16)), BG, 24)


def test_mp4_h264_yuv420p_faststart_padded(encoded: dict) -> None:
    data, _ = encoded["out"]["mp4"]
    w, h = encoded["size"]
    pw, ph = padded_size(w, h)
    assert (pw, ph) == {(64, 64): (64, 64), (70, 50): (80, 64)}[(w, h)]
    info = probe_mp4(data)
    assert (info.frames, info.width, info.height) == (N, pw, ph)
    assert info.fps == FPS
    assert "Video: h264" in info.stream and "yuv420p" in info.stream
    assert (info.codec, info.pix_fmt) == ("h264", "yuv420p")
    assert count_frames_mp4(data) == (N, pw, ph, float(FPS))
    # faststart: the index (moov) comes before the media data (mdat).
    assert 0 <= data.find(b"moov") < data.find(b"mdat")


def test_mp4_pads_without_scaling(tmp_path: Path) -> None:
    w, h = 70, 50
    frames = moving_square(w, h, 3)
    path = tmp_path / "a.mp4"
    path.write_bytes(encode_mp4(frames, FPS))
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    assert tuple(meta["size"]) == padded_size(w, h)
    decoded = [np.frombuffer(buf, np.uint8).reshape(64, 80, 3) for buf in reader]
    assert len(decoded) == 3
    for src, got in zip(frames, decoded, strict=True):
        # The picture keeps its place and scale in the top-left corner...
        diff = np.abs(got[:h, :w].astype(int) - np.asarray(src, dtype=int))
        assert diff.mean() < 4
        # ...and the padding repeats the edge (the background colour here).
        assert near(tuple(got[h + 5, 10]), BG, 10) and near(tuple(got[20, w + 5]), BG, 10)


def test_mp4_is_byte_stable() -> None:
    frames = moving_square(64, 64, 4)
    assert encode_mp4(frames, FPS) == encode_mp4(frames, FPS)


def test_zip(encoded: dict) -> None:
    data, _ = encoded["out"]["zip"]
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = zf.namelist()
        assert names == [f"frames/{i:04d}.png" for i in range(N)]
        for i, name in enumerate(names):
            assert zf.getinfo(name).date_time == (1980, 1, 1, 0, 0, 0)
            png = zf.read(name)
            assert png.startswith(PNG_SIGNATURE)
            with Image.open(io.BytesIO(png)) as im:
                assert im.size == encoded["size"]
                assert im.convert("RGB").tobytes() == encoded["frames"][i].tobytes()
    # Same frames, same bytes.
    pngs = [png_bytes(f) for f in encoded["frames"]]
    assert encode_zip(pngs) == encode_zip(pngs)
    with pytest.raises(ValueError, match=r"frames_png\[1\]: must be PNG bytes"):
        encode_zip([pngs[0], b"GIF89a..."])
    with pytest.raises(ValueError, match=r"frames_png: must hold at least one frame"):
        encode_zip([])


def test_assemble_zip_keeps_stored_pngs() -> None:
    frames = moving_square(64, 64, 2)
    stored = [png_bytes(f.convert("RGBA")) for f in frames]  # not what png_bytes(RGB) gives
    out = assemble(frames, FPS, ["zip"], frames_png=stored)
    with zipfile.ZipFile(io.BytesIO(out["zip"][0])) as zf:
        assert [zf.read(n) for n in zf.namelist()] == stored


def test_contact_sheet(encoded: dict) -> None:
    data, content_type = encoded["out"]["contact"]
    assert content_type == "image/png" and data.startswith(PNG_SIGNATURE)
    frames = encoded["frames"]
    with (
        Image.open(io.BytesIO(data)) as with_depth,
        Image.open(io.BytesIO(contact_sheet(frames))) as plain,
    ):
        assert with_depth.format == "PNG"
        # The depth column widens each cell; prompts add height.
        assert with_depth.width > plain.width
        assert with_depth.height > plain.height
    with pytest.raises(ValueError, match=r"prompts: expected 6 entries"):
        contact_sheet(frames, prompts=["one"])
    with pytest.raises(ValueError, match=r"depth: expected 6 entries"):
        contact_sheet(frames, depth=[None])


def test_contact_sheet_depth_modes() -> None:
    frames = moving_square(64, 64, 2)
    depth16 = Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)
    depth_f = Image.fromarray(np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64))
    data = contact_sheet(frames, prompts=["a", None], depth=[depth16, depth_f])
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG"


def test_mismatched_sizes_name_the_frame() -> None:
    frames = moving_square(64, 64, 5)
    frames[3] = frames[3].resize((70, 50))
    for encode in (encode_gif, encode_webp, encode_mp4):
        with pytest.raises(
            ValueError, match=r"frames\[3\]: size 70x50 differs from frames\[0\] 64x64"
        ):
            encode(frames, FPS)
    with pytest.raises(ValueError, match=r"frames\[3\]"):
        assemble(frames, FPS, ["gif"])
    with pytest.raises(ValueError, match=r"frames: must hold at least one frame"):
        encode_gif([], FPS)
    with pytest.raises(ValueError, match=r"frames\[1\]: must be a PIL image"):
        encode_gif([frames[0], b"png"], FPS)  # type: ignore[list-item]


def test_bad_settings() -> None:
    frames = moving_square(64, 64, 2)
    with pytest.raises(ValueError, match=r"fps: must be an integer in 1\.\.60, got 0"):
        assemble(frames, 0, ["gif"])
    with pytest.raises(ValueError, match=r"formats: must be a list of gif, mp4"):
        assemble(frames, FPS, ["avi"])


def test_timing_helpers() -> None:
    assert [gif_delay_ms(f) for f in (1, 10, 12, 24, 30, 40, 50, 60)] == [
        1000,
        100,
        80,
        40,
        30,
        30,
        20,
        20,
    ]
    assert gif_effective_fps(60) == 50.0
    durations = webp_durations(30, 30)
    assert set(durations) == {33, 34} and sum(durations) == 1000
    assert webp_durations(1, 7) == [143]
    assert padded_size(512, 512) == (512, 512) and padded_size(72, 64) == (80, 64)
