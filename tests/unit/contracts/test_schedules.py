"""contracts/schedules.py: keyframe schedules parsed, interpolated and refused with the
field and the position of the problem."""

from __future__ import annotations

import pytest

from ghibli_anim.contracts import limits
from ghibli_anim.contracts.schedules import (
    Schedule,
    ScheduleError,
    parse_camera_schedule,
    parse_schedule,
)


def test_linear_interpolation_holds_at_both_ends() -> None:
    s = parse_schedule("0:0.15, 10:0.35", "strength_schedule", limits.STRENGTH)
    assert s.keyframes == ((0, 0.15), (10, 0.35))
    assert s.values(13) == pytest.approx(
        [0.15, 0.17, 0.19, 0.21, 0.23, 0.25, 0.27, 0.29, 0.31, 0.33, 0.35, 0.35, 0.35]
    )
    late = parse_schedule("4:7, 6:9, 8:8")
    assert [late.at(i) for i in range(10)] == [7, 7, 7, 7, 7, 8, 9, 8.5, 8, 8]


def test_plain_number_and_spacing() -> None:
    assert parse_schedule("0.2").values(3) == [0.2, 0.2, 0.2]
    assert parse_schedule("  0 : 1e-1 ,5:.5 ").keyframes == ((0, 0.1), (5, 0.5))
    assert parse_schedule("-2.5").at(7) == -2.5  # no bound given: any finite number


# (text, 1-based position of the problem, words the message must hold)
MALFORMED = [
    ("0:0.15, 10:x", 12, "expected a number as the value, got 'x'"),
    ("0:0.15,, 3:0.2", 8, "expected a frame number, got ','"),
    ("0:0.15, 5:0.2, 5:0.3", 16, "frame 5 does not come after frame 5"),
    ("5:0.2, 2:0.3", 8, "frame 2 does not come after frame 5"),
    ("0:1.5", 3, "must be a number in (0, 1], got 1.5"),
    ("0:0.1x", 3, "expected a number as the value, got '0.1x'"),
    ("0:0.1 5:0.2", 7, "expected ',' between keyframes, got '5'"),
    ("0:0.1,", 7, "expected a keyframe after ','"),
    ("   ", 1, "must not be empty"),
    ("200:0.1", 1, "frame must be an integer in 0..119, got 200"),
    ("-1:0.2", 1, "frame must be an integer in 0..119, got '-1'"),
    ("0.1, 2:0.3", 4, "expected the end after a plain value"),
    ("0:nan", 3, "expected a number as the value, got 'nan'"),
    ("0.3 0.2", 5, "expected the end after a plain value"),
    ("3:", 3, "expected a number as the value, got end of text"),
]


@pytest.mark.parametrize(("text", "position", "problem"), MALFORMED)
def test_malformed_schedules_name_field_and_position(text, position, problem) -> None:
    with pytest.raises(ScheduleError) as info:
        parse_schedule(text, "strength_schedule", limits.STRENGTH)
    err = info.value
    assert err.position + 1 == position, str(err)
    assert str(err) == f"strength_schedule: at character {position}: {err.problem}"
    assert problem in err.problem


def test_camera_schedule_tracks() -> None:
    cam = parse_camera_schedule("0:zoom=1.02 pan_x=0.01, 10:rotate=2")
    assert cam.at(0) == {"zoom": 1.02, "pan_x": 0.01, "pan_y": 0.0, "rotate": 0.0}
    # rotate is named only at 10: it starts still at frame 0 and ramps; zoom and pan hold.
    assert cam.at(5) == pytest.approx({"zoom": 1.02, "pan_x": 0.01, "pan_y": 0.0, "rotate": 1.0})
    assert cam.at(30)["rotate"] == 2.0
    assert parse_camera_schedule("pan_y=-0.05").at(9) == {
        "zoom": 1.0,
        "pan_x": 0.0,
        "pan_y": -0.05,
        "rotate": 0.0,
    }
    two = parse_camera_schedule("0:zoom=1, 4:zoom=1.2")
    assert [two.at(i)["zoom"] for i in range(6)] == pytest.approx([1, 1.05, 1.1, 1.15, 1.2, 1.2])


CAMERA_MALFORMED = [
    ("0:zom=1", 3, "unknown camera move 'zom' (allowed: zoom, pan_x, pan_y, rotate)"),
    ("0:zoom=2", 8, "must be a number in [0.8, 1.25], got 2"),
    ("0:rotate=-20", 10, "must be a number in [-15, 15], got -20"),
    ("0:pan_x=0.3", 9, "must be a number in [-0.25, 0.25], got 0.3"),
    ("0:zoom=1.1,pan_x=0.1", 12, "separate one keyframe's moves with spaces"),
    ("0:zoom 1.1", 8, "expected '=' after zoom, got '1.1'"),
    ("0:zoom=1 zoom=1.1", 10, "zoom is set twice in one keyframe"),
    ("0:", 3, "expected a camera move"),
    ("0:zoom=1.1;", 11, "expected another move, ',' or the end after zoom, got ';'"),
]


@pytest.mark.parametrize(("text", "position", "problem"), CAMERA_MALFORMED)
def test_malformed_camera_schedules(text, position, problem) -> None:
    with pytest.raises(ScheduleError) as info:
        parse_camera_schedule(text)
    assert info.value.position + 1 == position, str(info.value)
    assert str(info.value).startswith(f"camera: at character {position}: ")
    assert problem in str(info.value)


def test_schedule_object_checks_its_keyframes() -> None:
    with pytest.raises(ValueError, match="at least one keyframe"):
        Schedule(())
    with pytest.raises(ValueError, match="frames must increase"):
        Schedule(((3, 1.0), (1, 2.0)))
    with pytest.raises(ValueError, match=r"camera: must be at most 4000 characters"):
        parse_camera_schedule("0:zoom=1" + " " * 4000)
