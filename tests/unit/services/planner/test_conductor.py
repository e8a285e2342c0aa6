"""services/planner/conductor.py: `due_work`, the work a job's state calls for next
(no transport)."""

from __future__ import annotations

from support.storyboards import hinted_board, validated

from ghibli_anim.contracts import keys, limits
from ghibli_anim.contracts.pb import animation_pb2, bus_pb2, types_pb2
from ghibli_anim.contracts.profiles import load_profile
from ghibli_anim.services.planner.conductor import due_work
from ghibli_anim.services.planner.frame_specs import resolve_frames
from ghibli_anim.services.planner.offline_storyboard import plan_offline

JOB = "ab" * 16


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
    # Without one, the profile's; a profile without one (an older job) plays at 8 fps.
    state.ClearField("request")
    assert due_work(state, "x")[0].message.fps == state.profile.fps
    state.profile.ClearField("fps")
    assert due_work(state, "x")[0].message.fps == 8


# -- a validated request's assembly options --------------------------------------------------


def test_conductor_passes_interpolate_and_formats(profile) -> None:
    req = validated(interpolate=3)
    state = animation_pb2.JobState(
        job_id=JOB, status=types_pb2.JOB_STATUS_ASSEMBLING, request=req, profile=profile
    )
    state.frame_specs.extend(resolve_frames(JOB, req, 1, hinted_board(), profile))
    state.frame_states.extend(
        types_pb2.FrameState(index=i, rendered=True, rendered_event_id=f"e{i}") for i in range(6)
    )
    [work] = due_work(state, "x")
    assert work.message.interpolate == 3
    assert tuple(work.message.formats) == limits.DEFAULT_FORMATS
