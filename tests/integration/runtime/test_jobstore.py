"""runtime/jobstore.py against a real nats-server: create, get, list, delete, compare-and-swap
with the state machine, and idempotency claims; and the job store's whole contract
(tests/support/jobstore_cases.py, which the unit tier runs on an in-memory bucket)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import nats.js.errors
import pytest
from support.bus import JOB, OTHER_JOB, settings_for
from support.jobstore_cases import *  # noqa: F403 (the shared contract tests)

from ghibli_anim.contracts import keys, lifecycle
from ghibli_anim.contracts.pb import animation_pb2, types_pb2
from ghibli_anim.runtime import jobstore as jobs
from ghibli_anim.runtime.bus.connection import Bus, connect
from ghibli_anim.runtime.bus.names import JOBS_BUCKET
from ghibli_anim.runtime.processes import NatsServer


@pytest.fixture
async def jobs_kv(nbus: Bus):
    """The real ``anim-jobs`` bucket, as the services open it."""
    return (await jobs.JobStore.open(nbus.js)).jobs


@pytest.fixture
async def idem_kv(nbus: Bus):
    return (await jobs.JobStore.open(nbus.js)).idem


def new_state(job_id: str = JOB) -> animation_pb2.JobState:
    return animation_pb2.JobState(job_id=job_id, status=types_pb2.JOB_STATUS_PENDING, frames=4)


async def test_job_store_create_get_list_delete(nbus: Bus) -> None:
    store = await jobs.JobStore.open(nbus.js)
    assert await store.list() == []
    with pytest.raises(jobs.JobNotFound):
        await store.get(JOB)
    revision = await store.create(new_state())
    with pytest.raises(jobs.JobExists):
        await store.create(new_state())
    state, got_revision = await store.get(JOB)
    assert got_revision == revision
    assert state.status == types_pb2.JOB_STATUS_PENDING and state.created_at.seconds > 0
    await store.create(new_state(OTHER_JOB))
    assert await store.list() == sorted([JOB, OTHER_JOB])
    await store.delete(OTHER_JOB)
    assert await store.list() == [JOB]
    with pytest.raises(jobs.JobNotFound):
        await store.get(OTHER_JOB)


async def test_job_store_compare_and_swap(nbus: Bus, nats_server: NatsServer) -> None:
    store = await jobs.JobStore.open(nbus.js)
    await store.create(new_state())
    _, stale = await store.get(JOB)

    def to_planning(state: animation_pb2.JobState) -> None:
        state.status = types_pb2.JOB_STATUS_PLANNING

    planned = await store.update(JOB, to_planning, expect_status=types_pb2.JOB_STATUS_PENDING)
    assert planned.status == types_pb2.JOB_STATUS_PLANNING
    # A writer holding the old revision is refused by the server.
    with pytest.raises(nats.js.errors.KeyWrongLastSequenceError):
        await store.jobs.update(JOB, new_state().SerializeToString(), last=stale)

    # Forbidden transitions and unexpected statuses write nothing.
    _, revision = await store.get(JOB)

    def complete(state: animation_pb2.JobState) -> None:
        state.status = types_pb2.JOB_STATUS_COMPLETED

    with pytest.raises(lifecycle.InvalidTransition, match="PLANNING to COMPLETED"):
        await store.update(JOB, complete)
    with pytest.raises(lifecycle.UnexpectedStatus):
        await store.update(JOB, to_planning, expect_status=types_pb2.JOB_STATUS_PENDING)
    assert (await store.get(JOB))[1] == revision
    # A mutation that changes nothing writes nothing.
    await store.update(JOB, lambda state: None)
    assert (await store.get(JOB))[1] == revision

    # Concurrent writers on two connections: every update lands, none is lost.
    other = await connect(settings_for(nats_server), "other-writer")
    try:
        store_b = await jobs.JobStore.open(other.js)

        def mark(index: int) -> Callable[[animation_pb2.JobState], None]:
            def mutate(state: animation_pb2.JobState) -> None:
                state.frame_states.add(index=index, rendered=True)

            return mutate

        await asyncio.gather(*(s.update(JOB, mark(i)) for i, s in enumerate([store, store_b] * 8)))
    finally:
        await other.close()
    final, _ = await store.get(JOB)
    assert sorted(f.index for f in final.frame_states) == list(range(16))
    assert final.status == types_pb2.JOB_STATUS_PLANNING
    assert final.updated_at.ToNanoseconds() >= final.created_at.ToNanoseconds()


async def test_idempotency_claim(nbus: Bus) -> None:
    store = await jobs.JobStore.open(nbus.js)
    assert await store.claim_idempotency("alice", "k1", JOB) == JOB
    assert await store.claim_idempotency("alice", "k1", OTHER_JOB) == JOB  # lost: existing job
    assert await store.claim_idempotency("bob", "k1", OTHER_JOB) == OTHER_JOB  # other client
    # Racing claims agree on one winner.
    winners = await asyncio.gather(
        *(store.claim_idempotency("carol", "k", job) for job in [JOB, OTHER_JOB] * 4)
    )
    assert len(set(winners)) == 1
    # A released claim (its job failed to be created) can be taken again.
    assert not await store.release_idempotency("alice", "k1", OTHER_JOB)  # not the owner
    assert await store.release_idempotency("alice", "k1", JOB)
    assert await store.claim_idempotency("alice", "k1", OTHER_JOB) == OTHER_JOB


async def test_a_burst_of_claims_admits_exactly_the_cap(nbus: Bus) -> None:
    """40 creates of one client at once with a cap of 16: exactly 16 jobs, every time."""
    store = await jobs.JobStore.open(nbus.js)

    async def create() -> bool:
        state = animation_pb2.JobState(
            job_id=keys.new_job_id(), status=types_pb2.JOB_STATUS_PENDING, frames=1
        )
        try:
            await store.claim_slot("burst", state.job_id, 16)
        except jobs.SlotsTaken:
            return False
        await store.create(state)
        return True

    admitted = await asyncio.gather(*(create() for _ in range(40)))
    assert sum(admitted) == 16
    assert len(await store.list()) == 16


async def test_a_batch_cut_off_before_its_commit_writes_nothing(nbus: Bus) -> None:
    # A planner killed in the middle of an atomic write: the server holds the messages it
    # got, stores none of them, and drops them after 10 s. The job does not exist, the
    # counters and the listing's head are untouched, and the next create gets the place.
    store = await jobs.JobStore.open(nbus.js)
    await store.create(new_state(OTHER_JOB))
    before = await store.counts()
    state = new_state()
    for number, (key, value) in enumerate(
        [(JOB, state.SerializeToString()), ("list.all.head", b"2"), ("list.all.2", JOB.encode())],
        1,
    ):
        headers = {"Nats-Batch-Id": "cut-off", "Nats-Batch-Sequence": str(number)}
        await nbus.nc.publish(f"$KV.{JOBS_BUCKET}.{key}", value, headers=headers)
    await nbus.nc.flush()
    with pytest.raises(jobs.JobNotFound):
        await store.get(JOB)
    assert await store.counts() == before == {"PENDING": 1}
    await store.create(state)
    assert [s.job_id for s in (await store.page(size=5, scan_limit=10))[0]] == [JOB, OTHER_JOB]
    assert (await store.get(JOB))[0].list_position == 2
