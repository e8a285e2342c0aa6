"""services/planner/conductor.py: the `Conductor` applying events, without a server.

The job store runs on in-memory buckets and the conductor publishes into an in-memory
JetStream (tests/support/memory_js.py; its contract with nats-server is checked by
tests/support/jetstream_cases.py on both). Each test drives the conductor with the
events the services send and asserts what it wrote to KV and every field of what it
published.
"""

from __future__ import annotations

import logging
import time

import pytest
from prometheus_client import REGISTRY
from support.jetstream_cases import published
from support.memory_js import MemoryJetStream

from ghibli_anim.contracts import events, keys, lifecycle
from ghibli_anim.contracts.pb import animation_pb2, bus_pb2, types_pb2
from ghibli_anim.runtime.bus.connection import Bus
from ghibli_anim.runtime.bus.consumer import MaxDeliveries
from ghibli_anim.runtime.bus.names import (
    EVENTS_STREAM,
    MSG_ID_HEADER,
    WORK_STREAM,
    work_msg_id,
)
from ghibli_anim.runtime.bus.publish import new_event
from ghibli_anim.runtime.jobstore import JobStore
from ghibli_anim.services.planner.conductor import Conductor, Work

JOB = "cd" * 16
ATTEMPT = 2


@pytest.fixture
def js() -> MemoryJetStream:
    return MemoryJetStream()


@pytest.fixture
async def store(js) -> JobStore:
    return await JobStore.open(js)


@pytest.fixture
def conductor(js, store) -> Conductor:
    return Conductor(Bus(nc=None, js=js, name="test"), store)  # type: ignore[arg-type]


def job_state(
    frames: int = 4, *, depth: bool = False, status: int = lifecycle.RENDERING
) -> animation_pb2.JobState:
    """A planned job: ``frames`` specs (with ``depth``, each frame after the first is
    guided by its predecessor's depth map) and no frame done yet."""
    state = animation_pb2.JobState(job_id=JOB, status=status, attempt=ATTEMPT, frames=frames)
    state.request.idea = "a cat"
    state.profile.fps = 12
    for i in range(frames):
        spec = state.frame_specs.add(index=i, prompt=f"shot {i}", seed=100 + i)
        if depth and i > 0:
            spec.depth_key = keys.depth_key(JOB, i - 1)
        state.frame_states.add(index=i)
    return state


def event(kind: int, frame: int = -1, attempt: int = ATTEMPT, **fields) -> bus_pb2.Event:
    return new_event(kind, JOB, frame, attempt, "cause", service="test", **fields)


async def work(js) -> list[tuple[str, object]]:
    """Every work message published: (subject, decoded message)."""
    types = {
        "plan": bus_pb2.PlanWork,
        "render": bus_pb2.RenderWork,
        "depth": bus_pb2.DepthWork,
        "assemble": bus_pb2.AssembleWork,
    }
    found = []
    for m in await published(js, WORK_STREAM):
        step = m.subject.rsplit(".", 1)[-1]
        found.append((step, types[step].FromString(m.data or b"")))
    return found


async def announced(js) -> list[bus_pb2.Event]:
    return [bus_pb2.Event.FromString(m.data) for m in await published(js, EVENTS_STREAM)]


def logged(caplog, message: str) -> logging.LogRecord:
    """The one record the conductor logged with ``message`` (its fields are queried)."""
    [record] = [r for r in caplog.records if r.getMessage() == message]
    return record


@pytest.fixture(autouse=True)
def _capture_the_conductors_log(caplog):
    caplog.set_level(logging.INFO, logger="ghibli_anim.services.planner.conductor")


async def stored(store: JobStore) -> animation_pb2.JobState:
    return (await store.get(JOB))[0]


# ---------------------------------------------------------------------------
# Events the conductor does not act on
# ---------------------------------------------------------------------------


async def test_an_event_for_a_malformed_job_id_is_ignored(js, conductor, caplog):
    bad = bus_pb2.Event(type=events.JOB_CREATED, job_id="../" + "a" * 97, event_id="e")
    await conductor.handle(bad)
    assert await work(js) == [] and await announced(js) == []
    record = logged(caplog, "event for a malformed job id ignored")
    assert record.levelno == logging.WARNING and record.job == bad.job_id[:64]


@pytest.mark.parametrize(
    "kind", [events.JOB_CREATED, events.FRAME_RENDERED, events.FRAME_FAILED, events.JOB_FAILED]
)
async def test_an_event_for_a_deleted_job_is_ignored(js, conductor, caplog, kind):
    await conductor.handle(event(kind, frame=0))
    assert await work(js) == [] and await announced(js) == []
    record = logged(caplog, "event for a deleted job ignored")
    assert record.levelno == logging.INFO and record.job_id == JOB


# ---------------------------------------------------------------------------
# job.created and job.planned start work
# ---------------------------------------------------------------------------


async def test_job_created_publishes_planning(js, store, conductor):
    await store.create(job_state(status=lifecycle.PENDING))
    created = event(events.JOB_CREATED)
    await conductor.handle(created)
    [(step, plan)] = await work(js)
    assert step == "plan"
    assert plan == bus_pb2.PlanWork(job_id=JOB, attempt=ATTEMPT, causation_id=created.event_id)
    [message] = await published(js, WORK_STREAM)
    assert message.headers[MSG_ID_HEADER] == work_msg_id(JOB, "plan", -1, ATTEMPT)
    # A redelivery publishes the same message id: the stream keeps one copy.
    await conductor.handle(created)
    assert len(await work(js)) == 1


@pytest.mark.parametrize(
    ("kind", "status", "attempt"),
    [
        (events.JOB_CREATED, lifecycle.PENDING, ATTEMPT - 1),  # an earlier attempt's copy
        (events.JOB_CREATED, lifecycle.PENDING, ATTEMPT + 1),
        (events.JOB_CREATED, lifecycle.PLANNING, ATTEMPT),  # the job is past it
        (events.JOB_CREATED, lifecycle.RENDERING, ATTEMPT),
        (events.JOB_PLANNED, lifecycle.PENDING, ATTEMPT),
        (events.JOB_PLANNED, lifecycle.PLANNING, ATTEMPT),
        (events.JOB_PLANNED, lifecycle.RENDERING, ATTEMPT - 1),
        (events.JOB_PLANNED, lifecycle.COMPLETED, ATTEMPT),
        (events.JOB_PLANNED, lifecycle.FAILED, ATTEMPT),
        (events.JOB_PLANNED, lifecycle.PLANNED, ATTEMPT),  # waiting for review
        (events.JOB_APPROVED, lifecycle.PLANNED, ATTEMPT),  # a copy ahead of the write
        (events.JOB_APPROVED, lifecycle.RENDERING, ATTEMPT - 1),
        (events.JOB_APPROVED, lifecycle.CANCELLED, ATTEMPT),
    ],
)
async def test_a_start_event_the_job_is_not_at_starts_nothing(
    js, store, conductor, kind, status, attempt
):
    await store.create(job_state(status=status))
    await conductor.handle(event(kind, attempt=attempt))
    assert await work(js) == [] and await announced(js) == []


async def test_job_planned_publishes_the_first_frame(js, store, conductor):
    state = job_state()
    await store.create(state)
    planned = event(events.JOB_PLANNED)
    await conductor.handle(planned)
    [(step, render)] = await work(js)
    assert step == "render"
    assert render == bus_pb2.RenderWork(
        job_id=JOB,
        frame=0,
        attempt=ATTEMPT,
        causation_id=planned.event_id,
        spec=state.frame_specs[0],
    )
    [message] = await published(js, WORK_STREAM)
    assert message.headers[MSG_ID_HEADER] == work_msg_id(JOB, "render", 0, ATTEMPT)


async def test_job_approved_publishes_the_first_frame_like_job_planned(js, store, conductor):
    state = job_state()
    await store.create(state)
    approved = event(events.JOB_APPROVED)
    await conductor.handle(approved)
    [(step, render)] = await work(js)
    assert step == "render"
    assert render == bus_pb2.RenderWork(
        job_id=JOB,
        frame=0,
        attempt=ATTEMPT,
        causation_id=approved.event_id,
        spec=state.frame_specs[0],
    )


async def test_job_planned_after_a_resume_with_every_frame_stored_publishes_assembly(
    js, store, conductor
):
    state = job_state(2, status=lifecycle.ASSEMBLING)
    for f in state.frame_states:
        f.rendered = True
    await store.create(state)
    planned = event(events.JOB_PLANNED)
    await conductor.handle(planned)
    [(step, assemble)] = await work(js)
    assert step == "assemble" and assemble.job_id == JOB and assemble.attempt == ATTEMPT
    # The last frame has no render event of this attempt: the cause is job.planned.
    assert assemble.causation_id == planned.event_id


# ---------------------------------------------------------------------------
# frame.rendered and depth.ready: the chain, over every frame position
# ---------------------------------------------------------------------------


async def test_every_frame_rendered_publishes_the_next_and_the_last_publishes_assembly(
    js, store, conductor
):
    n = 4
    state = job_state(n)
    state.request.fps = 24
    state.request.formats.extend(["mp4", "gif"])
    state.request.interpolate = 2
    await store.create(state)
    rendered = []
    for i in range(n):
        done = event(events.FRAME_RENDERED, frame=i)
        rendered.append(done)
        await conductor.handle(done)
        now = await stored(store)
        assert [f.rendered for f in now.frame_states] == [j <= i for j in range(n)]
        assert now.frame_states[i].rendered_event_id == done.event_id
        assert now.frame_states[i].attempt == ATTEMPT
        assert now.last_event_id == done.event_id
        step, message = (await work(js))[-1]
        if i + 1 < n:
            assert now.status == lifecycle.RENDERING
            assert step == "render"
            assert message == bus_pb2.RenderWork(
                job_id=JOB,
                frame=i + 1,
                attempt=ATTEMPT,
                causation_id=done.event_id,
                spec=state.frame_specs[i + 1],
            )
    assert now.status == lifecycle.ASSEMBLING
    assert [s for s, _ in await work(js)] == ["render"] * (n - 1) + ["assemble"]
    assert message == bus_pb2.AssembleWork(
        job_id=JOB,
        attempt=ATTEMPT,
        causation_id=rendered[-1].event_id,
        frame_keys=[keys.frame_key(JOB, i) for i in range(n)],
        depth_keys=[],
        fps=24,
        formats=["mp4", "gif"],
        prompts=[f"shot {i}" for i in range(n)],
        interpolate=2,
    )


async def test_with_depth_each_frame_waits_for_its_predecessors_depth_map(js, store, conductor):
    n = 3
    await store.create(job_state(n, depth=True))
    for i in range(n):
        done = event(events.FRAME_RENDERED, frame=i)
        await conductor.handle(done)
        step, message = (await work(js))[-1]
        if i + 1 == n:
            break  # the last frame guides nothing: assembly, no depth map of it
        assert step == "depth"
        assert message == bus_pb2.DepthWork(
            job_id=JOB,
            frame=i,
            attempt=ATTEMPT,
            causation_id=done.event_id,
            image_key=keys.frame_key(JOB, i),
            output_key=keys.depth_key(JOB, i),
            profile=(await stored(store)).profile,
        )
        ready = event(events.DEPTH_READY, frame=i)
        await conductor.handle(ready)
        now = await stored(store)
        assert (
            now.frame_states[i].depth_ready and now.frame_states[i].depth_event_id == ready.event_id
        )
        step, message = (await work(js))[-1]
        assert step == "render" and message.frame == i + 1
        assert message.causation_id == ready.event_id
        assert message.spec.depth_key == keys.depth_key(JOB, i)
    assert step == "assemble"
    assert list(message.depth_keys) == [keys.depth_key(JOB, i) for i in range(n - 1)]
    assert message.fps == 12  # the request sets none: the profile's
    assert [s for s, _ in await work(js)] == [
        "depth",
        "render",
        "depth",
        "render",
        "assemble",
    ]


async def test_with_depth_the_renderer_makes_each_depth_map_with_its_frame(js, store, conductor):
    """The render work asks for the depth map the next frame needs; a frame.rendered that
    names it marks it ready too, and the next frame follows with no depth work."""
    n = 3
    state = job_state(n, depth=True)
    await store.create(state)
    await conductor.handle(event(events.JOB_PLANNED))
    for i in range(n):
        step, message = (await work(js))[-1]
        assert step == "render" and message.frame == i
        wanted = keys.depth_key(JOB, i) if i + 1 < n else ""
        assert message.depth_output_key == wanted
        done = event(events.FRAME_RENDERED, frame=i, depth_key=wanted)
        await conductor.handle(done)
        now = await stored(store)
        assert now.frame_states[i].rendered
        assert now.frame_states[i].depth_ready == (i + 1 < n)
        if i + 1 < n:
            assert now.frame_states[i].depth_event_id == done.event_id
            assert (await work(js))[-1][1].causation_id == done.event_id
    assert [s for s, _ in await work(js)] == ["render"] * n + ["assemble"]


@pytest.mark.parametrize("depth_key", ["", keys.depth_key(JOB, 1), keys.frame_key(JOB, 0)])
async def test_a_frame_rendered_without_its_depth_map_asks_the_depth_service(
    js, store, conductor, depth_key
):
    await store.create(job_state(3, depth=True))
    await conductor.handle(event(events.FRAME_RENDERED, frame=0, depth_key=depth_key))
    assert not (await stored(store)).frame_states[0].depth_ready
    [(step, message)] = await work(js)
    assert (step, message.frame, message.output_key) == ("depth", 0, keys.depth_key(JOB, 0))


async def test_a_repeated_frame_rendered_changes_nothing_and_republishes_the_same_work(
    js, store, conductor
):
    await store.create(job_state(3))
    first = event(events.FRAME_RENDERED, frame=0)
    await conductor.handle(first)
    before = await store.get(JOB)
    await conductor.handle(first)
    assert await store.get(JOB) == before
    assert [(s, m.frame) for s, m in await work(js)] == [("render", 1)]


async def test_after_a_resume_a_frame_event_is_the_cause_of_the_next_work(js, store, conductor):
    # The resume found frames 0 and 1 in the store: done, but by no event of this attempt.
    state = job_state(4)
    for f in state.frame_states[:2]:
        f.rendered = True
    await store.create(state)
    late = event(events.FRAME_RENDERED, frame=1)
    await conductor.handle(late)
    [(step, message)] = await work(js)
    assert (step, message.frame, message.causation_id) == ("render", 2, late.event_id)


async def test_after_a_resume_a_depth_map_is_the_cause_of_the_next_one(js, store, conductor):
    state = job_state(3, depth=True)
    for f in state.frame_states[:2]:
        f.rendered = True
    await store.create(state)
    ready = event(events.DEPTH_READY, frame=0)
    await conductor.handle(ready)
    [(step, message)] = await work(js)
    assert (step, message.frame, message.causation_id) == ("depth", 1, ready.event_id)


async def test_a_frame_rendered_for_a_failed_job_publishes_nothing(js, store, conductor):
    state = job_state(3, status=lifecycle.FAILED)
    await store.create(state)
    await conductor.handle(event(events.FRAME_RENDERED, frame=0))
    assert (await stored(store)).frame_states[0].rendered is False
    assert await work(js) == []


# ---------------------------------------------------------------------------
# job.assembled
# ---------------------------------------------------------------------------


def _job_seconds_count() -> float:
    return REGISTRY.get_sample_value("anim_job_seconds_count") or 0.0


def _job_seconds_sum() -> float:
    return REGISTRY.get_sample_value("anim_job_seconds_sum") or 0.0


@pytest.mark.parametrize(("age_s", "observed"), [(30.0, 30.0), (-60.0, 0.0)])
async def test_a_completed_job_observes_its_time_from_creation(store, conductor, age_s, observed):
    # Created 30 s ago, or (a clock that moved back) in the future: never a negative time.
    state = job_state(2, status=lifecycle.ASSEMBLING)
    state.created_at.FromNanoseconds(int((time.time() - age_s) * 1e9))
    await store.create(state)
    before = _job_seconds_sum()
    await conductor.handle(event(events.JOB_ASSEMBLED))
    assert _job_seconds_sum() - before == pytest.approx(observed, abs=0.5)


async def test_job_assembled_completes_the_job_and_announces_it_once(js, store, conductor, caplog):
    state = job_state(2, status=lifecycle.ASSEMBLING)
    await store.create(state)
    outputs = [
        types_pb2.OutputFile(name="animation.mp4", key=keys.output_key(JOB, "mp4"), size_bytes=10)
    ]
    assembled = event(events.JOB_ASSEMBLED, outputs=outputs)
    before = _job_seconds_count()
    await conductor.handle(assembled)
    now = await stored(store)
    assert now.status == lifecycle.COMPLETED and list(now.outputs) == outputs
    assert now.last_event_id == assembled.event_id
    [completed] = await announced(js)
    assert completed.type == events.JOB_COMPLETED and completed.job_id == JOB
    assert completed.attempt == ATTEMPT and completed.frame == -1
    assert completed.causation_id == assembled.event_id and completed.service == "planner"
    assert _job_seconds_count() == before + 1
    assert logged(caplog, "job completed").job_id == JOB
    # A redelivery re-announces (deduplicated) and observes the job's time only once.
    await conductor.handle(assembled)
    assert len(await announced(js)) == 1
    assert _job_seconds_count() == before + 1


async def test_job_assembled_for_a_job_not_assembling_announces_nothing(js, store, conductor):
    await store.create(job_state(2, status=lifecycle.FAILED))
    await conductor.handle(event(events.JOB_ASSEMBLED))
    assert (await stored(store)).status == lifecycle.FAILED
    assert await announced(js) == []


# ---------------------------------------------------------------------------
# Failures
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "frame", "reason"),
    [
        (events.FRAME_FAILED, 3, "frame 3: out of memory"),
        (events.DEPTH_FAILED, 0, "depth of frame 0: out of memory"),
        (events.PLAN_FAILED, -1, "planning: out of memory"),
        (events.ASSEMBLY_FAILED, -1, "assembling: out of memory"),
    ],
)
async def test_a_step_failure_fails_the_job_and_announces_it(
    js, store, conductor, kind, frame, reason
):
    await store.create(job_state())
    failure = event(kind, frame=frame, reason="out of memory")
    await conductor.handle(failure)
    now = await stored(store)
    assert now.status == lifecycle.FAILED and now.error == reason
    assert now.last_event_id == failure.event_id
    [failed] = await announced(js)
    assert failed.type == events.JOB_FAILED and failed.job_id == JOB and failed.frame == -1
    assert failed.attempt == ATTEMPT and failed.causation_id == failure.event_id
    assert failed.reason == reason and failed.service == "planner"
    assert await work(js) == []


async def test_job_failed_is_recorded_without_announcing_it_again(js, store, conductor):
    await store.create(job_state(status=lifecycle.ASSEMBLING))
    failure = event(events.JOB_FAILED, reason="assembling: disk full")
    await conductor.handle(failure)
    now = await stored(store)
    assert now.status == lifecycle.FAILED and now.error == "assembling: disk full"
    assert now.last_event_id == failure.event_id
    assert await announced(js) == []


async def test_job_failed_of_an_earlier_attempt_changes_nothing(js, store, conductor):
    await store.create(job_state())
    await conductor.handle(event(events.JOB_FAILED, attempt=ATTEMPT - 1, reason="old"))
    assert (await stored(store)).status == lifecycle.RENDERING


async def test_fail_job_fails_once_and_re_announces_on_a_redelivery(js, store, conductor, caplog):
    await store.create(job_state())
    reason = "time limit " + "x" * 600
    assert await conductor.fail_job(JOB, reason, cause="c1") is True
    assert await conductor.fail_job(JOB, "something else", cause="c1") is False
    now = await stored(store)
    assert now.status == lifecycle.FAILED and now.error == reason
    [failed] = await announced(js)  # the second announcement was the same message
    assert failed.reason == reason and failed.causation_id == "c1"
    # Logged once, by the call that failed it; a long reason is cut for the log line.
    record = logged(caplog, "job failed")
    assert record.levelno == logging.WARNING
    assert record.job_id == JOB and record.reason == reason[:500]


@pytest.mark.parametrize("attempt", [0, ATTEMPT])
async def test_fail_job_announces_a_job_failed_already_for_this_attempt(
    js, store, conductor, attempt
):
    state = job_state(status=lifecycle.FAILED)
    state.error = "frame 1: first"
    await store.create(state)
    assert await conductor.fail_job(JOB, "frame 2: second", cause="c", attempt=attempt) is False
    [failed] = await announced(js)
    assert failed.reason == "frame 1: first" and failed.attempt == ATTEMPT


async def test_a_failure_of_an_earlier_attempt_changes_and_announces_nothing(js, store, conductor):
    await store.create(job_state())
    late = event(events.FRAME_FAILED, frame=1, attempt=ATTEMPT - 1, reason="late")
    await conductor.handle(late)
    assert (await stored(store)).status == lifecycle.RENDERING
    assert await announced(js) == []
    failed_before = job_state(status=lifecycle.FAILED)
    await store.jobs.update(JOB, failed_before.SerializeToString())
    assert await conductor.fail_job(JOB, "late", cause="c", attempt=ATTEMPT - 1) is False
    assert await announced(js) == []


async def test_a_completed_job_is_not_failed(js, store, conductor):
    await store.create(job_state(status=lifecycle.COMPLETED))
    assert await conductor.fail_job(JOB, "late failure", cause="c") is False
    assert (await stored(store)).status == lifecycle.COMPLETED
    assert await announced(js) == []


# ---------------------------------------------------------------------------
# Work that ran out of deliveries
# ---------------------------------------------------------------------------


async def _advisory(js, step: str, message: bytes, deliveries: int = 5) -> MaxDeliveries:
    ack = await js.publish(f"anim.work.{step}", message, headers={MSG_ID_HEADER: step})
    return MaxDeliveries(
        stream=WORK_STREAM, consumer=step, stream_seq=ack.seq, deliveries=deliveries
    )


@pytest.mark.parametrize(
    ("step", "message", "kind", "frame"),
    [
        ("plan", bus_pb2.PlanWork(job_id=JOB, attempt=3, causation_id="w"), events.PLAN_FAILED, -1),
        (
            "render",
            bus_pb2.RenderWork(job_id=JOB, frame=4, attempt=3, causation_id="w"),
            events.FRAME_FAILED,
            4,
        ),
        (
            "depth",
            bus_pb2.DepthWork(job_id=JOB, frame=2, attempt=3, causation_id="w"),
            events.DEPTH_FAILED,
            2,
        ),
        (
            "assemble",
            bus_pb2.AssembleWork(job_id=JOB, attempt=3, causation_id="w"),
            events.ASSEMBLY_FAILED,
            -1,
        ),
    ],
)
async def test_work_out_of_deliveries_gets_the_failure_its_worker_could_not_send(
    js, conductor, step, message, kind, frame
):
    advisory = await _advisory(js, step, message.SerializeToString(), deliveries=7)
    await conductor.max_deliveries(advisory)
    assert await published(js, WORK_STREAM) == []  # dropped from the work queue
    [failure] = await announced(js)
    assert failure.type == kind and failure.job_id == JOB and failure.frame == frame
    assert failure.attempt == 3 and failure.causation_id == "w"
    assert failure.service == "planner" and failure.retryable is True
    assert failure.reason == (
        f"gave up after 7 deliveries; the {step} worker stopped each time without an answer "
        "(crashed, out of memory, or AckWait too short)"
    )


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\xff not a protobuf",
        bus_pb2.RenderWork(job_id="not-a-job", frame=1).SerializeToString(),
        b"",
    ],
)
async def test_unreadable_work_out_of_deliveries_is_dropped_without_an_event(
    js, conductor, payload
):
    advisory = await _advisory(js, "render", payload)
    await conductor.max_deliveries(advisory)
    assert await published(js, WORK_STREAM) == []
    assert await announced(js) == []


async def test_work_acked_before_the_advisory_is_handled_is_left_alone(js, conductor):
    advisory = await _advisory(js, "render", bus_pb2.RenderWork(job_id=JOB).SerializeToString())
    await js.delete_msg(WORK_STREAM, advisory.stream_seq)
    await conductor.max_deliveries(advisory)  # no error, nothing published
    assert await announced(js) == []


# ---------------------------------------------------------------------------
# publish
# ---------------------------------------------------------------------------


async def test_publish_sends_each_item_under_the_jobs_current_attempt(js, conductor):
    state = job_state()
    items = [
        Work("render", bus_pb2.RenderWork(job_id=JOB, frame=1, attempt=ATTEMPT)),
        Work("assemble", bus_pb2.AssembleWork(job_id=JOB, attempt=ATTEMPT)),
    ]
    await conductor.publish(state, items)
    messages = await published(js, WORK_STREAM)
    assert [m.subject for m in messages] == ["anim.work.render", "anim.work.assemble"]
    assert [m.headers[MSG_ID_HEADER] for m in messages] == [
        work_msg_id(JOB, "render", 1, ATTEMPT),
        work_msg_id(JOB, "assemble", -1, ATTEMPT),
    ]
    assert [m.data for m in messages] == [i.message.SerializeToString() for i in items]
