"""The job's lifecycle: statuses, allowed changes, and every change as a named function.

::

    PENDING -> PLANNING -> RENDERING -> ASSEMBLING -> COMPLETED
       |          |           ^             |
       |          +-> PLANNED + (approved)  |
       |          |      |    |             |
       +----------+------+----+-------------+--> FAILED | CANCELLED --resume--> RENDERING,
                                                            ASSEMBLING, PLANNED or PENDING

PLANNED is review before rendering: a job created with ``review`` stops there after
planning, with its storyboard and FrameSpecs, until the user approves it (:func:`approved`,
with or without an edited storyboard) or cancels it.

A job's state is one ``JobState`` in the KV bucket ``anim-jobs``, changed only by
compare-and-swap (``runtime.jobstore.JobStore.update``), which applies one of the
transitions below to a fresh copy of the state and checks the change against
``TRANSITIONS``. A transition is a plain function of the state it is given (and its
arguments): it may run several times when writers race, and a transition that does not
apply to the state it finds leaves it unchanged and returns False, so a repeated event
or a late message changes nothing.

Who applies which: the job API (``create``, :func:`approved`, :func:`cancelled`,
:func:`resumed`), the plan
step (:func:`start_planning`, :func:`planned`), the conductor (:func:`frame_rendered`,
:func:`depth_ready`, :func:`assembled`, :func:`failed`) and the planner's time limit
(:func:`timed_out`). The conductor alone decides what work a state calls for next.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

from ghibli_anim.contracts import keys
from ghibli_anim.contracts.pb import animation_pb2, types_pb2

JobStatus = int  # a types_pb2.JobStatus value

PENDING = types_pb2.JOB_STATUS_PENDING
PLANNING = types_pb2.JOB_STATUS_PLANNING
RENDERING = types_pb2.JOB_STATUS_RENDERING
ASSEMBLING = types_pb2.JOB_STATUS_ASSEMBLING
COMPLETED = types_pb2.JOB_STATUS_COMPLETED
FAILED = types_pb2.JOB_STATUS_FAILED
CANCELLED = types_pb2.JOB_STATUS_CANCELLED
PLANNED = types_pb2.JOB_STATUS_PLANNED

STATUSES: tuple[JobStatus, ...] = (
    PENDING,
    PLANNING,
    PLANNED,
    RENDERING,
    ASSEMBLING,
    COMPLETED,
    FAILED,
    CANCELLED,
)
"""Every status, in the order a job goes through them."""

TRANSITIONS: Mapping[JobStatus, frozenset[JobStatus]] = {
    PENDING: frozenset({PLANNING, CANCELLED, FAILED}),
    # PLANNED: a job created with review waits for approval (ASSEMBLING: approved with
    # every frame stored already, as planned() does).
    PLANNING: frozenset({RENDERING, PLANNED, FAILED, CANCELLED}),
    PLANNED: frozenset({RENDERING, ASSEMBLING, FAILED, CANCELLED}),
    RENDERING: frozenset({ASSEMBLING, FAILED, CANCELLED}),
    ASSEMBLING: frozenset({COMPLETED, FAILED, CANCELLED}),
    # Resume: rendering continues from the first frame not yet done (ASSEMBLING when
    # every frame is done; PENDING when the job stopped before it was planned; PLANNED
    # when it stopped while waiting for review).
    FAILED: frozenset({RENDERING, ASSEMBLING, PENDING, PLANNED}),
    CANCELLED: frozenset({RENDERING, ASSEMBLING, PENDING, PLANNED}),
    COMPLETED: frozenset(),
}
"""Allowed status changes: from -> the statuses it may become. Staying in the same
status is always allowed (progress updates); anything else is refused."""

TERMINAL: frozenset[JobStatus] = frozenset({COMPLETED, FAILED, CANCELLED})
"""Statuses in which no work happens (FAILED and CANCELLED may still be resumed)."""
UNFINISHED: frozenset[JobStatus] = frozenset(STATUSES) - TERMINAL
"""Statuses of a job that is still going: the ones a user may cancel."""
RESUMABLE: frozenset[JobStatus] = frozenset({FAILED, CANCELLED})

CANCELLED_BY_USER = "cancelled by the user"


def status_name(status: JobStatus) -> str:
    """``RENDERING`` for JOB_STATUS_RENDERING (unknown values as their number)."""
    try:
        return types_pb2.JobStatus.Name(status).removeprefix("JOB_STATUS_")
    except ValueError:
        return str(status)


STATUS_NAMES: tuple[str, ...] = tuple(status_name(s) for s in STATUSES)
"""``PENDING`` ... ``CANCELLED``: the names the API, metrics and the manifest use."""


def is_terminal(status: JobStatus) -> bool:
    """True for COMPLETED, FAILED and CANCELLED: the job does nothing more by itself."""
    return status in TERMINAL


def can_transition(old: JobStatus, new: JobStatus) -> bool:
    """True when ``old`` may become ``new`` (always true when they are equal)."""
    return old == new or new in TRANSITIONS.get(old, frozenset())


class InvalidTransition(ValueError):
    """A status change that ``TRANSITIONS`` does not allow."""

    def __init__(self, old: JobStatus, new: JobStatus, job_id: str = "") -> None:
        allowed = ", ".join(sorted(status_name(s) for s in TRANSITIONS.get(old, ()))) or "none"
        who = f"job {job_id}: " if job_id else ""
        super().__init__(
            f"{who}status cannot change from {status_name(old)} to {status_name(new)} "
            f"(allowed: {allowed})"
        )
        self.old = old
        self.new = new


class UnexpectedStatus(InvalidTransition):
    """An update that expected the job in another status."""

    def __init__(self, job_id: str, actual: JobStatus, expected: Collection[JobStatus]) -> None:
        ValueError.__init__(
            self,
            f"job {job_id}: status is {status_name(actual)}, expected "
            + " or ".join(status_name(s) for s in sorted(expected)),
        )
        self.old = actual
        self.new = actual
        self.expected = frozenset(expected)


def check_transition(old: JobStatus, new: JobStatus, job_id: str = "") -> None:
    """Raise ``InvalidTransition`` unless ``old`` may become ``new``."""
    if not can_transition(old, new):
        raise InvalidTransition(old, new, job_id)


# ---------------------------------------------------------------------------
# Transitions: each changes the state in place and returns whether it changed it
# ---------------------------------------------------------------------------


def start_planning(state: animation_pb2.JobState) -> bool:
    """PENDING -> PLANNING: the plan step took the job."""
    if state.status != PENDING:
        return False
    state.status = PLANNING
    return True


def planned(
    state: animation_pb2.JobState,
    *,
    title: str,
    backend: str,
    profile: types_pb2.Profile,
    specs: Iterable[types_pb2.FrameSpec],
    event_id: str,
    stored: Collection[str] = (),
) -> bool:
    """PLANNING -> RENDERING with the storyboard resolved into one FrameSpec per frame
    (PLANNED instead when the request asks for review: nothing renders until
    :func:`approved`).

    ``stored``: the job's keys already in the store (a fork's copies of its parent's
    frames); a frame whose PNG and record are there counts as done, as on a resume.
    """
    if state.status != PLANNING:
        return False  # cancelled or failed while planning, or planned already
    state.planner_backend = backend
    state.profile.CopyFrom(profile)
    _set_plan(state, title, specs, stored)
    if awaits_review(state):
        state.status = PLANNED
    state.last_event_id = event_id
    return True


def approved(
    state: animation_pb2.JobState,
    *,
    event_id: str,
    title: str = "",
    specs: Iterable[types_pb2.FrameSpec] | None = None,
    storyboard_json: str = "",
    stored: Collection[str] = (),
) -> bool:
    """PLANNED -> RENDERING: the user approved the storyboard.

    With ``specs`` (an edited storyboard, ``storyboard_json``, resolved as planning does)
    the job renders those; the request then carries the edited storyboard, so the job's
    record (and a replay of its manifest) names what was rendered.
    """
    if state.status != PLANNED:
        return False
    state.approved = True
    if specs is not None:
        state.planner_backend = "user"
        state.request.storyboard_json = storyboard_json
        _set_plan(state, title, specs, stored)
    else:
        _set_status_from_frames(state)
    state.last_event_id = event_id
    return True


def _set_plan(
    state: animation_pb2.JobState,
    title: str,
    specs: Iterable[types_pb2.FrameSpec],
    stored: Collection[str],
) -> None:
    specs = list(specs)
    state.title = title
    del state.frame_specs[:]
    state.frame_specs.extend(specs)
    del state.frame_states[:]
    state.frame_states.extend(types_pb2.FrameState(index=i) for i in range(len(specs)))
    state.status = RENDERING
    if stored:
        _mark_stored(state, stored)
        _set_status_from_frames(state)


def _set_status_from_frames(state: animation_pb2.JobState) -> None:
    """RENDERING, or ASSEMBLING once every frame is stored."""
    state.status = RENDERING if first_frame_not_rendered(state) is not None else ASSEMBLING


def frame_rendered(
    state: animation_pb2.JobState,
    index: int,
    *,
    event_id: str,
    attempt: int,
    with_depth: bool = False,
) -> bool:
    """Frame ``index`` is stored (``with_depth``: and its depth map, which the renderer
    made with it); the last frame moves the job to ASSEMBLING."""
    if state.status != RENDERING or not 0 <= index < len(state.frame_states):
        return False
    done = state.frame_states[index]
    changed = with_depth and depth_ready(state, index, event_id=event_id)
    if not done.rendered:
        done.rendered = True
        done.rendered_event_id = event_id
        done.attempt = attempt
        state.last_event_id = event_id
        changed = True
    if all(f.rendered for f in state.frame_states):
        state.status = ASSEMBLING
        changed = True
    return changed


def depth_ready(state: animation_pb2.JobState, index: int, *, event_id: str) -> bool:
    """The depth map of frame ``index`` is stored (it guides frame ``index + 1``)."""
    if state.status != RENDERING or not 0 <= index < len(state.frame_states):
        return False
    done = state.frame_states[index]
    if done.depth_ready:
        return False
    done.depth_ready = True
    done.depth_event_id = event_id
    state.last_event_id = event_id
    return True


def assembled(
    state: animation_pb2.JobState,
    outputs: Iterable[types_pb2.OutputFile],
    *,
    event_id: str,
) -> bool:
    """ASSEMBLING -> COMPLETED with the files the assembler stored."""
    if state.status != ASSEMBLING:
        return False
    state.status = COMPLETED
    del state.outputs[:]
    state.outputs.extend(outputs)
    state.last_event_id = event_id
    return True


def failed(
    state: animation_pb2.JobState, reason: str, *, event_id: str = "", attempt: int = 0
) -> bool:
    """An unfinished job -> FAILED with ``reason`` (a finished one stays as it is).

    With ``attempt``, a failure of an earlier attempt (work that ended after a resume)
    leaves the current attempt alone.
    """
    if is_terminal(state.status) or 0 < attempt < state.attempt:
        return False
    state.status = FAILED
    state.error = reason
    if event_id:
        state.last_event_id = event_id
    return True


def cancelled(state: animation_pb2.JobState, reason: str = CANCELLED_BY_USER) -> bool:
    """An unfinished job -> CANCELLED; work still in flight is ignored when it reports."""
    if state.status not in UNFINISHED:
        return False
    state.status = CANCELLED
    state.error = reason
    return True


def needs_depth(specs: Sequence[types_pb2.FrameSpec], index: int) -> bool:
    """Whether frame ``index``'s depth map is part of the job: it guides the next frame."""
    return index + 1 < len(specs) and bool(specs[index + 1].depth_key)


def first_frame_not_rendered(state: animation_pb2.JobState) -> int | None:
    """The index of the first frame without a record, or None when every frame has one."""
    return next((f.index for f in state.frame_states if not f.rendered), None)


def resumed(state: animation_pb2.JobState, stored: Collection[str]) -> bool:
    """FAILED or CANCELLED -> on again, as attempt + 1, from the first frame not stored.

    ``stored`` holds the job's keys in the store now. A frame counts as done when its
    PNG and its record are there (the store, not the events: a cancelled job's last
    frame.rendered may have been ignored), a depth map when its PNG is there. Same seed,
    specs, profile and colour references. A job stopped before planning ended goes back
    to PENDING; one stopped while waiting for review (never approved) waits again in
    PLANNED; one with every frame done goes to ASSEMBLING.
    """
    if state.status not in RESUMABLE:
        return False
    state.attempt += 1
    state.error = ""
    if not state.frame_specs:
        state.status = PENDING
        return True
    _mark_stored(state, stored)
    _set_status_from_frames(state)
    if awaits_review(state):
        state.status = PLANNED
    return True


def awaits_review(state: animation_pb2.JobState) -> bool:
    """Whether the job asked for review and was not approved yet."""
    return state.request.review and not state.approved


def _mark_stored(state: animation_pb2.JobState, stored: Collection[str]) -> None:
    """Frames done when their PNG and record are stored, depth maps when their PNG is."""
    job_id, stored = state.job_id, set(stored)
    for frame in state.frame_states:
        frame.rendered = {
            keys.frame_key(job_id, frame.index),
            keys.frame_record_key(job_id, frame.index),
        } <= stored
        frame.depth_ready = keys.depth_key(job_id, frame.index) in stored


def time_out_reason(state: animation_pb2.JobState, limit_s: float, elapsed_s: float) -> str:
    """Why a job past ``ANIM_JOB_TIMEOUT_S`` fails: the limit, where it was, how long ago."""
    where = status_name(state.status)
    if state.status == PLANNED:
        where += " (waiting for review)"
    if state.status == RENDERING:
        frame = first_frame_not_rendered(state)
        if frame is not None:
            where += f" at frame {frame}"
    return (
        f"job exceeded ANIM_JOB_TIMEOUT_S={limit_s:g} while {where} (started {elapsed_s:.0f} s ago)"
    )


def timed_out(state: animation_pb2.JobState, limit_s: float, elapsed_s: float) -> bool:
    """An unfinished job past ``ANIM_JOB_TIMEOUT_S`` -> FAILED, saying where it was
    (:func:`failed` leaves a finished one as it is)."""
    return failed(state, time_out_reason(state, limit_s, elapsed_s))
