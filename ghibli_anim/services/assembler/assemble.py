"""Turn rendered frames into GIF, MP4 (H.264), WebP, a ZIP of PNGs and a contact sheet.

Plain functions, no transport: the assembler service reads the frames from the store, calls
:func:`assemble` and writes the bytes back. Every encoder takes a list of same-sized PIL images
(any mode; converted to RGB, alpha dropped) and a frame rate in ``limits.OUTPUT_FPS`` (the
request's ``limits.FPS`` times ``interpolate + 1``).

Timing per format:

* **GIF** stores delays in 10 ms units, and browsers turn delays under 20 ms into 100 ms. Each
  frame lasts ``1000 / fps`` rounded to the nearest 10 ms, at least 20 ms, so the effective rate
  is ``1000 / delay``: 12 fps plays at 12.5, 24 at 25, 30 at 33.3, 50 at 50
  (:func:`gif_delay_ms`, :func:`gif_effective_fps`). :func:`assemble` never asks a GIF for
  more than 50 fps (see below: a 60 fps clip becomes a 30 fps GIF of every 2nd frame).
* **WebP** stores milliseconds; frame durations alternate (33, 34, 33 ms at 30 fps) so the
  average rate is exact.
* **MP4** is constant frame rate at exactly ``fps``.

GIF and WebP encoders merge a frame identical to the one before it into a longer frame (Pillow
and libwebp both do), so a still stretch decodes to fewer frames with the same total duration.
MP4 keeps every frame.

In-between frames (``interpolate`` K = 1 or 3, :mod:`ghibli_anim.services.assembler.interpolate`) go
into the GIF, MP4 and WebP, which then play at ``fps x (K + 1)`` so the clip keeps its duration;
the ZIP and the contact sheet hold the rendered frames only. A GIF cannot play faster than
:data:`~ghibli_anim.contracts.limits.GIF_MAX_FPS` (50) fps: above that it keeps every
``s``-th frame, ``s = ceil(rate / 50)``, at ``rate / s`` fps (same duration, fewer frames) and
:func:`assemble` adds a note saying so.

MP4 is H.264 (libx264, yuv420p, ``+faststart``) from the ffmpeg binary that imageio-ffmpeg ships.
Its size is padded up to multiples of 16 (never scaled): the frame keeps its top-left corner and
the last column and row are repeated into the padding, which is less visible than a black bar and
cheap to encode. A 70x50 frame becomes an 80x64 video; frames whose sides are multiples of 16
(such as 512x512) are not padded. The output is byte-stable for the same frames, fps and ffmpeg
binary: x264 is deterministic for a fixed thread count, so the count is fixed
(:data:`MP4_THREADS`) rather than taken from the host's cores, and ffmpeg's bitexact flags keep
version strings and metadata out.
"""

from __future__ import annotations

import io
import math
import os
import re
import subprocess
import tempfile
import zipfile
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ghibli_anim.contracts import limits
from ghibli_anim.services.assembler.interpolate import Interpolator, insert_inbetweens

CONTENT_TYPES: dict[str, str] = {
    "gif": "image/gif",
    "mp4": "video/mp4",
    "webp": "image/webp",
    "zip": "application/zip",
    "contact": "image/png",
}

GIF_MIN_DELAY_MS = 20  # browsers play 0-10 ms delays as 100 ms
WEBP_QUALITY = 90
MP4_BLOCK = 16  # H.264 macroblock size; some decoders still want whole macroblocks
MP4_CRF = 18  # visually lossless for flat, painted frames
MP4_PRESET = "medium"
MP4_THREADS = 4  # fixed: x264's output depends on its thread count
MP4_TIMEOUT_S = 600.0

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a ZIP entry can carry

CONTACT_THUMB = 192  # longest side of a thumbnail, px
CONTACT_PAD = 8
CONTACT_TEXT_LINES = 4


# --- validation and timing ------------------------------------------------------------------


def check_frames(frames: Sequence[Image.Image], field: str = "frames") -> list[Image.Image]:
    """RGB versions of ``frames``; ValueError naming the first bad frame's index."""
    if len(frames) == 0:
        raise ValueError(f"{field}: must hold at least one frame, got none")
    out: list[Image.Image] = []
    size: tuple[int, int] | None = None
    for i, frame in enumerate(frames):
        if not isinstance(frame, Image.Image):
            raise ValueError(f"{field}[{i}]: must be a PIL image, got {type(frame).__name__}")
        if size is None:
            size = frame.size
        elif frame.size != size:
            raise ValueError(
                f"{field}[{i}]: size {frame.size[0]}x{frame.size[1]} differs from "
                f"{field}[0] {size[0]}x{size[1]}; all frames must be the same size"
            )
        out.append(frame if frame.mode == "RGB" else frame.convert("RGB"))
    return out


_RATE = limits.FloatRange(0.0, float(limits.OUTPUT_FPS.hi), lo_open=True)


def gif_delay_ms(fps: float) -> int:
    """Per-frame GIF delay: 1000/fps rounded half-up to 10 ms, at least 20 ms."""
    _RATE.check("fps", fps)
    return max(GIF_MIN_DELAY_MS, int(100.0 / fps + 0.5) * 10)


def gif_effective_fps(fps: float) -> float:
    """The rate a GIF written at ``fps`` really plays at."""
    return 1000.0 / gif_delay_ms(fps)


def output_fps(fps: int, interpolate: int = 0) -> int:
    """The rate a clip plays at with ``interpolate`` in-betweens per pair: fps x (K + 1)."""
    limits.FPS.check("fps", fps)
    if interpolate not in limits.INTERPOLATE:
        allowed = ", ".join(map(str, limits.INTERPOLATE))
        raise ValueError(f"interpolate: must be one of {allowed}, got {interpolate!r:.20}")
    return fps * (interpolate + 1)


def gif_timeline(fps: int) -> tuple[int, float]:
    """``(step, gif_fps)``: a GIF of a ``fps`` clip keeps every ``step``-th frame at
    ``gif_fps`` <= GIF_MAX_FPS, so it lasts as long as the clip (see the module docs)."""
    limits.OUTPUT_FPS.check("fps", fps)
    step = math.ceil(fps / limits.GIF_MAX_FPS)
    return step, fps / step


def webp_durations(n_frames: int, fps: int) -> list[int]:
    """Millisecond durations whose running sum stays within 0.5 ms of ``i * 1000 / fps``."""
    limits.OUTPUT_FPS.check("fps", fps)
    ends = [round((i + 1) * 1000 / fps) for i in range(n_frames)]
    return [end - start for start, end in zip([0, *ends[:-1]], ends, strict=True)]


def padded_size(width: int, height: int, block: int = MP4_BLOCK) -> tuple[int, int]:
    """``(width, height)`` rounded up to multiples of ``block``."""
    return -(-width // block) * block, -(-height // block) * block


# --- encoders -------------------------------------------------------------------------------


def encode_gif(frames: Sequence[Image.Image], fps: float) -> bytes:
    """Animated GIF, looping forever, one adaptive 256-colour palette per frame.

    Frames are quantised without dithering: dither noise differs from frame to frame and
    crawls when played. Every frame is written whole with disposal 2 (restore to background),
    so nothing of a previous frame can show through.
    """
    rgb = check_frames(frames)
    delay = gif_delay_ms(fps)
    paletted = [
        f.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        for f in rgb
    ]
    buf = io.BytesIO()
    paletted[0].save(
        buf,
        format="GIF",
        save_all=True,
        append_images=paletted[1:],
        duration=delay,
        loop=0,
        disposal=2,
        optimize=False,
    )
    return buf.getvalue()


def encode_webp(frames: Sequence[Image.Image], fps: int) -> bytes:
    """Animated WebP, lossy at quality 90, looping forever (a single frame is a still WebP)."""
    rgb = check_frames(frames)
    buf = io.BytesIO()
    rgb[0].save(
        buf,
        format="WEBP",
        save_all=True,
        append_images=rgb[1:],
        duration=webp_durations(len(rgb), fps),
        loop=0,
        lossless=False,
        quality=WEBP_QUALITY,
        method=4,
    )
    return buf.getvalue()


def _pad_rgb(frame: Image.Image, width: int, height: int) -> bytes:
    arr = np.asarray(frame, dtype=np.uint8)
    h, w = arr.shape[:2]
    if (w, h) != (width, height):
        arr = np.pad(arr, ((0, height - h), (0, width - w), (0, 0)), mode="edge")
    return arr.tobytes()


def encode_mp4(
    frames: Sequence[Image.Image], fps: int, *, timeout_s: float = MP4_TIMEOUT_S
) -> bytes:
    """H.264 MP4 (yuv420p, faststart), padded to multiples of 16; see the module docs."""
    rgb = check_frames(frames)
    limits.OUTPUT_FPS.check("fps", fps)
    width, height = padded_size(*rgb[0].size)
    ffmpeg = _ffmpeg()
    with tempfile.TemporaryDirectory(prefix="ghibli-mp4-") as tmp:
        out_path = os.path.join(tmp, "animation.mp4")
        log_path = os.path.join(tmp, "ffmpeg.log")
        cmd = [
            ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
            "-framerate", str(fps), "-i", "pipe:0",
            "-c:v", "libx264", "-preset", MP4_PRESET, "-crf", str(MP4_CRF),
            "-pix_fmt", "yuv420p", "-threads", str(MP4_THREADS),
            "-movflags", "+faststart",
            "-fflags", "+bitexact", "-flags:v", "+bitexact", "-map_metadata", "-1",
            out_path,
        ]  # fmt: skip
        # stderr goes to a file: a pipe nobody reads could fill up and stall ffmpeg.
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=log, stderr=log)
            assert proc.stdin is not None
            try:
                for frame in rgb:
                    proc.stdin.write(_pad_rgb(frame, width, height))
                proc.stdin.close()
            except BrokenPipeError:
                pass  # ffmpeg exited early; its log says why
            try:
                rc = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise RuntimeError(f"mp4: ffmpeg did not finish within {timeout_s:g} s") from None
        if rc != 0:
            with open(log_path, "rb") as log:
                tail = log.read()[-2000:].decode(errors="replace").strip()
            raise RuntimeError(f"mp4: ffmpeg failed with exit code {rc}: {tail}")
        with open(out_path, "rb") as f:
            return f.read()


def png_bytes(image: Image.Image) -> bytes:
    """PNG encoding of one image (deterministic for the same pixels)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def encode_zip(frames_png: Sequence[bytes]) -> bytes:
    """ZIP of ``frames/0000.png``, ``frames/0001.png``, ... with fixed timestamps.

    Entries are stored uncompressed (PNG is already compressed) and carry 1980-01-01 00:00 and
    mode 0644, so the same frames always give the same bytes.
    """
    if len(frames_png) == 0:
        raise ValueError("frames_png: must hold at least one frame, got none")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for i, data in enumerate(frames_png):
            if not isinstance(data, bytes | bytearray) or not data.startswith(PNG_SIGNATURE):
                raise ValueError(f"frames_png[{i}]: must be PNG bytes (bad signature)")
            info = zipfile.ZipInfo(f"frames/{i:04d}.png", date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = 3  # Unix, whatever the host
            info.external_attr = 0o100644 << 16
            zf.writestr(info, bytes(data))
    return buf.getvalue()


# --- contact sheet --------------------------------------------------------------------------


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except ImportError:  # Pillow without FreeType: the built-in bitmap font
        return ImageFont.load_default()


def _printable(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> str:
    if isinstance(font, ImageFont.FreeTypeFont):
        return text
    return text.encode("latin-1", "replace").decode("latin-1")  # the bitmap font is latin-1


def _wrap(
    text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int, max_lines: int
) -> list[str]:
    """Greedy word wrap to ``width`` px; the last line ends in "..." when text is cut."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if font.getlength(candidate) <= width or not line:
            line = candidate
        else:
            lines.append(line)
            line = word
    if line:
        lines.append(line)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] += "..."
    # A single word longer than the cell: cut it by characters.
    for n, current in enumerate(lines):
        while font.getlength(current) > width and len(current) > 4:
            current = current[:-4] + "..."
        lines[n] = current
    return lines


def _depth_rgb(depth: Image.Image) -> Image.Image:
    """A viewable version of a depth map of any mode (16-bit and float are min-max scaled)."""
    if depth.mode in ("L", "RGB"):
        return depth.convert("RGB")
    arr = np.asarray(depth, dtype=np.float64)
    if arr.ndim == 3:
        arr = arr[..., :3].mean(axis=2)
    lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
    scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
    return Image.fromarray(np.nan_to_num(scaled).astype(np.uint8), "L").convert("RGB")


def contact_sheet(
    frames: Sequence[Image.Image],
    prompts: Sequence[str | None] | None = None,
    depth: Sequence[Image.Image | None] | None = None,
) -> bytes:
    """PNG grid of numbered thumbnails, the depth map beside each frame, the prompt beneath.

    ``prompts`` and ``depth``, when given, hold one entry per frame; ``None`` entries are
    allowed (depth maps exist only for frames that seeded a successor).
    """
    rgb = check_frames(frames)
    n = len(rgb)
    if prompts is not None and len(prompts) != n:
        raise ValueError(f"prompts: expected {n} entries (one per frame), got {len(prompts)}")
    if depth is not None and len(depth) != n:
        raise ValueError(
            f"depth: expected {n} entries (one per frame, None allowed), got {len(depth)}"
        )
    if depth is not None:
        for i, d in enumerate(depth):
            if d is not None and not isinstance(d, Image.Image):
                raise ValueError(f"depth[{i}]: must be a PIL image or None, got {type(d).__name__}")

    w, h = rgb[0].size
    scale = min(1.0, CONTACT_THUMB / max(w, h))
    tw, th = max(1, round(w * scale)), max(1, round(h * scale))
    font = _font(12)
    line_h = int(font.getbbox("Ag")[3]) + 3
    pictures = 2 if depth is not None else 1
    cell_w = pictures * tw + (pictures - 1) * CONTACT_PAD
    text_h = line_h * CONTACT_TEXT_LINES if prompts is not None else 0
    cell_h = th + text_h + (CONTACT_PAD if text_h else 0)
    cols = min(n, max(1, math.ceil(math.sqrt(n))), 6 // pictures)
    rows = math.ceil(n / cols)
    sheet = Image.new(
        "RGB",
        (cols * cell_w + (cols + 1) * CONTACT_PAD, rows * cell_h + (rows + 1) * CONTACT_PAD),
        (245, 243, 238),
    )
    draw = ImageDraw.Draw(sheet)
    for i, frame in enumerate(rgb):
        x = CONTACT_PAD + (i % cols) * (cell_w + CONTACT_PAD)
        y = CONTACT_PAD + (i // cols) * (cell_h + CONTACT_PAD)
        sheet.paste(frame.resize((tw, th), Image.Resampling.LANCZOS), (x, y))
        if depth is not None:
            dx = x + tw + CONTACT_PAD
            d = depth[i]
            if d is None:
                draw.rectangle((dx, y, dx + tw - 1, y + th - 1), fill=(210, 208, 202))
                draw.text((dx + 4, y + 4), "no depth", fill=(90, 90, 90), font=font)
            else:
                sheet.paste(_depth_rgb(d).resize((tw, th), Image.Resampling.BILINEAR), (dx, y))
        label = f"#{i}"
        box = draw.textbbox((x + 3, y + 2), label, font=font)
        draw.rectangle((box[0] - 3, box[1] - 2, box[2] + 3, box[3] + 2), fill=(0, 0, 0))
        draw.text((x + 3, y + 2), label, fill=(255, 255, 255), font=font)
        prompt = prompts[i] if prompts is not None else None
        if prompt:
            text = _printable(" ".join(prompt.split()), font)
            for k, line in enumerate(_wrap(text, font, cell_w, CONTACT_TEXT_LINES)):
                draw.text((x, y + th + 4 + k * line_h), line, fill=(40, 40, 40), font=font)
    return png_bytes(sheet)


# --- all formats ----------------------------------------------------------------------------


def assemble(
    frames: Sequence[Image.Image],
    fps: int,
    formats: Sequence[str] = limits.DEFAULT_FORMATS,
    *,
    prompts: Sequence[str | None] | None = None,
    depth: Sequence[Image.Image | None] | None = None,
    frames_png: Sequence[bytes] | None = None,
    interpolate: int = 0,
    cuts: Collection[int] = (),
    interpolator: Interpolator | None = None,
    notes: list[str] | None = None,
) -> dict[str, tuple[bytes, str]]:
    """Encode ``frames`` into each of ``formats``: ``{format: (bytes, content_type)}``.

    ``formats`` are names from ``limits.FORMATS`` (an empty list means the defaults). The ZIP
    holds ``frames_png`` when given (the stored PNGs, byte for byte), else PNGs of ``frames``.
    ``prompts`` and ``depth`` go to the contact sheet. ``interpolate`` K inserts K in-betweens
    per pair into the GIF, MP4 and WebP (``interpolator``, default optical flow; no motion is
    made up across the ``cuts``, indices of frames that start a new shot), which then play at
    :func:`output_fps`. Warnings for the user (a GIF capped at 50 fps) are appended to ``notes``.
    """
    wanted = limits.check_formats("formats", list(formats))
    rate = output_fps(fps, interpolate)
    rgb = check_frames(frames)
    if frames_png is not None and len(frames_png) != len(rgb):
        raise ValueError(
            f"frames_png: expected {len(rgb)} entries (one per frame), got {len(frames_png)}"
        )
    clip = rgb
    if interpolate and any(fmt in wanted for fmt in ("gif", "mp4", "webp")):
        arrays = [np.asarray(f, dtype=np.uint8) for f in rgb]
        clip = [
            Image.fromarray(a)
            for a in insert_inbetweens(arrays, interpolate, interpolator, cuts=cuts)
        ]
    out: dict[str, tuple[bytes, str]] = {}
    for fmt in wanted:
        if fmt == "gif":
            step, gif_fps = gif_timeline(rate)
            if step > 1 and notes is not None:
                notes.append(
                    f"gif: {rate} fps is above GIF's {limits.GIF_MAX_FPS} fps; it keeps every "
                    f"{_ordinal(step)} frame at {gif_fps:g} fps (same duration); "
                    "the MP4 and WebP have them all"
                )
            data = encode_gif(clip[::step], gif_fps)
        elif fmt == "webp":
            data = encode_webp(clip, rate)
        elif fmt == "mp4":
            data = encode_mp4(clip, rate)
        elif fmt == "zip":
            data = encode_zip(frames_png if frames_png is not None else [png_bytes(f) for f in rgb])
        else:  # "contact"
            data = contact_sheet(rgb, prompts=prompts, depth=depth)
        out[fmt] = (data, CONTENT_TYPES[fmt])
    return out


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


# --- decoding, for tests and verification ---------------------------------------------------


@dataclass(frozen=True)
class VideoInfo:
    """What ffmpeg reports about an MP4's first video stream."""

    frames: int
    width: int
    height: int
    fps: float
    codec: str  # e.g. "h264"
    pix_fmt: str  # e.g. "yuv420p"
    stream: str  # ffmpeg's whole "Stream #0:0 ... Video: ..." line


def _ffmpeg() -> str:
    import imageio_ffmpeg  # lazy: only MP4 work needs it (the "assembler" extra)

    return imageio_ffmpeg.get_ffmpeg_exe()


def probe_mp4(data: bytes, *, timeout_s: float = 120.0) -> VideoInfo:
    """Count the frames of an MP4 and read its video stream's codec, size and rate.

    Runs ``ffmpeg -i FILE -map 0:v:0 -c copy -f null -`` (no decoding; the imageio-ffmpeg
    build has no ffprobe) and parses its log.
    """
    with tempfile.TemporaryDirectory(prefix="ghibli-probe-") as tmp:
        path = os.path.join(tmp, "in.mp4")
        with open(path, "wb") as f:
            f.write(data)
        cmd = [_ffmpeg(), "-hide_banner", "-nostdin", "-i", path,
               "-map", "0:v:0", "-c", "copy", "-f", "null", "-"]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout_s, check=False)
    log = proc.stderr.decode(errors="replace")
    stream = next((ln.strip() for ln in log.splitlines() if " Video: " in ln), None)
    counts = re.findall(r"frame=\s*(\d+)", log)
    if proc.returncode != 0 or stream is None or not counts:
        raise ValueError(f"mp4: ffmpeg cannot read it: {log[-1000:].strip()}")
    parts = stream.split(" Video: ", 1)[1].split(", ")
    size = re.search(r"(?:^|, )(\d+)x(\d+)(?:[ ,\[]|$)", stream)
    rate = re.search(r", ([\d.]+) fps", stream)
    pix = re.match(r"[\w]+", parts[1]) if len(parts) > 1 else None
    if size is None:
        raise ValueError(f"mp4: no frame size in ffmpeg's stream line: {stream}")
    return VideoInfo(
        frames=int(counts[-1]),
        width=int(size.group(1)),
        height=int(size.group(2)),
        fps=float(rate.group(1)) if rate else 0.0,
        codec=parts[0].split()[0],
        pix_fmt=pix.group(0) if pix else "",
        stream=stream,
    )


def count_frames_mp4(data: bytes) -> tuple[int, int, int, float]:
    """``(frames, width, height, fps)`` of an MP4 (the padded size, see the module docs)."""
    info = probe_mp4(data)
    return info.frames, info.width, info.height, info.fps


def _count_pillow(data: bytes, fmt: str) -> tuple[int, int, int, float]:
    with Image.open(io.BytesIO(data)) as im:
        if im.format != fmt:
            raise ValueError(f"{fmt.lower()}: not a {fmt} file (Pillow sees {im.format})")
        n = getattr(im, "n_frames", 1)
        total_ms = 0
        for i in range(n):
            im.seek(i)
            im.load()  # WebP fills in a frame's duration only when it is decoded
            total_ms += int(im.info.get("duration", 0) or 0)
        fps = 1000.0 * n / total_ms if total_ms else 0.0
        return n, im.width, im.height, fps


def count_frames_gif(data: bytes) -> tuple[int, int, int, float]:
    """``(frames, width, height, fps)`` of a GIF; fps from the delays (0.0 when none)."""
    return _count_pillow(data, "GIF")


def count_frames_webp(data: bytes) -> tuple[int, int, int, float]:
    """``(frames, width, height, fps)`` of a WebP; fps from the durations (0.0 when none)."""
    return _count_pillow(data, "WEBP")


__all__ = [
    "CONTENT_TYPES",
    "MP4_BLOCK",
    "MP4_THREADS",
    "VideoInfo",
    "assemble",
    "check_frames",
    "contact_sheet",
    "count_frames_gif",
    "count_frames_mp4",
    "count_frames_webp",
    "encode_gif",
    "encode_mp4",
    "encode_webp",
    "encode_zip",
    "gif_delay_ms",
    "gif_effective_fps",
    "gif_timeline",
    "output_fps",
    "padded_size",
    "png_bytes",
    "probe_mp4",
    "webp_durations",
]
