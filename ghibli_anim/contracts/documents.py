"""What the storyboard and the manifest share: versioned JSON documents validated by pydantic.

Both documents carry ``version`` (the integer ``1`` today). A document without ``version`` is
read as version 1; any other value is rejected, so a future format cannot be misread silently.

Validation errors are collected, not raised one by one: parsing raises a
:class:`SchemaError` subclass whose ``errors`` list holds one human-readable line per problem,
each starting with the path of the bad field::

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
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from ghibli_anim.contracts import limits

SCHEMA_VERSION = 1


class SchemaError(ValueError):
    """A document failed validation; ``errors`` holds one ``path: problem`` line per problem."""

    kind = "document"

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors) or [f"{self.kind}: invalid"]
        super().__init__("; ".join(self.errors))


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


def text_field(max_chars: int, *, required: bool) -> BeforeValidator:
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


def number_field(rng: limits.FloatRange) -> BeforeValidator:
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


def range_field(rng: limits.FloatRange, default: float | None) -> Any:
    """Field() carrying the range into the JSON Schema."""
    if rng.lo_open:
        return Field(default=default, gt=rng.lo, le=rng.hi)
    return Field(default=default, ge=rng.lo, le=rng.hi)


def lowercase(value: object) -> object:
    """LLMs write "Cut" or " keep "; enums are matched case- and space-insensitively."""
    return value.strip().lower() if isinstance(value, str) else value


Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="lowercase hex sha256")]


class StrictModel(BaseModel):
    """A document part: unknown fields are refused; attribute docstrings describe fields."""

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, use_attribute_docstrings=True
    )


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


def error_lines(exc: ValidationError, root: type[BaseModel]) -> list[str]:
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


def load_json(
    data: str | bytes | Mapping[str, Any], error: type[SchemaError], max_bytes: int | None = None
) -> dict[str, Any]:
    """The document as a dict (JSON text or a mapping); ``error`` names what went wrong."""
    if isinstance(data, Mapping):
        return dict(data)
    raw = data.encode() if isinstance(data, str) else data
    if max_bytes is not None and len(raw) > max_bytes:
        raise error([f"{error.kind}: must be at most {max_bytes} bytes, got {len(raw)}"])
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error([f"{error.kind}: not valid JSON: {exc}"]) from None
    if not isinstance(obj, dict):
        raise error([f"{error.kind}: must be a JSON object, got {type(obj).__name__}"])
    return obj


def json_schema(model: type[BaseModel], name: str) -> dict[str, Any]:
    schema = model.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://ghibli-anim.invalid/schema/{name}-v{SCHEMA_VERSION}.json"
    return schema
