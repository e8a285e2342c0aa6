"""The storyboard and the manifest: versioned JSON documents with a JSON Schema.

A *storyboard* is what the planner writes (``jobs/{id}/plan.json``) and what a user may pass as
``storyboard_json``: a title, a style line and one :class:`Shot` per frame (DESIGN.md
"Storyboard fields"). A *manifest* (``jobs/{id}/manifest.json``) records a job: its request, its
profile, what ran for every frame and the files the assembler produced.

Both documents carry ``version`` (the integer ``1`` today). A document without ``version`` is
read as version 1; any other value is rejected, so a future format cannot be misread silently.

Validation errors are collected, not raised one by one: :func:`parse_storyboard` and
:func:`parse_manifest` raise a :class:`SchemaError` subclass whose ``errors`` list holds one
human-readable line per problem, each starting with the path of the bad field::

    frames[3].prompt: must not be empty
    frames[0].camera.zoom: must be a number in [0.8, 1.25], got 2
    frames: expected exactly 5 frames, got 6

Text fields are cleaned before they are checked: HTML-like markup (``<b>``, ``<lora:x:1>``, stray
``<`` / ``>``) and control characters are removed, runs of whitespace become one space, and the
ends are stripped. Bounds come from :mod:`ghibli_anim.contracts.limits`.
"""

from __future__ import annotations

import json
import re
import typing
import unicodedata
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ghibli_anim.contracts import keys, limits

SCHEMA_VERSION = 1
DEFAULT_STYLE = "ghibli style"

# Job states of DESIGN.md "The chain" (the proto's JobStatus names without the prefix).
JobStatusName = Literal[
    "PENDING", "PLANNING", "RENDERING", "ASSEMBLING", "COMPLETED", "FAILED", "CANCELLED"
]
JOB_STATUSES: tuple[str, ...] = typing.get_args(JobStatusName)


class SchemaError(ValueError):
    """A document failed validation; ``errors`` holds one ``path: problem`` line per problem."""

    kind = "document"

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors) or [f"{self.kind}: invalid"]
        super().__init__("; ".join(self.errors))


class StoryboardError(SchemaError):
    kind = "storyboard"


class ManifestError(SchemaError):
    kind = "manifest"


# --- text cleaning --------------------------------------------------------------------------

# A tag is "<" + anything but angle brackets + ">"; what is left of a bracket afterwards is a
# stray one, which means nothing to a diffusion model and is dropped too.
_TAG_RE = re.compile(r"<[^<>]*>")
_WS_RE = re.compile(r"\s+")
_SPACE_PUNCT_RE = re.compile(r" ([,.;:!?])")


def clean_text(value: str) -> str:
    """Remove markup and control characters, collapse whitespace and strip the ends."""
    text = _TAG_RE.sub(" ", value).replace("<", " ").replace(">", " ")
    # Cc is C0, DEL and C1; tab/newline/CR become spaces so words stay apart.
    text = "".join(
        " " if c in "\t\n\r\v\f" else c
        for c in text
        if unicodedata.category(c) != "Cc" or c.isspace()
    )
    text = _WS_RE.sub(" ", text)
    # A tag became a space; one left before punctuation ("<b>x</b>, y") is taken out again.
    return _SPACE_PUNCT_RE.sub(r"\1", text).strip()


def _text(max_chars: int, *, required: bool) -> BeforeValidator:
    """A before-validator that cleans a text field and checks its length."""

    def check(value: object) -> str:
        if not isinstance(value, str):
            raise PydanticCustomError(
                "text_type", "must be text, got {got}", {"got": type(value).__name__}
            )
        text = clean_text(value)
        if required and not text:
            raise PydanticCustomError(
                "text_empty", "must not be empty (after removing markup and control characters)"
            )
        if len(text) > max_chars:
            raise PydanticCustomError(
                "text_too_long",
                "must be at most {max} characters, got {got}",
                {"max": max_chars, "got": len(text)},
            )
        return text

    return BeforeValidator(check)


def _number(rng: limits.FloatRange) -> BeforeValidator:
    """A before-validator with the range's own wording (``must be a number in [a, b]``)."""

    def check(value: object) -> object:
        if value is None:  # optional fields; required ones fail in pydantic's own check
            return value
        try:
            return rng.check("x", value)
        except ValueError:
            raise PydanticCustomError(
                "out_of_range",
                "must be {allowed}, got {got}",
                {"allowed": rng.describe(), "got": f"{value!r:.40}"},
            ) from None

    return BeforeValidator(check)


def _range_field(rng: limits.FloatRange, default: float | None) -> Any:
    """Field() carrying the range into the JSON Schema."""
    if rng.lo_open:
        return Field(default=default, gt=rng.lo, le=rng.hi)
    return Field(default=default, ge=rng.lo, le=rng.hi)


def _lower(value: object) -> object:
    """LLMs write "Cut" or " keep "; enums are matched case- and space-insensitively."""
    return value.strip().lower() if isinstance(value, str) else value


PromptText = Annotated[
    str,
    Field(min_length=1, max_length=limits.PROMPT_CHARS),
    _text(limits.PROMPT_CHARS, required=True),
]
NegativeText = Annotated[
    str,
    Field(max_length=limits.NEGATIVE_PROMPT_CHARS),
    _text(limits.NEGATIVE_PROMPT_CHARS, required=False),
]
TitleText = Annotated[
    str,
    Field(min_length=1, max_length=limits.TITLE_CHARS),
    _text(limits.TITLE_CHARS, required=True),
]
StyleText = Annotated[
    str, Field(max_length=limits.STYLE_CHARS), _text(limits.STYLE_CHARS, required=False)
]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="lowercase hex sha256")]


# --- storyboard -----------------------------------------------------------------------------


class _Strict(BaseModel):
    # Attribute docstrings become field descriptions in the JSON Schema.
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, use_attribute_docstrings=True
    )


class Camera(_Strict):
    """Camera move applied to a frame before it seeds the next one (all defaults: still)."""

    zoom: Annotated[float, _number(limits.ZOOM)] = _range_field(limits.ZOOM, 1.0)
    """Multiplicative zoom; > 1 moves in."""
    pan_x: Annotated[float, _number(limits.PAN)] = _range_field(limits.PAN, 0.0)
    """Fraction of the width, +x right."""
    pan_y: Annotated[float, _number(limits.PAN)] = _range_field(limits.PAN, 0.0)
    """Fraction of the height, +y down."""
    rotate: Annotated[float, _number(limits.ROTATE)] = _range_field(limits.ROTATE, 0.0)
    """Degrees, counter-clockwise."""

    @property
    def is_still(self) -> bool:
        return self.zoom == 1.0 and self.pan_x == 0.0 and self.pan_y == 0.0 and self.rotate == 0.0


class Shot(_Strict):
    """One frame of the storyboard."""

    prompt: PromptText
    negative_prompt: NegativeText = ""
    camera: Camera = Field(default_factory=Camera)
    continuity: Annotated[Literal["continue", "cut"], BeforeValidator(_lower)] = "continue"
    """``continue``: img2img from the previous frame; ``cut``: txt2img and a new colour
    reference. Frame 0 always starts fresh, whatever it says (see :meth:`Storyboard.is_cut`)."""
    strength: Annotated[float | None, _number(limits.STRENGTH)] = _range_field(
        limits.STRENGTH, None
    )
    """img2img strength hint for this frame; None leaves it to the request or the profile."""
    palette: Annotated[Literal["keep", "shift"], BeforeValidator(_lower)] = "keep"
    """``keep``: colour-match to the reference frame; ``shift``: let the colours move."""


FrameBoard = Shot  # the name some callers use for a storyboard frame


class PlannerInfo(_Strict):
    """Which planner wrote a storyboard (provenance, shown to the user)."""

    backend: Annotated[str, Field(pattern=r"^[a-z0-9_-]{1,32}$")]
    """e.g. ``offline``, ``hf``, ``openai``, ``local``."""
    model: Annotated[str, Field(max_length=200)] = ""
    offline: bool = False
    """True when no LLM was used (the deterministic offline planner)."""


def _prompt_key(prompt: str) -> str:
    return " ".join(prompt.split()).casefold()


class Storyboard(_Strict):
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
            key = _prompt_key(shot.prompt)
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
    phrase = re.escape(_prompt_key(style)).replace(r"\ ", r"\s+")
    if re.search(rf"(^|[\s,;.]){phrase}($|[\s,;.])", _prompt_key(prompt)):
        return prompt
    return f"{prompt.rstrip(' ,;.')}, {style}"


def prompts_with_style(storyboard: Storyboard) -> list[str]:
    """``full_prompt`` of every frame, in order (for the CLIP token check and the renderer)."""
    return [full_prompt(shot, storyboard) for shot in storyboard.frames]


# --- manifest -------------------------------------------------------------------------------


class ManifestFrame(_Strict):
    """One rendered frame: where it is, its hash and what ran."""

    index: Annotated[int, Field(ge=0, le=keys.MAX_FRAME_INDEX)]
    key: str
    """Store key of the PNG, ``jobs/{id}/frames/{i:04d}.png``."""
    sha256: Sha256
    record: dict[str, Any] = Field(default_factory=dict)
    """What ran for this frame (the renderer's ``frames/{i:04d}.json``; free-form)."""
    depth_key: str | None = None
    """Store key of the depth map that guided this frame's successor, if any."""


class OutputFile(_Strict):
    """A file the assembler produced (DESIGN.md "Store")."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,100}$")]
    key: str
    size_bytes: Annotated[int, Field(ge=0)]
    sha256: Sha256
    content_type: Annotated[str, Field(pattern=r"^[a-z]+/[a-z0-9.+-]+$")]


class Manifest(_Strict):
    """Everything about a job: request, profile, planner, frames, outputs, status (version 1).

    The conductor rewrites it after every frame and the assembler writes the final one, so any
    job status is allowed and ``frames`` / ``outputs`` may be partial.
    """

    version: Literal[1] = SCHEMA_VERSION
    job_id: str
    idea: Annotated[str, Field(min_length=1, max_length=limits.IDEA_CHARS)]
    """The request's idea as validated at creation (recorded as is, not cleaned again)."""
    title: Annotated[str, Field(max_length=limits.TITLE_CHARS)] = ""
    created_at: AwareDatetime
    request: dict[str, Any] = Field(default_factory=dict)
    """The request's settings after validation (frames, size, seed, fps, formats, ...)."""
    profile: dict[str, Any] = Field(default_factory=dict)
    """The resolved profile (models, LoRAs, scheduler)."""
    planner: PlannerInfo | None = None
    frames: list[ManifestFrame] = Field(default_factory=list)
    outputs: list[OutputFile] = Field(default_factory=list)
    status: JobStatusName = "PENDING"
    error: Annotated[str, Field(max_length=2000)] = ""
    """Why the job failed or was cancelled; empty otherwise."""

    @field_validator("job_id")
    @classmethod
    def _job_id(cls, value: str) -> str:
        if not keys.is_job_id(value):
            raise PydanticCustomError(
                "job_id", "must be 32 lowercase hex characters, got {got}", {"got": f"{value:.80}"}
            )
        return value

    @model_validator(mode="after")
    def _keys_belong_to_job(self) -> Manifest:
        # Keys must be exactly the ones keys.py builds for this job: a manifest can never point
        # a reader at another job's files or outside the store's layout.
        problems: list[str] = []
        seen: set[int] = set()
        for n, frame in enumerate(self.frames):
            path = f"frames[{n}]"
            if frame.index in seen:
                problems.append(f"{path}.index: frame {frame.index} is listed twice")
            seen.add(frame.index)
            want = keys.frame_key(self.job_id, frame.index)
            if frame.key != want:
                problems.append(f"{path}.key: must be {want!r}, got {frame.key!r:.120}")
            if frame.depth_key is not None:
                want = keys.depth_key(self.job_id, frame.index)
                if frame.depth_key != want:
                    problems.append(
                        f"{path}.depth_key: must be {want!r} or null, got {frame.depth_key!r:.120}"
                    )
        prefix = keys.job_prefix(self.job_id)
        for n, out in enumerate(self.outputs):
            if out.key != prefix + out.name:
                problems.append(
                    f"outputs[{n}].key: must be {prefix + out.name!r}, got {out.key!r:.120}"
                )
        if problems:
            raise PydanticCustomError(
                "pathed", "{text}", {"text": "; ".join(problems), "lines": problems}
            )
        return self

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


# --- parsing and schemas --------------------------------------------------------------------


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _model_at(root: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model class that a location points into (to list allowed fields)."""
    model: type[BaseModel] | None = root
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        model = _find_model(field.annotation)
    return model


def _find_model(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _find_model(arg)
        if found is not None:
            return found
    return None


def _lines(exc: ValidationError, root: type[BaseModel]) -> list[str]:
    """One ``path: problem`` line per pydantic error, worded for people."""
    lines: list[str] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        kind = err["type"]
        ctx = err.get("ctx") or {}
        if kind == "pathed":  # our cross-field checks already name their paths
            lines.extend(ctx["lines"])
            continue
        path = _path(loc) or root.__name__.lower()
        if kind == "extra_forbidden":
            parent = _model_at(root, loc[:-1])
            allowed = ", ".join(parent.model_fields) if parent else "?"
            lines.append(f"{path}: unknown field (allowed: {allowed})")
        elif kind == "missing":
            lines.append(f"{path}: is required")
        elif kind.startswith(("text_", "out_of_range", "frame_count", "job_id")):
            lines.append(f"{path}: {err['msg']}")
        else:
            msg = err["msg"]
            msg = msg[:1].lower() + msg[1:]
            lines.append(f"{path}: {msg}, got {err.get('input')!r:.60}")
    return lines


def _load(data: str | bytes | Mapping[str, Any], error: type[SchemaError]) -> dict[str, Any]:
    if isinstance(data, Mapping):
        return dict(data)
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) > limits.STORYBOARD_JSON_BYTES and error is StoryboardError:
        raise error(
            [f"{error.kind}: must be at most {limits.STORYBOARD_JSON_BYTES} bytes, got {len(raw)}"]
        )
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error([f"{error.kind}: not valid JSON: {exc}"]) from None
    if not isinstance(obj, dict):
        raise error([f"{error.kind}: must be a JSON object, got {type(obj).__name__}"])
    return obj


def parse_storyboard(
    data: str | bytes | Mapping[str, Any], n_frames: int | None = None
) -> Storyboard:
    """Parse and validate a storyboard (JSON text or a dict).

    With ``n_frames`` the board must hold exactly that many frames. Every problem found is
    reported at once in the raised :class:`StoryboardError`.
    """
    obj = _load(data, StoryboardError)
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
        raise StoryboardError(count_error + _lines(exc, Storyboard)) from None
    if count_error:
        raise StoryboardError(count_error)
    return board


def parse_manifest(data: str | bytes | Mapping[str, Any]) -> Manifest:
    """Parse and validate a manifest (JSON text or a dict); raises :class:`ManifestError`."""
    obj = _load(data, ManifestError)
    try:
        return Manifest.model_validate(obj)
    except ValidationError as exc:
        raise ManifestError(_lines(exc, Manifest)) from None


def _schema(model: type[BaseModel], name: str) -> dict[str, Any]:
    schema = model.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://ghibli-anim.invalid/schema/{name}-v{SCHEMA_VERSION}.json"
    return schema


def storyboard_json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of :class:`Storyboard`, version 1."""
    return _schema(Storyboard, "storyboard")


def manifest_json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of :class:`Manifest`, version 1."""
    return _schema(Manifest, "manifest")


__all__ = [
    "DEFAULT_STYLE",
    "JOB_STATUSES",
    "SCHEMA_VERSION",
    "Camera",
    "FrameBoard",
    "Manifest",
    "ManifestError",
    "ManifestFrame",
    "OutputFile",
    "PlannerInfo",
    "SchemaError",
    "Shot",
    "Storyboard",
    "StoryboardError",
    "clean_text",
    "full_prompt",
    "manifest_json_schema",
    "parse_manifest",
    "parse_storyboard",
    "prompts_with_style",
    "storyboard_json_schema",
]
