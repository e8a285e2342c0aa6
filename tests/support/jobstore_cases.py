"""The job store's contract, as test functions shared by two modules: one runs them on an
in-memory bucket (unit tier, no server), one on a real NATS KV bucket (integration tier).

Each module provides the fixtures ``jobs_kv`` and ``idem_kv`` (two empty buckets) and
imports these tests with ``from support.jobstore_cases import *``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time

import nats.js.errors
import pytest

from ghibli_anim.contracts import keys, lifecycle
from ghibli_anim.contracts.lifecycle import InvalidTransition, UnexpectedStatus
from ghibli_anim.contracts.pb import animation_pb2
from ghibli_anim.runtime import jobstore
from ghibli_anim.runtime.jobstore import (
    LIST_BLOCK,
    ConcurrentUpdateError,
    JobExists,
    JobNotFound,
    JobStore,
    SlotsTaken,
)

__all__ = [
    "test_a_create_never_overwrites_a_written_block",
    "test_a_cursor_holds_while_jobs_come_and_go",
    "test_a_delete_blanks_positions_at_the_edges_of_a_block",
    "test_a_delete_trusts_no_stored_position",
    "test_a_deleted_job_leaves_a_purge_marker_until_its_drop",
    "test_a_lost_race_starts_over_from_the_winners_state",
    "test_a_mutation_may_not_change_the_job_id",
    "test_a_mutation_that_changes_nothing_writes_nothing",
    "test_a_rebuild_indexes_jobs_written_without_the_index",
    "test_a_rebuild_replaces_every_index_record",
    "test_a_release_keeps_a_claim_taken_over_meanwhile",
    "test_a_remembered_state_never_decides_alone_that_nothing_changes",
    "test_a_remembered_state_never_refuses_a_transition_alone",
    "test_a_remembered_status_never_decides_alone_what_is_expected",
    "test_a_replacement_state_is_written",
    "test_a_slot_whose_job_never_came_is_freed_after_the_grace",
    "test_a_state_another_writer_changed_is_read_again",
    "test_a_state_given_to_a_caller_is_not_what_the_store_remembers",
    "test_a_status_change_drops_only_the_entry_the_job_left",
    "test_a_status_change_the_table_refuses_is_refused",
    "test_always_losing_the_race_gives_a_delete_up",
    "test_always_losing_the_race_gives_up",
    "test_an_idempotency_claim_is_released_only_by_its_owner",
    "test_an_unfinished_status_is_listed_from_the_unfinished_jobs",
    "test_an_update_after_the_stores_own_read_or_write_reads_nothing_more",
    "test_an_update_of_a_deleted_job_finds_it_gone",
    "test_counters_follow_every_status_change_and_delete",
    "test_create_refuses_a_taken_id",
    "test_create_then_get_stamps_the_times",
    "test_creates_racing_for_the_head_each_get_their_own_place",
    "test_empty_index_records_read_as_empty",
    "test_entries_left_by_a_writer_that_died_are_dropped_by_the_sweeps",
    "test_expect_status_guards_the_update",
    "test_get_of_a_missing_or_malformed_id",
    "test_idempotency_claims",
    "test_index_records_have_a_stable_layout",
    "test_index_writes_that_race_start_over",
    "test_list_and_delete",
    "test_listings_are_newest_first_by_client_and_by_status",
    "test_listings_span_full_blocks_and_the_head",
    "test_slot_records_are_not_jobs",
    "test_slots_cap_a_clients_unfinished_jobs",
    "test_sweeps_drop_only_entries_older_than_the_state_they_read",
    "test_the_finished_walk_ends_at_the_cutoff_and_moves_its_mark",
    "test_the_finished_walk_starts_after_what_earlier_sweeps_deleted",
    "test_the_store_remembers_at_most_known_states_jobs",
    "test_unfinished_and_finished_entries",
    "test_unfinished_pages_go_on_from_positions_in_their_listing",
    "test_update_applies_a_transition_and_writes_once",
]


class TakenOverBeforeDelete:
    """An idempotency bucket in which, just before each delete, another job takes the
    claim over (as a claim that expired and was claimed again would)."""

    def __init__(self, inner, new_owner: str) -> None:
        self.inner = inner
        self.new_owner = new_owner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def delete(self, key, last=None):
        entry = await self.inner.get(key)
        await self.inner.update(key, self.new_owner.encode(), last=entry.revision)
        return await self.inner.delete(key, last=last)


class Racing:
    """A bucket whose job writes (a plain update, or an atomic batch with a status change)
    lose the compare-and-swap ``races`` times: before each of those, another writer
    changes the job (its title gets a "+")."""

    def __init__(self, inner, races: int) -> None:
        self.inner = inner
        self.races = races

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def _race(self, key: str) -> None:
        if self.races > 0 and keys.is_job_id(key):
            self.races -= 1
            entry = await self.inner.get(key)
            other = animation_pb2.JobState.FromString(entry.value)
            other.title += "+"
            await self.inner.update(key, other.SerializeToString(), last=entry.revision)

    async def update(self, key, value, last=None):
        await self._race(key)
        return await self.inner.update(key, value, last=last)

    async def commit(self, writes):
        if writes[0].last:  # a change of a stored job (a create expects none)
            await self._race(writes[0].key)
        return await self.inner.commit(writes)


class Counting:
    """A bucket that counts the reads of job states (``get`` of a job id)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.job_reads = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def get(self, key):
        if keys.is_job_id(key):
            self.job_reads += 1
        return await self.inner.get(key)


def new_state(status: int = lifecycle.PENDING) -> animation_pb2.JobState:
    state = animation_pb2.JobState(job_id=keys.new_job_id(), status=status, frames=2, attempt=1)
    state.request.idea = "a cat"
    return state


async def test_create_then_get_stamps_the_times(jobs_kv, idem_kv):
    store = JobStore(jobs_kv, idem_kv)
    state = new_state()
    revision = await store.create(state)
    stored, got_revision = await store.get(state.job_id)
    assert got_revision == revision
    assert stored.HasField("created_at") and stored.updated_at == stored.created_at
    assert stored.request.idea == "a cat" and not state.HasField("created_at")


async def test_create_refuses_a_taken_id(jobs_kv, idem_kv):
    store = JobStore(jobs_kv, idem_kv)
    state = new_state()
    await store.create(state)
    with pytest.raises(JobExists, match=f"job {state.job_id}: already exists"):
        await store.create(state)


async def test_get_of_a_missing_or_malformed_id(jobs_kv, idem_kv):
    store = JobStore(jobs_kv, idem_kv)
    missing = keys.new_job_id()
    with pytest.raises(JobNotFound, match=f"^job {missing}: not found$"):
        await store.get(missing)
    with pytest.raises(ValueError, match="job_id: must be 32 lowercase hex"):
        await store.get("../x")


async def test_update_applies_a_transition_and_writes_once(jobs_kv, idem_kv):
    store = JobStore(jobs_kv, idem_kv)
    state = new_state()
    await store.create(state)
    _, before = await store.get(state.job_id)
    updated, wrote = await store.apply(state.job_id, lifecycle.start_planning)
    assert wrote and updated.status == lifecycle.PLANNING
    stored, after = await store.get(state.job_id)
    assert stored == updated and after > before
    assert stored.updated_at.ToNanoseconds() >= stored.created_at.ToNanoseconds()


async def test_a_mutation_that_changes_nothing_writes_nothing(jobs_kv, idem_kv):
    store = JobStore(jobs_kv, idem_kv)
    state = new_state(lifecycle.RENDERING)
    await store.create(state)
    stored, before = await store.get(state.job_id)
    again, wrote = await store.apply(state.job_id, lifecycle.start_planning)  # not PENDING
    assert not wrote and again == stored
    assert (await store.get(state.job_id))[1] == before


async def test_a_status_change_the_table_refuses_is_refused(jobs_kv, idem_kv):
    store = JobStore(jobs_kv, idem_kv)
    state = new_state(lifecycle.COMPLETED)
    await store.create(state)
    _, before = await store.get(state.job_id)

    def reopen(s: animation_pb2.JobState) -> None:
        s.status = lifecycle.RENDERING

    with pytest.raises(
        InvalidTransition, match=f"job {state.job_id}: .*from COMPLETED to RENDERING"
    ):
        await store.update(state.job_id, reopen)
    assert (await store.get(state.job_id))[1] == before


async def test_expect_status_guards_the_update(jobs_kv, idem_kv):
    store = JobStore(jobs_kv, idem_kv)
    state = new_state(lifecycle.PLANNING)
    await store.create(state)
    with pytest.raises(
        UnexpectedStatus, match=f"job {state.job_id}: status is PLANNING, expected PENDING"
    ):
        await store.update(state.job_id, lifecycle.cancelled, expect_status=lifecycle.PENDING)
    done = await store.update(
        state.job_id,
        lifecycle.cancelled,
        expect_status=(lifecycle.PENDING, lifecycle.PLANNING),
    )
    assert done.status == lifecycle.CANCELLED


async def test_a_mutation_may_not_change_the_job_id(jobs_kv, idem_kv):
    store = JobStore(jobs_kv, idem_kv)
    state = new_state()
    await store.create(state)

    def rename(s: animation_pb2.JobState) -> None:
        s.job_id = keys.new_job_id()

    with pytest.raises(ValueError, match="must not change job_id"):
        await store.update(state.job_id, rename)


async def test_a_replacement_state_is_written(jobs_kv, idem_kv):
    store = JobStore(jobs_kv, idem_kv)
    state = new_state()
    await store.create(state)

    def replace(s: animation_pb2.JobState) -> animation_pb2.JobState:
        other = animation_pb2.JobState()
        other.CopyFrom(s)
        other.title = "replaced"
        return other

    assert (await store.update(state.job_id, replace)).title == "replaced"
    assert (await store.get(state.job_id))[0].title == "replaced"


async def test_a_lost_race_starts_over_from_the_winners_state(jobs_kv, idem_kv):
    racing = Racing(jobs_kv, races=2)
    store = JobStore(racing, idem_kv)
    state = new_state()
    await store.create(state)
    seen: list[str] = []

    def mark(s: animation_pb2.JobState) -> None:
        seen.append(s.title)
        s.error = "mine"

    stored = await store.update(state.job_id, mark)
    assert seen == ["", "+", "++"]  # each try starts from the latest state
    assert stored.title == "++" and stored.error == "mine"
    assert (await store.get(state.job_id))[0] == stored


async def test_always_losing_the_race_gives_up(jobs_kv, idem_kv):
    store = JobStore(Racing(jobs_kv, races=10), idem_kv, max_tries=3)
    state = new_state()
    await store.create(state)
    with pytest.raises(ConcurrentUpdateError, match="lost the compare-and-swap race 3 times"):
        await store.update(state.job_id, lifecycle.start_planning)


async def test_list_and_delete(jobs_kv, idem_kv):
    store = JobStore(jobs_kv, idem_kv)
    assert await store.list() == []
    states = [new_state() for _ in range(3)]
    for state in states:
        await store.create(state)
    assert await store.list() == sorted(s.job_id for s in states)
    await store.delete(states[0].job_id)
    assert await store.list() == sorted(s.job_id for s in states[1:])
    with pytest.raises(JobNotFound):
        await store.get(states[0].job_id)
    with pytest.raises(JobNotFound):
        await store.delete(states[0].job_id)


async def test_idempotency_claims(jobs_kv, idem_kv):
    store = JobStore(jobs_kv, idem_kv)
    first, second = keys.new_job_id(), keys.new_job_id()
    assert await store.claim_idempotency("alice", "k1", first) == first
    assert await store.claim_idempotency("alice", "k1", second) == first  # the first one won
    assert await store.claim_idempotency("bob", "k1", second) == second  # another client
    assert await store.claim_idempotency("alice", "k2", second) == second  # another key
    with pytest.raises(ValueError, match=r"^idempotency_key: must not be empty to claim it$"):
        await store.claim_idempotency("alice", "", first)
    with pytest.raises(ValueError, match="job_id"):
        await store.claim_idempotency("alice", "k3", "not-an-id")


async def test_an_idempotency_claim_is_released_only_by_its_owner(jobs_kv, idem_kv):
    store = JobStore(jobs_kv, idem_kv)
    owner, other = keys.new_job_id(), keys.new_job_id()
    await store.claim_idempotency("alice", "k", owner)
    assert await store.release_idempotency("alice", "k", other) is False
    assert await store.claim_idempotency("alice", "k", other) == owner
    assert await store.release_idempotency("alice", "k", owner) is True
    assert await store.release_idempotency("alice", "k", owner) is False  # nothing left
    assert await store.claim_idempotency("alice", "k", other) == other


async def test_a_release_keeps_a_claim_taken_over_meanwhile(jobs_kv, idem_kv):
    owner, new_owner = keys.new_job_id(), keys.new_job_id()
    store = JobStore(jobs_kv, TakenOverBeforeDelete(idem_kv, new_owner))
    await store.claim_idempotency("alice", "k", owner)
    # The delete is conditional on the revision the owner check read: it fails, and the
    # new owner's claim stays.
    assert await store.release_idempotency("alice", "k", owner) is False
    assert await JobStore(jobs_kv, idem_kv).claim_idempotency("alice", "k", owner) == new_owner


async def test_slots_cap_a_clients_unfinished_jobs(jobs_kv, idem_kv):
    store = JobStore(jobs_kv, idem_kv)
    first, second, third = (new_state(lifecycle.RENDERING) for _ in range(3))
    assert await store.claim_slot("alice", first.job_id, 2) == 1
    await store.create(first)
    assert await store.claim_slot("alice", second.job_id, 2) == 2
    await store.create(second)
    assert await store.claim_slot("alice", second.job_id, 2) == 2  # again: no change
    with pytest.raises(
        SlotsTaken, match=r"^client alice: 2 unfinished jobs, the limit is 2; retry when one"
    ) as refused:
        await store.claim_slot("alice", third.job_id, 2)
    assert (refused.value.held, refused.value.limit) == (2, 2)
    assert await store.claim_slot("bob", third.job_id, 2) == 1  # a cap per client
    # A finished job holds no slot: the next claim drops it and takes its place.
    await store.update(first.job_id, lambda s: lifecycle.failed(s, "gone"))
    assert await store.claim_slot("alice", third.job_id, 2) == 2
    with pytest.raises(ValueError, match=r"^limit: must be >= 1, got 0$"):
        await store.claim_slot("alice", third.job_id, 0)


async def test_a_slot_whose_job_never_came_is_freed_after_the_grace(jobs_kv, idem_kv):
    # A planner that died between the claim and the create: the slot is not leaked for
    # good, and not taken from a create that is merely a moment behind its claim.
    store = JobStore(jobs_kv, idem_kv)
    lost, later = keys.new_job_id(), keys.new_job_id()
    await store.claim_slot("alice", lost, 1)
    with pytest.raises(SlotsTaken):
        await store.claim_slot("alice", later, 1, grace_s=60)
    assert await store.claim_slot("alice", later, 1, grace_s=0) == 1


async def test_slot_records_are_not_jobs(jobs_kv, idem_kv):
    store = JobStore(jobs_kv, idem_kv)
    state = new_state()
    await store.claim_slot("alice", state.job_id, 3)
    await store.create(state)
    assert await store.list() == [state.job_id]


# -- the indexes: listings, counters, unfinished and finished entries ---------------------


def client_state(client: str, status: int = lifecycle.PENDING) -> animation_pb2.JobState:
    state = new_state(status)
    state.request.client_id = client
    return state


async def all_pages(store: JobStore, size: int, **query) -> list[list[str]]:
    """Every page of a listing, as job ids."""
    pages, before = [], 0
    while True:
        found, before = await store.page(before=before, size=size, scan_limit=50, **query)
        pages.append([s.job_id for s in found])
        if not before:
            return pages


async def listed(store: JobStore, size: int, **query) -> list[str]:
    """A whole listing, page after page, as job ids."""
    return [job_id for page in await all_pages(store, size, **query) for job_id in page]


async def recount(store: JobStore) -> dict[str, int]:
    """Jobs by status name, from every job (what the counters must say)."""
    counts: dict[str, int] = {}
    for job_id in await store.list():
        name = lifecycle.status_name((await store.get(job_id))[0].status)
        counts[name] = counts.get(name, 0) + 1
    return counts


async def test_listings_are_newest_first_by_client_and_by_status(jobs_kv, idem_kv):
    store = JobStore(jobs_kv, idem_kv)
    made = []
    for i in range(7):
        state = client_state("alice" if i % 2 else "bob", lifecycle.PENDING)
        await store.create(state)
        made.append(state)
    newest_first = [s.job_id for s in reversed(made)]
    assert await listed(store, 3) == newest_first
    assert await all_pages(store, 3) == [newest_first[:3], newest_first[3:6], newest_first[6:]]
    alice = [s.job_id for s in reversed(made) if s.request.client_id == "alice"]
    assert await listed(store, 2, client_id="alice") == alice
    assert await all_pages(store, 2, client_id="nobody") == [[]]
    # Positions: every job's, and its client's (1, 2, 3 for alice's three jobs).
    stored = [(await store.get(s.job_id))[0] for s in made]
    assert [s.list_position for s in stored] == list(range(1, 8))
    assert [s.client_list_position for s in stored if s.request.client_id == "alice"] == [1, 2, 3]
    await store.update(made[1].job_id, lambda s: lifecycle.failed(s, "x"))
    await store.update(made[4].job_id, lambda s: lifecycle.failed(s, "x"))
    failed = await all_pages(store, 5, status=lifecycle.FAILED)
    assert [j for page in failed for j in page] == [made[4].job_id, made[1].job_id]
    # A scan limit bounds each call: a short page, and a position to go on from.
    found, before = await store.page(size=5, status=lifecycle.FAILED, scan_limit=2)
    assert found == [] and before == 6
    found, before = await store.page(before=before, size=5, status=lifecycle.FAILED, scan_limit=2)
    assert [s.job_id for s in found] == [made[4].job_id] and before == 4


async def test_a_cursor_holds_while_jobs_come_and_go(jobs_kv, idem_kv):
    store = JobStore(jobs_kv, idem_kv)
    made = []
    for _ in range(9):
        state = client_state("alice", lifecycle.COMPLETED)
        await store.create(state)
        made.append(state.job_id)
    newest_first = made[::-1]
    first, before = await store.page(size=3, scan_limit=50)
    assert [s.job_id for s in first] == newest_first[:3]
    # Meanwhile: three new jobs, one shown job deleted, one not yet shown deleted.
    for _ in range(3):
        await store.create(client_state("alice", lifecycle.PENDING))
    await store.delete(newest_first[1])
    await store.delete(newest_first[4])
    rest, pages = [], 0
    while before:
        found, before = await store.page(before=before, size=3, scan_limit=50)
        rest += [s.job_id for s in found]
        pages += 1
    # The older jobs, each once, in order; none of the new ones; not the deleted one.
    assert rest == [j for j in newest_first[3:] if j != newest_first[4]]
    assert pages == 2


async def test_counters_follow_every_status_change_and_delete(jobs_kv, idem_kv):
    store = JobStore(jobs_kv, idem_kv)
    assert await store.counts() == {}
    states = [client_state(f"c{i % 3}") for i in range(12)]
    for state in states:
        await store.create(state)
    for state in states[:8]:
        await store.update(state.job_id, lifecycle.start_planning)
    for state in states[:3]:
        await store.update(state.job_id, lambda s: lifecycle.failed(s, "x"))
    for state in states[3:5]:
        await store.update(state.job_id, lifecycle.cancelled)
    await store.update(states[0].job_id, lambda s: lifecycle.resumed(s, []))
    await store.delete(states[1].job_id)
    await store.delete(states[3].job_id)
    counts = await store.counts()
    assert counts == await recount(store)
    assert counts == {"PENDING": 5, "PLANNING": 3, "FAILED": 1, "CANCELLED": 1}


async def test_unfinished_and_finished_entries(jobs_kv, idem_kv):
    store = JobStore(jobs_kv, idem_kv)
    running = client_state("a", lifecycle.RENDERING)
    first, second = client_state("a", lifecycle.RENDERING), client_state("a", lifecycle.RENDERING)
    for state in (running, first, second):
        await store.create(state)
    assert sorted(s.job_id for s in await store.open_jobs()) == sorted(
        [running.job_id, first.job_id, second.job_id]
    )
    await store.update(first.job_id, lifecycle.cancelled)
    await store.update(second.job_id, lambda s: lifecycle.failed(s, "x"))
    assert [s.job_id for s in await store.open_jobs()] == [running.job_id]
    finished = [s.job_id async for s in store.finished_before(time.time() + 60)]
    assert finished == [first.job_id, second.job_id]  # in the order they finished
    assert [s.job_id async for s in store.finished_before(0)] == []  # nothing that early
    # A resume makes a job unfinished again: out of the finished walk, back in the open set.
    await store.update(first.job_id, lambda s: lifecycle.resumed(s, []))
    assert [s.job_id async for s in store.finished_before(time.time() + 60)] == [second.job_id]
    assert sorted(s.job_id for s in await store.open_jobs()) == sorted(
        [running.job_id, first.job_id]
    )
    # A delete takes every entry of the job with it.
    await store.delete(second.job_id)
    assert [s.job_id async for s in store.finished_before(time.time() + 60)] == []
    left = await jobs_kv.keys_under()
    assert not [k for k in left if second.job_id in k]


async def test_entries_left_by_a_writer_that_died_are_dropped_by_the_sweeps(jobs_kv, idem_kv):
    # A status change is one atomic write; only the drop of the entry the job left comes
    # after it. A writer killed in between leaves that entry: the sweeps drop it, and the
    # counters never saw two writes.
    store = JobStore(jobs_kv, idem_kv)
    done, resumed = client_state("a", lifecycle.RENDERING), client_state("a", lifecycle.FAILED)
    await store.create(done)
    await store.create(resumed)

    class Dies(Exception):
        pass

    class DiesBeforeTheDrop:
        def __init__(self, inner) -> None:
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        async def purge(self, key, before=None):
            raise Dies

    dying = JobStore(DiesBeforeTheDrop(jobs_kv), idem_kv)
    with contextlib.suppress(Dies):
        await dying.update(done.job_id, lifecycle.cancelled)
    with contextlib.suppress(Dies):
        await dying.update(resumed.job_id, lambda s: lifecycle.resumed(s, []))
    left = await jobs_kv.keys_under()
    assert "open." + done.job_id in left and "done." + resumed.job_id in left
    assert await store.counts() == await recount(store) == {"CANCELLED": 1, "PENDING": 1}
    assert [s.job_id for s in await store.open_jobs()] == [resumed.job_id]
    assert [s.job_id async for s in store.finished_before(time.time() + 60)] == [done.job_id]
    left = await jobs_kv.keys_under()
    assert "open." + done.job_id not in left and "done." + resumed.job_id not in left


async def test_creates_racing_for_the_head_each_get_their_own_place(jobs_kv, idem_kv):
    store = JobStore(jobs_kv, idem_kv)
    states = [client_state("alice" if i % 2 else "bob") for i in range(12)]
    await asyncio.gather(*(store.create(s) for s in states))
    stored = [(await store.get(s.job_id))[0] for s in states]
    assert sorted(s.list_position for s in stored) == list(range(1, 13))
    assert sorted(await listed(store, 5)) == sorted(s.job_id for s in states)
    assert await store.counts() == {"PENDING": 12}


async def test_a_rebuild_indexes_jobs_written_without_the_index(jobs_kv, idem_kv):
    store = JobStore(jobs_kv, idem_kv)
    old = []
    for i, status in enumerate([lifecycle.COMPLETED, lifecycle.RENDERING, lifecycle.FAILED]):
        state = client_state("alice", status)
        state.created_at.FromSeconds(1000 + i)
        state.updated_at.FromSeconds(2000 - i)  # the last created finished first
        await jobs_kv.create(state.job_id, state.SerializeToString())  # as an old planner did
        old.append(state.job_id)
    await store.ensure_index()
    assert await listed(store, 2) == old[::-1]
    assert await listed(store, 2, client_id="alice") == old[::-1]
    assert await store.counts() == await recount(store)
    assert [s.job_id for s in await store.open_jobs()] == [old[1]]
    assert [s.job_id async for s in store.finished_before(1e10)] == [old[2], old[0]]
    # Once built, it is not built again: a job written behind the index stays unlisted.
    stray = client_state("alice")
    await jobs_kv.create(stray.job_id, stray.SerializeToString())
    await store.ensure_index()
    assert stray.job_id not in await listed(store, 5)


async def test_listings_span_full_blocks_and_the_head(jobs_kv, idem_kv):
    store = JobStore(jobs_kv, idem_kv)
    made = []
    for i in range(2 * LIST_BLOCK + 5):
        state = client_state("alice" if i % 3 else "bob", lifecycle.COMPLETED)
        await store.create(state)
        made.append(state.job_id)
    gone = [made[3], made[LIST_BLOCK + 7], made[-2]]  # in block 0, block 1, the head
    for job_id in gone:
        await store.delete(job_id)
    newest_first = [j for j in reversed(made) if j not in gone]
    assert await listed(store, 50) == newest_first
    assert await listed(store, 7) == newest_first
    bobs = [j for i, j in reversed(list(enumerate(made))) if i % 3 == 0 and j not in gone]
    assert await listed(store, 10, client_id="bob") == bobs
    # A rebuild from the jobs alone gives the same listings.
    await store.rebuild_index()
    assert await listed(store, 50) == newest_first
    assert await listed(store, 10, client_id="bob") == bobs
    assert await store.counts() == {"COMPLETED": len(newest_first)}


async def test_an_unfinished_status_is_listed_from_the_unfinished_jobs(jobs_kv, idem_kv):
    store = JobStore(jobs_kv, idem_kv)
    made = []
    for i, status in enumerate([lifecycle.PENDING] * 5 + [lifecycle.RENDERING] * 2):
        state = client_state("alice" if i % 2 else "bob", status)
        await store.create(state)
        made.append(state)
    for _ in range(3):  # finished history that the lookup never reads
        await store.create(client_state("alice", lifecycle.COMPLETED))
    await store.update(made[2].job_id, lambda s: lifecycle.failed(s, "x"))
    pending = [s.job_id for s in reversed(made[:5]) if s is not made[2]]
    pages = await all_pages(store, 2, status=lifecycle.PENDING)
    assert pages == [pending[:2], pending[2:]]  # full pages: no scan bound
    assert await listed(store, 1, status=lifecycle.PENDING, client_id="alice") == [
        s.job_id for s in reversed(made[:5]) if s.request.client_id == "alice"
    ]
    assert await listed(store, 5, status=lifecycle.RENDERING) == [
        made[6].job_id,
        made[5].job_id,
    ]
    assert await listed(store, 5, status=lifecycle.ASSEMBLING) == []


async def test_the_finished_walk_starts_after_what_earlier_sweeps_deleted(jobs_kv, idem_kv):
    store = JobStore(jobs_kv, idem_kv)
    states = [client_state("a", lifecycle.RENDERING) for _ in range(4)]
    for state in states:
        await store.create(state)
        await store.update(state.job_id, lifecycle.cancelled)
    ids = [s.job_id for s in states]

    async def walk() -> list[str]:
        return [s.job_id async for s in store.finished_before(time.time() + 60)]

    async def mark() -> int:
        return int((await jobs_kv.get("sweep.done")).value)

    assert await walk() == ids
    assert await walk() == ids  # nothing deleted: the same entries again
    first = await mark()
    for job_id in ids[:2]:  # what a retention sweep does with them
        await store.delete(job_id)
    assert await walk() == ids[2:]
    assert await mark() > first  # the next walk starts past the deleted ones
    later = client_state("a", lifecycle.RENDERING)
    await store.create(later)
    await store.update(later.job_id, lifecycle.cancelled)
    assert await walk() == [*ids[2:], later.job_id]
    before = await mark()
    async for _ in store.finished_before(time.time() + 60):
        break  # a walk stopped early leaves the mark alone
    assert await mark() == before


# -- the index records, byte for byte, and the races every index write must lose -----------


def job_id_in_shard(prefix: str) -> str:
    """A fresh job id that starts with ``prefix`` (its first eight hex digits pick its
    shard of the status counters)."""
    return prefix + keys.new_job_id()[len(prefix) :]


async def raw(jobs_kv, key: str) -> bytes | None:
    """A key's stored bytes (nats-py reads an empty value as None), None when there is no
    such key."""
    try:
        return (await jobs_kv.get(key)).value or b""
    except nats.js.errors.NotFoundError:
        return None


class SlipsIn:
    """A bucket in which ``action`` (another writer) runs once, just before the first
    atomic write that ``when`` picks; then every write goes through."""

    def __init__(self, inner, action, when=lambda writes: True) -> None:
        self.inner, self.action, self.when = inner, action, when

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def commit(self, writes):
        if self.action is not None and self.when(writes):
            action, self.action = self.action, None
            await action()
        return await self.inner.commit(writes)


async def test_index_records_have_a_stable_layout(jobs_kv, idem_kv):
    # Stored records outlive an upgrade: keys and bytes must never change. The counter
    # shard is the first 8 hex digits of the id, mod 8 (0x13 = 19 -> shard 3).
    store = JobStore(jobs_kv, idem_kv)
    first = client_state("alice")
    first.job_id = job_id_in_shard("000000130")  # not 0x130 = 304 -> shard 0: 8 digits
    await store.create(first)
    alice = "list." + hashlib.sha256(b"alice").hexdigest()
    assert await raw(jobs_kv, "list.all.head") == b'{"ids":["%s"],"n":1}' % first.job_id.encode()
    assert await raw(jobs_kv, alice + ".head") == await raw(jobs_kv, "list.all.head")
    assert await raw(jobs_kv, "counts.3") == b'{"PENDING":1}'
    assert await raw(jobs_kv, "open." + first.job_id) == b""
    failed = await store.update(first.job_id, lambda s: lifecycle.failed(s, "x"))
    assert await raw(jobs_kv, "counts.3") == b'{"FAILED":1,"PENDING":0}'
    finished_at = str(failed.updated_at.ToSeconds()).encode()
    assert await raw(jobs_kv, "done." + first.job_id) == finished_at
    assert await raw(jobs_kv, "open." + first.job_id) is None
    # A delete blanks the job's position and takes every entry of the job at once.
    second = client_state("bob")
    await store.create(second)
    await store.delete(first.job_id)
    assert await raw(jobs_kv, "list.all.head") == b'{"ids":["","%s"],"n":2}' % (
        second.job_id.encode()
    )
    assert await raw(jobs_kv, alice + ".head") == b'{"ids":[""],"n":1}'
    assert [k for k in await jobs_kv.keys_under() if first.job_id in k] == []


async def test_a_delete_blanks_positions_at_the_edges_of_a_block(jobs_kv, idem_kv):
    store = JobStore(jobs_kv, idem_kv)
    made = []
    for _ in range(LIST_BLOCK + 2):
        state = client_state("alice", lifecycle.COMPLETED)
        await store.create(state)
        made.append(state.job_id)
    for job_id in (made[0], made[LIST_BLOCK - 2], made[LIST_BLOCK]):
        await store.delete(job_id)
    block = json.loads(await raw(jobs_kv, "list.all.0"))
    assert len(block) == LIST_BLOCK and block[0] == block[-2] == ""
    assert block[1:-2] == made[1 : LIST_BLOCK - 2] and block[-1] == made[LIST_BLOCK - 1]
    assert json.loads(await raw(jobs_kv, "list.all.head")) == {
        "ids": ["", made[-1]],
        "n": LIST_BLOCK + 2,
    }
    # A scan that reaches only the last two positions of a block still reads that block.
    found, before = await store.page(before=LIST_BLOCK + 1, size=5, scan_limit=2)
    assert [s.job_id for s in found] == [made[LIST_BLOCK - 1]] and before == LIST_BLOCK - 1
    assert (await store.page(before=1, size=5, scan_limit=50)) == ([], 0)


async def test_a_delete_trusts_no_stored_position(jobs_kv, idem_kv):
    # Jobs written behind the index (no position, or one that is not theirs): deleting them
    # leaves every listing as it was.
    store = JobStore(jobs_kv, idem_kv)
    listed_ones = [client_state("alice") for _ in range(3)]
    for state in listed_ones:
        await store.create(state)
    strays = [client_state("alice") for _ in range(3)]
    strays[1].list_position = strays[1].client_list_position = 2  # another job's
    strays[2].list_position = strays[2].client_list_position = 4  # past the head
    for state in strays:
        await jobs_kv.put(state.job_id, state.SerializeToString())
    before = {key: await raw(jobs_kv, key) for key in await jobs_kv.keys_under("list.")}
    for state in strays:
        await store.delete(state.job_id)
    assert {key: await raw(jobs_kv, key) for key in await jobs_kv.keys_under("list.")} == before
    assert await listed(store, 5) == [s.job_id for s in reversed(listed_ones)]


async def test_index_writes_that_race_start_over(jobs_kv, idem_kv):
    # Every index record is written only at the revision read: a writer that raced for a
    # counter shard, or for a listing, starts over and the counters stay exact.
    store = JobStore(jobs_kv, idem_kv)
    a, b, c = (client_state("alice") for _ in range(3))
    a.job_id, b.job_id, c.job_id = (
        job_id_in_shard(p) for p in ("00000001", "00000009", "00000011")
    )
    await store.create(a)

    def racing(action) -> JobStore:
        return JobStore(SlipsIn(jobs_kv, action), idem_kv)

    async def plan(state) -> None:
        await store.update(state.job_id, lifecycle.start_planning)

    async def cancel(state) -> None:
        await store.update(state.job_id, lifecycle.cancelled)

    # A create racing a status change in its shard.
    await racing(lambda: plan(a)).create(b)
    assert await store.counts() == await recount(store) == {"PENDING": 1, "PLANNING": 1}
    # A status change racing another one in its shard.
    await racing(lambda: cancel(a)).update(b.job_id, lifecycle.start_planning)
    assert await store.counts() == await recount(store) == {"PLANNING": 1, "CANCELLED": 1}
    # A delete racing a status change of another job in its shard, and of its own job.
    await store.create(c)
    await racing(lambda: plan(c)).delete(a.job_id)
    assert await store.counts() == await recount(store) == {"PLANNING": 2}
    await racing(lambda: cancel(c)).delete(c.job_id)
    assert await store.counts() == await recount(store) == {"PLANNING": 1}
    # A delete racing a create for the head of the listings.
    d = client_state("alice")
    d.job_id = job_id_in_shard("00000002")  # not b's shard: only the listings race
    await racing(lambda: store.create(d)).delete(b.job_id)
    assert await listed(store, 5) == await listed(store, 5, client_id="alice") == [d.job_id]


async def test_a_create_never_overwrites_a_written_block(jobs_kv, idem_kv, monkeypatch):
    # A head one short of a full block whose block is written already (a rebuild under
    # way): the create is refused rather than overwrite that block.
    monkeypatch.setattr(jobstore, "CREATE_MAX_TRIES", 2)
    store = JobStore(jobs_kv, idem_kv)
    ids = [keys.new_job_id() for _ in range(LIST_BLOCK - 1)]
    await jobs_kv.put("list.all.0", b'["kept"]')
    await jobs_kv.put("list.all.head", json.dumps({"n": LIST_BLOCK - 1, "ids": ids}).encode())
    state = new_state()
    with pytest.raises(
        ConcurrentUpdateError, match=f"^job {state.job_id}: create lost its race for the index$"
    ):
        await store.create(state)
    assert await raw(jobs_kv, "list.all.0") == b'["kept"]'


async def test_always_losing_the_race_gives_a_delete_up(jobs_kv, idem_kv):
    state = new_state()
    await JobStore(jobs_kv, idem_kv).create(state)
    store = JobStore(Racing(jobs_kv, races=10), idem_kv, max_tries=3)
    with pytest.raises(ConcurrentUpdateError, match=f"^job {state.job_id}: delete lost its race$"):
        await store.delete(state.job_id)


async def test_empty_index_records_read_as_empty(jobs_kv, idem_kv):
    store = JobStore(jobs_kv, idem_kv)
    state = client_state("alice")
    alice = "list." + hashlib.sha256(b"alice").hexdigest()
    for key in (alice + ".head", "counts." + str(int(state.job_id[:8], 16) % 8)):
        await jobs_kv.put(key, b"")
    await jobs_kv.put("list.all.head", json.dumps({"n": LIST_BLOCK, "ids": []}).encode())
    await jobs_kv.put("list.all.0", b"")
    await store.create(state)
    stored, _ = await store.get(state.job_id)
    assert (stored.list_position, stored.client_list_position) == (LIST_BLOCK + 1, 1)
    assert await store.counts() == {"PENDING": 1}
    assert await listed(store, 80) == [state.job_id]
    assert await listed(store, 5, client_id="alice") == [state.job_id]


async def test_a_status_change_drops_only_the_entry_the_job_left(jobs_kv, idem_kv):
    store = JobStore(jobs_kv, idem_kv)
    state = client_state("a")
    await store.create(state)
    assert (await store.apply(state.job_id, lifecycle.start_planning))[1] is True
    titled, wrote = await store.apply(state.job_id, lambda s: setattr(s, "title", "t"))
    assert wrote is True and titled == (await store.get(state.job_id))[0]
    assert await raw(jobs_kv, "open." + state.job_id) == b""  # still unfinished
    await store.update(state.job_id, lifecycle.cancelled)
    assert await raw(jobs_kv, "open." + state.job_id) is None  # gone at once, no sweep
    # A resume that lands between a finish and the drop of its unfinished entry keeps
    # the entry it wrote.
    other = client_state("a", lifecycle.RENDERING)
    await store.create(other)

    class ResumedBeforeTheDrop:
        def __init__(self, inner) -> None:
            self.inner, self.done = inner, False

        def __getattr__(self, name):
            return getattr(self.inner, name)

        async def purge(self, key, before=None):
            if not self.done:
                self.done = True
                await store.update(other.job_id, lambda s: lifecycle.resumed(s, []))
            return await self.inner.purge(key, before)

    await JobStore(ResumedBeforeTheDrop(jobs_kv), idem_kv).update(other.job_id, lifecycle.cancelled)
    assert [s.job_id for s in await store.open_jobs()] == [other.job_id]


async def test_sweeps_drop_only_entries_older_than_the_state_they_read(jobs_kv, idem_kv):
    store = JobStore(jobs_kv, idem_kv)
    finished, unfinished = new_state(lifecycle.CANCELLED), new_state(lifecycle.RENDERING)

    async def entry_then_job(prefix: str, state) -> str:
        await jobs_kv.put(prefix + state.job_id, b"1")
        await jobs_kv.put(state.job_id, state.SerializeToString())
        return prefix + state.job_id

    async def job_then_entry(prefix: str, state) -> str:
        await jobs_kv.put(state.job_id, state.SerializeToString())
        await jobs_kv.put(prefix + state.job_id, b"1")
        return prefix + state.job_id

    async def entry_only(prefix: str) -> str:
        key = prefix + keys.new_job_id()
        await jobs_kv.put(key, b"1")
        return key

    def copy(state):
        other = animation_pb2.JobState()
        other.CopyFrom(state)
        other.job_id = keys.new_job_id()
        return other

    # An entry older than the job's state is a leftover; one written after the state the
    # sweep read belongs to a change that came later, and stays.
    stale_open = [await entry_then_job("open.", finished), await entry_only("open.")]
    newer_open = await job_then_entry("open.", copy(finished))
    stale_done = [await entry_then_job("done.", unfinished), await entry_only("done.")]
    newer_done = await job_then_entry("done.", copy(unfinished))
    # A listing of unfinished jobs reads the entries but writes nothing.
    assert await store.page(size=5, status=lifecycle.CANCELLED, scan_limit=50) == ([], 0)
    assert await store.page(size=5, status=lifecycle.RENDERING, scan_limit=50) == ([], 0)
    assert set(stale_open) <= set(await jobs_kv.keys_under("open."))
    assert await store.open_jobs() == []
    assert await jobs_kv.keys_under("open.") == [newer_open]
    assert [s async for s in store.finished_before(time.time() + 60)] == []
    assert await jobs_kv.keys_under("done.") == [newer_done]
    assert not set(stale_done) & set(await jobs_kv.keys_under())


async def test_the_finished_walk_ends_at_the_cutoff_and_moves_its_mark(jobs_kv, idem_kv):
    store = JobStore(jobs_kv, idem_kv)
    # The very first write of the bucket (revision 1) is a finished entry: walked too.
    early = new_state(lifecycle.FAILED)
    await jobs_kv.put("done." + early.job_id, b"")  # no time: finished at 0
    await jobs_kv.put(early.job_id, early.SerializeToString())

    async def walk(cutoff: float) -> list[str]:
        return [s.job_id async for s in store.finished_before(cutoff)]

    assert await walk(1) == [early.job_id]
    a, b = client_state("a", lifecycle.RENDERING), client_state("a", lifecycle.RENDERING)
    for state in (a, b):
        await store.create(state)
    finished_at = [
        (await store.update(s.job_id, lifecycle.cancelled)).updated_at.ToSeconds() for s in (a, b)
    ]
    assert await walk(finished_at[0]) == [early.job_id]  # finished at the cutoff: not before
    assert await walk(finished_at[1] + 1) == [early.job_id, a.job_id, b.job_id]
    # The mark is just before the first finished entry left, written only when it moves
    # (here the first entry is the bucket's first write: the mark stays at the start).
    entries = {k: (await jobs_kv.get(k)).revision for k in await jobs_kv.keys_under("done.")}
    assert await raw(jobs_kv, "sweep.done") is None
    await store.delete(early.job_id)
    await store.delete(a.job_id)
    assert await walk(0) == []  # stops at b, and moves the mark past what is gone
    mark = await jobs_kv.get("sweep.done")
    assert mark.value == str(entries["done." + b.job_id] - 1).encode()
    assert await walk(0) == []
    assert (await jobs_kv.get("sweep.done")).revision == mark.revision
    # A mark decides where a walk starts; an empty one is the start of the bucket.
    await jobs_kv.put("sweep.done", str(entries["done." + b.job_id]).encode())
    assert await walk(finished_at[1] + 1) == []
    await jobs_kv.put("sweep.done", b"")
    assert await walk(finished_at[1] + 1) == [b.job_id]


async def test_unfinished_pages_go_on_from_positions_in_their_listing(jobs_kv, idem_kv):
    store = JobStore(jobs_kv, idem_kv)
    for i in range(4):
        await store.create(client_state("alice" if i % 2 else "bob"))
    found, before = await store.page(
        client_id="alice", size=1, status=lifecycle.PENDING, scan_limit=9
    )
    assert before == found[0].client_list_position == 2
    found, before = await store.page(size=1, status=lifecycle.PENDING, scan_limit=9)
    assert before == found[0].list_position == 4


async def test_a_rebuild_replaces_every_index_record(jobs_kv, idem_kv):
    store = JobStore(jobs_kv, idem_kv)
    made = []
    for i in range(2 * LIST_BLOCK + 1):
        state = client_state("alice", lifecycle.COMPLETED if i % 2 else lifecycle.RENDERING)
        state.created_at.FromSeconds(1000 + i)
        await jobs_kv.create(state.job_id, state.SerializeToString())
        made.append(state)
    # What an index of another version left behind: none of it may survive.
    stale = {"counts.7": b'{"PENDING":5}', "open." + keys.new_job_id(): b""}
    stale |= {"done." + keys.new_job_id(): b"1", "list.all.9": b"[]", "sweep.done": b"3"}
    for key, value in stale.items():
        await jobs_kv.put(key, value)
    assert await store.rebuild_index() == len(made)
    left = set(await jobs_kv.keys_under())
    assert not {k for k in stale if k != "counts.7"} & left
    assert await store.counts() == await recount(store)
    block = json.loads(await raw(jobs_kv, "list.all.0"))
    assert block == [s.job_id for s in made[:LIST_BLOCK]]
    for position, state in enumerate(made, 1):
        stored, _ = await store.get(state.job_id)
        assert (stored.list_position, stored.client_list_position) == (position, position)
        if lifecycle.is_terminal(state.status):
            assert "open." + state.job_id not in left
            assert await raw(jobs_kv, "done." + state.job_id) == b"0"
        else:
            assert await raw(jobs_kv, "open." + state.job_id) == b""
            assert "done." + state.job_id not in left
    # A job changed while the rebuild ran is not overwritten: the rebuild fails.
    with pytest.raises(nats.js.errors.KeyWrongLastSequenceError):
        await JobStore(Racing(jobs_kv, races=1), idem_kv).rebuild_index()
    assert (await store.get(made[0].job_id))[0].title == "+"


async def test_a_deleted_job_leaves_a_purge_marker_until_its_drop(jobs_kv, idem_kv):
    # The delete's atomic write purges the job (a marker, no value); the drop after it
    # removes the marker too. A planner that dies in between leaves the marker alone.
    store = JobStore(jobs_kv, idem_kv)
    state = new_state()
    await store.create(state)

    class Dies(Exception):
        pass

    class DiesBeforeTheDrop:
        def __init__(self, inner) -> None:
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        async def purge(self, key, before=None):
            raise Dies

    with contextlib.suppress(Dies):
        await JobStore(DiesBeforeTheDrop(jobs_kv), idem_kv).delete(state.job_id)
    revision, left = 0, None
    while (entry := await jobs_kv.next_after("", revision)) is not None:
        revision = entry.revision
        left = entry if entry.key == state.job_id else left
    assert left is not None and left.value is None
    with pytest.raises(JobNotFound):
        await store.get(state.job_id)


# --- what a store remembers of the jobs it read or wrote ------------------------------------


def _titled(title: str):
    def mutate(s: animation_pb2.JobState) -> None:
        s.title = title

    return mutate


async def test_an_update_after_the_stores_own_read_or_write_reads_nothing_more(jobs_kv, idem_kv):
    """The conductor's update for each frame follows its own write for the frame before:
    the job is not read again, a status change (an atomic batch) included."""
    counting = Counting(jobs_kv)
    store = JobStore(counting, idem_kv)
    state = new_state()
    await store.create(state)
    await store.update(state.job_id, _titled("one"))
    await store.update(state.job_id, lifecycle.start_planning)
    stored = await store.update(state.job_id, _titled("two"))
    assert counting.job_reads == 0
    assert stored.title == "two" and stored.status == lifecycle.PLANNING
    assert (await store.get(state.job_id))[0] == stored
    other = new_state()
    await JobStore(jobs_kv, idem_kv).create(other)
    await store.get(other.job_id)
    await store.update(other.job_id, _titled("read once"))
    assert counting.job_reads == 2  # the two gets


async def test_a_state_another_writer_changed_is_read_again(jobs_kv, idem_kv):
    """However this store came to know the job (its create, a get, a write, a status
    change), a write by another store since is found, not overwritten."""
    mine, theirs = JobStore(jobs_kv, idem_kv), JobStore(jobs_kv, idem_kv)

    async def by_get(job_id: str) -> None:
        await mine.get(job_id)

    async def by_write(job_id: str) -> None:
        await mine.update(job_id, _titled("mine"))

    async def by_status_change(job_id: str) -> None:
        await mine.update(job_id, lifecycle.start_planning)

    for came_to_know in (None, by_get, by_write, by_status_change):
        state = new_state()
        await mine.create(state)
        if came_to_know is not None:
            await came_to_know(state.job_id)
        await theirs.update(state.job_id, _titled("theirs"))

        def mark(s: animation_pb2.JobState) -> None:
            s.error = "mine"

        stored, wrote = await mine.apply(state.job_id, mark)
        assert wrote and (stored.title, stored.error) == ("theirs", "mine")
        assert (await theirs.get(state.job_id))[0] == stored


async def test_a_remembered_state_never_decides_alone_that_nothing_changes(jobs_kv, idem_kv):
    mine, theirs = JobStore(jobs_kv, idem_kv), JobStore(jobs_kv, idem_kv)
    state = new_state()
    await mine.create(state)  # remembered: no title
    await theirs.update(state.job_id, _titled("theirs"))
    stored, wrote = await mine.apply(state.job_id, _titled(""))
    assert wrote and stored.title == ""
    assert (await theirs.get(state.job_id))[0].title == ""
    # And with nothing to change on the fresh state either, the fresh state is the answer.
    await theirs.update(state.job_id, lifecycle.start_planning)
    stored, wrote = await mine.apply(state.job_id, _titled(""))
    assert not wrote and stored.status == lifecycle.PLANNING


async def test_a_remembered_status_never_decides_alone_what_is_expected(jobs_kv, idem_kv):
    mine, theirs = JobStore(jobs_kv, idem_kv), JobStore(jobs_kv, idem_kv)
    state = new_state()
    await mine.create(state)  # remembered: PENDING
    await theirs.update(state.job_id, lifecycle.start_planning)
    with pytest.raises(UnexpectedStatus, match="status is PLANNING, expected PENDING"):
        await mine.update(state.job_id, _titled("late"), expect_status=lifecycle.PENDING)
    other = new_state()
    await mine.create(other)
    await theirs.update(other.job_id, lifecycle.start_planning)
    stored = await mine.update(other.job_id, lifecycle.cancelled, expect_status=lifecycle.PLANNING)
    assert stored.status == lifecycle.CANCELLED


async def test_a_remembered_state_never_refuses_a_transition_alone(jobs_kv, idem_kv):
    mine, theirs = JobStore(jobs_kv, idem_kv), JobStore(jobs_kv, idem_kv)
    state = new_state()
    await mine.create(state)  # remembered: PENDING, from which RENDERING is refused
    await theirs.update(state.job_id, lifecycle.start_planning)

    def render(s: animation_pb2.JobState) -> None:
        s.status = lifecycle.RENDERING

    assert (await mine.update(state.job_id, render)).status == lifecycle.RENDERING
    # Refused on the fresh state too: refused.
    with pytest.raises(InvalidTransition):
        await mine.update(state.job_id, lambda s: setattr(s, "status", lifecycle.PENDING))


async def test_a_state_given_to_a_caller_is_not_what_the_store_remembers(jobs_kv, idem_kv):
    counting = Counting(jobs_kv)
    store = JobStore(counting, idem_kv)
    state = new_state()
    await store.create(state)
    given, _ = await store.get(state.job_id)
    given.title = "changed by the caller"
    stored = await store.update(state.job_id, lambda s: setattr(s, "error", "e"))
    assert (stored.title, stored.error) == ("", "e")
    assert counting.job_reads == 1  # the caller's get; the update started from memory


async def test_the_store_remembers_at_most_known_states_jobs(jobs_kv, idem_kv, monkeypatch):
    monkeypatch.setattr(jobstore, "KNOWN_STATES", 2)
    counting = Counting(jobs_kv)
    store = JobStore(counting, idem_kv)
    states = [new_state() for _ in range(3)]
    for state in states:
        await store.create(state)
    await store.update(states[2].job_id, _titled("newest"))
    await store.update(states[1].job_id, _titled("second"))
    assert counting.job_reads == 0
    await store.update(states[0].job_id, _titled("oldest, forgotten"))
    assert counting.job_reads == 1


async def test_an_update_of_a_deleted_job_finds_it_gone(jobs_kv, idem_kv):
    store = JobStore(jobs_kv, idem_kv)
    state = new_state()
    await store.create(state)
    await store.delete(state.job_id)
    with pytest.raises(JobNotFound):
        await store.update(state.job_id, _titled("gone"))
