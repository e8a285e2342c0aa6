"""contracts/limits.py: numeric bounds, text rules and output formats, with their messages."""

from __future__ import annotations

import pytest

from ghibli_anim.contracts import limits


@pytest.mark.parametrize(
    ("bound", "field", "good", "bad", "text"),
    [
        (limits.FRAMES, "frames", [1, 120], [0, -1, 121, True, 2.0], "1..120"),
        (limits.WIDTH, "width", [64, 512, 1024], [63, 513, 1032, 0], "64..1024, a multiple of 8"),
        (limits.STEPS, "steps", [1, 150], [0, 151], "1..150"),
        (limits.GUIDANCE, "guidance", [0, 7.5, 30], [-0.1, 30.5, float("nan")], "[0, 30]"),
        (limits.STRENGTH, "strength", [0.01, 1], [0, 1.01, float("inf")], "(0, 1]"),
        (limits.FPS, "fps", [1, 60], [0, 61], "1..60"),
    ],
)
def test_limits(bound, field, good, bad, text):
    for value in good:
        bound.check(field, value)
    for value in bad:
        with pytest.raises(ValueError) as info:
            bound.check(field, value)
        assert str(info.value).startswith(f"{field}: must be") and text in str(info.value)


def test_text_rules():
    assert limits.check_text("idea", "  a cat  ", 10, required=True) == "a cat"
    for bad, why in [("   ", "empty"), ("x" * 11, "at most 10"), ("a\x00b", "control")]:
        with pytest.raises(ValueError, match=why):
            limits.check_text("idea", bad, 10, required=True)


def test_formats_normalised_and_checked():
    assert limits.check_formats("formats", ["GIF", " mp4", "gif"]) == ("gif", "mp4")
    assert limits.check_formats("formats", []) == limits.DEFAULT_FORMATS
    with pytest.raises(ValueError, match="formats: must be a list of gif, mp4"):
        limits.check_formats("formats", ["avi"])


@pytest.mark.parametrize(
    ("bound", "field", "good", "bad", "allowed"),
    [
        (
            limits.HEIGHT,
            "height",
            [64, 1024],
            [56, 1025, 1032, 100],
            "an integer in 64..1024, a multiple of 8",
        ),
        (limits.SEED, "seed", [0, 2**32 - 1], [-1, 2**32, 1.0], "an integer in 0..4294967295"),
        (limits.OUTPUT_FPS, "output_fps", [1, 240], [0, 241], "an integer in 1..240"),
        (limits.LIST_PAGE_SIZE, "page_size", [1, 50, 500], [0, 501], "an integer in 1..500"),
        (limits.CONTROLNET_SCALE, "controlnet_scale", [0, 2], [-0.01, 2.01], "a number in [0, 2]"),
        (limits.ZOOM, "camera.zoom", [0.8, 1, 1.25], [0.79, 1.26], "a number in [0.8, 1.25]"),
        (limits.PAN, "camera.pan_x", [-0.25, 0, 0.25], [-0.26, 0.26], "a number in [-0.25, 0.25]"),
        (limits.ROTATE, "camera.rotate", [-15, 15], [-15.5, 15.5], "a number in [-15, 15]"),
        (limits.SHARPEN, "sharpen", [0, 3], [-0.5, 3.5], "a number in [0, 3]"),
    ],
)
def test_more_limits_at_their_edges(bound, field, good, bad, allowed):
    """Both ends are allowed, one step past either is not, and the message says so."""
    for value in good:
        assert bound.check(field, value) == value
    for value in bad:
        with pytest.raises(ValueError) as info:
            bound.check(field, value)
        assert str(info.value) == f"{field}: must be {allowed}, got {value!r}"


def test_float_ranges_return_a_float_and_refuse_non_numbers():
    assert limits.DEFAULT_LIST_PAGE_SIZE == 50
    assert limits.LIST_PAGE_SIZE.check("page_size", limits.DEFAULT_LIST_PAGE_SIZE) == 50
    value = limits.GUIDANCE.check("guidance", 7)
    assert (value, type(value)) == (7.0, float)
    for bad in (True, "7", None, float("-inf")):
        with pytest.raises(ValueError, match=r"^guidance: must be a number in \[0, 30\], got"):
            limits.GUIDANCE.check("guidance", bad)


@pytest.mark.parametrize(
    ("bound", "description"),
    [
        (limits.IntRange(0, 10), "an integer in 0..10"),
        (limits.IntRange(2, 10, multiple_of=2), "an integer in 2..10, a multiple of 2"),
        (limits.IntRange(-3, 3, multiple_of=1), "an integer in -3..3"),
        (limits.FloatRange(0.5, 1.5), "a number in [0.5, 1.5]"),
        (limits.FloatRange(0.5, 1.5, lo_open=True), "a number in (0.5, 1.5]"),
    ],
)
def test_ranges_describe_themselves(bound, description):
    assert bound.describe() == description


def test_multiples_are_checked():
    evens = limits.IntRange(2, 10, multiple_of=2)
    assert [evens.check("n", v) for v in (2, 4, 10)] == [2, 4, 10]
    with pytest.raises(
        ValueError, match=r"^n: must be an integer in 2\.\.10, a multiple of 2, got 3$"
    ):
        evens.check("n", 3)


@pytest.mark.parametrize(
    ("field", "max_chars", "chars", "required"),
    [
        ("idea", limits.IDEA_CHARS, 1000, True),
        ("prompt", limits.PROMPT_CHARS, 1000, True),
        ("negative_prompt", limits.NEGATIVE_PROMPT_CHARS, 1000, False),
        ("title", limits.TITLE_CHARS, 200, True),
        ("style", limits.STYLE_CHARS, 200, False),
        ("idempotency_key", limits.IDEMPOTENCY_KEY_CHARS, 128, False),
        ("client_id", limits.CLIENT_ID_CHARS, 128, False),
        ("profile", limits.PROFILE_NAME_CHARS, 64, False),
        ("schedule", limits.SCHEDULE_CHARS, 4000, False),
    ],
)
def test_text_lengths_at_the_limit(field, max_chars, chars, required):
    # Exactly the limit is allowed; one character more is not.
    assert limits.check_text(field, "é" * chars, max_chars, required=required) == "é" * chars
    with pytest.raises(ValueError) as info:
        limits.check_text(field, "é" * (chars + 1), max_chars, required=required)
    assert str(info.value) == f"{field}: must be at most {chars} characters, got {chars + 1}"


def test_text_length_counts_the_whitespace_that_is_stripped():
    with pytest.raises(ValueError, match=r"^idea: must be at most 3 characters, got 5$"):
        limits.check_text("idea", " abc ", 3, required=True)


@pytest.mark.parametrize(
    ("value", "required", "expected"),
    [
        ("", False, ""),
        ("  \n", False, ""),
        ("a\tb\nc", True, "a\tb\nc"),  # tab and newline are text
        ("\ttabbed\n", True, "tabbed"),
        ("日本語 ✓", True, "日本語 ✓"),
        ("\x80 and \xa0", True, "\x80 and"),  # C1 range and NBSP are not ASCII controls
    ],
)
def test_text_accepted(value, required, expected):
    assert limits.check_text("idea", value, 10, required=required) == expected


@pytest.mark.parametrize(
    ("value", "found"),
    [
        ("a\x00b", "'\\x00'"),
        ("a\rb", "'\\r'"),
        ("\x1b[31mred", "'\\x1b'"),
        ("a\x1fb", "'\\x1f'"),
        ("a\x0bb", "'\\x0b'"),
        ("del\x7f", "'\\x7f'"),  # DEL is a control character too
    ],
)
def test_text_rejects_control_characters(value, found):
    for required in (True, False):
        with pytest.raises(ValueError) as info:
            limits.check_text("prompt", value, 100, required=required)
        assert str(info.value) == f"prompt: must not contain control characters, found {found}"


@pytest.mark.parametrize(
    ("value", "type_name"), [(None, "NoneType"), (b"abc", "bytes"), (3, "int")]
)
def test_text_must_be_a_string(value, type_name):
    with pytest.raises(ValueError) as info:
        limits.check_text("title", value, 100, required=False)
    assert str(info.value) == f"title: must be text, got {type_name}"


def test_required_text_must_not_be_blank():
    for blank in ("", " ", "\t\n"):
        with pytest.raises(ValueError) as info:
            limits.check_text("idea", blank, 10, required=True)
        assert str(info.value) == "idea: must not be empty"


def test_caps_enforced_elsewhere():
    """Caps whose checks live in other modules; the values the docs and edges promise."""
    assert limits.SEED.lo == 0 and limits.SEED.hi == 2**32 - 1  # a uint32, as in the proto
    assert limits.CLIP_MAX_TOKENS == 77  # CLIP's context length, start and end tokens included
    assert limits.STORYBOARD_JSON_BYTES == limits.REQUEST_BYTES == 65536
    assert limits.UPLOAD_BYTES == 20 * 1024 * 1024
    assert limits.UPLOAD_PIXELS == 4096 * 4096
    # GIF frame delays are in 10 ms units and players treat less than 20 ms as slow.
    assert limits.GIF_MAX_FPS == 50
    assert limits.INTERPOLATE == (0, 1, 3)
    assert limits.OUTPUT_FPS.hi == limits.FPS.hi * 4
    assert limits.COLOR_COHERENCE[0] == limits.DEFAULT_COLOR_COHERENCE == "lab"
    assert 0 < limits.BLEND_WEIGHT < 1
    assert set(limits.DEFAULT_FORMATS) < set(limits.FORMATS)


def test_formats_every_name_and_whitespace():
    assert limits.check_formats("formats", limits.FORMATS) == limits.FORMATS
    assert limits.check_formats("formats", ("  Contact ", "ZIP")) == ("contact", "zip")
    assert limits.check_formats("formats", ()) == ("gif", "mp4", "webp", "contact")
    for bad in ("", "gif,mp4", "jpeg", "../gif"):
        with pytest.raises(ValueError) as info:
            limits.check_formats("output", ["gif", bad])
        assert str(info.value) == (
            f"output: must be a list of gif, mp4, webp, zip, contact, got {bad!r}"
        )


def test_the_limits_table():
    """The rows of the README's limits table and `ghibli-anim limits`, exactly."""
    assert limits.table() == [
        ("frames", "an integer in 1..120"),
        ("width", "an integer in 64..1024, a multiple of 8"),
        ("height", "an integer in 64..1024, a multiple of 8"),
        ("steps", "an integer in 1..150"),
        ("guidance", "a number in [0, 30]"),
        ("strength", "a number in (0, 1]"),
        ("fps", "an integer in 1..60"),
        ("seed", "an integer in 0..4294967295"),
        ("controlnet_scale", "a number in [0, 2]"),
        ("camera.zoom", "a number in [0.8, 1.25]"),
        ("camera.pan_x / pan_y", "a number in [-0.25, 0.25]"),
        ("camera.rotate", "a number in [-15, 15]"),
        ("sharpen", "a number in [0, 3]"),
        ("color_coherence", "lab, hsv, rgb, off"),
        ("interpolate", "0, 1, 3"),
        ("schedules", "FRAME:VALUE keyframes, at most 4000 characters"),
        ("idea", "1..1000 characters"),
        ("prompt", "1..1000 characters and 77 CLIP tokens with style"),
        ("negative_prompt", "0..1000 characters"),
        ("storyboard_json", "at most 65536 bytes"),
        ("request", "at most 65536 bytes"),
        ("formats", "gif, mp4, webp, zip, contact"),
    ]
