"""Offline planner, FrameSpec resolution and the conductor's decisions (no transport)."""

from __future__ import annotations

import pytest

from ghibli_anim.contracts import config, keys, seeds
from ghibli_anim.contracts.lifecycle import needs_depth
from ghibli_anim.contracts.pb import animation_pb2, bus_pb2, types_pb2
from ghibli_anim.contracts.profiles import load_profile
from ghibli_anim.contracts.storyboard import Storyboard, parse_storyboard, prompts_with_style
from ghibli_anim.contracts.tokens import PromptTooLong, TokenCounter
from ghibli_anim.services.planner.conductor import due_work
from ghibli_anim.services.planner.frame_specs import resolve_frames
from ghibli_anim.services.planner.offline_storyboard import plan_offline

JOB = "ab" * 16


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return config.load("client", {"ANIM_CACHE_DIR": str(cache), "ANIM_STORE": "local"})


@pytest.fixture(scope="module")
def counter(settings):
    return TokenCounter.for_profile(load_profile("tiny", settings), settings)


IDEAS = [
    "a dragon glides over a medieval town at dusk",
    "a girl and her cat ride a bicycle along a seaside road on a summer morning",
    "a small robot tends a garden on a floating island above the clouds",
]


@pytest.mark.parametrize("idea", IDEAS)
@pytest.mark.parametrize("frames", [1, 2, 5, 24, 120])
def test_offline_plan_is_deterministic_distinct_and_fits(idea, frames, counter):
    board = plan_offline(idea, frames, fits=counter.fits)
    again = plan_offline(idea, frames, fits=counter.fits)
    assert board.to_json() == again.to_json()
    assert len(board.frames) == frames
    prompts = prompts_with_style(board)
    assert len({p.casefold() for p in prompts}) == frames
    assert all(p.endswith(", ghibli style") and idea in p for p in prompts)
    counter.check(prompts)
    assert board.planner.offline and board.planner.backend == "offline"
    # It is a valid storyboard for exactly that many frames.
    parse_storyboard(board.to_json(), frames)


def test_token_counter_names_the_frame(counter):
    long_prompt = " ".join(["supercalifragilistic"] * 40)
    with pytest.raises(PromptTooLong, match=r"^frames\[1\]\.prompt: \d+ CLIP tokens"):
        counter.check(["a cat, ghibli style", long_prompt])


def test_offline_plan_sheds_detail_to_fit(counter):
    idea = " ".join(["a very small dragon with golden wings"] * 6)
    board = plan_offline(idea, 3, fits=counter.fits)
    for prompt in prompts_with_style(board):
        assert counter.fits(prompt) or prompt.startswith(idea)


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


def _state(n: int, depth: bool, settings) -> animation_pb2.JobState:
    profile = load_profile("tiny", settings)
    req = animation_pb2.CreateAnimationRequest(idea="x", frames=n, depth=depth)
    board = plan_offline("x", n)
    state = animation_pb2.JobState(
        job_id=JOB, status=types_pb2.JOB_STATUS_RENDERING, request=req, attempt=2, profile=profile
    )
    state.frame_specs.extend(resolve_frames(JOB, req, 1, board, profile))
    state.frame_states.extend(types_pb2.FrameState(index=i) for i in range(n))
    return state


def _done(state, *frames: int) -> None:
    for i in frames:
        state.frame_states[i].rendered = True
        state.frame_states[i].rendered_event_id = f"r{i}"


def test_conductor_decisions_without_depth(settings):
    state = _state(3, False, settings)
    [first] = due_work(state, "planned")
    assert first.step == "render" and first.frame == 0
    assert first.message.causation_id == "planned" and first.message.spec == state.frame_specs[0]
    _done(state, 0)
    [work] = due_work(state, "ignored")
    assert work.step == "render" and work.frame == 1 and work.message.causation_id == "r0"
    assert work.message.attempt == 2 and work.message.spec == state.frame_specs[1]
    # The second-to-last frame done: the last one is next, never nothing.
    _done(state, 1)
    [work] = due_work(state, "ignored")
    assert work.step == "render" and work.frame == 2 and work.message.causation_id == "r1"
    _done(state, 2)
    state.status = types_pb2.JOB_STATUS_ASSEMBLING
    [assemble] = due_work(state, "ignored")
    assert assemble.step == "assemble" and assemble.frame == -1
    message = assemble.message
    assert isinstance(message, bus_pb2.AssembleWork) and message.job_id == JOB
    assert list(message.frame_keys) == [keys.frame_key(JOB, i) for i in range(3)]
    assert list(message.depth_keys) == [] and message.causation_id == "r2"
    assert message.fps == 8 and message.attempt == 2  # profile default fps
    assert list(message.prompts) == [s.prompt for s in state.frame_specs]


def test_conductor_decisions_with_depth(settings):
    state = _state(3, True, settings)
    _done(state, 0)
    [work] = due_work(state, "ignored")
    assert work.step == "depth" and work.frame == 0 and work.message.causation_id == "r0"
    assert work.message.job_id == JOB and work.message.attempt == 2
    assert work.message.image_key == keys.frame_key(JOB, 0)
    assert work.message.output_key == keys.depth_key(JOB, 0)
    assert work.message.profile == state.profile
    state.frame_states[0].depth_ready = True
    state.frame_states[0].depth_event_id = "d0"
    [work] = due_work(state, "ignored")
    assert work.step == "render" and work.frame == 1 and work.message.causation_id == "d0"
    assert work.message.spec.depth_key == keys.depth_key(JOB, 0)
    # The last frame guides nothing: no depth map of it, and assembly lists none.
    _done(state, 1, 2)
    state.frame_states[1].depth_ready = True
    state.status = types_pb2.JOB_STATUS_ASSEMBLING
    [assemble] = due_work(state, "ignored")
    assert list(assemble.message.depth_keys) == [keys.depth_key(JOB, i) for i in (0, 1)]


def test_conductor_decisions_after_a_resume_and_in_other_states(settings):
    state = _state(4, False, settings)
    # A resume found frames 0 and 1 in the store (no event ids): the resume event causes 2.
    for i in (0, 1):
        state.frame_states[i].rendered = True
    [work] = due_work(state, "resumed")
    assert work.step == "render" and work.frame == 2 and work.message.causation_id == "resumed"
    state.status = types_pb2.JOB_STATUS_PENDING
    [plan] = due_work(state, "created")
    assert plan.step == "plan" and plan.message.causation_id == "created"
    assert plan.message.job_id == JOB and plan.message.attempt == 2
    for status in (
        types_pb2.JOB_STATUS_PLANNING,
        types_pb2.JOB_STATUS_COMPLETED,
        types_pb2.JOB_STATUS_FAILED,
        types_pb2.JOB_STATUS_CANCELLED,
    ):
        state.status = status
        assert due_work(state, "x") == []


def test_assembly_fps_comes_from_the_request_when_set(settings):
    state = _state(2, False, settings)
    state.request.fps = 24
    state.request.interpolate = 3
    state.status = types_pb2.JOB_STATUS_ASSEMBLING
    [assemble] = due_work(state, "x")
    assert assemble.message.fps == 24 and assemble.message.interpolate == 3


def test_seed_mode_keyframes_switch_per_frame(settings):
    profile = load_profile("tiny", settings)
    req = animation_pb2.CreateAnimationRequest(
        idea="x", frames=4, seed_mode_schedule="0:increment, 2:fixed"
    )
    specs = resolve_frames(JOB, req, 50, _board(), profile)
    assert [s.seed for s in specs] == [50, 51, 50, 50]


def test_seed_mode_schedule_errors_name_the_position():
    from ghibli_anim.contracts.validate import validate_create

    req = animation_pb2.CreateAnimationRequest(
        idea="x", frames=4, seed_mode_schedule="0:increment, 2:chaos"
    )
    with pytest.raises(ValueError, match=r"seed_mode_schedule: at character 16: expected one of"):
        validate_create(req, profile_names=["tiny"], default_profile="tiny")


def test_blend_prompts_lean_each_frame_towards_the_previous_prompt(settings):
    profile = load_profile("tiny", settings)
    req = animation_pb2.CreateAnimationRequest(idea="x", frames=4, blend_prompts=True)
    board = _board(continuity=("continue", "continue", "cut", "continue"))
    specs = resolve_frames(JOB, req, 1, board, profile)
    assert [s.blend_prompt for s in specs] == ["", specs[0].prompt, "", specs[2].prompt]
    assert [s.blend_weight for s in specs if s.blend_prompt] == pytest.approx([0.35, 0.35])
    req.blend_prompts = False
    assert not any(s.blend_prompt for s in resolve_frames(JOB, req, 1, board, profile))
