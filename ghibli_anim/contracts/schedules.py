"""Keyframe schedules: per-frame values from a few keyframes, linearly interpolated.

A value schedule (``strength_schedule``, ``guidance_schedule``, ``sharpen``) is a comma list of
``FRAME:VALUE`` keyframes::

    0:0.15, 10:0.35          frame 0 at 0.15, rising linearly to 0.35 at frame 10, then 0.35
    0.2                      a plain number: the same value on every frame

Frames are integers in ``0..limits.FRAMES.hi - 1`` and must increase from one keyframe to the
next. Before the first keyframe the first value holds, after the last the last value holds; a
keyframe beyond a job's last frame still shapes the ramp towards it.

A camera schedule (``camera``) is a comma list of ``FRAME:MOVE=VALUE ...`` keyframes, the moves
of one keyframe separated by spaces::

    0:zoom=1.02 pan_x=0.01, 10:rotate=2
    zoom=1.02                a keyframe without a frame: the same move on every frame

Each move (``zoom``, ``pan_x``, ``pan_y``, ``rotate``; the storyboard's units,
``contracts.storyboard.Camera``) is its own track, interpolated between the keyframes that name
it. A move that the schedule names, but not at frame 0, starts from its still value at frame 0
(zoom 1, the others 0), so ``0:zoom=1.02, 10:rotate=2`` turns the camera from 0 to 2 degrees
over frames 0..10. A move the schedule never names stays still: a camera schedule replaces the
storyboard's camera whole.

Errors are :class:`ScheduleError` (a ``ValueError``) whose message names the field, the
1-based character position and the problem, e.g.
``strength_schedule: at character 9: expected a number after ':', got 'x'``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise

from ghibli_anim.contracts import limits

CAMERA_MOVES: dict[str, tuple[limits.FloatRange, float]] = {
    "zoom": (limits.ZOOM, 1.0),
    "pan_x": (limits.PAN, 0.0),
    "pan_y": (limits.PAN, 0.0),
    "rotate": (limits.ROTATE, 0.0),
}
"""Camera move name -> (allowed range, still value)."""

MAX_KEYFRAME = limits.FRAMES.hi - 1

# ASCII digits only: without re.ASCII, \d also takes other scripts' digits ("٣", "３"),
# which int() and float() would quietly read as numbers.
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_FRAME = re.compile(r"\d+", re.ASCII)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KEYFRAME_START = re.compile(r"\d+[ \t]*:", re.ASCII)
_SIGNED_FRAME = re.compile(r"[+-]\d+[ \t]*:", re.ASCII)
_SPACE = " \t"


class ScheduleError(ValueError):
    """A malformed schedule; ``position`` is the 0-based character offset of the problem."""

    def __init__(self, field: str, position: int, problem: str) -> None:
        self.field = field
        self.position = position
        self.problem = problem
        super().__init__(f"{field}: at character {position + 1}: {problem}")


@dataclass(frozen=True)
class Schedule:
    """Keyframes ``(frame, value)`` in increasing frame order; :meth:`at` interpolates."""

    keyframes: tuple[tuple[int, float], ...]

    def __post_init__(self) -> None:
        if not self.keyframes:
            raise ValueError("keyframes: must hold at least one keyframe")
        frames = [f for f, _ in self.keyframes]
        if frames != sorted(set(frames)):
            raise ValueError(f"keyframes: frames must increase, got {frames}")

    def at(self, frame: int) -> float:
        """The value at ``frame``: linear between keyframes, held before the first and after
        the last."""
        first_frame, first_value = self.keyframes[0]
        if frame <= first_frame:
            return first_value
        for (f0, v0), (f1, v1) in pairwise(self.keyframes):
            # Strictly before f1: on a keyframe's own frame the next segment (or the hold
            # after the last) gives its value exactly, where v0 + (v1 - v0) could be an ulp off.
            if frame < f1:
                return v0 + (v1 - v0) * (frame - f0) / (f1 - f0)
        return self.keyframes[-1][1]

    def values(self, n_frames: int) -> list[float]:
        return [self.at(i) for i in range(n_frames)]


@dataclass(frozen=True)
class CameraSchedule:
    """One :class:`Schedule` per camera move the schedule names."""

    tracks: Mapping[str, Schedule]

    def at(self, frame: int) -> dict[str, float]:
        """``{zoom, pan_x, pan_y, rotate}`` at ``frame``; unnamed moves are still."""
        out = {name: still for name, (_, still) in CAMERA_MOVES.items()}
        for name, track in self.tracks.items():
            out[name] = track.at(frame)
        return out


class _Scanner:
    """A cursor over the text that reports problems at its position."""

    def __init__(self, text: str, field: str) -> None:
        self.text = text
        self.field = field
        self.pos = 0

    def error(self, problem: str, position: int | None = None) -> ScheduleError:
        return ScheduleError(self.field, self.pos if position is None else position, problem)

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in _SPACE:
            self.pos += 1

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def near(self) -> str:
        """What stands at the cursor, for messages ('end of text' at the end)."""
        if self.at_end():
            return "end of text"
        rest = self.text[self.pos :]
        token = re.match(r"[^\s,:=]+|.", rest)
        return repr(token.group(0)[:20] if token else rest[:1])

    def match(self, pattern: re.Pattern[str]) -> str | None:
        m = pattern.match(self.text, self.pos)
        if m is None:
            return None
        self.pos = m.end()
        return m.group(0)

    def expect(self, char: str, after: str) -> None:
        if self.peek() != char:
            raise self.error(f"expected {char!r} after {after}, got {self.near()}")
        self.pos += 1

    def number(self, what: str, bound: limits.FloatRange | None) -> float:
        start = self.pos
        raw = self.match(_NUMBER)
        if raw is None:
            raise self.error(f"expected a number {what}, got {self.near()}")
        follow = self.peek()
        if follow and (follow.isalnum() or follow in "._"):
            self.pos = start  # "0.1x": report the whole token, from its start
            raise self.error(f"expected a number {what}, got {self.near()}")
        value = float(raw)
        if bound is not None:
            try:
                bound.check("x", value)
            except ValueError:
                raise self.error(f"must be {bound.describe()}, got {raw}", start) from None
        elif not math.isfinite(value):  # "1e999" overflows to inf
            raise self.error(f"must be a finite number, got {raw}", start)
        return value

    def frame(self, hint: str) -> int:
        start = self.pos
        raw = self.match(_FRAME)
        if raw is None:
            if _SIGNED_FRAME.match(self.text, self.pos):
                raise self.error(
                    f"frame must be an integer in 0..{MAX_KEYFRAME}, got {self.near()}"
                )
            raise self.error(f"expected a frame number, got {self.near()}{hint}")
        frame = int(raw)
        if frame > MAX_KEYFRAME:
            raise self.error(f"frame must be an integer in 0..{MAX_KEYFRAME}, got {raw}", start)
        return frame


def _check_text(text: object, field: str) -> str:
    if not isinstance(text, str):
        raise ValueError(f"{field}: must be text, got {type(text).__name__}")
    if len(text) > limits.SCHEDULE_CHARS:
        raise ValueError(
            f"{field}: must be at most {limits.SCHEDULE_CHARS} characters, got {len(text)}"
        )
    if not text.strip():
        raise ScheduleError(field, 0, "must not be empty")
    return text


def _keyframes(scanner: _Scanner, parse_body, hint: str = "") -> list[tuple[int, object]]:
    """``FRAME:BODY, FRAME:BODY ...`` (or one plain BODY) -> [(frame, body)].

    ``hint`` follows "expected a frame number": that can only happen after a comma, since
    text that does not start with a frame and a colon is read as one plain BODY."""
    out: list[tuple[int, object]] = []
    scanner.skip_space()
    # "0.2" is a plain value, "0:0.2" a keyframe: digits followed by a colon start a keyframe.
    plain = (
        _KEYFRAME_START.match(scanner.text, scanner.pos) is None
        and _SIGNED_FRAME.match(scanner.text, scanner.pos) is None
    )
    if plain:
        body = parse_body(scanner)
        scanner.skip_space()
        if not scanner.at_end():
            raise scanner.error(
                f"expected the end after a plain value (write FRAME:VALUE keyframes, comma "
                f"separated, for more), got {scanner.near()}"
            )
        return [(0, body)]
    previous: int | None = None
    while True:
        scanner.skip_space()
        start = scanner.pos
        frame = scanner.frame(hint)
        if previous is not None and frame <= previous:
            raise scanner.error(
                f"frame {frame} does not come after frame {previous}; "
                "keyframes must be in increasing frame order",
                start,
            )
        previous = frame
        scanner.skip_space()
        scanner.expect(":", f"frame {frame}")
        scanner.skip_space()
        out.append((frame, parse_body(scanner)))
        scanner.skip_space()
        if scanner.at_end():
            return out
        if scanner.peek() != ",":
            raise scanner.error(f"expected ',' between keyframes, got {scanner.near()}")
        scanner.pos += 1
        scanner.skip_space()
        if scanner.at_end():
            raise scanner.error("expected a keyframe after ',', got end of text")


def parse_schedule(
    text: str, field: str = "schedule", bound: limits.FloatRange | None = None
) -> Schedule:
    """Parse ``"0:0.15, 10:0.35"`` (or a plain number); every value must lie in ``bound``."""
    scanner = _Scanner(_check_text(text, field), field)

    def value(s: _Scanner) -> float:
        return s.number("as the value", bound)

    pairs = _keyframes(scanner, value)
    return Schedule(tuple((frame, float(v)) for frame, v in pairs))  # type: ignore[arg-type]


def parse_camera_schedule(text: str, field: str = "camera") -> CameraSchedule:
    """Parse ``"0:zoom=1.02 pan_x=0.01, 10:rotate=2"``; see the module docs."""
    scanner = _Scanner(_check_text(text, field), field)
    allowed = ", ".join(CAMERA_MOVES)

    def moves(s: _Scanner) -> dict[str, float]:
        out: dict[str, float] = {}
        while True:
            start = s.pos
            name = s.match(_NAME)
            if name is None:
                raise s.error(f"expected a camera move ({allowed}), got {s.near()}")
            if name not in CAMERA_MOVES:
                raise s.error(f"unknown camera move {name!r} (allowed: {allowed})", start)
            if name in out:
                raise s.error(f"{name} is set twice in one keyframe", start)
            s.skip_space()
            s.expect("=", name)
            s.skip_space()
            out[name] = s.number(f"for {name}", CAMERA_MOVES[name][0])
            s.skip_space()
            if s.at_end() or s.peek() == ",":
                return out
            if not _NAME.match(s.text, s.pos):
                raise s.error(f"expected another move, ',' or the end after {name}, got {s.near()}")

    pairs = _keyframes(
        scanner,
        moves,
        hint=" (separate one keyframe's moves with spaces, keyframes with commas)",
    )
    tracks: dict[str, list[tuple[int, float]]] = {}
    for frame, keyed in pairs:
        for name, value in keyed.items():  # type: ignore[attr-defined]
            tracks.setdefault(name, []).append((frame, value))
    for name, keys_ in tracks.items():
        if keys_[0][0] > 0:
            keys_.insert(0, (0, CAMERA_MOVES[name][1]))
    return CameraSchedule({name: Schedule(tuple(k)) for name, k in tracks.items()})


@dataclass(frozen=True)
class ChoiceSchedule:
    """Named values by keyframe (``0:increment, 10:fixed``): a step, not a ramp; the value of
    the last keyframe at or before a frame holds (the first one before it)."""

    keyframes: tuple[tuple[int, str], ...]

    def at(self, frame: int) -> str:
        value = self.keyframes[0][1]
        for f, v in self.keyframes:
            if f <= frame:
                value = v
        return value


def parse_choice_schedule(text: str, field: str, choices: tuple[str, ...]) -> ChoiceSchedule:
    """Parse ``"0:increment, 10:fixed"`` (or a plain name); names must be in ``choices``."""
    scanner = _Scanner(_check_text(text, field), field)

    def name(s: _Scanner) -> str:
        start = s.pos
        raw = s.match(_NAME)
        if raw is None or raw.lower() not in choices:
            got = repr(raw) if raw is not None else s.near()
            raise s.error(f"expected one of {', '.join(choices)}, got {got}", start)
        return raw.lower()

    pairs = _keyframes(scanner, name)
    return ChoiceSchedule(tuple((frame, str(v)) for frame, v in pairs))


__all__ = [
    "CAMERA_MOVES",
    "CameraSchedule",
    "ChoiceSchedule",
    "Schedule",
    "ScheduleError",
    "parse_camera_schedule",
    "parse_choice_schedule",
    "parse_schedule",
]
