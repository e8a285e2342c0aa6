"""runtime/jobstore.py without a server: the idempotency key of a client's request, and the
job store's whole contract on an in-memory bucket (the same tests run on a real NATS
bucket in tests/integration/runtime/test_jobstore.py)."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import logging
import time

import nats.js.errors
import pytest
from nats.js.kv import KeyValue
from support.jobstore_cases import *  # noqa: F403 (the shared contract tests)
from support.jobstore_cases import Racing
from support.memory_js import MemoryJetStream
from support.memory_kv import MemoryKV

from ghibli_anim.contracts import keys, lifecycle
from ghibli_anim.contracts.pb import animation_pb2
from ghibli_anim.runtime import faults, jobstore
from ghibli_anim.runtime.bus.buckets import JobsBucket
from ghibli_anim.runtime.bus.consumer import NonRetryable


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


# -- what only a stand-in can show: logs, fault hooks, clocks, reads ------------------------


async def test_open_wraps_a_real_bucket_with_its_context_and_connection() -> None:
    class WithRealBucket(MemoryJetStream):
        _nc = object()  # the connection nats-py keeps on a JetStream context

        async def key_value(self, bucket):
            if bucket != "anim-jobs":
                return await super().key_value(bucket)
            return KeyValue(
                name=bucket, stream="KV_" + bucket, pre="$KV.anim-jobs.", js=self, direct=False
            )

    js = WithRealBucket()
    store = await jobstore.JobStore.open(js)
    assert isinstance(store.jobs, JobsBucket)
    assert (
        isinstance(store.jobs._kv, KeyValue) and store.jobs._js is js and store.jobs._nc is js._nc
    )


class _PurgeFails:
    def __init__(self, inner: MemoryKV) -> None:
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def purge(self, key, before=None):
        raise RuntimeError("boom")


async def test_an_entry_that_cannot_be_dropped_is_logged_and_left(jobs_kv, caplog) -> None:
    store = jobstore.JobStore(jobs_kv)
    job_id = await _job(store)
    with caplog.at_level(logging.WARNING, logger=jobstore.__name__):
        done = await jobstore.JobStore(_PurgeFails(jobs_kv)).update(job_id, lifecycle.cancelled)
    assert done.status == lifecycle.CANCELLED
    [record] = caplog.records
    assert record.getMessage() == "index entry not dropped"
    assert (record.key, record.error) == ("open." + job_id, "boom")
    assert "open." + job_id in await jobs_kv.keys_under("open.")


async def test_the_index_fault_hook_is_hit_only_when_an_entry_is_left(jobs_kv, monkeypatch) -> None:
    # Chaos tests kill a planner there: after the atomic write, before the drop.
    monkeypatch.setattr(faults, "_FAULTS", faults.parse("index:-1:fail"))
    store = jobstore.JobStore(jobs_kv)
    job_id = await _job(store, lifecycle.PENDING)
    assert (await store.update(job_id, lifecycle.start_planning)).status == lifecycle.PLANNING
    with pytest.raises(NonRetryable, match="index frame -1"):
        await store.update(job_id, lifecycle.cancelled)
    assert (await store.get(job_id))[0].status == lifecycle.CANCELLED
    assert "open." + job_id in await jobs_kv.keys_under("open.")


class _Counting:
    """A bucket that counts the reads of each kind of key."""

    def __init__(self, inner: MemoryKV) -> None:
        self.inner = inner
        self.reads: collections.Counter[str] = collections.Counter()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def get(self, key):
        self.reads["job" if keys.is_job_id(key) else key.split(".")[0]] += 1
        return await self.inner.get(key)


async def test_a_page_reads_only_the_records_and_jobs_it_needs(jobs_kv) -> None:
    store = jobstore.JobStore(jobs_kv)
    made = []
    for position in range(1, 2 * jobstore.LIST_BLOCK + 6):
        status = lifecycle.FAILED if position % 10 == 0 else lifecycle.COMPLETED
        made.append(await _job(store, status))
    counting = _Counting(jobs_kv)
    reader = jobstore.JobStore(counting)

    async def page(**query) -> tuple[list[str], collections.Counter[str]]:
        counting.reads.clear()
        found, _ = await reader.page(scan_limit=100, **query)
        return [s.job_id for s in found], +counting.reads

    # Each round reads the jobs still wanted and 8 more, from the records that hold them:
    # positions 66..76 lie in block 1 only, 54..64 in block 0 only.
    assert await page(before=77, size=3) == (made[75:72:-1], {"list": 2, "job": 11})
    assert await page(before=65, size=3) == (made[63:60:-1], {"list": 2, "job": 11})
    # With a filter, the next round reads what is still wanted: 11 (76..66: one FAILED),
    # then 10 (65..56: one more), then 9 (55..47: the third); the head, then the records
    # of each round (blocks 1; 1 and 0; 0).
    assert await page(before=77, size=3, status=lifecycle.FAILED) == (
        [made[69], made[59], made[49]],
        {"list": 5, "job": 30},
    )


class _Clock:
    """``time`` as the job store sees it: a wall clock and a monotonic one, set by the test."""

    def __init__(self, wall: float, monotonic: list[float]) -> None:
        self.wall, self._monotonic = wall, monotonic

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self._monotonic.pop(0) if len(self._monotonic) > 1 else self._monotonic[0]


class _VersionLater:
    """A bucket in which another replica's build ends at the ``checks``-th version check."""

    def __init__(self, inner: MemoryKV, checks: int) -> None:
        self.inner, self.checks, self.seen = inner, checks, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def get(self, key):
        if key == jobstore.INDEX_VERSION_KEY:
            self.seen += 1
            assert self.seen <= 10, "ensure_index goes round and round"
            if self.seen >= self.checks:
                return await self._version()
        return await self.inner.get(key)

    async def _version(self):
        await self.inner.put(jobstore.INDEX_VERSION_KEY, jobstore.INDEX_VERSION)
        return await self.inner.get(jobstore.INDEX_VERSION_KEY)


class _Builds(list):
    slept: list[float]


@pytest.fixture
def builds(monkeypatch) -> _Builds:
    """ensure_index's builds, each as the build lock's value while it ran; and a clock at
    1000 s, and sleeps that return at once (recorded in ``builds.slept``)."""
    done = _Builds()

    async def rebuild_index(self, *, concurrency: int = 128) -> int:
        try:
            done.append((await self.jobs.get(jobstore.INDEX_LOCK_KEY)).value)
        except nats.js.errors.NotFoundError:
            done.append(None)
        return 7

    monkeypatch.setattr(jobstore.JobStore, "rebuild_index", rebuild_index)
    monkeypatch.setattr(jobstore, "time", _Clock(1000.0, [0.0]))
    slept = []

    class Asyncio:
        def __getattr__(self, name):
            return getattr(asyncio, name)

        async def sleep(self, delay):
            slept.append(delay)

    monkeypatch.setattr(jobstore, "asyncio", Asyncio())
    done.slept = slept
    return done


async def test_ensure_index_builds_under_its_lock_and_logs_it(jobs_kv, builds, caplog) -> None:
    with caplog.at_level(logging.INFO, logger=jobstore.__name__):
        await jobstore.JobStore(jobs_kv).ensure_index()
    assert builds == [b"1000.0"] and builds.slept == []
    assert (await jobs_kv.get(jobstore.INDEX_VERSION_KEY)).value == b"1"
    assert jobstore.INDEX_LOCK_KEY not in await jobs_kv.keys_under()
    assert [r.getMessage() for r in caplog.records] == ["building the job index", "job index built"]
    assert caplog.records[1].jobs == 7


async def test_ensure_index_waits_while_another_replica_builds(jobs_kv, builds) -> None:
    await jobs_kv.put(jobstore.INDEX_LOCK_KEY, b"999.5")  # taken half a second ago
    waiting = _VersionLater(jobs_kv, checks=3)
    await jobstore.JobStore(waiting).ensure_index(wait_s=0)  # the deadline is not past yet
    assert builds == [] and builds.slept == [1.0, 1.0] and waiting.seen == 3
    assert (await jobs_kv.get(jobstore.INDEX_LOCK_KEY)).value == b"999.5"


async def test_ensure_index_gives_up_waiting_after_wait_s(jobs_kv, builds, monkeypatch) -> None:
    monkeypatch.setattr(jobstore, "time", _Clock(1000.0, [0.0, 10.5]))
    await jobs_kv.put(jobstore.INDEX_LOCK_KEY, b"999.5")
    with pytest.raises(TimeoutError, match=r"^the job index is still being built$"):
        await jobstore.JobStore(jobs_kv).ensure_index(wait_s=10)
    assert builds == [] and builds.slept == []


@pytest.mark.parametrize("lock", [b"400.0", b""])  # exactly INDEX_LOCK_S old; no time
async def test_ensure_index_takes_a_dead_builders_lock_over(jobs_kv, builds, lock) -> None:
    await jobs_kv.put(jobstore.INDEX_LOCK_KEY, lock)
    await jobstore.JobStore(jobs_kv).ensure_index()
    assert builds == [b"1000.0"] and builds.slept == []
    assert jobstore.INDEX_LOCK_KEY not in await jobs_kv.keys_under()


async def test_ensure_index_leaves_a_lock_another_replica_took_over_first(jobs_kv, builds) -> None:
    await jobs_kv.put(jobstore.INDEX_LOCK_KEY, b"1.0")

    class TakenOverAfterTheRead(_VersionLater):
        taken = False

        async def get(self, key):
            entry = await super().get(key)
            if key == jobstore.INDEX_LOCK_KEY and not self.taken:
                self.taken = True
                await self.inner.update(key, b"1000.0", last=entry.revision)
            return entry

    await jobstore.JobStore(TakenOverAfterTheRead(jobs_kv, checks=3)).ensure_index()
    assert builds == [] and builds.slept == [1.0]


async def test_ensure_index_builds_when_the_lock_it_met_is_gone(jobs_kv, builds) -> None:
    class HeldUntilRead:
        """The lock's create is refused once; when read, the lock is gone already."""

        def __init__(self, inner) -> None:
            self.inner, self.refused = inner, False

        def __getattr__(self, name):
            return getattr(self.inner, name)

        async def create(self, key, value):
            if not self.refused:
                self.refused = True
                raise nats.js.errors.KeyWrongLastSequenceError
            return await self.inner.create(key, value)

    await jobstore.JobStore(HeldUntilRead(jobs_kv)).ensure_index()
    assert builds == [b"1000.0"]
    assert (await jobs_kv.get(jobstore.INDEX_VERSION_KEY)).value == b"1"


async def test_a_rebuild_reads_128_jobs_at_a_time(jobs_kv) -> None:
    class InFlight:
        def __init__(self, inner) -> None:
            self.inner, self.now, self.most = inner, 0, 0

        def __getattr__(self, name):
            return getattr(self.inner, name)

        async def get(self, key):
            self.now += 1
            self.most = max(self.most, self.now)
            try:
                await asyncio.sleep(0)
                return await self.inner.get(key)
            finally:
                self.now -= 1

    for _ in range(130):
        state = animation_pb2.JobState(job_id=keys.new_job_id(), status=lifecycle.PENDING)
        await jobs_kv.put(state.job_id, state.SerializeToString())
    counting = InFlight(jobs_kv)
    assert await jobstore.JobStore(counting).rebuild_index() == 130
    assert counting.most == 128
