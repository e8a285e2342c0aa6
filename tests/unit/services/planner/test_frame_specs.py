"""services/planner/frame_specs.py: a job's FrameSpecs, request > storyboard hints > profile,
keys chained frame to frame, seeds, prompt blends, schedules and camera moves."""

from __future__ import annotations

import pytest
from support.storyboards import hinted_board, validated

from ghibli_anim.contracts import keys, seeds
from ghibli_anim.contracts.lifecycle import needs_depth
from ghibli_anim.contracts.pb import animation_pb2, types_pb2
from ghibli_anim.contracts.profiles import load_profile
from ghibli_anim.contracts.storyboard import Storyboard
from ghibli_anim.services.planner.frame_specs import resolve_frames

JOB = "ab" * 16


def _board(continuity=("continue",) * 4, palette=("keep",) * 4, strength=(None,) * 4):
    return Storyboard.model_validate(
        {
            "title": "t",
            "frames": [
                {"prompt": f"shot {i}", "continuity": c, "palette": p, "strength": s}
                for i, (c, p, s) in enumerate(zip(continuity, palette, strength, strict=True))
            ],
        }
    )


def test_resolve_follows_precedence_and_chains_keys(settings):
    profile = load_profile("tiny", settings)
    req = animation_pb2.CreateAnimationRequest(idea="x", frames=4, depth=True, steps=20)
    board = _board(strength=(None, 0.3, None, None), palette=("keep", "keep", "shift", "keep"))
    specs = resolve_frames(JOB, req, 100, board, profile)
    assert [s.seed for s in specs] == [100, 101, 102, 103]
    assert [s.steps for s in specs] == [20] * 4  # request beats profile
    assert specs[1].strength == pytest.approx(0.3)  # storyboard hint beats profile
    assert specs[2].strength == pytest.approx(profile.strength)
    req.strength = 0.5
    assert resolve_frames(JOB, req, 100, board, profile)[1].strength == pytest.approx(0.5)
    assert specs[0].source_key == "" and specs[0].depth_key == ""
    assert specs[0].continuity == types_pb2.CONTINUITY_CUT
    for i in (1, 2, 3):
        assert specs[i].source_key == keys.frame_key(JOB, i - 1)
        assert specs[i].depth_key == keys.depth_key(JOB, i - 1)
    assert [s.color_reference_key for s in specs] == [
        keys.frame_key(JOB, 0),
        keys.frame_key(JOB, 0),
        keys.frame_key(JOB, 2),  # palette shift moves the reference
        keys.frame_key(JOB, 2),
    ]
    assert all(s.prompt.endswith(", ghibli style") and s.profile.name == "tiny" for s in specs)


def test_a_cut_renders_txt2img_and_resets_the_reference(settings):
    profile = load_profile("tiny", settings)
    req = animation_pb2.CreateAnimationRequest(
        idea="x", frames=4, depth=True, seed_mode=types_pb2.SEED_MODE_FIXED
    )
    specs = resolve_frames(
        JOB, req, 9, _board(continuity=("continue", "continue", "cut", "continue")), profile
    )
    assert specs[2].source_key == "" and specs[2].depth_key == ""
    assert specs[3].color_reference_key == keys.frame_key(JOB, 2)
    assert {s.seed for s in specs} == {seeds.frame_seed(9, 0, types_pb2.SEED_MODE_FIXED)}
    assert [needs_depth(specs, i) for i in range(4)] == [True, False, True, False]


def test_seed_mode_keyframes_switch_per_frame(settings):
    profile = load_profile("tiny", settings)
    req = animation_pb2.CreateAnimationRequest(
        idea="x", frames=4, seed_mode_schedule="0:increment, 2:fixed"
    )
    specs = resolve_frames(JOB, req, 50, _board(), profile)
    assert [s.seed for s in specs] == [50, 51, 50, 50]


def test_blend_prompts_lean_each_frame_towards_the_previous_prompt(settings):
    profile = load_profile("tiny", settings)
    req = animation_pb2.CreateAnimationRequest(idea="x", frames=4, blend_prompts=True)
    board = _board(continuity=("continue", "continue", "cut", "continue"))
    specs = resolve_frames(JOB, req, 1, board, profile)
    assert [s.blend_prompt for s in specs] == ["", specs[0].prompt, "", specs[2].prompt]
    assert [s.blend_weight for s in specs if s.blend_prompt] == pytest.approx([0.35, 0.35])
    req.blend_prompts = False
    assert not any(s.blend_prompt for s in resolve_frames(JOB, req, 1, board, profile))


# -- keyframe schedules and storyboard hints, over six validated frames -----------------------


def _specs(profile, board: Storyboard, **fields) -> list[types_pb2.FrameSpec]:
    req = validated(**fields)  # six frames, like the boards here
    return resolve_frames(JOB, req, 5, board, profile)


def test_strength_precedence_per_frame(profile) -> None:
    hints = hinted_board(strength=[None, 0.3, None, 0.6, None, None])
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
    board = hinted_board()
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
    board = hinted_board(
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
    board = hinted_board(camera=[{"pan_x": 0.2}] * 6)
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
    board = hinted_board(palette=["keep", "keep", "keep", "shift", "keep", "keep"])
    specs = _specs(profile, board)
    assert {s.color_coherence for s in specs} == {"lab"}
    refs = [s.color_reference_key for s in specs]
    assert refs == [keys.frame_key(JOB, 0)] * 3 + [keys.frame_key(JOB, 3)] * 3
    assert {s.color_coherence for s in _specs(profile, board, color_coherence="off")} == {"off"}


# -- every field of every spec ------------------------------------------------------------------

# A profile whose every default differs from the request's and the storyboard's, so a spec
# that took a value from the wrong place (or dropped it) shows.
CUSTOM = types_pb2.Profile(
    name="custom",
    base_model="tiny:pipeline",
    scheduler="Euler",
    width=96,
    height=80,
    steps=7,
    guidance=6.5,
    strength=0.25,
    controlnet_scale=0.75,
    negative_prompt="profile negative",
)


def _five_shots() -> Storyboard:
    return Storyboard.model_validate(
        {
            "title": "t",
            "frames": [
                {
                    "prompt": "a hill",
                    "negative_prompt": "no birds",
                    "strength": 0.4,
                    "camera": {"zoom": 1.1, "pan_x": 0.05},
                },
                {"prompt": "a river", "camera": {"rotate": 3, "pan_y": -0.1}},
                {"prompt": "a town", "continuity": "cut", "camera": {"zoom": 0.9}},
                {"prompt": "a tower", "palette": "shift"},
                {"prompt": "a bridge", "negative_prompt": "no cars"},
            ],
        }
    )


def test_every_field_of_every_spec(settings) -> None:
    req = animation_pb2.CreateAnimationRequest(
        idea="x",
        frames=5,
        depth=True,
        preset="fast",
        truncate_prompts=True,
        color_coherence=" HSV ",
    )
    specs = resolve_frames(JOB, req, 40, _five_shots(), CUSTOM)
    # prompt, negative prompt, strength, cut, camera applied to the source, colour reference
    rows = [
        ("a hill", "no birds", 0.4, True, {"zoom": 1.0}, 0),
        ("a river", "profile negative", 0.25, False, {"zoom": 1.1, "pan_x": 0.05}, 0),
        ("a town", "profile negative", 0.25, True, {"zoom": 1.0}, 2),
        ("a tower", "profile negative", 0.25, False, {"zoom": 0.9}, 3),
        ("a bridge", "no cars", 0.25, False, {"zoom": 1.0}, 3),
    ]
    expected = [
        types_pb2.FrameSpec(
            index=i,
            prompt=f"{prompt}, ghibli style",
            negative_prompt=negative,
            seed=40 + i,
            strength=strength,
            guidance=6.5,
            steps=7,
            scheduler="Euler",
            width=96,
            height=80,
            continuity=types_pb2.CONTINUITY_CUT if cut else types_pb2.CONTINUITY_CONTINUE,
            source_key="" if cut else keys.frame_key(JOB, i - 1),
            depth_key="" if cut else keys.depth_key(JOB, i - 1),
            controlnet_scale=0.75,
            camera=types_pb2.CameraMove(**camera),
            color_reference_key=keys.frame_key(JOB, reference),
            color_coherence="hsv",
            sharpen=0.0,
            profile=CUSTOM,
            preset="fast",
            truncate_prompt=True,
        )
        for i, (prompt, negative, strength, cut, camera, reference) in enumerate(rows)
    ]
    assert len(specs) == 5  # one spec per shot: none lost, none added
    for i, (got, want) in enumerate(zip(specs, expected, strict=True)):
        assert got == want, i


def test_a_carried_rotate_and_pan_reach_the_next_spec() -> None:
    board = hinted_board(
        camera=[
            {"rotate": 3, "pan_y": -0.1},
            {"rotate": -15, "pan_x": 0.25},
            None,
            None,
            None,
            None,
        ]
    )
    moves = _moves(_specs(CUSTOM, board))
    assert moves[1:3] == [(1.0, 0, -0.1, 3), (1.0, 0.25, 0, -15)]


def test_the_request_beats_the_storyboard_and_the_profile_in_every_spec() -> None:
    req = animation_pb2.CreateAnimationRequest(
        idea="x",
        frames=5,
        negative_prompt="request negative",
        width=128,
        height=112,
        steps=9,
        guidance=11.0,
        strength=0.6,
        strength_schedule="   ",  # blank: no schedule, the plain values hold
        guidance_schedule=" ",
        sharpen=" ",
        camera="  ",  # blank: the storyboard's cameras
    )
    specs = resolve_frames(JOB, req, 1, _five_shots(), CUSTOM)
    fields = {
        (s.negative_prompt, s.width, s.height, s.steps, round(s.guidance, 5), round(s.strength, 5))
        for s in specs
    }
    assert fields == {("request negative", 128, 112, 9, 11.0, 0.6)}
    assert {s.sharpen for s in specs} == {0.0}
    assert _moves(specs)[1] == (1.1, 0.05, 0, 0)  # shot 0's own camera, carried


def test_an_init_image_makes_frame_0_img2img_and_changes_nothing_else() -> None:
    board = _five_shots()
    plain = animation_pb2.CreateAnimationRequest(idea="x", frames=5, depth=True)
    with_init = animation_pb2.CreateAnimationRequest()
    with_init.CopyFrom(plain)
    with_init.init_upload_id = "u" * 32
    before = resolve_frames(JOB, plain, 3, board, CUSTOM)
    after = resolve_frames(JOB, with_init, 3, board, CUSTOM)
    first = types_pb2.FrameSpec()
    first.CopyFrom(before[0])
    first.init_key = keys.init_key(JOB)
    first.source_key = keys.init_key(JOB)
    first.continuity = types_pb2.CONTINUITY_CONTINUE
    # Still no depth map (none exists before frame 0), a still camera, its own reference.
    assert after[0] == first
    assert (first.depth_key, first.camera.zoom) == ("", 1.0)
    assert first.color_reference_key == keys.frame_key(JOB, 0)
    assert after[1:] == before[1:]  # frame 1 still starts from frame 0, not the upload
    assert not any(s.init_key for s in after[1:])


@pytest.mark.parametrize(
    ("field", "text", "message"),
    [
        (
            "strength_schedule",
            "0:0.5, 3:1.5",
            "strength_schedule: at character 10: must be a number in (0, 1], got 1.5",
        ),
        (
            "strength_schedule",
            "0:0",
            "strength_schedule: at character 3: must be a number in (0, 1]",
        ),
        (
            "guidance_schedule",
            "0:31",
            "guidance_schedule: at character 3: must be a number in [0, 30]",
        ),
        ("sharpen", "0:3.5", "sharpen: at character 3: must be a number in [0, 3], got 3.5"),
        ("camera", "0:zoom=2", "camera: at character 8: must be a number in [0.8, 1.25], got 2"),
        ("camera", "0:tilt=2", "camera: at character 3: unknown camera move 'tilt'"),
    ],
)
def test_a_schedule_out_of_range_is_refused_naming_the_field_and_the_range(
    field: str, text: str, message: str
) -> None:
    # The API validates these first; the planner parses them again with the same limits,
    # so a strength of 0 or 1.5 cannot reach a renderer even from a request that skipped
    # that check.
    req = animation_pb2.CreateAnimationRequest(idea="x", frames=5, **{field: text})
    with pytest.raises(ValueError) as info:
        resolve_frames(JOB, req, 1, _five_shots(), CUSTOM)
    assert str(info.value).startswith(message)


def test_values_at_the_limits_of_a_schedule_are_kept() -> None:
    req = animation_pb2.CreateAnimationRequest(
        idea="x",
        frames=5,
        strength_schedule="0:1, 4:0.001",
        guidance_schedule="0:0, 4:30",
        sharpen="0:3, 4:0",
        camera="0:zoom=1.25 pan_x=-0.25 pan_y=0.25 rotate=-15",
    )
    specs = resolve_frames(JOB, req, 1, _five_shots(), CUSTOM)
    assert (specs[0].strength, specs[4].strength) == pytest.approx((1.0, 0.001))
    assert (specs[0].guidance, specs[4].guidance) == pytest.approx((0.0, 30.0))
    assert (specs[0].sharpen, specs[4].sharpen) == pytest.approx((3.0, 0.0))
    # The schedule's one keyframe holds for every frame and replaces the shots' cameras.
    assert _moves(specs) == [
        (1.0, 0, 0, 0),
        (1.25, -0.25, 0.25, -15),
        (1.0, 0, 0, 0),  # frame 2 is a cut
        (1.25, -0.25, 0.25, -15),
        (1.25, -0.25, 0.25, -15),
    ]
