"""Every bound the system enforces, in one place.

The CLI, the gRPC and bus edges, the storyboard schema and the docs all read these.
Error messages name the field and the allowed range, e.g.
``frames: must be an integer in 1..120, got 0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class IntRange:
    lo: int
    hi: int
    multiple_of: int = 1

    def describe(self) -> str:
        extra = f", a multiple of {self.multiple_of}" if self.multiple_of > 1 else ""
        return f"an integer in {self.lo}..{self.hi}{extra}"

    def check(self, field: str, value: object) -> int:
        ok = (
            isinstance(value, int)
            and not isinstance(value, bool)
            and self.lo <= value <= self.hi
            and value % self.multiple_of == 0
        )
        if not ok:
            raise ValueError(f"{field}: must be {self.describe()}, got {value!r:.40}")
        return value  # type: ignore[return-value]


@dataclass(frozen=True)
class FloatRange:
    lo: float
    hi: float
    lo_open: bool = False  # (lo, hi] when True

    def describe(self) -> str:
        left = "(" if self.lo_open else "["
        return f"a number in {left}{self.lo:g}, {self.hi:g}]"

    def check(self, field: str, value: object) -> float:
        ok = (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
            and (self.lo < value if self.lo_open else self.lo <= value)
            and value <= self.hi
        )
        if not ok:
            raise ValueError(f"{field}: must be {self.describe()}, got {value!r:.40}")
        return float(value)  # type: ignore[arg-type]


FRAMES = IntRange(1, 120)
WIDTH = IntRange(64, 1024, multiple_of=8)
HEIGHT = IntRange(64, 1024, multiple_of=8)
STEPS = IntRange(1, 150)
GUIDANCE = FloatRange(0.0, 30.0)
STRENGTH = FloatRange(0.0, 1.0, lo_open=True)
FPS = IntRange(1, 60)
SEED = IntRange(0, 2**32 - 1)
CONTROLNET_SCALE = FloatRange(0.0, 2.0)

# Camera units of the storyboard (contracts/storyboard.py, Camera).
ZOOM = FloatRange(0.8, 1.25)
PAN = FloatRange(-0.25, 0.25)
ROTATE = FloatRange(-15.0, 15.0)

# Motion and coherence.
SHARPEN = FloatRange(0.0, 3.0)  # unsharp-mask amount; 0 = off
COLOR_COHERENCE = ("lab", "hsv", "rgb", "off")
DEFAULT_COLOR_COHERENCE = "lab"
INTERPOLATE = (0, 1, 3)  # in-between frames per pair
OUTPUT_FPS = IntRange(1, FPS.hi * (max(INTERPOLATE) + 1))  # fps x (interpolate + 1)
GIF_MAX_FPS = 50  # GIF delays are 10 ms units and players floor them at 20 ms
SCHEDULE_CHARS = 4000  # keyframe schedule text (strength, guidance, sharpen, camera)

# Text lengths, in characters (tokens are checked separately against CLIP's 77).
IDEA_CHARS = 1000
PROMPT_CHARS = 1000
NEGATIVE_PROMPT_CHARS = 1000
TITLE_CHARS = 200
STYLE_CHARS = 200
IDEMPOTENCY_KEY_CHARS = 128
CLIENT_ID_CHARS = 128
PROFILE_NAME_CHARS = 64
CLIP_MAX_TOKENS = 77  # including the start and end tokens

# Sizes in bytes.
REQUEST_BYTES = 64 * 1024  # any request on gRPC or the bus
STORYBOARD_JSON_BYTES = 64 * 1024
UPLOAD_BYTES = 20 * 1024 * 1024
UPLOAD_PIXELS = 4096 * 4096  # decompression-bomb cap for init images

# With blend_prompts, the weight of the previous frame's prompt in a frame's text embedding.
BLEND_WEIGHT = 0.35

FORMATS = ("gif", "mp4", "webp", "zip", "contact")
DEFAULT_FORMATS = ("gif", "mp4", "webp", "contact")

LIST_PAGE_SIZE = IntRange(1, 500)
DEFAULT_LIST_PAGE_SIZE = 50
LIST_SCAN_LIMIT = 1000
"""Index entries one ListAnimations call examines at most: a status filter (or deleted
jobs) may leave a page short, with a token to go on from."""


def check_text(field: str, value: object, max_chars: int, *, required: bool) -> str:
    """A UTF-8 string without control characters (tab and newline allowed)."""
    if not isinstance(value, str):
        raise ValueError(f"{field}: must be text, got {type(value).__name__}")
    stripped = value.strip()
    if required and not stripped:
        raise ValueError(f"{field}: must not be empty")
    if len(value) > max_chars:
        raise ValueError(f"{field}: must be at most {max_chars} characters, got {len(value)}")
    bad = next((c for c in value if (ord(c) < 32 and c not in "\t\n") or c == "\x7f"), None)
    if bad is not None:
        raise ValueError(f"{field}: must not contain control characters, found {bad!r}")
    return stripped


def check_formats(field: str, values: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Normalise a list of output formats (lower case, no duplicates, known names)."""
    out: list[str] = []
    for raw in values:
        fmt = raw.strip().lower()
        if fmt not in FORMATS:
            raise ValueError(f"{field}: must be a list of {', '.join(FORMATS)}, got {raw!r:.40}")
        if fmt not in out:
            out.append(fmt)
    return tuple(out) if out else DEFAULT_FORMATS


def table() -> list[tuple[str, str]]:
    """(name, allowed values) rows for the docs and `ghibli-anim limits`."""
    return [
        ("frames", FRAMES.describe()),
        ("width", WIDTH.describe()),
        ("height", HEIGHT.describe()),
        ("steps", STEPS.describe()),
        ("guidance", GUIDANCE.describe()),
        ("strength", STRENGTH.describe()),
        ("fps", FPS.describe()),
        ("seed", SEED.describe()),
        ("controlnet_scale", CONTROLNET_SCALE.describe()),
        ("camera.zoom", ZOOM.describe()),
        ("camera.pan_x / pan_y", PAN.describe()),
        ("camera.rotate", ROTATE.describe()),
        ("sharpen", SHARPEN.describe()),
        ("color_coherence", ", ".join(COLOR_COHERENCE)),
        ("interpolate", ", ".join(map(str, INTERPOLATE))),
        ("schedules", f"FRAME:VALUE keyframes, at most {SCHEDULE_CHARS} characters"),
        ("idea", f"1..{IDEA_CHARS} characters"),
        ("prompt", f"1..{PROMPT_CHARS} characters and {CLIP_MAX_TOKENS} CLIP tokens with style"),
        ("negative_prompt", f"0..{NEGATIVE_PROMPT_CHARS} characters"),
        ("storyboard_json", f"at most {STORYBOARD_JSON_BYTES} bytes"),
        ("request", f"at most {REQUEST_BYTES} bytes"),
        ("formats", ", ".join(FORMATS)),
    ]
