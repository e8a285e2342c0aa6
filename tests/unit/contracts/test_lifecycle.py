"""contracts/lifecycle.py: the job state machine (which status changes are allowed, which
are terminal) and its named transitions: each applies only where it should, changes only
what it should, and never makes a status change the table refuses."""

from __future__ import annotations

import itertools

import pytest

from ghibli_anim.contracts import keys, lifecycle
from ghibli_anim.contracts import lifecycle as jobs
from ghibli_anim.contracts.pb import animation_pb2, types_pb2

S = types_pb2

ALL = [
    S.JOB_STATUS_PENDING,
    S.JOB_STATUS_PLANNING,
    S.JOB_STATUS_PLANNED,
    S.JOB_STATUS_RENDERING,
    S.JOB_STATUS_ASSEMBLING,
    S.JOB_STATUS_COMPLETED,
    S.JOB_STATUS_FAILED,
    S.JOB_STATUS_CANCELLED,
]

ALLOWED = {
    (S.JOB_STATUS_PENDING, S.JOB_STATUS_PLANNING),
    (S.JOB_STATUS_PENDING, S.JOB_STATUS_CANCELLED),
    (S.JOB_STATUS_PENDING, S.JOB_STATUS_FAILED),
    (S.JOB_STATUS_PLANNING, S.JOB_STATUS_RENDERING),
    (S.JOB_STATUS_PLANNING, S.JOB_STATUS_FAILED),
    (S.JOB_STATUS_PLANNING, S.JOB_STATUS_CANCELLED),
    # Review: planned, waiting for approval (ASSEMBLING: approved with every frame stored).
    (S.JOB_STATUS_PLANNING, S.JOB_STATUS_PLANNED),
    (S.JOB_STATUS_PLANNED, S.JOB_STATUS_RENDERING),
    (S.JOB_STATUS_PLANNED, S.JOB_STATUS_ASSEMBLING),
    (S.JOB_STATUS_PLANNED, S.JOB_STATUS_FAILED),
    (S.JOB_STATUS_PLANNED, S.JOB_STATUS_CANCELLED),
    (S.JOB_STATUS_RENDERING, S.JOB_STATUS_ASSEMBLING),
    (S.JOB_STATUS_RENDERING, S.JOB_STATUS_FAILED),
    (S.JOB_STATUS_RENDERING, S.JOB_STATUS_CANCELLED),
    (S.JOB_STATUS_ASSEMBLING, S.JOB_STATUS_COMPLETED),
    (S.JOB_STATUS_ASSEMBLING, S.JOB_STATUS_FAILED),
    (S.JOB_STATUS_ASSEMBLING, S.JOB_STATUS_CANCELLED),
    # Resume: rendering, assembling (every frame done) or planning again (PENDING).
    (S.JOB_STATUS_FAILED, S.JOB_STATUS_RENDERING),
    (S.JOB_STATUS_FAILED, S.JOB_STATUS_ASSEMBLING),
    (S.JOB_STATUS_FAILED, S.JOB_STATUS_PENDING),
    (S.JOB_STATUS_CANCELLED, S.JOB_STATUS_RENDERING),
    (S.JOB_STATUS_CANCELLED, S.JOB_STATUS_ASSEMBLING),
    (S.JOB_STATUS_CANCELLED, S.JOB_STATUS_PENDING),
    # ... or waiting for review again (stopped while PLANNED, never approved).
    (S.JOB_STATUS_FAILED, S.JOB_STATUS_PLANNED),
    (S.JOB_STATUS_CANCELLED, S.JOB_STATUS_PLANNED),
}


@pytest.mark.parametrize(("old", "new"), sorted(ALLOWED))
def test_allowed_transitions(old: int, new: int) -> None:
    assert jobs.can_transition(old, new)
    jobs.check_transition(old, new)


def test_table_is_exactly_the_allowed_set() -> None:
    table = {(old, new) for old, targets in jobs.TRANSITIONS.items() for new in targets}
    assert table == ALLOWED
    assert set(jobs.TRANSITIONS) == set(ALL)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (S.JOB_STATUS_PENDING, S.JOB_STATUS_RENDERING),  # skips planning
        (S.JOB_STATUS_PENDING, S.JOB_STATUS_COMPLETED),
        (S.JOB_STATUS_PLANNING, S.JOB_STATUS_PENDING),  # backwards
        (S.JOB_STATUS_PLANNING, S.JOB_STATUS_ASSEMBLING),
        (S.JOB_STATUS_RENDERING, S.JOB_STATUS_COMPLETED),  # skips assembling
        (S.JOB_STATUS_RENDERING, S.JOB_STATUS_PLANNING),
        (S.JOB_STATUS_ASSEMBLING, S.JOB_STATUS_RENDERING),
        (S.JOB_STATUS_COMPLETED, S.JOB_STATUS_RENDERING),  # completed is final
        (S.JOB_STATUS_COMPLETED, S.JOB_STATUS_FAILED),
        (S.JOB_STATUS_COMPLETED, S.JOB_STATUS_CANCELLED),
        (S.JOB_STATUS_FAILED, S.JOB_STATUS_COMPLETED),
        (S.JOB_STATUS_FAILED, S.JOB_STATUS_CANCELLED),
        (S.JOB_STATUS_CANCELLED, S.JOB_STATUS_FAILED),
        (S.JOB_STATUS_CANCELLED, S.JOB_STATUS_PLANNING),
        (S.JOB_STATUS_UNSPECIFIED, S.JOB_STATUS_PENDING),
        (S.JOB_STATUS_PENDING, S.JOB_STATUS_PLANNED),  # skips planning
        (S.JOB_STATUS_PLANNED, S.JOB_STATUS_PLANNING),  # backwards
        (S.JOB_STATUS_PLANNED, S.JOB_STATUS_PENDING),
        (S.JOB_STATUS_PLANNED, S.JOB_STATUS_COMPLETED),
        (S.JOB_STATUS_RENDERING, S.JOB_STATUS_PLANNED),  # approved is final
        (S.JOB_STATUS_COMPLETED, S.JOB_STATUS_PLANNED),
    ],
)
def test_forbidden_transitions(old: int, new: int) -> None:
    assert not jobs.can_transition(old, new)
    with pytest.raises(jobs.InvalidTransition) as info:
        jobs.check_transition(old, new, "ab" * 16)
    message = str(info.value)
    assert jobs.status_name(old) in message and jobs.status_name(new) in message
    assert "ab" * 16 in message


def test_every_pair_outside_the_table_is_forbidden() -> None:
    for old, new in itertools.product(ALL, ALL):
        expected = old == new or (old, new) in ALLOWED
        assert jobs.can_transition(old, new) == expected, (old, new)


def test_same_status_is_always_allowed() -> None:
    for status in ALL:
        jobs.check_transition(status, status)


def test_terminal_states() -> None:
    assert {s for s in ALL if jobs.is_terminal(s)} == {
        S.JOB_STATUS_COMPLETED,
        S.JOB_STATUS_FAILED,
        S.JOB_STATUS_CANCELLED,
    }
    assert {s for s in ALL if s in jobs.RESUMABLE} == {
        S.JOB_STATUS_FAILED,
        S.JOB_STATUS_CANCELLED,
    }
    assert jobs.TRANSITIONS[S.JOB_STATUS_COMPLETED] == frozenset()


def test_invalid_transition_is_a_value_error_naming_what_is_allowed() -> None:
    error = jobs.InvalidTransition(S.JOB_STATUS_RENDERING, S.JOB_STATUS_PENDING)
    assert isinstance(error, ValueError)
    assert "allowed: ASSEMBLING, CANCELLED, FAILED" in str(error)
    assert "allowed: none" in str(jobs.InvalidTransition(S.JOB_STATUS_COMPLETED, 3))


# -- the named transitions --------------------------------------------------------------------

JOB = "0123456789abcdef0123456789abcdef"


def state(status: int, frames: int = 3, depth: bool = False) -> animation_pb2.JobState:
    job = animation_pb2.JobState(job_id=JOB, status=status, frames=frames, attempt=1)
    for i in range(frames):
        spec = job.frame_specs.add(index=i)
        if depth and i > 0:
            spec.depth_key = keys.depth_key(JOB, i - 1)
        job.frame_states.add(index=i)
    return job


def specs(n: int) -> list[types_pb2.FrameSpec]:
    return [types_pb2.FrameSpec(index=i, prompt=f"p{i}") for i in range(n)]


NAMED = {
    "start_planning": lifecycle.start_planning,
    "planned": lambda s: lifecycle.planned(
        s,
        title="t",
        backend="offline",
        profile=types_pb2.Profile(name="tiny"),
        specs=specs(2),
        event_id="e",
    ),
    "frame_rendered": lambda s: lifecycle.frame_rendered(s, 0, event_id="e", attempt=1),
    "depth_ready": lambda s: lifecycle.depth_ready(s, 0, event_id="e"),
    "assembled": lambda s: lifecycle.assembled(s, [], event_id="e"),
    "failed": lambda s: lifecycle.failed(s, "boom"),
    "approved": lambda s: lifecycle.approved(s, event_id="a"),
    "approved_edited": lambda s: lifecycle.approved(
        s, event_id="a", title="t2", specs=specs(2), storyboard_json="{}"
    ),
    "cancelled": lifecycle.cancelled,
    "resumed": lambda s: lifecycle.resumed(s, []),
    "timed_out": lambda s: lifecycle.timed_out(s, 60, 61),
}


@pytest.mark.parametrize(("name", "status"), list(itertools.product(NAMED, lifecycle.STATUSES)))
def test_every_transition_stays_within_the_table(name: str, status: int) -> None:
    job = state(status)
    before = animation_pb2.JobState()
    before.CopyFrom(job)
    changed = NAMED[name](job)
    assert changed == (job != before)
    assert lifecycle.can_transition(status, job.status), (name, lifecycle.status_name(status))


def test_start_planning_only_from_pending() -> None:
    job = state(lifecycle.PENDING)
    assert lifecycle.start_planning(job) and job.status == lifecycle.PLANNING
    assert not lifecycle.start_planning(job)


def test_planned_fills_the_specs_and_the_frame_states() -> None:
    job = animation_pb2.JobState(job_id=JOB, status=lifecycle.PLANNING, attempt=1)
    profile = types_pb2.Profile(name="tiny")
    assert lifecycle.planned(
        job, title="T", backend="hf", profile=profile, specs=specs(3), event_id="ev"
    )
    assert job.status == lifecycle.RENDERING and job.title == "T" and job.planner_backend == "hf"
    assert [s.prompt for s in job.frame_specs] == ["p0", "p1", "p2"]
    assert [f.index for f in job.frame_states] == [0, 1, 2]
    assert not any(f.rendered for f in job.frame_states)
    assert job.profile == profile and job.last_event_id == "ev"
    # Cancelled while planning: the plan is not applied.
    late = animation_pb2.JobState(job_id=JOB, status=lifecycle.CANCELLED)
    assert not lifecycle.planned(
        late, title="T", backend="hf", profile=profile, specs=specs(3), event_id="ev"
    )
    assert not late.frame_specs


def test_frame_rendered_marks_once_and_the_last_frame_moves_to_assembling() -> None:
    job = state(lifecycle.RENDERING)
    assert lifecycle.frame_rendered(job, 1, event_id="r1", attempt=2)
    done = job.frame_states[1]
    assert (done.rendered, done.rendered_event_id, done.attempt) == (True, "r1", 2)
    assert job.last_event_id == "r1" and job.status == lifecycle.RENDERING
    # A repeated event changes nothing, not even the event id.
    assert not lifecycle.frame_rendered(job, 1, event_id="again", attempt=3)
    assert done.rendered_event_id == "r1"
    assert lifecycle.frame_rendered(job, 0, event_id="r0", attempt=1)
    assert job.status == lifecycle.RENDERING
    assert lifecycle.frame_rendered(job, 2, event_id="r2", attempt=1)
    assert job.status == lifecycle.ASSEMBLING
    # Out of range or not rendering: nothing.
    assert not lifecycle.frame_rendered(state(lifecycle.RENDERING), 3, event_id="x", attempt=1)
    assert not lifecycle.frame_rendered(state(lifecycle.RENDERING), -1, event_id="x", attempt=1)
    assert not lifecycle.frame_rendered(state(lifecycle.CANCELLED), 0, event_id="x", attempt=1)


def test_frame_rendered_with_its_depth_map_marks_both_once() -> None:
    job = state(lifecycle.RENDERING)
    assert lifecycle.frame_rendered(job, 0, event_id="r0", attempt=1, with_depth=True)
    done = job.frame_states[0]
    assert (done.rendered, done.depth_ready) == (True, True)
    assert (done.rendered_event_id, done.depth_event_id, job.last_event_id) == ("r0",) * 3
    # Without it, the depth map stays to be made; a later event with it marks only that.
    assert lifecycle.frame_rendered(job, 1, event_id="r1", attempt=1)
    assert not job.frame_states[1].depth_ready
    assert lifecycle.frame_rendered(job, 1, event_id="late", attempt=1, with_depth=True)
    assert job.frame_states[1].depth_ready and job.frame_states[1].rendered_event_id == "r1"
    assert not lifecycle.frame_rendered(job, 1, event_id="again", attempt=1, with_depth=True)
    assert job.frame_states[1].depth_event_id == "late"
    # Not rendering: neither.
    cancelled = state(lifecycle.CANCELLED)
    assert not lifecycle.frame_rendered(cancelled, 0, event_id="x", attempt=1, with_depth=True)
    assert not cancelled.frame_states[0].depth_ready


def test_depth_ready_marks_once_while_rendering() -> None:
    job = state(lifecycle.RENDERING, depth=True)
    assert lifecycle.depth_ready(job, 0, event_id="d0")
    assert job.frame_states[0].depth_ready and job.frame_states[0].depth_event_id == "d0"
    assert not lifecycle.depth_ready(job, 0, event_id="d0-again")
    assert job.frame_states[0].depth_event_id == "d0"
    assert not lifecycle.depth_ready(job, 5, event_id="x")
    assert not lifecycle.depth_ready(state(lifecycle.FAILED), 0, event_id="x")


def test_assembled_completes_with_the_outputs() -> None:
    job = state(lifecycle.ASSEMBLING)
    outputs = [types_pb2.OutputFile(name="animation.gif", key=keys.output_key(JOB, "gif"))]
    assert lifecycle.assembled(job, outputs, event_id="a")
    assert job.status == lifecycle.COMPLETED and list(job.outputs) == outputs
    assert not lifecycle.assembled(job, [], event_id="again")
    assert list(job.outputs) == outputs


def test_failed_and_cancelled_only_while_unfinished() -> None:
    for status in lifecycle.UNFINISHED:
        job = state(status)
        assert lifecycle.failed(job, "frame 1: boom", event_id="f")
        assert (job.status, job.error, job.last_event_id) == (
            lifecycle.FAILED,
            "frame 1: boom",
            "f",
        )
        job = state(status)
        assert lifecycle.cancelled(job)
        assert (job.status, job.error) == (lifecycle.CANCELLED, lifecycle.CANCELLED_BY_USER)
    for status in lifecycle.TERMINAL:
        job = state(status)
        assert not lifecycle.failed(job, "late") and not lifecycle.cancelled(job)
        assert job.status == status and not job.error


def test_resumed_counts_frames_from_the_store() -> None:
    job = state(lifecycle.FAILED, frames=4, depth=True)
    job.error = "frame 2: boom"
    stored = [
        keys.frame_key(JOB, 0),
        keys.frame_record_key(JOB, 0),
        keys.depth_key(JOB, 0),
        keys.frame_key(JOB, 1),  # its record is missing: not done
    ]
    assert lifecycle.resumed(job, stored)
    assert job.status == lifecycle.RENDERING and job.attempt == 2 and not job.error
    assert [f.rendered for f in job.frame_states] == [True, False, False, False]
    assert [f.depth_ready for f in job.frame_states] == [True, False, False, False]
    assert lifecycle.first_frame_not_rendered(job) == 1
    # Not resumable any more.
    assert not lifecycle.resumed(job, stored)


def test_resumed_assembles_when_every_frame_is_stored_and_plans_when_never_planned() -> None:
    job = state(lifecycle.CANCELLED, frames=2)
    stored = [k for i in range(2) for k in (keys.frame_key(JOB, i), keys.frame_record_key(JOB, i))]
    assert lifecycle.resumed(job, stored) and job.status == lifecycle.ASSEMBLING
    never = animation_pb2.JobState(job_id=JOB, status=lifecycle.FAILED, attempt=3)
    assert lifecycle.resumed(never, []) and never.status == lifecycle.PENDING
    assert never.attempt == 4


def test_timed_out_says_where_the_job_was() -> None:
    job = state(lifecycle.RENDERING)
    job.frame_states[0].rendered = True
    assert lifecycle.timed_out(job, 60, 75.4)
    assert job.status == lifecycle.FAILED
    assert (
        job.error
        == "job exceeded ANIM_JOB_TIMEOUT_S=60 while RENDERING at frame 1 (started 75 s ago)"
    )
    planning = state(lifecycle.PLANNING)
    assert lifecycle.time_out_reason(planning, 1.5, 2) == (
        "job exceeded ANIM_JOB_TIMEOUT_S=1.5 while PLANNING (started 2 s ago)"
    )
    waiting = state(lifecycle.PLANNED)
    assert lifecycle.timed_out(waiting, 60, 90)
    assert (waiting.status, waiting.error) == (
        lifecycle.FAILED,
        "job exceeded ANIM_JOB_TIMEOUT_S=60 while PLANNED (waiting for review) (started 90 s ago)",
    )
    assert not lifecycle.timed_out(state(lifecycle.COMPLETED), 60, 100)


def test_needs_depth_follows_the_next_frames_spec() -> None:
    with_depth = state(lifecycle.RENDERING, frames=3, depth=True)
    assert [lifecycle.needs_depth(with_depth.frame_specs, i) for i in range(3)] == [
        True,
        True,
        False,
    ]
    without = state(lifecycle.RENDERING, frames=3)
    assert not any(lifecycle.needs_depth(without.frame_specs, i) for i in range(3))


def test_status_names_and_sets() -> None:
    assert lifecycle.STATUS_NAMES == (
        "PENDING",
        "PLANNING",
        "PLANNED",
        "RENDERING",
        "ASSEMBLING",
        "COMPLETED",
        "FAILED",
        "CANCELLED",
    )
    assert lifecycle.status_name(99) == "99"
    assert frozenset(lifecycle.STATUSES) == lifecycle.UNFINISHED | lifecycle.TERMINAL
    assert not lifecycle.UNFINISHED & lifecycle.TERMINAL
    assert lifecycle.RESUMABLE < lifecycle.TERMINAL


def test_a_failure_of_an_earlier_attempt_leaves_the_current_one_alone() -> None:
    job = state(lifecycle.RENDERING)
    job.attempt = 2
    assert not lifecycle.failed(job, "frame 1: late", attempt=1)
    assert job.status == lifecycle.RENDERING
    assert lifecycle.failed(job, "frame 1: now", attempt=2) and job.status == lifecycle.FAILED
    other = state(lifecycle.RENDERING)
    assert lifecycle.failed(other, "no attempt given")  # the time limit, a legacy event


# -- exact errors -------------------------------------------------------------------------------


def test_invalid_transition_message_and_attributes() -> None:
    error = jobs.InvalidTransition(S.JOB_STATUS_RENDERING, S.JOB_STATUS_PENDING, JOB)
    assert str(error) == (
        f"job {JOB}: status cannot change from RENDERING to PENDING "
        "(allowed: ASSEMBLING, CANCELLED, FAILED)"
    )
    assert (error.old, error.new) == (S.JOB_STATUS_RENDERING, S.JOB_STATUS_PENDING)
    # Without a job id the message starts with the status change itself.
    bare = jobs.InvalidTransition(S.JOB_STATUS_COMPLETED, S.JOB_STATUS_RENDERING)
    assert str(bare) == "status cannot change from COMPLETED to RENDERING (allowed: none)"
    assert (bare.old, bare.new) == (S.JOB_STATUS_COMPLETED, S.JOB_STATUS_RENDERING)
    unknown = jobs.InvalidTransition(42, S.JOB_STATUS_PENDING)
    assert str(unknown) == "status cannot change from 42 to PENDING (allowed: none)"


def test_check_transition_raises_the_exact_error() -> None:
    with pytest.raises(jobs.InvalidTransition) as info:
        jobs.check_transition(S.JOB_STATUS_FAILED, S.JOB_STATUS_COMPLETED)
    assert str(info.value) == (
        "status cannot change from FAILED to COMPLETED "
        "(allowed: ASSEMBLING, PENDING, PLANNED, RENDERING)"
    )
    assert (info.value.old, info.value.new) == (S.JOB_STATUS_FAILED, S.JOB_STATUS_COMPLETED)
    with pytest.raises(jobs.InvalidTransition) as info:
        jobs.check_transition(S.JOB_STATUS_PENDING, S.JOB_STATUS_ASSEMBLING, JOB)
    assert str(info.value).startswith(f"job {JOB}: status cannot change from PENDING to ")


def test_unexpected_status_message_and_attributes() -> None:
    expected = [S.JOB_STATUS_ASSEMBLING, S.JOB_STATUS_RENDERING]  # named in status order
    error = jobs.UnexpectedStatus(JOB, S.JOB_STATUS_CANCELLED, expected)
    assert isinstance(error, jobs.InvalidTransition) and isinstance(error, ValueError)
    assert str(error) == f"job {JOB}: status is CANCELLED, expected RENDERING or ASSEMBLING"
    assert (error.old, error.new) == (S.JOB_STATUS_CANCELLED, S.JOB_STATUS_CANCELLED)
    assert error.expected == frozenset(expected)
    one = jobs.UnexpectedStatus(JOB, S.JOB_STATUS_PENDING, {S.JOB_STATUS_PLANNING})
    assert str(one) == f"job {JOB}: status is PENDING, expected PLANNING"
    assert one.expected == frozenset({S.JOB_STATUS_PLANNING})


# -- boundaries of the named transitions --------------------------------------------------------


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_the_job_assembles_exactly_when_its_last_missing_frame_is_rendered(order) -> None:
    # Frames finish in any order (several renderers); first, middle or last frame alike.
    job = state(lifecycle.RENDERING)
    for n, index in enumerate(order, start=1):
        assert lifecycle.frame_rendered(job, index, event_id=f"r{index}", attempt=1) is True
        done = job.frame_states[index]
        assert (done.rendered, done.rendered_event_id, done.attempt) == (True, f"r{index}", 1)
        assert job.last_event_id == f"r{index}"
        expect = lifecycle.ASSEMBLING if n == 3 else lifecycle.RENDERING
        assert job.status == expect, (order, n)
    assert [f.rendered for f in job.frame_states] == [True, True, True]


def test_a_repeated_frame_event_returns_false_and_changes_nothing() -> None:
    job = state(lifecycle.RENDERING)
    assert lifecycle.frame_rendered(job, 0, event_id="r0", attempt=1) is True
    before = animation_pb2.JobState()
    before.CopyFrom(job)
    assert lifecycle.frame_rendered(job, 0, event_id="again", attempt=2) is False
    assert job == before


def test_a_redelivered_event_moves_a_fully_rendered_job_on() -> None:
    # Every frame is recorded but the job still says RENDERING (the move was lost): the next
    # frame event, even a repeat, must move it to ASSEMBLING rather than leave it hanging.
    job = state(lifecycle.RENDERING)
    for f in job.frame_states:
        f.rendered = True
    assert lifecycle.frame_rendered(job, 2, event_id="again", attempt=1) is True
    assert job.status == lifecycle.ASSEMBLING
    assert job.frame_states[2].rendered_event_id == ""  # the record itself is untouched


@pytest.mark.parametrize("status", sorted(set(lifecycle.STATUSES) - {lifecycle.RENDERING}))
def test_frame_and_depth_events_outside_rendering_change_nothing(status: int) -> None:
    job = state(status)
    before = animation_pb2.JobState()
    before.CopyFrom(job)
    assert lifecycle.frame_rendered(job, 0, event_id="x", attempt=1) is False
    assert lifecycle.depth_ready(job, 0, event_id="x") is False
    assert job == before


@pytest.mark.parametrize("index", [-1, 3, 4])
def test_frame_and_depth_events_out_of_range_change_nothing(index: int) -> None:
    # One past the last frame included: it must be refused, not raise an IndexError.
    job = state(lifecycle.RENDERING, depth=True)
    before = animation_pb2.JobState()
    before.CopyFrom(job)
    assert lifecycle.frame_rendered(job, index, event_id="x", attempt=1) is False
    assert lifecycle.depth_ready(job, index, event_id="x") is False
    assert job == before


@pytest.mark.parametrize("index", [0, 1, 2])
def test_depth_ready_marks_first_middle_and_last_frame(index: int) -> None:
    job = state(lifecycle.RENDERING, depth=True)
    assert lifecycle.depth_ready(job, index, event_id=f"d{index}") is True
    done = job.frame_states[index]
    assert (done.depth_ready, done.depth_event_id, job.last_event_id) == (
        True,
        f"d{index}",
        f"d{index}",
    )
    assert [f.depth_ready for f in job.frame_states].count(True) == 1
    assert job.status == lifecycle.RENDERING and not done.rendered


def test_failed_without_an_event_id_keeps_the_last_one() -> None:
    job = state(lifecycle.RENDERING)
    job.last_event_id = "r1"
    assert lifecycle.failed(job, "boom") is True
    assert (job.status, job.error, job.last_event_id) == (lifecycle.FAILED, "boom", "r1")


def test_failed_attempt_guard_boundaries() -> None:
    # Work of the current attempt, or of a later one, fails the job; only an earlier
    # attempt's late failure is ignored.
    for attempt, fails in [(0, True), (1, False), (2, True), (3, True)]:
        job = state(lifecycle.RENDERING)
        job.attempt = 2
        assert lifecycle.failed(job, "boom", attempt=attempt) is fails, attempt
        assert job.status == (lifecycle.FAILED if fails else lifecycle.RENDERING)
        assert job.error == ("boom" if fails else "")


def test_the_time_limit_fails_a_resumed_job_too() -> None:
    # A job on its third attempt that runs past the limit must still fail, or it hangs.
    job = state(lifecycle.RENDERING)
    job.attempt = 3
    job.last_event_id = "r0"
    assert lifecycle.timed_out(job, 60, 61) is True
    assert job.status == lifecycle.FAILED and job.attempt == 3
    assert (
        job.error
        == "job exceeded ANIM_JOB_TIMEOUT_S=60 while RENDERING at frame 0 (started 61 s ago)"
    )
    assert job.last_event_id == "r0"


@pytest.mark.parametrize("status", sorted(lifecycle.TERMINAL))
def test_the_time_limit_leaves_a_finished_job_alone(status: int) -> None:
    job = state(status)
    job.error = "earlier"
    assert lifecycle.timed_out(job, 60, 100) is False
    assert (job.status, job.error) == (status, "earlier")


def test_resumed_needs_both_the_png_and_the_record_of_a_frame() -> None:
    # Exactly the two keys, nothing else stored: the frame is done.
    job = state(lifecycle.FAILED, frames=1)
    assert lifecycle.resumed(job, {keys.frame_key(JOB, 0), keys.frame_record_key(JOB, 0)})
    assert job.frame_states[0].rendered and job.status == lifecycle.ASSEMBLING
    for only in (keys.frame_key(JOB, 0), keys.frame_record_key(JOB, 0)):
        job = state(lifecycle.CANCELLED, frames=1)
        assert lifecycle.resumed(job, [only])
        assert not job.frame_states[0].rendered and job.status == lifecycle.RENDERING


def test_resumed_forgets_what_is_no_longer_stored() -> None:
    # A record of a frame or a depth map whose PNG is gone is redone, not trusted.
    job = state(lifecycle.FAILED, frames=2, depth=True)
    for f in job.frame_states:
        f.rendered = f.depth_ready = True
    stored = [keys.frame_key(JOB, 1), keys.frame_record_key(JOB, 1), keys.depth_key(JOB, 1)]
    assert lifecycle.resumed(job, stored)
    assert [(f.rendered, f.depth_ready) for f in job.frame_states] == [(False, False), (True, True)]
    assert job.status == lifecycle.RENDERING and lifecycle.first_frame_not_rendered(job) == 0


# -- review before rendering ------------------------------------------------------------------


def _reviewed(status: int = lifecycle.PLANNING) -> animation_pb2.JobState:
    job = animation_pb2.JobState(job_id=JOB, status=status, attempt=1)
    job.request.review = True
    return job


def _plan(job: animation_pb2.JobState, stored=()) -> bool:
    profile = types_pb2.Profile(name="tiny")
    return lifecycle.planned(
        job, title="T", backend="hf", profile=profile, specs=specs(3), event_id="p", stored=stored
    )


def test_planned_with_review_waits_in_planned_with_its_specs() -> None:
    job = _reviewed()
    assert _plan(job)
    assert job.status == lifecycle.PLANNED and not job.approved
    assert [s.prompt for s in job.frame_specs] == ["p0", "p1", "p2"]
    assert [f.index for f in job.frame_states] == [0, 1, 2] and job.last_event_id == "p"
    assert lifecycle.PLANNED in lifecycle.UNFINISHED and lifecycle.awaits_review(job)
    # A fork's copied frames are counted even while waiting.
    fork = _reviewed()
    stored = [keys.frame_key(JOB, 0), keys.frame_record_key(JOB, 0)]
    assert _plan(fork, stored) and fork.status == lifecycle.PLANNED
    assert [f.rendered for f in fork.frame_states] == [True, False, False]


def test_approved_as_planned_renders_the_planned_specs() -> None:
    job = _reviewed()
    _plan(job)
    planned = list(job.frame_specs)
    assert lifecycle.approved(job, event_id="a")
    assert (job.status, job.approved, job.last_event_id) == (lifecycle.RENDERING, True, "a")
    assert list(job.frame_specs) == planned and job.title == "T" and job.planner_backend == "hf"
    assert not job.request.storyboard_json
    assert not lifecycle.awaits_review(job)
    # Only once, and only from PLANNED.
    assert not lifecycle.approved(job, event_id="again") and job.last_event_id == "a"
    for status in set(lifecycle.STATUSES) - {lifecycle.PLANNED}:
        other = _reviewed(status)
        assert not lifecycle.approved(other, event_id="a") and other == _reviewed(status)


def test_approved_with_an_edited_storyboard_renders_its_specs() -> None:
    job = _reviewed()
    _plan(job)
    job.frame_states[0].rendered = True  # replaced: an edit starts the frames over
    edited = [types_pb2.FrameSpec(index=i, prompt=f"e{i}") for i in range(3)]
    assert lifecycle.approved(job, event_id="a", title="T2", specs=edited, storyboard_json="{}")
    assert (job.status, job.title, job.planner_backend) == (lifecycle.RENDERING, "T2", "user")
    assert [s.prompt for s in job.frame_specs] == ["e0", "e1", "e2"]
    assert not any(f.rendered for f in job.frame_states)
    assert job.request.storyboard_json == "{}" and job.approved and job.last_event_id == "a"


def test_approved_specs_without_a_title_or_storyboard_leave_both_empty() -> None:
    job = _reviewed()
    _plan(job)
    job.title, job.request.storyboard_json = "planned", "[planned]"
    assert lifecycle.approved(job, event_id="a", specs=specs(3))
    assert (job.title, job.request.storyboard_json) == ("", "")


def test_approved_counts_stored_frames_and_assembles_when_every_one_is() -> None:
    job = _reviewed()
    _plan(job)
    stored = [keys.frame_key(JOB, 0), keys.frame_record_key(JOB, 0)]
    assert lifecycle.approved(job, event_id="a", title="T", specs=specs(3), stored=stored)
    assert [f.rendered for f in job.frame_states] == [True, False, False]
    assert job.status == lifecycle.RENDERING
    every = [k for i in range(3) for k in (keys.frame_key(JOB, i), keys.frame_record_key(JOB, i))]
    done = _reviewed()
    _plan(done, every)
    assert lifecycle.approved(done, event_id="a") and done.status == lifecycle.ASSEMBLING


def test_a_job_stopped_in_review_waits_again_when_resumed() -> None:
    for stop in (lifecycle.cancelled, lambda s: lifecycle.timed_out(s, 60, 61)):
        job = _reviewed()
        _plan(job)
        assert stop(job)
        assert lifecycle.resumed(job, []) and job.status == lifecycle.PLANNED
        assert job.attempt == 2 and not job.error
    # Once approved, a resume renders.
    job = _reviewed()
    _plan(job)
    lifecycle.approved(job, event_id="a")
    lifecycle.failed(job, "frame 0: boom")
    assert lifecycle.resumed(job, []) and job.status == lifecycle.RENDERING
    # Stopped while planning: planned again first (and waits then).
    early = _reviewed(lifecycle.CANCELLED)
    assert lifecycle.resumed(early, []) and early.status == lifecycle.PENDING
