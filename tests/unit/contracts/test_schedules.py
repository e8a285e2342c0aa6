"""contracts/schedules.py: keyframe schedules parsed, interpolated and refused with the
field and the position of the problem."""

from __future__ import annotations

import pytest

from ghibli_anim.contracts import limits
from ghibli_anim.contracts.schedules import (
    MAX_KEYFRAME,
    ChoiceSchedule,
    Schedule,
    ScheduleError,
    parse_camera_schedule,
    parse_choice_schedule,
    parse_schedule,
)

SEED_MODES = ("increment", "fixed", "random")


def test_linear_interpolation_holds_at_both_ends() -> None:
    s = parse_schedule("0:0.15, 10:0.35", "strength_schedule", limits.STRENGTH)
    assert s.keyframes == ((0, 0.15), (10, 0.35))
    assert s.values(13) == pytest.approx(
        [0.15, 0.17, 0.19, 0.21, 0.23, 0.25, 0.27, 0.29, 0.31, 0.33, 0.35, 0.35, 0.35]
    )
    late = parse_schedule("4:7, 6:9, 8:8")
    assert [late.at(i) for i in range(10)] == [7, 7, 7, 7, 7, 8, 9, 8.5, 8, 8]


def test_keyframe_values_are_exact_on_their_frames() -> None:
    # 0 + (0.1 - 0) * 3 / 3 is 0.10000000000000002: a keyframe's own frame must not be
    # interpolated towards it, or the value written is not the value rendered.
    s = parse_schedule("0:0, 3:0.1, 6:0.7")
    assert [s.at(i) for i in (0, 3, 6, 7)] == [0.0, 0.1, 0.7, 0.7]
    assert s.at(1) == pytest.approx(0.1 / 3)
    assert s.at(4) == pytest.approx(0.3)


def test_plain_number_and_spacing() -> None:
    plain = parse_schedule("0.2")
    assert plain.keyframes == ((0, 0.2),)
    assert plain.values(3) == [0.2, 0.2, 0.2]
    assert parse_schedule("  0 : 1e-1 ,5:.5 ").keyframes == ((0, 0.1), (5, 0.5))
    assert parse_schedule("\t0:0.1,\t5:0.2\t").keyframes == ((0, 0.1), (5, 0.2))
    assert parse_schedule("-2.5").at(7) == -2.5  # no bound given: any finite number


def test_schedule_starting_after_frame_zero_holds_its_first_value_before_it() -> None:
    s = parse_schedule("1:0.5, 3:0.7", "strength_schedule", limits.STRENGTH)
    assert s.keyframes == ((1, 0.5), (3, 0.7))
    assert s.values(5) == pytest.approx([0.5, 0.5, 0.6, 0.7, 0.7])


def test_keyframe_frames_reach_the_last_frame_of_the_longest_job() -> None:
    assert MAX_KEYFRAME == limits.FRAMES.hi - 1 == 119
    assert parse_schedule("119:0.5").keyframes == ((119, 0.5),)
    assert parse_schedule("0:0.1, 119:0.2").at(119) == 0.2


def test_text_length_limit_is_inclusive() -> None:
    at_limit = "0.5" + " " * (limits.SCHEDULE_CHARS - 3)
    assert len(at_limit) == limits.SCHEDULE_CHARS == 4000
    assert parse_schedule(at_limit, "sharpen").keyframes == ((0, 0.5),)
    with pytest.raises(ValueError) as info:
        parse_schedule(at_limit + " ", "sharpen")
    assert str(info.value) == "sharpen: must be at most 4000 characters, got 4001"
    assert not isinstance(info.value, ScheduleError)  # no position: the whole text is too long


@pytest.mark.parametrize(("text", "kind"), [(5, "int"), (None, "NoneType"), (b"0.2", "bytes")])
def test_schedule_must_be_text(text, kind) -> None:
    with pytest.raises(ValueError) as info:
        parse_schedule(text, "guidance_schedule")
    assert str(info.value) == f"guidance_schedule: must be text, got {kind}"


def test_unbounded_schedule_refuses_overflow_to_infinity() -> None:
    with pytest.raises(ScheduleError) as info:
        parse_schedule("0:1, 5:1e999")
    assert str(info.value) == "schedule: at character 8: must be a finite number, got 1e999"


def test_schedule_error_fields() -> None:
    err = ScheduleError("sharpen", 4, "must not be empty")
    assert isinstance(err, ValueError)
    assert (err.field, err.position, err.problem) == ("sharpen", 4, "must not be empty")
    assert str(err) == "sharpen: at character 5: must not be empty"
    with pytest.raises(ScheduleError) as info:
        parse_schedule("0:0.2, 4:x")  # the default field name
    assert (info.value.field, info.value.position) == ("schedule", 9)
    assert str(info.value) == "schedule: at character 10: expected a number as the value, got 'x'"


_PLAIN_MORE = "expected the end after a plain value (write FRAME:VALUE keyframes, comma separated, "
_ORDER = "keyframes must be in increasing frame order"

# (text, 1-based position of the problem, the problem exactly)
MALFORMED = [
    ("0:0.15, 10:x", 12, "expected a number as the value, got 'x'"),
    ("0:0.15,, 3:0.2", 8, "expected a frame number, got ','"),
    ("0:0.15, 5:0.2, 5:0.3", 16, f"frame 5 does not come after frame 5; {_ORDER}"),
    ("5:0.2, 2:0.3", 8, f"frame 2 does not come after frame 5; {_ORDER}"),
    ("0:1.5", 3, "must be a number in (0, 1], got 1.5"),
    ("0:0", 3, "must be a number in (0, 1], got 0"),
    ("0:1e999", 3, "must be a number in (0, 1], got 1e999"),
    ("0:0.1x", 3, "expected a number as the value, got '0.1x'"),
    ("0:0.1_", 3, "expected a number as the value, got '0.1_'"),
    ("0:0.1.2", 3, "expected a number as the value, got '0.1.2'"),
    ("0:" + "a" * 30, 3, "expected a number as the value, got '" + "a" * 20 + "'"),
    ("0:0.1 5:0.2", 7, "expected ',' between keyframes, got '5'"),
    ("0:0.1,", 7, "expected a keyframe after ',', got end of text"),
    ("0:0.1, 5 0.2", 10, "expected ':' after frame 5, got '0.2'"),
    ("   ", 1, "must not be empty"),
    ("", 1, "must not be empty"),
    ("200:0.1", 1, "frame must be an integer in 0..119, got 200"),
    ("120:0.1", 1, "frame must be an integer in 0..119, got 120"),
    ("-1:0.2", 1, "frame must be an integer in 0..119, got '-1'"),
    ("+3:0.2", 1, "frame must be an integer in 0..119, got '+3'"),
    # A signed frame after a comma or after leading space is a frame too, not a value.
    ("0:0.1, -1:0.2", 8, "frame must be an integer in 0..119, got '-1'"),
    ("  -1:0.2", 3, "frame must be an integer in 0..119, got '-1'"),
    ("0.1, 2:0.3", 4, _PLAIN_MORE + "for more), got ','"),
    ("0:nan", 3, "expected a number as the value, got 'nan'"),
    ("0.3 0.2", 5, _PLAIN_MORE + "for more), got '0.2'"),
    ("3:", 3, "expected a number as the value, got end of text"),
    # Hostile text: a newline, control characters and other scripts' digits.
    ("0:0.1\n5:0.2", 6, "expected ',' between keyframes, got '\\n'"),
    ("0:0.1\x7f", 6, "expected ',' between keyframes, got '\\x7f'"),
    ("0:0.1\x00", 6, "expected ',' between keyframes, got '\\x00'"),
    ("\u0663:0.2", 1, "expected a number as the value, got '\u0663'"),
    ("0:\u0660.\u0665", 3, "expected a number as the value, got '\u0660.\u0665'"),
    ("\uff13", 1, "expected a number as the value, got '\uff13'"),
]


@pytest.mark.parametrize(("text", "position", "problem"), MALFORMED)
def test_malformed_schedules_name_field_and_position(text, position, problem) -> None:
    with pytest.raises(ScheduleError) as info:
        parse_schedule(text, "strength_schedule", limits.STRENGTH)
    err = info.value
    assert (err.field, err.position + 1, err.problem) == ("strength_schedule", position, problem)
    assert str(err) == f"strength_schedule: at character {position}: {problem}"


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


def test_camera_move_first_named_at_frame_one_starts_still_at_frame_zero() -> None:
    cam = parse_camera_schedule("1:rotate=2 zoom=1.1")
    assert dict(cam.tracks["rotate"].keyframes) == {0: 0.0, 1: 2.0}
    assert dict(cam.tracks["zoom"].keyframes) == {0: 1.0, 1: 1.1}
    assert cam.at(0) == {"zoom": 1.0, "pan_x": 0.0, "pan_y": 0.0, "rotate": 0.0}
    assert cam.at(1) == {"zoom": 1.1, "pan_x": 0.0, "pan_y": 0.0, "rotate": 2.0}
    # Named at frame 0: nothing is added in front.
    assert parse_camera_schedule("0:rotate=2").tracks["rotate"].keyframes == ((0, 2.0),)


_ALLOWED = "zoom, pan_x, pan_y, rotate"

CAMERA_MALFORMED = [
    ("0:zom=1", 3, f"unknown camera move 'zom' (allowed: {_ALLOWED})"),
    ("0:zoom=2", 8, "must be a number in [0.8, 1.25], got 2"),
    ("0:rotate=-20", 10, "must be a number in [-15, 15], got -20"),
    ("0:pan_x=0.3", 9, "must be a number in [-0.25, 0.25], got 0.3"),
    (
        "0:zoom=1.1,pan_x=0.1",
        12,
        "expected a frame number, got 'pan_x' "
        "(separate one keyframe's moves with spaces, keyframes with commas)",
    ),
    ("0:zoom 1.1", 8, "expected '=' after zoom, got '1.1'"),
    ("0:zoom=x", 8, "expected a number for zoom, got 'x'"),
    ("0:zoom=1 zoom=1.1", 10, "zoom is set twice in one keyframe"),
    ("0:", 3, f"expected a camera move ({_ALLOWED}), got end of text"),
    ("0:zoom=1.1;", 11, "expected another move, ',' or the end after zoom, got ';'"),
]


@pytest.mark.parametrize(("text", "position", "problem"), CAMERA_MALFORMED)
def test_malformed_camera_schedules(text, position, problem) -> None:
    with pytest.raises(ScheduleError) as info:
        parse_camera_schedule(text)
    assert (info.value.field, info.value.position + 1) == ("camera", position), str(info.value)
    assert str(info.value) == f"camera: at character {position}: {problem}"


def test_choice_schedule_steps_and_lower_cases() -> None:
    s = parse_choice_schedule("0:INCREMENT, 3:Fixed", "seed_mode_schedule", SEED_MODES)
    assert s.keyframes == ((0, "increment"), (3, "fixed"))
    assert [s.at(i) for i in range(5)] == ["increment"] * 3 + ["fixed"] * 2
    plain = parse_choice_schedule(" random ", "seed_mode_schedule", SEED_MODES)
    assert plain.keyframes == ((0, "random"),)
    # Before its first keyframe the first name holds (a step, not a ramp).
    late = parse_choice_schedule("3:fixed, 5:random", "seed_mode_schedule", SEED_MODES)
    assert [late.at(i) for i in range(7)] == ["fixed"] * 5 + ["random"] * 2
    assert ChoiceSchedule(((2, "fixed"),)).at(0) == "fixed"


_ONE_OF = "expected one of increment, fixed, random, got"


@pytest.mark.parametrize(
    ("text", "position", "problem"),
    [
        ("0:chaos", 3, f"{_ONE_OF} 'chaos'"),
        ("0:increment, 2:chaos", 16, f"{_ONE_OF} 'chaos'"),
        ("0:5", 3, f"{_ONE_OF} '5'"),
        ("0:", 3, f"{_ONE_OF} end of text"),
        ("chaos", 1, f"{_ONE_OF} 'chaos'"),
        ("  ", 1, "must not be empty"),
        ("0:increment, 0:fixed", 14, f"frame 0 does not come after frame 0; {_ORDER}"),
    ],
)
def test_malformed_choice_schedules(text, position, problem) -> None:
    with pytest.raises(ScheduleError) as info:
        parse_choice_schedule(text, "seed_mode_schedule", SEED_MODES)
    assert str(info.value) == f"seed_mode_schedule: at character {position}: {problem}"
    assert info.value.field == "seed_mode_schedule"


def test_schedule_object_checks_its_keyframes() -> None:
    with pytest.raises(ValueError) as info:
        Schedule(())
    assert str(info.value) == "keyframes: must hold at least one keyframe"
    with pytest.raises(ValueError) as info:
        Schedule(((3, 1.0), (1, 2.0)))
    assert str(info.value) == "keyframes: frames must increase, got [3, 1]"
    with pytest.raises(ValueError, match=r"frames must increase, got \[1, 1\]"):
        Schedule(((1, 1.0), (1, 2.0)))
    with pytest.raises(ValueError, match=r"camera: must be at most 4000 characters"):
        parse_camera_schedule("0:zoom=1" + " " * 4000)
