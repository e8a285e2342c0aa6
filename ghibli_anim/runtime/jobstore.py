"""The job store: jobs in the KV bucket ``anim-jobs``, idempotency claims in ``anim-idem``.

A job's state is one ``JobState`` protobuf under its id. Every change is a
compare-and-swap (``JobStore.update``): read the state and its revision, apply a
transition of :mod:`ghibli_anim.contracts.lifecycle` to a copy, check the status change
against ``lifecycle.TRANSITIONS``, and write only if the revision is still the latest;
a concurrent writer makes the write fail, and the update starts over from a fresh
read. Nothing ever overwrites a job blindly.

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
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Collection

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from ghibli_anim.contracts.keys import check_job_id, is_job_id
from ghibli_anim.contracts.lifecycle import (
    JobStatus,
    UnexpectedStatus,
    check_transition,
    is_terminal,
)
from ghibli_anim.contracts.pb import animation_pb2
from ghibli_anim.runtime import retry
from ghibli_anim.runtime.bus.names import IDEM_BUCKET, JOBS_BUCKET

DEFAULT_MAX_TRIES = 20
SLOT_GRACE_S = 60.0
"""How long a claimed slot whose job does not exist yet is kept (the create follows the
claim within milliseconds; a planner that died in between leaks the slot this long)."""
SLOT_MAX_TRIES = 200
"""Compare-and-swap tries of one slot claim: a burst of creates of one client all race
for the same record."""


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


class JobsBucket:
    """The ``anim-jobs`` bucket, with key listing and deletes through the bucket's stream.

    nats-py's ``KeyValue.keys()`` lists keys through an ordered consumer and can decide it
    is done before the first keys arrive (it then finds no keys at all, now and then);
    one stream-info request with a subjects filter lists them in one answer. A delete
    purges the key's subject, leaving no delete marker behind, so every listed key is a
    job (except keys deleted by ``KeyValue.purge`` before, whose marker stays: callers
    skip an id whose ``get`` finds nothing). Everything else is the bucket's own.
    """

    def __init__(self, kv: KeyValue, js: JetStreamContext, bucket: str = JOBS_BUCKET) -> None:
        self._kv = kv
        self._js = js
        self._stream = f"KV_{bucket}"
        self._prefix = f"$KV.{bucket}."

    def __getattr__(self, name: str) -> object:
        return getattr(self._kv, name)

    async def keys(self) -> list[str]:
        info = await self._js.stream_info(self._stream, subjects_filter=self._prefix + ">")
        subjects = info.state.subjects or {}
        if not subjects:
            raise nats.js.errors.NoKeysError
        return [subject.removeprefix(self._prefix) for subject in subjects]

    async def purge(self, key: str) -> bool:
        return await self._js.purge_stream(self._stream, subject=self._prefix + key)


class JobStore:
    """Jobs in KV ``anim-jobs`` and idempotency claims in KV ``anim-idem``."""

    def __init__(
        self,
        jobs: KeyValue | JobsBucket,
        idem: KeyValue | None = None,
        *,
        max_tries: int = DEFAULT_MAX_TRIES,
    ) -> None:
        self.jobs = jobs
        self.idem = idem
        self.max_tries = max_tries

    @classmethod
    async def open(cls, js: JetStreamContext, *, max_tries: int = DEFAULT_MAX_TRIES) -> JobStore:
        """Bind to both buckets (created by ``bus init``)."""
        jobs = JobsBucket(await js.key_value(JOBS_BUCKET), js)
        return cls(jobs, await js.key_value(IDEM_BUCKET), max_tries=max_tries)

    # -- jobs --------------------------------------------------------------

    async def create(self, state: animation_pb2.JobState) -> int:
        """Store a new job; its revision. ``JobExists`` when the id is taken.

        Sets ``created_at``/``updated_at`` when unset; the state is not modified.
        """
        job_id = check_job_id(state.job_id)
        stored = animation_pb2.JobState()
        stored.CopyFrom(state)
        if not stored.HasField("created_at"):
            stored.created_at.GetCurrentTime()
        if not stored.HasField("updated_at"):
            stored.updated_at.CopyFrom(stored.created_at)
        try:
            return await self.jobs.create(job_id, stored.SerializeToString())
        except nats.js.errors.KeyWrongLastSequenceError:
            raise JobExists(f"job {job_id}: already exists") from None

    async def get(self, job_id: str) -> tuple[animation_pb2.JobState, int]:
        """The job's state and its KV revision; ``JobNotFound`` if there is none."""
        check_job_id(job_id)
        try:
            entry = await self.jobs.get(job_id)
        except nats.js.errors.KeyNotFoundError:
            raise JobNotFound(f"job {job_id}: not found") from None
        if not entry.value or entry.revision is None:
            raise JobNotFound(f"job {job_id}: not found")
        return animation_pb2.JobState.FromString(entry.value), entry.revision

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
        ``lifecycle.TRANSITIONS`` (``InvalidTransition``). With ``expect_status`` the
        update applies only while the job is in that status (or one of them), else
        ``UnexpectedStatus``. When the mutation changes nothing, nothing is written.
        ``updated_at`` is set on every write.
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
        current, revision = await self.get(job_id)
        if expected is not None and current.status not in expected:
            raise UnexpectedStatus(job_id, current.status, expected)
        draft = animation_pb2.JobState()
        draft.CopyFrom(current)
        result = mutate(draft)
        new = result if isinstance(result, animation_pb2.JobState) else draft
        if new.job_id != job_id:
            raise ValueError(f"job {job_id}: a mutation must not change job_id")
        check_transition(current.status, new.status, job_id)
        if new == current:
            return current, False
        new.updated_at.GetCurrentTime()
        try:
            await self.jobs.update(job_id, new.SerializeToString(), last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            raise _LostRace from None  # someone wrote in between: start over from theirs
        return new, True

    async def list(self) -> list[str]:
        """Ids of the stored jobs (ListAnimations, housekeeping), sorted."""
        try:
            keys = await self.jobs.keys()
        except nats.js.errors.NoKeysError:
            return []
        return sorted(k for k in keys if is_job_id(k))  # not the slot records

    async def delete(self, job_id: str) -> None:
        """Remove the job and its history (DeleteAnimation); ``JobNotFound`` if absent."""
        # Through JobsBucket, a purge of the key's subject: no delete marker stays behind.
        await self.get(job_id)
        await self.jobs.purge(job_id)

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
