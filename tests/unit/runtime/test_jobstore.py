"""runtime/jobstore.py without a server: the idempotency key of a client's request, and the
job store's whole contract on an in-memory bucket (the same tests run on a real NATS
bucket in tests/integration/runtime/test_jobstore.py)."""

from __future__ import annotations

import hashlib
import json
import time

import nats.js.errors
import pytest
from support.jobstore_cases import *  # noqa: F403 (the shared contract tests)
from support.jobstore_cases import Racing
from support.memory_js import MemoryJetStream
from support.memory_kv import MemoryKV

from ghibli_anim.contracts import keys, lifecycle
from ghibli_anim.contracts.pb import animation_pb2
from ghibli_anim.runtime import jobstore


@pytest.fixture
def jobs_kv() -> MemoryKV:
    return MemoryKV("anim-jobs")


@pytest.fixture
def idem_kv() -> MemoryKV:
    return MemoryKV("anim-idem")


def test_idempotency_key_is_stable_and_unambiguous() -> None:
    key = jobstore.idempotency_key("client", "key-1")
    assert key == jobstore.idempotency_key("client", "key-1")
    assert len(key) == 64 and all(c in "0123456789abcdef" for c in key)
    assert key != jobstore.idempotency_key("client", "key-2")
    assert key != jobstore.idempotency_key("other", "key-1")
    # A separator inside either part cannot make two pairs collide.
    assert jobstore.idempotency_key("a|b", "c") != jobstore.idempotency_key("a", "b|c")


def test_idempotency_keys_hash_the_json_of_the_pair() -> None:
    # Stored claims outlive an upgrade (24 h): the key of a pair must never change.
    # Compact JSON, non-ASCII kept as UTF-8 (not \u escapes).
    for client, key, joined in [
        ("client", "key-1", '["client","key-1"]'),
        ("c", "clé, ünïcode", '["c","clé, ünïcode"]'),
    ]:
        expected = hashlib.sha256(joined.encode("utf-8")).hexdigest()
        assert jobstore.idempotency_key(client, key) == expected


async def test_open_binds_both_buckets_and_passes_max_tries() -> None:
    js = MemoryJetStream()
    store = await jobstore.JobStore.open(js, max_tries=2)
    assert store.max_tries == 2 and store.idem is js.buckets["anim-idem"]
    assert (await jobstore.JobStore.open(js)).max_tries == jobstore.DEFAULT_MAX_TRIES == 20
    state = animation_pb2.JobState(job_id=keys.new_job_id(), status=lifecycle.PENDING)
    await store.create(state)
    racing = jobstore.JobStore(Racing(store.jobs, races=5), store.idem, max_tries=2)
    with pytest.raises(
        jobstore.ConcurrentUpdateError,
        match=f"^job {state.job_id}: update lost the compare-and-swap race 2 times$",
    ):
        await racing.update(state.job_id, lifecycle.start_planning)


async def test_a_job_whose_entry_is_empty_is_not_found(jobs_kv) -> None:
    # An emptied entry (what a delete marker reads as) is no job.
    job_id = keys.new_job_id()
    jobs_kv.write_behind(job_id, b"")
    with pytest.raises(jobstore.JobNotFound, match=f"^job {job_id}: not found$"):
        await jobstore.JobStore(jobs_kv).get(job_id)


async def test_idempotency_needs_its_bucket(jobs_kv) -> None:
    store = jobstore.JobStore(jobs_kv)
    message = "^JobStore was opened without the anim-idem bucket$"
    with pytest.raises(RuntimeError, match=message):
        await store.claim_idempotency("c", "k", keys.new_job_id())
    with pytest.raises(RuntimeError, match=message):
        await store.release_idempotency("c", "k", keys.new_job_id())


class _AlwaysExpiring:
    """An idempotency bucket whose claim is always taken and always gone when read."""

    def __init__(self) -> None:
        self.creates = 0

    async def create(self, key, value):
        self.creates += 1
        raise nats.js.errors.KeyWrongLastSequenceError

    async def get(self, key):
        raise nats.js.errors.KeyNotFoundError


async def test_a_claim_that_keeps_vanishing_gives_up_after_three_tries(jobs_kv) -> None:
    idem = _AlwaysExpiring()
    store = jobstore.JobStore(jobs_kv, idem)  # type: ignore[arg-type]
    with pytest.raises(
        jobstore.ConcurrentUpdateError, match=r"^idempotency key 'k': could not be claimed$"
    ):
        await store.claim_idempotency("c", "k", keys.new_job_id())
    assert idem.creates == 3


class _DeleteFails:
    """An idempotency bucket whose conditional delete fails with the server's error."""

    def __init__(self, inner: MemoryKV, err_code: int) -> None:
        self.inner, self.err_code = inner, err_code

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def delete(self, key, last=None):
        raise nats.js.errors.BadRequestError(code=400, err_code=self.err_code, description="x")


@pytest.mark.parametrize(
    ("err_code", "released"),
    [(10071, False), (10164, False), (10003, None)],  # stale revision (both codes), other
)
async def test_a_release_reads_the_servers_stale_revision_errors(
    jobs_kv, idem_kv, err_code, released
) -> None:
    job_id = keys.new_job_id()
    await jobstore.JobStore(jobs_kv, idem_kv).claim_idempotency("c", "k", job_id)
    store = jobstore.JobStore(jobs_kv, _DeleteFails(idem_kv, err_code))  # type: ignore[arg-type]
    if released is None:
        with pytest.raises(nats.js.errors.BadRequestError):
            await store.release_idempotency("c", "k", job_id)
    else:
        assert await store.release_idempotency("c", "k", job_id) is released


# -- the per-client cap's slot records ------------------------------------------------


def test_a_clients_slot_record_has_a_stable_key() -> None:
    # Records outlive an upgrade: the key of a client must never change.
    expected = "slots." + hashlib.sha256(b"alice").hexdigest()
    assert jobstore.slot_key("alice") == expected
    assert not keys.is_job_id(expected)


def _record(kv: MemoryKV, client: str) -> dict:
    value, _ = kv._values[jobstore.slot_key(client)]
    return json.loads(value)


async def _job(store: jobstore.JobStore, status: int = lifecycle.RENDERING) -> str:
    state = animation_pb2.JobState(job_id=keys.new_job_id(), status=status)
    await store.create(state)
    return state.job_id


async def test_a_slot_record_names_its_client_and_when_each_job_claimed(jobs_kv) -> None:
    store = jobstore.JobStore(jobs_kv)
    job_id = keys.new_job_id()
    before = time.time()
    await store.claim_slot("alice", job_id, 4)
    record = _record(jobs_kv, "alice")
    assert record["client"] == "alice" and list(record["jobs"]) == [job_id]
    assert before <= record["jobs"][job_id] <= time.time()


async def test_an_empty_slot_record_counts_as_no_slots(jobs_kv) -> None:
    jobs_kv.write_behind(jobstore.slot_key("alice"), b"")
    assert await jobstore.JobStore(jobs_kv).claim_slot("alice", keys.new_job_id(), 1) == 1


async def test_a_pending_claim_keeps_its_time_and_a_lost_one_frees_its_slot(jobs_kv) -> None:
    store = jobstore.JobStore(jobs_kv)
    pending = keys.new_job_id()  # claimed; its create is still to come
    await store.claim_slot("alice", pending, 3)
    running = keys.new_job_id()
    await store.claim_slot("alice", running, 3)
    await store.create(animation_pb2.JobState(job_id=running, status=lifecycle.RENDERING))
    record = _record(jobs_kv, "alice")["jobs"]
    assert all(isinstance(at, float) for at in record.values()) and len(record) == 2
    # The pending claim's create never came, and the running job was deleted: past the
    # grace, neither holds a slot any more, and the others still count.
    await store.delete(running)
    third = await _job(store)
    assert await store.claim_slot("alice", third, 2, grace_s=0) == 1
    fourth = await _job(store)
    assert await store.claim_slot("alice", fourth, 2, grace_s=0) == 2
    with pytest.raises(jobstore.SlotsTaken):
        await store.claim_slot("alice", keys.new_job_id(), 2, grace_s=0)


async def test_a_lost_claim_before_running_jobs_does_not_hide_them(jobs_kv) -> None:
    store = jobstore.JobStore(jobs_kv)
    await store.claim_slot("alice", keys.new_job_id(), 2)  # its create never comes
    running = await _job(store)
    await store.claim_slot("alice", running, 2)
    other = await _job(store)
    assert await store.claim_slot("alice", other, 2, grace_s=0) == 2
    assert set(_record(jobs_kv, "alice")["jobs"]) == {running, other}
    assert all(isinstance(at, float) for at in _record(jobs_kv, "alice")["jobs"].values())
    with pytest.raises(jobstore.SlotsTaken):
        await store.claim_slot("alice", keys.new_job_id(), 2, grace_s=0)
    # Once a job is gone, its slot is free again.
    await store.delete(running)
    assert await store.claim_slot("alice", await _job(store), 2, grace_s=0) == 2


class _ClaimSlipsIn:
    """A jobs bucket in which another create's claim writes the slot record between this
    claim's read and its write."""

    def __init__(self, inner: MemoryKV, client: str, other_job: str) -> None:
        self.inner, self.client, self.other_job, self.done = inner, client, other_job, False

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def update(self, key, value, last=None):
        if not self.done and key == jobstore.slot_key(self.client):
            self.done = True
            await jobstore.JobStore(self.inner).claim_slot(self.client, self.other_job, 9)
        return await self.inner.update(key, value, last=last)


async def test_a_claim_that_loses_the_race_counts_the_winner(jobs_kv) -> None:
    store = jobstore.JobStore(jobs_kv)
    first = await _job(store)
    await store.claim_slot("alice", first, 2)
    winner = await _job(store)
    racing = jobstore.JobStore(_ClaimSlipsIn(jobs_kv, "alice", winner))
    with pytest.raises(jobstore.SlotsTaken, match="2 unfinished jobs, the limit is 2"):
        await racing.claim_slot("alice", await _job(store), 2)
    assert set(_record(jobs_kv, "alice")["jobs"]) == {first, winner}


async def test_a_claim_that_always_loses_the_race_gives_up(jobs_kv, monkeypatch) -> None:
    class AlwaysTaken:
        async def get(self, key):
            raise nats.js.errors.KeyNotFoundError

        async def create(self, key, value):
            raise nats.js.errors.KeyWrongLastSequenceError

    monkeypatch.setattr(jobstore, "SLOT_MAX_TRIES", 3)
    store = jobstore.JobStore(AlwaysTaken())  # type: ignore[arg-type]
    with pytest.raises(
        jobstore.ConcurrentUpdateError, match=r"^client alice: could not claim a slot$"
    ):
        await store.claim_slot("alice", keys.new_job_id(), 2)
