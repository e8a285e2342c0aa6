"""Keyframe schedules: the parser, interpolation, validation at the edge, and how the planner
turns schedules and storyboard hints into per-frame FrameSpecs (request > hints > profile)."""

from __future__ import annotations

import pytest

from ghibli_anim.cli import main as cli
from ghibli_anim.cli.render_flags import build_request
from ghibli_anim.contracts import config, keys, limits
from ghibli_anim.contracts.pb import animation_pb2, types_pb2
from ghibli_anim.contracts.profiles import load_profile
from ghibli_anim.contracts.schedules import (
    Schedule,
    ScheduleError,
    parse_camera_schedule,
    parse_schedule,
)
from ghibli_anim.contracts.storyboard import Storyboard
from ghibli_anim.contracts.validate import validate_create
from ghibli_anim.services.planner.conductor import due_work
from ghibli_anim.services.planner.frame_specs import resolve_frames

JOB = "cd" * 16


# --- the parser -----------------------------------------------------------------------------


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


# --- validation at the edge -----------------------------------------------------------------


def _validate(**fields) -> animation_pb2.CreateAnimationRequest:
    req = animation_pb2.CreateAnimationRequest(idea="a cat", frames=6, **fields)
    return validate_create(req, profile_names={"tiny"}, default_profile="tiny")


def test_validate_fills_defaults_and_keeps_schedules() -> None:
    out = _validate(strength_schedule="0:0.15, 10:0.35", camera=" 0:zoom=1.05 ")
    assert out.color_coherence == "lab"
    assert out.strength_schedule == "0:0.15, 10:0.35"
    assert out.camera == " 0:zoom=1.05 "  # as written: error positions stay true
    assert tuple(out.formats) == limits.DEFAULT_FORMATS == ("gif", "mp4", "webp", "contact")
    assert _validate(color_coherence=" HSV ").color_coherence == "hsv"
    assert _validate(sharpen="   ").sharpen == ""


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"color_coherence": "lub"},
            "color_coherence: must be one of lab, hsv, rgb, off, got 'lub'",
        ),
        ({"interpolate": 2}, "interpolate: must be one of 0, 1, 3, got 2"),
        ({"interpolate": -1}, "interpolate: must be one of 0, 1, 3, got -1"),
        (
            {"strength_schedule": "0:0.15, 10:x"},
            "strength_schedule: at character 12: expected a number as the value, got 'x'",
        ),
        (
            {"guidance_schedule": "0:7, 3:31"},
            "guidance_schedule: at character 8: must be a number in [0, 30], got 31",
        ),
        ({"sharpen": "0:4"}, "sharpen: at character 3: must be a number in [0, 3], got 4"),
        ({"camera": "0:zoom=0.5"}, "camera: at character 8: must be a number in [0.8, 1.25]"),
    ],
)
def test_validate_refuses_bad_motion_fields(fields, message) -> None:
    with pytest.raises(ValueError) as info:
        _validate(**fields)
    assert str(info.value).startswith(message)


# --- resolution into FrameSpecs -------------------------------------------------------------


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    settings = config.load(
        "client", {"ANIM_CACHE_DIR": str(tmp_path_factory.mktemp("c")), "ANIM_STORE": "local"}
    )
    return load_profile("tiny", settings)


def _board(n: int = 6, **per_frame) -> Storyboard:
    frames = []
    for i in range(n):
        frame = {"prompt": f"shot number {i}"}
        for name, values in per_frame.items():
            if values[i] is not None:
                frame[name] = values[i]
        frames.append(frame)
    return Storyboard.model_validate({"title": "t", "frames": frames})


def _specs(profile, board: Storyboard, **fields) -> list[types_pb2.FrameSpec]:
    req = _validate(**fields)  # six frames, like the boards here
    return resolve_frames(JOB, req, 5, board, profile)


def test_strength_precedence_per_frame(profile) -> None:
    hints = _board(strength=[None, 0.3, None, 0.6, None, None])
    plain = _specs(profile, hints)
    assert [round(s.strength, 6) for s in plain] == pytest.approx(
        [profile.strength, 0.3, profile.strength, 0.6, profile.strength, profile.strength]
    )
    fixed = _specs(profile, hints, strength=0.5)
    assert {round(s.strength, 6) for s in fixed} == {0.5}  # request beats storyboard hints
    ramp = _specs(profile, hints, strength=0.5, strength_schedule="0:0.1, 5:0.6")
    # The schedule beats both the request's plain strength and the hints.
    assert [s.strength for s in ramp] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])


def test_guidance_and_sharpen_schedules(profile) -> None:
    board = _board()
    specs = _specs(profile, board, guidance_schedule="2:6, 4:10")
    assert [s.guidance for s in specs] == pytest.approx([6, 6, 6, 8, 10, 10])
    assert {s.sharpen for s in specs} == {0.0}  # off unless asked
    assert _specs(profile, board, guidance=9.0)[3].guidance == pytest.approx(9.0)
    assert _specs(profile, board)[3].guidance == pytest.approx(profile.guidance)
    sharp = _specs(profile, board, sharpen="0:0, 5:1")
    assert [s.sharpen for s in sharp] == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])


def _moves(specs) -> list[tuple[float, float, float, float]]:
    return [
        tuple(round(v, 5) for v in (s.camera.zoom, s.camera.pan_x, s.camera.pan_y, s.camera.rotate))
        for s in specs
    ]


def test_a_spec_carries_the_previous_frames_camera_move(profile) -> None:
    board = _board(
        camera=[{"zoom": 1.1}, {"pan_x": 0.1}, {"rotate": 5}, None, {"pan_y": -0.2}, {"zoom": 0.9}],
        continuity=[None, None, None, "cut", None, None],
    )
    specs = _specs(profile, board)
    assert _moves(specs) == [
        (1.0, 0, 0, 0),  # frame 0 starts from nothing
        (1.1, 0, 0, 0),  # frame 0's zoom moves frame 0 before it seeds frame 1
        (1.0, 0.1, 0, 0),
        (1.0, 0, 0, 0),  # a cut starts fresh: frame 2's rotate seeds nothing
        (1.0, 0, 0, 0),  # frame 3 was still
        (1.0, 0, -0.2, 0),
    ]  # frame 5's own zoom 0.9 would seed a frame 6 that does not exist


def test_camera_schedule_replaces_the_storyboard_camera(profile) -> None:
    board = _board(camera=[{"pan_x": 0.2}] * 6)
    specs = _specs(profile, board, camera="0:zoom=1.02, 4:zoom=1.1 rotate=2")
    assert _moves(specs) == [
        (1.0, 0, 0, 0),
        (1.02, 0, 0, 0),
        (1.04, 0, 0, 0.5),
        (1.06, 0, 0, 1.0),
        (1.08, 0, 0, 1.5),
        (1.1, 0, 0, 2.0),
    ]


def test_colour_mode_and_reference_in_every_spec(profile) -> None:
    board = _board(palette=["keep", "keep", "keep", "shift", "keep", "keep"])
    specs = _specs(profile, board)
    assert {s.color_coherence for s in specs} == {"lab"}
    refs = [s.color_reference_key for s in specs]
    assert refs == [keys.frame_key(JOB, 0)] * 3 + [keys.frame_key(JOB, 3)] * 3
    assert {s.color_coherence for s in _specs(profile, board, color_coherence="off")} == {"off"}


def test_conductor_passes_interpolate_and_formats(profile) -> None:
    req = _validate(interpolate=3)
    state = animation_pb2.JobState(
        job_id=JOB, status=types_pb2.JOB_STATUS_ASSEMBLING, request=req, profile=profile
    )
    state.frame_specs.extend(resolve_frames(JOB, req, 1, _board(), profile))
    state.frame_states.extend(
        types_pb2.FrameState(index=i, rendered=True, rendered_event_id=f"e{i}") for i in range(6)
    )
    [work] = due_work(state, "x")
    assert work.message.interpolate == 3
    assert tuple(work.message.formats) == limits.DEFAULT_FORMATS


# --- the command line -----------------------------------------------------------------------


def _cli_request(*flags: str) -> animation_pb2.CreateAnimationRequest:
    args = cli.build_parser().parse_args(["generate", "a cat", "--frames", "4", *flags])
    return build_request(args)


def test_cli_numbers_or_schedules() -> None:
    req = _cli_request("--strength", "0.3", "--guidance", "0:7, 3:9")
    assert req.HasField("strength") and req.strength == pytest.approx(0.3)
    assert not req.HasField("guidance") and req.guidance_schedule == "0:7, 3:9"
    req = _cli_request(
        "--strength",
        "0:0.15, 10:0.35",
        "--camera",
        "0:zoom=1.02",
        "--sharpen",
        "0.2",
        "--color-coherence",
        "hsv",
        "--interpolate",
        "3",
    )
    assert not req.HasField("strength") and req.strength_schedule == "0:0.15, 10:0.35"
    assert (req.camera, req.sharpen, req.color_coherence, req.interpolate) == (
        "0:zoom=1.02",
        "0.2",
        "hsv",
        3,
    )
    validate_create(req, profile_names={"tiny"}, default_profile="tiny")
    with pytest.raises(SystemExit):
        _cli_request("--interpolate", "2")
