"""contracts/storyboard.py: parsing, bounds, error paths, the style line, the JSON Schema."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ghibli_anim.contracts import limits
from ghibli_anim.contracts.storyboard import (
    DEFAULT_STYLE,
    Camera,
    Shot,
    Storyboard,
    StoryboardError,
    full_prompt,
    parse_storyboard,
    prompts_with_style,
    storyboard_json_schema,
)


def board(n: int = 3, **extra: Any) -> dict[str, Any]:
    frames = [{"prompt": f"a dragon over the town, moment {i}"} for i in range(n)]
    return {"version": 1, "title": "Dragon at dusk", "frames": frames, **extra}


def errors_of(data: Any, n_frames: int | None = None) -> list[str]:
    with pytest.raises(StoryboardError) as info:
        parse_storyboard(data, n_frames)
    return info.value.errors


def test_valid_board_and_defaults() -> None:
    data = board(3)
    data["frames"][1].update(
        camera={"zoom": 1.1, "pan_x": -0.1, "pan_y": 0.25, "rotate": -15},
        continuity="cut",
        strength=0.3,
        palette="shift",
        negative_prompt="blurry",
    )
    data["planner"] = {"backend": "offline", "model": "", "offline": True}
    sb = parse_storyboard(json.dumps(data), 3)

    assert sb.version == 1
    assert sb.style == DEFAULT_STYLE
    assert len(sb.frames) == 3
    first = sb.frames[0]
    assert first.camera == Camera() and first.camera.is_still
    assert (first.continuity, first.palette, first.strength, first.negative_prompt) == (
        "continue",
        "keep",
        None,
        "",
    )
    second = sb.frames[1]
    assert second.camera.zoom == 1.1 and second.camera.rotate == -15.0
    assert (second.continuity, second.strength, second.palette) == ("cut", 0.3, "shift")
    assert sb.planner is not None and sb.planner.offline
    # Frame 0 starts fresh even when it says "continue"; later frames only on a cut.
    assert [sb.is_cut(i) for i in range(3)] == [True, True, False]
    # Round trip through JSON gives the same board.
    assert parse_storyboard(sb.to_json(), 3) == sb


def test_dict_input_and_version_default() -> None:
    data = board(2)
    del data["version"]
    assert parse_storyboard(data).version == 1
    assert "version" in errors_of(board(2, version=2))[0]


def test_exactly_n_frames() -> None:
    assert errors_of(board(6), 5) == ["frames: expected exactly 5 frames, got 6"]
    sb = parse_storyboard(board(3), 3)
    with pytest.raises(StoryboardError, match=r"frames: expected exactly 4 frames, got 3"):
        sb.validate_for(4)
    assert sb.validate_for(3) is sb
    # The count error comes with the field errors, not instead of them.
    data = board(2)
    data["frames"][0]["prompt"] = ""
    errs = errors_of(data, 3)
    assert errs[0] == "frames: expected exactly 3 frames, got 2"
    assert any(e.startswith("frames[0].prompt: must not be empty") for e in errs)


def test_frame_count_bounds() -> None:
    assert errors_of(board(0)) == [f"frames: must hold 1..{limits.FRAMES.hi} frames, got 0"]
    too_many = board(limits.FRAMES.hi + 1)
    assert errors_of(too_many)[0].startswith(f"frames: must hold 1..{limits.FRAMES.hi} frames")


@pytest.mark.parametrize(
    ("where", "path"),
    [
        ((), "colour"),
        (("frames", 1), "frames[1].colour"),
        (("frames", 2, "camera"), "frames[2].camera.colour"),
    ],
)
def test_extra_field_rejected_with_path(where: tuple[Any, ...], path: str) -> None:
    data = board(3)
    target: Any = data
    for part in where:
        target = target[part] if isinstance(part, int) else target.setdefault(part, {})
    target["colour"] = "red"
    errs = errors_of(data)
    assert len(errs) == 1
    assert errs[0].startswith(f"{path}: unknown field (allowed: ")


def test_empty_and_duplicate_prompts() -> None:
    data = board(4)
    data["frames"][2]["prompt"] = "   \n\t "
    assert errors_of(data) == [
        "frames[2].prompt: must not be empty (after removing markup and control characters)"
    ]
    # Markup only is empty too.
    data["frames"][2]["prompt"] = "<b></b><i> </i>"
    assert errors_of(data)[0].startswith("frames[2].prompt: must not be empty")

    data = board(4)
    data["frames"][3]["prompt"] = "  A Dragon over THE town,   moment 1 "
    assert errors_of(data) == [
        "frames[3].prompt: duplicates frames[1].prompt (compared ignoring case and spacing)"
    ]
    missing = board(2)
    del missing["frames"][1]["prompt"]
    assert errors_of(missing) == ["frames[1].prompt: is required"]


@pytest.mark.parametrize(
    ("field", "value", "rng"),
    [
        ("zoom", 2, limits.ZOOM),
        ("zoom", 0.5, limits.ZOOM),
        ("pan_x", 0.3, limits.PAN),
        ("pan_y", -0.26, limits.PAN),
        ("rotate", 45, limits.ROTATE),
        ("zoom", True, limits.ZOOM),
        ("zoom", "1.1", limits.ZOOM),
    ],
)
def test_camera_out_of_range_names_field_and_range(
    field: str, value: Any, rng: limits.FloatRange
) -> None:
    data = board(3)
    data["frames"][1]["camera"] = {field: value}
    errs = errors_of(data)
    assert errs == [f"frames[1].camera.{field}: must be {rng.describe()}, got {value!r}"]


def test_camera_nan_rejected() -> None:
    # JSON has no NaN, but Python callers can pass one.
    with pytest.raises(StoryboardError, match=r"frames\[0\]\.camera\.zoom: must be a number"):
        parse_storyboard(
            {"title": "t", "frames": [{"prompt": "p", "camera": {"zoom": float("nan")}}]}
        )


def test_strength_range_and_enums() -> None:
    data = board(3)
    data["frames"][0]["strength"] = 0  # the range is (0, 1]
    data["frames"][1]["strength"] = 1.5
    data["frames"][2]["continuity"] = "jump"
    errs = errors_of(data)
    allowed = limits.STRENGTH.describe()
    assert f"frames[0].strength: must be {allowed}, got 0" in errs
    assert f"frames[1].strength: must be {allowed}, got 1.5" in errs
    assert any(e.startswith("frames[2].continuity:") and "'cut'" in e for e in errs)
    assert len(errs) == 3
    # Enum values are read case-insensitively.
    data = board(2)
    data["frames"][1].update(continuity=" Cut ", palette="SHIFT")
    sb = parse_storyboard(data)
    assert (sb.frames[1].continuity, sb.frames[1].palette) == ("cut", "shift")


def test_several_errors_reported_at_once() -> None:
    data = board(3, extra=1)
    data["title"] = ""
    data["frames"][0]["camera"] = {"rotate": 90}
    data["frames"][2]["prompt"] = ""
    errs = errors_of(data, 3)
    paths = sorted(e.split(":", 1)[0] for e in errs)
    assert paths == ["extra", "frames[0].camera.rotate", "frames[2].prompt", "title"]
    with pytest.raises(StoryboardError) as info:
        parse_storyboard(data, 3)
    assert isinstance(info.value, ValueError)
    assert str(info.value) == "; ".join(errs)


def test_markup_and_control_characters_stripped() -> None:
    data = board(2, title="<h1>Dragon</h1>\x00 at\x1f dusk")
    data["frames"][0]["prompt"] = (
        "a <i>red</i>\x07 fox<script>x</script>\n\tin <lora:evil:1>snow > rain"
    )
    data["frames"][1]["negative_prompt"] = "<b>blurry</b>\x7f, \u0085dark"
    sb = parse_storyboard(data)
    assert sb.title == "Dragon at dusk"
    assert sb.frames[0].prompt == "a red fox x in snow rain"
    assert sb.frames[1].negative_prompt == "blurry, dark"


def test_text_lengths_use_limits() -> None:
    data = board(2)
    data["frames"][0]["prompt"] = "x" * (limits.PROMPT_CHARS + 1)
    data["title"] = "t" * (limits.TITLE_CHARS + 1)
    data["style"] = "s" * (limits.STYLE_CHARS + 1)
    errs = errors_of(data)
    assert (
        f"frames[0].prompt: must be at most {limits.PROMPT_CHARS} characters, "
        f"got {limits.PROMPT_CHARS + 1}"
    ) in errs
    assert any(e.startswith(f"title: must be at most {limits.TITLE_CHARS}") for e in errs)
    assert any(e.startswith(f"style: must be at most {limits.STYLE_CHARS}") for e in errs)
    # Markup does not count: it is removed first.
    data = board(2)
    data["frames"][0]["prompt"] = "<b>" + "x" * limits.PROMPT_CHARS + "</b>"
    assert len(parse_storyboard(data).frames[0].prompt) == limits.PROMPT_CHARS
    data["frames"][0]["prompt"] = 42
    assert errors_of(data) == ["frames[0].prompt: must be text, got int"]


def test_bad_documents() -> None:
    assert errors_of("{not json")[0].startswith("storyboard: not valid JSON")
    assert errors_of("[1, 2]") == ["storyboard: must be a JSON object, got list"]
    big = json.dumps(board(2, title="x" * limits.STORYBOARD_JSON_BYTES))
    assert errors_of(big)[0].startswith(
        f"storyboard: must be at most {limits.STORYBOARD_JSON_BYTES} bytes"
    )
    with pytest.raises(ValueError, match=r"n_frames: must be an integer in 1\.\.120"):
        parse_storyboard(board(2), 0)


def test_style_appended_once() -> None:
    sb = parse_storyboard(board(1))
    assert full_prompt(sb.frames[0], sb) == "a dragon over the town, moment 0, ghibli style"

    def fp(prompt: str, style: str = DEFAULT_STYLE) -> str:
        shot = Shot(prompt=prompt)
        return full_prompt(shot, Storyboard(title="t", style=style, frames=[shot]))

    assert fp("a cat, Ghibli  Style") == "a cat, Ghibli Style"  # spacing normalised
    assert fp("ghibli style, a cat") == "ghibli style, a cat"
    assert fp("a cat,") == "a cat, ghibli style"
    assert fp("a cat.") == "a cat, ghibli style"
    # A longer word that merely contains the style is not the style.
    assert fp("a cat, ghibli styles") == "a cat, ghibli styles, ghibli style"
    assert fp("a cat", style="") == "a cat"
    assert fp("a cat", style="watercolor") == "a cat, watercolor"

    data = board(3, style="Miyazaki watercolor")
    data["frames"][1]["prompt"] = "hills, miyazaki watercolor"
    assert prompts_with_style(parse_storyboard(data)) == [
        "a dragon over the town, moment 0, Miyazaki watercolor",
        "hills, miyazaki watercolor",
        "a dragon over the town, moment 2, Miyazaki watercolor",
    ]


def test_storyboard_json_schema() -> None:
    schema = storyboard_json_schema()
    json.dumps(schema)  # serialisable
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == {"version", "title", "style", "frames", "planner"}
    assert schema["properties"]["version"]["const"] == 1
    assert schema["properties"]["frames"]["maxItems"] == limits.FRAMES.hi
    shot = schema["$defs"]["Shot"]
    assert set(shot["properties"]) == {
        "prompt",
        "negative_prompt",
        "camera",
        "continuity",
        "strength",
        "palette",
    }
    assert shot["properties"]["prompt"]["maxLength"] == limits.PROMPT_CHARS
    assert shot["properties"]["continuity"]["enum"] == ["continue", "cut"]
    assert shot["additionalProperties"] is False
    camera = schema["$defs"]["Camera"]["properties"]
    assert (camera["zoom"]["minimum"], camera["zoom"]["maximum"]) == (
        limits.ZOOM.lo,
        limits.ZOOM.hi,
    )
    assert (camera["rotate"]["minimum"], camera["rotate"]["maximum"]) == (-15.0, 15.0)
    strength = shot["properties"]["strength"]["anyOf"][0]
    assert strength["exclusiveMinimum"] == 0 and strength["maximum"] == 1
    assert set(schema["$defs"]["PlannerInfo"]["properties"]) == {"backend", "model", "offline"}
