"""The storyboard: what the planner writes and what a user may pass as ``storyboard_json``.

A title, a style line and one :class:`Shot` per frame (prompt, negative prompt, camera move,
continuity, strength hint, palette), stored as ``jobs/{id}/plan.json``. It is a versioned
JSON document with a JSON Schema; parsing reports every problem at once, each line starting
with the path of the bad field (:mod:`ghibli_anim.contracts.documents`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ghibli_anim.contracts import limits
from ghibli_anim.contracts.documents import (
    SCHEMA_VERSION,
    SchemaError,
    StrictModel,
    error_lines,
    json_schema,
    load_json,
    lowercase,
    number_field,
    range_field,
    text_field,
)

DEFAULT_STYLE = "ghibli style"


class StoryboardError(SchemaError):
    kind = "storyboard"


PromptText = Annotated[
    str,
    Field(min_length=1, max_length=limits.PROMPT_CHARS),
    text_field(limits.PROMPT_CHARS, required=True),
]
NegativeText = Annotated[
    str,
    Field(max_length=limits.NEGATIVE_PROMPT_CHARS),
    text_field(limits.NEGATIVE_PROMPT_CHARS, required=False),
]
TitleText = Annotated[
    str,
    Field(min_length=1, max_length=limits.TITLE_CHARS),
    text_field(limits.TITLE_CHARS, required=True),
]
StyleText = Annotated[
    str, Field(max_length=limits.STYLE_CHARS), text_field(limits.STYLE_CHARS, required=False)
]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="lowercase hex sha256")]


class Camera(StrictModel):
    """Camera move applied to a frame before it seeds the next one (all defaults: still)."""

    zoom: Annotated[float, number_field(limits.ZOOM)] = range_field(limits.ZOOM, 1.0)
    """Multiplicative zoom; > 1 moves in."""
    pan_x: Annotated[float, number_field(limits.PAN)] = range_field(limits.PAN, 0.0)
    """Fraction of the width, +x right."""
    pan_y: Annotated[float, number_field(limits.PAN)] = range_field(limits.PAN, 0.0)
    """Fraction of the height, +y down."""
    rotate: Annotated[float, number_field(limits.ROTATE)] = range_field(limits.ROTATE, 0.0)
    """Degrees, counter-clockwise."""

    @property
    def is_still(self) -> bool:
        return self.zoom == 1.0 and self.pan_x == 0.0 and self.pan_y == 0.0 and self.rotate == 0.0


class Shot(StrictModel):
    """One frame of the storyboard."""

    prompt: PromptText
    negative_prompt: NegativeText = ""
    camera: Camera = Field(default_factory=Camera)
    continuity: Annotated[Literal["continue", "cut"], BeforeValidator(lowercase)] = "continue"
    """``continue``: img2img from the previous frame; ``cut``: txt2img and a new colour
    reference. Frame 0 always starts fresh, whatever it says (see :meth:`Storyboard.is_cut`)."""
    strength: Annotated[float | None, number_field(limits.STRENGTH)] = range_field(
        limits.STRENGTH, None
    )
    """img2img strength hint for this frame; None leaves it to the request or the profile."""
    palette: Annotated[Literal["keep", "shift"], BeforeValidator(lowercase)] = "keep"
    """``keep``: colour-match to the reference frame; ``shift``: let the colours move."""


FrameBoard = Shot  # the name some callers use for a storyboard frame


class PlannerInfo(StrictModel):
    """Which planner wrote a storyboard (provenance, shown to the user)."""

    backend: Annotated[str, Field(pattern=r"^[a-z0-9_-]{1,32}$")]
    """e.g. ``offline``, ``hf``, ``openai``, ``local``."""
    model: Annotated[str, Field(max_length=200)] = ""
    offline: bool = False
    """True when no LLM was used (the deterministic offline planner)."""


def prompt_key(prompt: str) -> str:
    """What makes two prompts the same one: their words, whatever the case and spacing."""
    return " ".join(prompt.split()).casefold()


class Storyboard(StrictModel):
    """A title, a style line and one shot per frame (schema version 1)."""

    version: Literal[1] = SCHEMA_VERSION
    title: TitleText
    style: StyleText = DEFAULT_STYLE
    """Appended to every prompt by :func:`full_prompt`; empty appends nothing."""
    frames: Annotated[list[Shot], Field(min_length=limits.FRAMES.lo, max_length=limits.FRAMES.hi)]
    planner: PlannerInfo | None = None

    @field_validator("frames", mode="before")
    @classmethod
    def _frame_count(cls, value: object) -> object:
        if isinstance(value, list) and not limits.FRAMES.lo <= len(value) <= limits.FRAMES.hi:
            raise PydanticCustomError(
                "frame_count",
                "must hold {lo}..{hi} frames, got {got}",
                {"lo": limits.FRAMES.lo, "hi": limits.FRAMES.hi, "got": len(value)},
            )
        return value

    @model_validator(mode="after")
    def _distinct_prompts(self) -> Storyboard:
        # Two frames with the same prompt are almost always a planner loop gone wrong.
        seen: dict[str, int] = {}
        problems: list[str] = []
        for i, shot in enumerate(self.frames):
            key = prompt_key(shot.prompt)
            if key in seen:
                problems.append(
                    f"frames[{i}].prompt: duplicates frames[{seen[key]}].prompt "
                    "(compared ignoring case and spacing)"
                )
            else:
                seen[key] = i
        if problems:
            raise PydanticCustomError(
                "pathed", "{text}", {"text": "; ".join(problems), "lines": problems}
            )
        return self

    def is_cut(self, index: int) -> bool:
        """Whether frame ``index`` starts fresh (txt2img): frame 0 always does."""
        return index == 0 or self.frames[index].continuity == "cut"

    def validate_for(self, n_frames: int) -> Storyboard:
        """Check the board against the request's frame count; returns self."""
        limits.FRAMES.check("n_frames", n_frames)
        if len(self.frames) != n_frames:
            raise StoryboardError([_count_error(n_frames, len(self.frames))])
        return self

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


def _count_error(expected: int, got: int) -> str:
    return f"frames: expected exactly {expected} frames, got {got}"


def full_prompt(shot: Shot, storyboard: Storyboard) -> str:
    """The prompt the renderer uses: the shot's prompt + ``", " + style`` unless already there.

    "Already there" means the style appears as a phrase, ignoring case and spacing, so
    ``"a cat, Ghibli Style"`` stays as it is.
    """
    prompt = shot.prompt
    style = storyboard.style
    if not style:
        return prompt
    phrase = re.escape(prompt_key(style)).replace(r"\ ", r"\s+")
    if re.search(rf"(^|[\s,;.]){phrase}($|[\s,;.])", prompt_key(prompt)):
        return prompt
    return f"{prompt.rstrip(' ,;.')}, {style}"


def prompts_with_style(storyboard: Storyboard) -> list[str]:
    """``full_prompt`` of every frame, in order (for the CLIP token check and the renderer)."""
    return [full_prompt(shot, storyboard) for shot in storyboard.frames]


def parse_storyboard(
    data: str | bytes | Mapping[str, Any], n_frames: int | None = None
) -> Storyboard:
    """Parse and validate a storyboard (JSON text or a dict).

    With ``n_frames`` the board must hold exactly that many frames. Every problem found is
    reported at once in the raised :class:`StoryboardError`.
    """
    obj = load_json(data, StoryboardError, limits.STORYBOARD_JSON_BYTES)
    if n_frames is not None:
        limits.FRAMES.check("n_frames", n_frames)
    frames = obj.get("frames")
    count_error = (
        [_count_error(n_frames, len(frames))]
        if n_frames is not None and isinstance(frames, list) and len(frames) != n_frames
        else []
    )
    try:
        board = Storyboard.model_validate(obj)
    except ValidationError as exc:
        raise StoryboardError(count_error + error_lines(exc, Storyboard)) from None
    if count_error:
        raise StoryboardError(count_error)
    return board


def storyboard_json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of :class:`Storyboard`, version 1."""
    return json_schema(Storyboard, "storyboard")
