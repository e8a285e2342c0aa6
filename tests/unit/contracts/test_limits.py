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
