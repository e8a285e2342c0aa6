"""The job store: jobs in the KV bucket ``anim-jobs``, idempotency claims in ``anim-idem``.

A job's state is one ``JobState`` protobuf under its id. Every change is a
compare-and-swap (``JobStore.update``): read the state and its revision, apply a
transition of :mod:`ghibli_anim.contracts.lifecycle` to a copy, check the status change
against ``lifecycle.TRANSITIONS``, and write only if the revision is still the latest;
a concurrent writer makes the write fail, and the update starts over from a fresh
read. Nothing ever overwrites a job blindly. The read is skipped when the store holds
the job as it last read or wrote it (``KNOWN_STATES``): the conductor's update for each
frame follows its own write for the frame before, and the compare-and-swap tells a state
someone has changed since.

Idempotency keys live in the bucket ``anim-idem`` (24 h): the first
``claim_idempotency`` for a (client, key) wins and later ones get its job id.

The per-client cap on unfinished jobs is a *slot record* per client in ``anim-jobs``
(key ``slots.<sha256 of the client id>``, never a job id): the ids of the client's jobs
that hold a slot, each with when it claimed it. ``claim_slot`` adds one by
compare-and-swap, so concurrent creates can never admit more than the cap, after
dropping the members that no longer hold one: finished jobs, and claims whose job was
never written (a planner that died between the claim and the create) once they are
``SLOT_GRACE_S`` old. Nothing else has to release a slot, and a check reads at most
the cap's number of jobs, however many jobs the store keeps.

**Indexes**, so that nothing the planner does on a request or a timer reads every job
(their keys all hold a dot, so none is ever a job id):

- ``list.all.*`` and ``list.<sha256 of the client>.*``: every job's listing and its
  client's, by position, counted from 1 in the order jobs were created. ``.<k>`` holds
  the ids of positions ``64k+1 .. 64k+64`` once they are all taken, ``.head`` the newest
  position and the ids after the last full block. A page is read from the head down
  (:meth:`JobStore.page`): one or two records and its own jobs, whatever the history. A
  position never changes (a deleted job's is blanked), so a page token is a position.
- ``counts.<shard>``: how many jobs are in each status, spread over ``COUNT_SHARDS``
  records by job id (:meth:`JobStore.counts`, the metrics scrape).
- ``open.<id>`` while a job is unfinished (the time limit's :meth:`JobStore.open_jobs`),
  ``done.<id>`` with when it finished once it is (retention's
  :meth:`JobStore.finished_before`, which walks them in the order they were written, from
  the revision in ``sweep.done``).

A create, and every status change, is **one atomic write** of the job with what changes in
the indexes (``JobsBucket.commit`` in :mod:`ghibli_anim.runtime.bus.buckets`: a JetStream
atomic batch in which every key's expected revision is checked at commit): a process killed
at any point leaves all of it or none, so the counters stay exact with no reconciliation.
The only later write is the removal of the ``open.``/``done.`` entry a job left; one left
behind by a process that died just then names a job that is no longer in that state, and
the sweep that meets it drops it.
A bucket written before the indexes existed is indexed once by :meth:`JobStore.ensure_index`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, field

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from ghibli_anim.contracts.keys import check_job_id, is_job_id
from ghibli_anim.contracts.lifecycle import (
    JobStatus,
    UnexpectedStatus,
    check_transition,
    is_terminal,
    status_name,
)
from ghibli_anim.contracts.pb import animation_pb2
from ghibli_anim.runtime import faults, retry
from ghibli_anim.runtime.bus.buckets import JobsBucket, Write
from ghibli_anim.runtime.bus.names import IDEM_BUCKET, JOBS_BUCKET

DEFAULT_MAX_TRIES = 20
KNOWN_STATES = 64
"""Jobs whose state (as last read or written, with its revision) a JobStore keeps for its
next update: one read fewer per update of a job it has just read or written. A job of 120
frames is ~60 KB, so at most a few MB; a planner conducting more jobs at once than this
reads the others as before."""
SLOT_GRACE_S = 60.0
"""How long a claimed slot whose job does not exist yet is kept (the create follows the
claim within milliseconds; a planner that died in between leaks the slot this long)."""
SLOT_MAX_TRIES = 200
"""Compare-and-swap tries of one slot claim: a burst of creates of one client all race
for the same record."""
CREATE_MAX_TRIES = 200
"""Tries of one create: every create moves the head of every job's listing."""
COUNT_SHARDS = 8
"""Records the status counters are spread over (by job id), so that status changes of
different jobs seldom race for the same one."""

LIST_PREFIX = "list."
LIST_BLOCK = 64
"""Positions per block record of a listing: a page of 50 reads one or two records."""
COUNTS_PREFIX = "counts."
OPEN_PREFIX = "open."
DONE_PREFIX = "done."
SWEEP_MARK_KEY = "sweep.done"
"""The revision from which the next walk of the finished entries starts."""
INDEX_VERSION_KEY = "index.version"
INDEX_VERSION = b"1"
INDEX_LOCK_KEY = "index.lock"
INDEX_LOCK_S = 600.0
"""A build lock older than this is taken over (its builder died)."""
INDEX_WAIT_S = 600.0
"""How long :meth:`JobStore.ensure_index` waits for another replica's build."""

log = logging.getLogger(__name__)


class JobNotFound(LookupError):
    """No job with that id."""


class JobExists(ValueError):
    """``create`` found a job with that id already."""


class ConcurrentUpdateError(RuntimeError):
    """``update`` lost the compare-and-swap race too many times in a row."""


class SlotsTaken(RuntimeError):
    """``claim_slot``: the client holds every slot of its cap already."""

    def __init__(self, client_id: str, held: int, limit: int) -> None:
        super().__init__(
            f"client {client_id}: {held} unfinished jobs, the limit is {limit}; "
            "retry when one finishes"
        )
        self.held = held
        self.limit = limit


Mutation = Callable[[animation_pb2.JobState], object]
"""Changes a JobState in place (any return value but a JobState is ignored), or returns
a replacement JobState."""


class _LostRace(Exception):
    """A compare-and-swap found a newer revision: try again from a fresh read."""


def idempotency_key(client_id: str, key: str) -> str:
    """KV key of an idempotency claim: sha256 hex of (client, key).

    JSON-encoded before hashing so that no (client, key) pair can collide with
    another through a separator inside either string.
    """
    joined = json.dumps([client_id, key], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(joined.encode()).hexdigest()


def slot_key(client_id: str) -> str:
    """KV key of a client's slot record in ``anim-jobs`` (never a valid job id)."""
    return "slots." + hashlib.sha256(client_id.encode()).hexdigest()


def list_scope(client_id: str | None) -> str:
    """The listing a job is in: ``all`` (every job), or its client's (sha256 hex)."""
    return "all" if client_id is None else hashlib.sha256(client_id.encode()).hexdigest()


def _head_key(scope: str) -> str:
    return f"{LIST_PREFIX}{scope}.head"


def _block_key(scope: str, block: int) -> str:
    return f"{LIST_PREFIX}{scope}.{block}"


@dataclass
class _Head:
    """A listing's head: its newest position and the ids of the positions after the last
    full block (``n % LIST_BLOCK`` of them), as stored, with the revision read."""

    n: int = 0
    ids: list[str] = field(default_factory=list)
    revision: int = 0

    @property
    def full_blocks(self) -> int:
        return self.n // LIST_BLOCK

    def value(self) -> bytes:
        return _json({"n": self.n, "ids": self.ids})

    def appended(self, scope: str, job_id: str) -> tuple[int, list[Write]]:
        """The position of a new job, and the writes that put it there: the head, and
        the block it fills when it fills one (written once, whole)."""
        position = self.n + 1
        ids = [*self.ids, job_id]
        writes = []
        if len(ids) == LIST_BLOCK:
            writes.append(Write(_block_key(scope, self.full_blocks), _json(ids), last=0))
            ids = []
        head = _Head(position, ids)
        writes.append(Write(_head_key(scope), head.value(), last=self.revision))
        return position, writes


def _counts_key(job_id: str) -> str:
    return f"{COUNTS_PREFIX}{int(job_id[:8], 16) % COUNT_SHARDS}"


def _count(counts: dict[str, int], status: JobStatus, delta: int) -> None:
    name = status_name(status)
    counts[name] = counts.get(name, 0) + delta


def _json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _status_entry(state: animation_pb2.JobState) -> Write:
    """``open.<id>`` for an unfinished job; ``done.<id>`` with when it finished for a
    finished one."""
    if is_terminal(state.status):
        return Write(DONE_PREFIX + state.job_id, str(state.updated_at.ToSeconds()).encode())
    return Write(OPEN_PREFIX + state.job_id)


def _changed(
    job_id: str,
    current: animation_pb2.JobState,
    mutate: Mutation,
    expected: frozenset[JobStatus] | None,
) -> animation_pb2.JobState | None:
    """``mutate`` applied to a copy of ``current``, checked; None when it changes nothing."""
    if expected is not None and current.status not in expected:
        raise UnexpectedStatus(job_id, current.status, expected)
    draft = animation_pb2.JobState()
    draft.CopyFrom(current)
    result = mutate(draft)
    new = result if isinstance(result, animation_pb2.JobState) else draft
    if new.job_id != job_id:
        raise ValueError(f"job {job_id}: a mutation must not change job_id")
    check_transition(current.status, new.status, job_id)
    return None if new == current else new


class JobStore:
    """Jobs in KV ``anim-jobs`` and idempotency claims in KV ``anim-idem``."""

    def __init__(
        self,
        jobs: JobsBucket,
        idem: KeyValue | None = None,
        *,
        max_tries: int = DEFAULT_MAX_TRIES,
    ) -> None:
        self.jobs = jobs
        self.idem = idem
        self.max_tries = max_tries
        # job id -> (the state's bytes, its revision); the bytes, so that no caller's
        # change to a state it was given can reach the next update's starting point.
        self._known: OrderedDict[str, tuple[bytes, int]] = OrderedDict()

    @classmethod
    async def open(cls, js: JetStreamContext, *, max_tries: int = DEFAULT_MAX_TRIES) -> JobStore:
        """Bind to both buckets (created by ``bus init``)."""
        kv = await js.key_value(JOBS_BUCKET)
        # nats-py keeps the connection of a JetStream context as _nc: batches and paged
        # stream info are plain requests on it. (A stand-in bucket of the unit tests
        # speaks JobsBucket's whole interface itself.)
        jobs = JobsBucket(kv, js, js._nc) if isinstance(kv, KeyValue) else kv
        return cls(jobs, await js.key_value(IDEM_BUCKET), max_tries=max_tries)

    # -- jobs --------------------------------------------------------------

    async def create(self, state: animation_pb2.JobState) -> int:
        """Store a new job with its index entries, in one atomic write; its revision.
        ``JobExists`` when the id is taken.

        Sets ``created_at``/``updated_at`` when unset and the job's list positions; the
        state given is not modified.
        """
        job_id = check_job_id(state.job_id)
        stored = animation_pb2.JobState()
        stored.CopyFrom(state)
        if not stored.HasField("created_at"):
            stored.created_at.GetCurrentTime()
        if not stored.HasField("updated_at"):
            stored.updated_at.CopyFrom(stored.created_at)
        try:
            async for attempt in retry.on_conflict(retry_on=_LostRace, tries=CREATE_MAX_TRIES):
                with attempt:
                    return await self._try_create(stored)
        except retry.RetryError:
            pass
        raise ConcurrentUpdateError(f"job {job_id}: create lost its race for the index")

    async def _try_create(self, stored: animation_pb2.JobState) -> int:
        job_id = stored.job_id
        everyone = list_scope(None)
        client = list_scope(stored.request.client_id)
        top, mine, (counts, counts_rev) = await asyncio.gather(
            self._read_head(everyone),
            self._read_head(client),
            self._read_counts(_counts_key(job_id)),
        )
        stored.list_position, in_all = top.appended(everyone, job_id)
        stored.client_list_position, in_client = mine.appended(client, job_id)
        _count(counts, stored.status, +1)
        writes = [
            Write(job_id, stored.SerializeToString(), last=0),
            *in_all,
            *in_client,
            Write(_counts_key(job_id), _json(counts), last=counts_rev),
            _status_entry(stored),
        ]
        try:
            revision = await self.jobs.commit(writes) - len(writes) + 1  # the job's, the first
        except nats.js.errors.KeyWrongLastSequenceError:
            if await self._exists(job_id):
                raise JobExists(f"job {job_id}: already exists") from None
            raise _LostRace from None  # another create took the head first
        self._remember(job_id, writes[0].value, revision)
        return revision

    async def _exists(self, job_id: str) -> bool:
        try:
            await self.get(job_id)
        except JobNotFound:
            return False
        return True

    async def get(self, job_id: str) -> tuple[animation_pb2.JobState, int]:
        """The job's state and its KV revision; ``JobNotFound`` if there is none."""
        check_job_id(job_id)
        try:
            entry = await self.jobs.get(job_id)
        except nats.js.errors.NotFoundError:  # missing, or a delete marker
            raise JobNotFound(f"job {job_id}: not found") from None
        if not entry.value or entry.revision is None:
            raise JobNotFound(f"job {job_id}: not found")
        self._remember(job_id, entry.value, entry.revision)
        return animation_pb2.JobState.FromString(entry.value), entry.revision

    def _remember(self, job_id: str, value: bytes, revision: int) -> None:
        self._known[job_id] = (value, revision)
        self._known.move_to_end(job_id)
        if len(self._known) > KNOWN_STATES:
            self._known.popitem(last=False)

    async def update(
        self,
        job_id: str,
        mutate: Mutation,
        *,
        expect_status: JobStatus | Collection[JobStatus] | None = None,
    ) -> animation_pb2.JobState:
        """Apply ``mutate`` to the job by compare-and-swap; the state as stored.

        See :meth:`apply`, which also says whether this call wrote.
        """
        state, _ = await self.apply(job_id, mutate, expect_status=expect_status)
        return state

    async def apply(
        self,
        job_id: str,
        mutate: Mutation,
        *,
        expect_status: JobStatus | Collection[JobStatus] | None = None,
    ) -> tuple[animation_pb2.JobState, bool]:
        """Apply ``mutate`` to the job by compare-and-swap: (the state as stored, whether
        this call wrote it).

        ``mutate`` is usually a transition of :mod:`ghibli_anim.contracts.lifecycle`: it
        gets a copy of the current state and changes it in place (or returns a
        replacement ``JobState``); it may run several times (once per try), so it must
        only depend on the state it is given. A status change must be allowed by
        ``lifecycle.TRANSITIONS`` (``InvalidTransition``), and is written in one atomic
        write with the status counters and the unfinished or finished entry. With
        ``expect_status`` the update applies only while the job is in that status (or
        one of them), else ``UnexpectedStatus``. When the mutation changes nothing,
        nothing is written. ``updated_at`` is set on every write.
        """
        check_job_id(job_id)
        expected: frozenset[JobStatus] | None = None
        if expect_status is not None:
            expected = (
                frozenset({expect_status})
                if isinstance(expect_status, int)
                else frozenset(expect_status)
            )
        try:
            async for attempt in retry.on_conflict(retry_on=_LostRace, tries=self.max_tries):
                with attempt:
                    return await self._try_update(job_id, mutate, expected)
        except retry.RetryError:
            pass
        raise ConcurrentUpdateError(
            f"job {job_id}: update lost the compare-and-swap race {self.max_tries} times"
        )

    async def _try_update(
        self, job_id: str, mutate: Mutation, expected: frozenset[JobStatus] | None
    ) -> tuple[animation_pb2.JobState, bool]:
        known = self._known.pop(job_id, None)
        if known is not None:
            done = await self._try_known(job_id, known, mutate, expected)
            if done is not None:
                return done
        current, revision = await self.get(job_id)
        new = _changed(job_id, current, mutate, expected)
        if new is None:
            return current, False
        await self._write(current, new, revision)
        return new, True

    async def _try_known(
        self,
        job_id: str,
        known: tuple[bytes, int],
        mutate: Mutation,
        expected: frozenset[JobStatus] | None,
    ) -> tuple[animation_pb2.JobState, bool] | None:
        """The update made from the job as this store last read or wrote it; None when a
        fresh read must decide. That state may be old: only a write proves it was the
        latest (its compare-and-swap), so every answer that writes nothing (nothing to
        change, a status not expected, a mutation or transition refused) is left to the
        fresh read, and so is a lost race."""
        value, revision = known
        current = animation_pb2.JobState.FromString(value)
        try:
            new = _changed(job_id, current, mutate, expected)
        except Exception:  # judged on what may be an old state; the fresh read judges again
            return None
        if new is None:
            return None
        try:
            await self._write(current, new, revision)
        except _LostRace:
            return None
        return new, True

    async def _write(
        self, current: animation_pb2.JobState, new: animation_pb2.JobState, revision: int
    ) -> None:
        """Store ``new`` over ``current`` if the job is still at ``revision``, else
        ``_LostRace``; with its status change, the index entries and counters."""
        job_id = current.job_id
        new.updated_at.GetCurrentTime()
        value = new.SerializeToString()
        try:
            if new.status == current.status:
                self._remember(job_id, value, await self.jobs.update(job_id, value, last=revision))
                return
            committed = await self._commit_status_change(current, new, revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            # Someone wrote in between: what this store knew is old; start over from theirs.
            self._known.pop(job_id, None)
            raise _LostRace from None
        left = _status_entry(current).key
        if left != _status_entry(new).key:
            await faults.hit("index", -1)
            # The entry of the kind the job left (unfinished or finished), as it was before
            # this write: a later resume's or finish's stays. A leftover (a planner that
            # died here) is dropped by the next sweep that meets it.
            await self._drop_entry(left, before=committed)

    async def _commit_status_change(
        self, current: animation_pb2.JobState, new: animation_pb2.JobState, revision: int
    ) -> int:
        """The job, its shard of the status counters and (when it starts or stops being
        finished) its finished or unfinished entry, in one atomic write: a planner killed
        at any point leaves all of it or none. The revision of the write."""
        counts, counts_rev = await self._read_counts(_counts_key(current.job_id))
        _count(counts, current.status, -1)
        _count(counts, new.status, +1)
        writes = [
            Write(current.job_id, new.SerializeToString(), last=revision),
            Write(_counts_key(current.job_id), _json(counts), last=counts_rev),
        ]
        if is_terminal(current.status) != is_terminal(new.status):
            writes.append(_status_entry(new))
        committed = await self.jobs.commit(writes)
        self._remember(current.job_id, writes[0].value, committed - len(writes) + 1)
        return committed

    async def delete(self, job_id: str) -> None:
        """Remove the job and its index entries (DeleteAnimation); ``JobNotFound`` if
        absent. The job and its count go in one atomic write, the entries after it."""
        try:
            async for attempt in retry.on_conflict(retry_on=_LostRace, tries=self.max_tries):
                with attempt:
                    state = await self._try_delete(job_id)
        except retry.RetryError:
            raise ConcurrentUpdateError(f"job {job_id}: delete lost its race") from None
        # Purges of the subjects leave no marker behind. A planner that dies before they
        # are done leaves an entry that names a missing job: the sweeps drop it.
        for key in (job_id, _status_entry(state).key):
            await self._drop_entry(key)

    async def _try_delete(self, job_id: str) -> animation_pb2.JobState:
        state, revision = await self.get(job_id)
        (counts, counts_rev), *emptied = await asyncio.gather(
            self._read_counts(_counts_key(job_id)),
            self._emptied(list_scope(None), state.list_position, job_id),
            self._emptied(list_scope(state.request.client_id), state.client_list_position, job_id),
        )
        _count(counts, state.status, -1)
        try:
            await self.jobs.commit(
                [
                    Write(job_id, last=revision, purge=True),
                    Write(_counts_key(job_id), _json(counts), last=counts_rev),
                    *(write for write in emptied if write is not None),
                ]
            )
        except nats.js.errors.KeyWrongLastSequenceError:
            raise _LostRace from None
        return state

    # -- indexes ---------------------------------------------------------------

    async def _read_head(self, scope: str) -> _Head:
        try:
            entry = await self.jobs.get(_head_key(scope))
        except nats.js.errors.NotFoundError:
            return _Head()
        head = json.loads(entry.value or b"{}")
        return _Head(head.get("n", 0), head.get("ids", []), entry.revision or 0)

    async def _record_of(
        self, scope: str, position: int, head: _Head
    ) -> tuple[str, list[str], int, int]:
        """The record that holds ``position`` of a listing: (its key, its ids, its
        revision, the position of its first id)."""
        block = (position - 1) // LIST_BLOCK
        if block >= head.full_blocks:
            return _head_key(scope), head.ids, head.revision, head.full_blocks * LIST_BLOCK + 1
        key, first = _block_key(scope, block), block * LIST_BLOCK + 1
        try:
            entry = await self.jobs.get(key)
        except nats.js.errors.NotFoundError:
            return key, [], 0, first
        return key, json.loads(entry.value or b"[]"), entry.revision or 0, first

    async def _emptied(self, scope: str, position: int, job_id: str) -> Write | None:
        """The write that takes ``job_id`` off ``position`` of a listing (None: not there)."""
        head = await self._read_head(scope)
        key, ids, revision, first = await self._record_of(scope, position, head)
        if not 0 <= position - first < len(ids) or ids[position - first] != job_id:
            return None
        ids = list(ids)
        ids[position - first] = ""
        value = _json({"n": head.n, "ids": ids}) if key == _head_key(scope) else _json(ids)
        return Write(key, value, last=revision)

    async def _read_counts(self, key: str) -> tuple[dict[str, int], int]:
        """A shard of the status counters, and its revision."""
        try:
            entry = await self.jobs.get(key)
        except nats.js.errors.NotFoundError:
            return {}, 0
        return json.loads(entry.value or b"{}"), entry.revision or 0

    async def _drop_entry(self, key: str, before: int | None = None) -> None:
        try:
            await self.jobs.purge(key, before)
        except Exception as exc:  # best effort: a leftover is dropped later
            log.warning("index entry not dropped", extra={"key": key, "error": str(exc)})

    async def counts(self) -> dict[str, int]:
        """Jobs by status name, from the counters (``COUNT_SHARDS`` reads)."""
        total: dict[str, int] = {}
        shards = await asyncio.gather(
            *(self._read_counts(f"{COUNTS_PREFIX}{shard}") for shard in range(COUNT_SHARDS))
        )
        for counts, _ in shards:
            for name, count in counts.items():
                total[name] = total.get(name, 0) + count
        return {name: count for name, count in total.items() if count}

    async def page(
        self,
        *,
        client_id: str | None = None,
        before: int = 0,
        size: int,
        status: JobStatus = 0,
        scan_limit: int,
    ) -> tuple[list[animation_pb2.JobState], int]:
        """One page of a listing, newest first: (the jobs, the position to go on from,
        0 at the end).

        Every job's listing, or ``client_id``'s; positions below ``before`` (0: from the
        newest); at most ``size`` jobs, of ``status`` when it is set. At most
        ``scan_limit`` positions are read (a deleted job leaves its position empty, a
        filter skips jobs), so a page can be short while the position returned is not 0.
        A position never changes: a job created meanwhile is above the first page, a job
        deleted meanwhile is not shown, and no job comes twice.

        An unfinished ``status`` is looked up among the unfinished jobs instead (every one
        of them read, however few match: no scan of the history, and no short page).
        """
        if status and not is_terminal(status):
            return await self._unfinished_page(client_id, before, size, status)
        scope = list_scope(client_id)
        head = await self._read_head(scope)
        top = min(before - 1, head.n) if before > 0 else head.n
        found: list[animation_pb2.JobState] = []
        position = top
        bottom = max(0, top - scan_limit)
        while position > bottom and len(found) < size:
            # The records of the next positions, newest first; then their jobs, at once.
            low = max(bottom, position - (size - len(found)) - 8)
            firsts = sorted({(p - 1) // LIST_BLOCK for p in range(low + 1, position + 1)})
            records = await asyncio.gather(
                *(self._record_of(scope, b * LIST_BLOCK + 1, head) for b in firsts)
            )
            ids = {
                first + i: job_id
                for _, block_ids, _, first in records
                for i, job_id in enumerate(block_ids)
            }
            chunk = range(position, low, -1)
            states = await asyncio.gather(*(self._maybe(ids.get(p, "")) for p in chunk))
            for p, (state, _) in zip(chunk, states, strict=True):
                position = p - 1
                if state is not None and (not status or state.status == status):
                    found.append(state)
                    if len(found) == size:
                        break
        return found, position + 1 if position > 0 else 0

    async def _unfinished_page(
        self, client_id: str | None, before: int, size: int, status: JobStatus
    ) -> tuple[list[animation_pb2.JobState], int]:
        def position(state: animation_pb2.JobState) -> int:
            return state.list_position if client_id is None else state.client_list_position

        matching = sorted(
            (
                s
                for s in await self.open_jobs(tidy=False)
                if s.status == status
                and (client_id is None or s.request.client_id == client_id)
                and (not before or position(s) < before)
            ),
            key=position,
            reverse=True,
        )
        found = matching[:size]
        return found, position(found[-1]) if len(matching) > size else 0

    async def open_jobs(self, *, tidy: bool = True) -> list[animation_pb2.JobState]:
        """Every unfinished job, from the unfinished entries (one read per entry);
        ``tidy`` drops the entries of jobs that are no longer unfinished."""
        ids = [key.removeprefix(OPEN_PREFIX) for key in await self.jobs.keys_under(OPEN_PREFIX)]
        found = await asyncio.gather(*(self._maybe(job_id) for job_id in ids))
        unfinished = []
        for job_id, (state, revision) in zip(ids, found, strict=True):
            if state is not None and not is_terminal(state.status):
                unfinished.append(state)
            elif tidy:  # left behind (see _try_update); a resume after the read keeps its own
                await self._drop_entry(
                    OPEN_PREFIX + job_id, before=revision + 1 if revision else None
                )
        return unfinished

    async def finished_before(self, cutoff: float) -> AsyncIterator[animation_pb2.JobState]:
        """Finished jobs that finished before ``cutoff`` (seconds since the epoch), the
        earliest first, from the finished entries in the order they were written: the
        walk ends at the first entry at or after ``cutoff``.

        The server finds the next entry by reading the stream forward, so the walk starts
        where the first finished entry was when the last walk ended (``sweep.done``): the
        records that an earlier sweep walked past, or whose jobs it deleted, are not read
        again. A walk the caller stops early leaves that mark as it was.
        """
        start = await self._sweep_mark()
        after = start
        while (entry := await self.jobs.next_after(DONE_PREFIX, after)) is not None:
            after = entry.revision
            state, revision = await self._maybe(entry.key.removeprefix(DONE_PREFIX))
            if state is None or not is_terminal(state.status):
                # Left behind (see _try_update and delete); a finish after the read stays.
                await self._drop_entry(entry.key, before=revision + 1 if revision else None)
                continue
            if float(entry.value or b"0") >= cutoff:
                break
            yield state
        # Just before the first finished entry left (what the caller deleted is gone); with
        # none left, after the last one seen: any entry written later comes after either.
        first = await self.jobs.next_after(DONE_PREFIX, start)
        mark = first.revision - 1 if first is not None else after
        if mark > start:
            await self.jobs.put(SWEEP_MARK_KEY, str(mark).encode())

    async def _sweep_mark(self) -> int:
        try:
            return int((await self.jobs.get(SWEEP_MARK_KEY)).value or b"0")
        except nats.js.errors.NotFoundError:
            return 0

    async def _maybe(self, job_id: str) -> tuple[animation_pb2.JobState | None, int]:
        """The job and its revision, or (None, 0) when there is none."""
        try:
            return await self.get(job_id)
        except (JobNotFound, ValueError):
            return None, 0

    async def list(self) -> list[str]:
        """Ids of every stored job, sorted: a scan of every key (the index rebuild and
        tests; listings and sweeps use the indexes)."""
        return sorted(k for k in await self.jobs.keys_under(one_token=True) if is_job_id(k))

    async def ensure_index(self, *, wait_s: float = INDEX_WAIT_S) -> None:
        """Index the jobs of a bucket written before the indexes existed, once.

        The planner calls this at start: one read when the index is there. Otherwise one
        replica takes the build lock and runs :meth:`rebuild_index` (one read and one
        write per job: about a minute per 100,000 jobs), and the others wait for it.
        Jobs written meanwhile by planners of an earlier version are not indexed: stop
        those before starting this version.
        """
        deadline = time.monotonic() + wait_s
        while True:
            try:
                if (await self.jobs.get(INDEX_VERSION_KEY)).value == INDEX_VERSION:
                    return
            except nats.js.errors.NotFoundError:
                pass
            now = time.time()
            try:
                await self.jobs.create(INDEX_LOCK_KEY, str(now).encode())
            except nats.js.errors.KeyWrongLastSequenceError:
                try:
                    lock = await self.jobs.get(INDEX_LOCK_KEY)
                except nats.js.errors.NotFoundError:
                    continue  # the builder just finished: the version is there now
                if now - float(lock.value or b"0") < INDEX_LOCK_S:
                    if time.monotonic() > deadline:
                        raise TimeoutError("the job index is still being built") from None
                    await asyncio.sleep(1.0)  # another replica is building it
                    continue
                try:  # the builder died: take its lock over
                    await self.jobs.update(INDEX_LOCK_KEY, str(now).encode(), last=lock.revision)
                except nats.js.errors.KeyWrongLastSequenceError:
                    continue
            log.info("building the job index")
            count = await self.rebuild_index()
            await self.jobs.put(INDEX_VERSION_KEY, INDEX_VERSION)
            await self.jobs.purge(INDEX_LOCK_KEY)
            log.info("job index built", extra={"jobs": count})
            return

    async def rebuild_index(self, *, concurrency: int = 128) -> int:
        """Index every stored job anew; how many. A scan of the whole bucket, for a
        bucket written without the indexes (:meth:`ensure_index`): run it while no
        planner writes jobs."""
        for prefix in (LIST_PREFIX, COUNTS_PREFIX, OPEN_PREFIX, DONE_PREFIX):
            for key in await self.jobs.keys_under(prefix):
                await self.jobs.purge(key)
        await self.jobs.purge(SWEEP_MARK_KEY)
        limit = asyncio.Semaphore(concurrency)

        async def read(job_id: str) -> tuple[animation_pb2.JobState, int] | None:
            async with limit:
                try:
                    return await self.get(job_id)
                except JobNotFound:
                    return None

        found = [s for s in await asyncio.gather(*map(read, await self.list())) if s]
        found.sort(key=lambda s: (s[0].created_at.ToNanoseconds(), s[0].job_id))
        listings: dict[str, list[str]] = {}
        counts: dict[str, dict[str, int]] = {}
        for state, _ in found:
            everyone = listings.setdefault(list_scope(None), [])
            everyone.append(state.job_id)
            state.list_position = len(everyone)
            mine = listings.setdefault(list_scope(state.request.client_id), [])
            mine.append(state.job_id)
            state.client_list_position = len(mine)
            _count(counts.setdefault(_counts_key(state.job_id), {}), state.status, +1)
        entries: list[Write] = []
        for scope, ids in listings.items():
            full = len(ids) // LIST_BLOCK
            for block in range(full):
                block_ids = ids[block * LIST_BLOCK : (block + 1) * LIST_BLOCK]
                entries.append(Write(_block_key(scope, block), _json(block_ids)))
            head = _Head(len(ids), ids[full * LIST_BLOCK :])
            entries.append(Write(_head_key(scope), head.value()))

        async def write(key: str, value: bytes, last: int | None = None) -> None:
            async with limit:
                if last is None:
                    await self.jobs.put(key, value)
                else:
                    await self.jobs.update(key, value, last=last)

        await asyncio.gather(
            *(write(s.job_id, s.SerializeToString(), last=rev) for s, rev in found),
            *(write(w.key, w.value) for w in entries),
            *(write(key, _json(shard)) for key, shard in counts.items()),
            *(write(OPEN_PREFIX + s.job_id, b"") for s, _ in found if not is_terminal(s.status)),
        )
        # One at a time, in the order the jobs finished: finished_before walks them in
        # the order they were written.
        done = sorted(
            (s for s, _ in found if is_terminal(s.status)),
            key=lambda s: s.updated_at.ToNanoseconds(),
        )
        for state in done:
            await self.jobs.put(_status_entry(state).key, _status_entry(state).value)
        return len(found)

    # -- the per-client cap ---------------------------------------------------

    async def claim_slot(
        self, client_id: str, job_id: str, limit: int, *, grace_s: float = SLOT_GRACE_S
    ) -> int:
        """Take one of the client's ``limit`` slots for ``job_id`` (again: a no-op); the
        slots it holds now. ``SlotsTaken`` when every slot is held by an unfinished job."""
        check_job_id(job_id)
        if limit < 1:
            raise ValueError(f"limit: must be >= 1, got {limit}")
        key = slot_key(client_id)
        try:
            async for attempt in retry.on_conflict(retry_on=_LostRace, tries=SLOT_MAX_TRIES):
                with attempt:
                    return await self._try_claim(key, client_id, job_id, limit, grace_s)
        except retry.RetryError:
            pass
        raise ConcurrentUpdateError(f"client {client_id}: could not claim a slot")

    async def _try_claim(
        self, key: str, client_id: str, job_id: str, limit: int, grace_s: float
    ) -> int:
        try:
            entry = await self.jobs.get(key)
            held: dict[str, float] = json.loads(entry.value or b"{}").get("jobs", {})
            revision: int | None = entry.revision
        except nats.js.errors.KeyNotFoundError:
            held, revision = {}, None
        if job_id in held:
            return len(held)
        now = time.time()
        kept = {}
        for other, claimed_at in held.items():
            try:
                state, _ = await self.get(other)
            except JobNotFound:
                if now - claimed_at < grace_s:
                    kept[other] = claimed_at  # its create is still to come
                continue
            if not is_terminal(state.status):
                kept[other] = claimed_at
        if len(kept) >= limit:
            raise SlotsTaken(client_id, len(kept), limit)
        kept[job_id] = now
        value = json.dumps({"client": client_id, "jobs": kept}).encode()
        try:
            if revision is None:
                await self.jobs.create(key, value)
            else:
                await self.jobs.update(key, value, last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            raise _LostRace from None  # another claim wrote first: count again
        return len(kept)

    # -- idempotency ---------------------------------------------------------

    def _idem(self) -> KeyValue:
        if self.idem is None:
            raise RuntimeError(f"JobStore was opened without the {IDEM_BUCKET} bucket")
        return self.idem

    async def claim_idempotency(self, client_id: str, key: str, job_id: str) -> str:
        """Claim (client, key) for ``job_id``; the job id that owns it.

        Returns ``job_id`` when this call won, or the job id of an earlier claim
        (within 24 h) when it lost; the caller then returns that job instead of
        creating a new one.
        """
        if not key:
            raise ValueError("idempotency_key: must not be empty to claim it")
        check_job_id(job_id)
        kv = self._idem()
        name = idempotency_key(client_id, key)

        async def claim() -> str:
            try:
                await kv.create(name, job_id.encode())
                return job_id
            except nats.js.errors.KeyWrongLastSequenceError:
                pass
            try:
                entry = await kv.get(name)
            except nats.js.errors.KeyNotFoundError:
                raise _LostRace from None  # expired or released in between: try again
            if not entry.value:
                raise _LostRace
            return entry.value.decode()

        try:
            async for attempt in retry.on_conflict(retry_on=_LostRace, tries=3):
                with attempt:
                    return await claim()
        except retry.RetryError:
            pass
        raise ConcurrentUpdateError(f"idempotency key {key!r:.80}: could not be claimed")

    async def release_idempotency(self, client_id: str, key: str, job_id: str) -> bool:
        """Drop the claim if ``job_id`` still owns it (its creation failed); True if dropped."""
        kv = self._idem()
        name = idempotency_key(client_id, key)
        try:
            entry = await kv.get(name)
        except nats.js.errors.KeyNotFoundError:
            return False
        if entry.value is None or entry.value.decode() != job_id:
            return False
        try:
            await kv.delete(name, last=entry.revision)
        except nats.js.errors.BadRequestError as exc:
            # kv.delete reports a stale revision as a plain API error.
            if isinstance(exc, nats.js.errors.KeyWrongLastSequenceError) or exc.err_code in (
                10071,
                10164,
            ):
                return False
            raise
        return True
