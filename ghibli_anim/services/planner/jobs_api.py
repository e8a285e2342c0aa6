"""The planner's job API as plain async Python: create, get, list, cancel, watch.

gRPC (api.py) and the bus request subject both call ``create``; they differ
only in how they carry errors. Validation happens before anything is written,
so a bad request leaves no trace in KV or the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp

from ghibli_anim.contracts import keys, limits, seeds
from ghibli_anim.contracts.pb import animation_pb2, bus_pb2, types_pb2
from ghibli_anim.contracts.uploads import check_request as check_upload_request
from ghibli_anim.contracts.uploads import init_key, load_upload
from ghibli_anim.contracts.validate import validate_create
from ghibli_anim.runtime import bus, tracing
from ghibli_anim.runtime.auth import ANONYMOUS, current_client
from ghibli_anim.runtime.jobstore import JobNotFound, JobStore, is_terminal, status_name
from ghibli_anim.runtime.store import Store

log = logging.getLogger(__name__)

_CANCELLABLE = {
    types_pb2.JOB_STATUS_PENDING,
    types_pb2.JOB_STATUS_PLANNING,
    types_pb2.JOB_STATUS_RENDERING,
    types_pb2.JOB_STATUS_ASSEMBLING,
}
_TERMINAL_EVENTS = {
    bus_pb2.EVENT_TYPE_JOB_COMPLETED,
    bus_pb2.EVENT_TYPE_JOB_FAILED,
    bus_pb2.EVENT_TYPE_JOB_CANCELLED,
}
_OUTPUT_NAMES = set(keys.OUTPUT_NAMES.values()) | {"manifest.json"}


class FailedPrecondition(ValueError):
    """The job is not in a state that allows the call (FAILED_PRECONDITION)."""


class QuotaExceeded(RuntimeError):
    """The client has too many unfinished jobs (RESOURCE_EXHAUSTED)."""


@dataclass
class PlannerCore:
    bus: bus.Bus
    jobs: JobStore
    store: Store
    profile_names: Collection[str]
    default_profile: str
    presign_ttl_s: int = 900
    max_jobs_per_client: int = 0  # 0 = no cap
    settings: object = None
    """The service's settings: with them, a user storyboard's prompts are token-checked at
    creation with the profile's tokenizer."""

    # -- create -------------------------------------------------------------

    async def create(
        self, request: animation_pb2.CreateAnimationRequest
    ) -> animation_pb2.CreateAnimationResponse:
        req = validate_create(
            request,
            profile_names=self.profile_names,
            default_profile=self.default_profile,
            settings=self.settings,
        )
        await self._check_models(req)
        if req.storyboard_json:
            # Shape errors (frame count, fields) are the caller's: refuse now.
            from ghibli_anim.contracts.storyboard import parse_storyboard

            try:
                board = parse_storyboard(req.storyboard_json, req.frames)
            except ValueError as exc:
                raise ValueError(f"storyboard_json: {exc}") from None
            if not req.truncate_prompts:
                await self._check_tokens(req.profile, board)
        init_png = await self._check_init_image(req)
        caller = current_client.get()
        if caller != ANONYMOUS or not req.client_id:
            req.client_id = caller  # with tokens, the authenticated id, whatever was sent
        job_id = keys.new_job_id()
        if req.idempotency_key:
            claimed = await self.jobs.claim_idempotency(req.client_id, req.idempotency_key, job_id)
            if claimed != job_id:
                try:
                    state, _ = await self.jobs.get(claimed)
                    if state.status == types_pb2.JOB_STATUS_PENDING:
                        # The first request may have died before publishing its
                        # plan work; publishing again is deduplicated if not.
                        await self._start(state)
                    return animation_pb2.CreateAnimationResponse(
                        job_id=claimed, existing=True, animation=self.view(state, files=False)
                    )
                except JobNotFound:
                    # The first request died between its claim and its create:
                    # this retry finishes what it started, under the same id.
                    job_id = claimed
        await self._check_quota(req.client_id)
        if not req.HasField("seed"):
            req.seed = seeds.new_job_seed()
        now = Timestamp()
        now.GetCurrentTime()
        state = animation_pb2.JobState(
            job_id=job_id,
            status=types_pb2.JOB_STATUS_PENDING,
            request=req,
            seed=req.seed,
            frames=req.frames,
            attempt=1,
            created_at=now,
            updated_at=now,
        )
        if init_png is not None:
            # The job's own validated copy: later PUTs to the upload URL cannot change it.
            await asyncio.to_thread(self.store.put, init_key(job_id), init_png, "image/png")
        await self.jobs.create(state)
        await self._start(state)
        log.info("job created", extra={"job_id": job_id, "frames": req.frames})
        return animation_pb2.CreateAnimationResponse(
            job_id=job_id, existing=False, animation=self.view(state, files=False)
        )

    async def _check_models(self, req: animation_pb2.CreateAnimationRequest) -> None:
        """The request's model overrides and preset resolved against its profile now, so a
        bad LoRA, base model, ControlNet or profile entry is refused naming the field."""
        from ghibli_anim.contracts.profiles import resolve_profile

        await asyncio.to_thread(resolve_profile, req, self.settings)

    async def _check_init_image(self, req: animation_pb2.CreateAnimationRequest) -> bytes | None:
        """The init image re-encoded as PNG, validated before the job exists (or None)."""
        if not req.init_upload_id:
            return None
        return await asyncio.to_thread(load_upload, self.store, req.init_upload_id)

    async def create_upload(
        self, content_type: str, size_bytes: int
    ) -> animation_pb2.CreateUploadResponse:
        """A presigned PUT URL for a new ``uploads/{id}`` (an init image to come)."""
        check_upload_request(content_type, size_bytes)
        upload_id = keys.new_upload_id()
        key = keys.upload_key(upload_id)
        url = await asyncio.to_thread(self.store.presign_put, key, self.presign_ttl_s)
        expires = Timestamp()
        expires.FromSeconds(int(time.time()) + self.presign_ttl_s)
        return animation_pb2.CreateUploadResponse(
            upload_id=upload_id, key=key, put_url=url, expires_at=expires
        )

    async def _check_quota(self, client_id: str) -> None:
        if self.max_jobs_per_client <= 0:
            return
        unfinished = 0
        for job_id in await self.jobs.list():
            try:
                state, _ = await self.jobs.get(job_id)
            except JobNotFound:
                continue
            if state.request.client_id == client_id and not is_terminal(state.status):
                unfinished += 1
        if unfinished >= self.max_jobs_per_client:
            raise QuotaExceeded(
                f"client {client_id}: {unfinished} unfinished jobs, the limit is "
                f"{self.max_jobs_per_client}; retry when one finishes"
            )

    async def _start(self, state: animation_pb2.JobState) -> None:
        """job.created, then the plan work it causes (both idempotent by message id).

        Both go out in the job's span: every later span of the job descends from it.
        """
        job_id, attempt = state.job_id, state.attempt
        with tracing.span(
            "planner",
            "job",
            {"anim.job_id": job_id, "anim.attempt": attempt, "anim.frames": state.frames},
        ):
            created = bus.new_event(
                bus_pb2.EVENT_TYPE_JOB_CREATED, job_id, -1, attempt, "", service="planner"
            )
            await bus.publish_event(self.bus.js, created)
            await bus.publish_work(
                self.bus.js,
                "plan",
                bus_pb2.PlanWork(job_id=job_id, attempt=attempt, causation_id=created.event_id),
                job_id=job_id,
                frame=-1,
                attempt=attempt,
            )

    async def _check_tokens(self, profile_name: str, board) -> None:
        """Refuse a storyboard whose prompt, style included, is over CLIP's 77 tokens.

        Uses the profile's tokenizer only (no torch). When the tokenizer cannot be loaded
        here, planning makes the same check before anything renders.
        """
        if self.settings is None:
            return
        from ghibli_anim.contracts.profiles import load_profile
        from ghibli_anim.contracts.storyboard import prompts_with_style
        from ghibli_anim.contracts.tokens import TokenCounter

        def counter() -> TokenCounter:
            profile = load_profile(profile_name, self.settings)
            return TokenCounter.for_profile(profile, self.settings)

        try:
            tokens = await asyncio.to_thread(counter)
        except Exception as exc:  # a missing tokenizer is not the caller's fault
            log.warning(
                "tokenizer unavailable at creation; planning checks the prompts",
                extra={"profile": profile_name, "error": str(exc)},
            )
            return
        try:
            tokens.check(prompts_with_style(board))
        except ValueError as exc:
            raise ValueError(f"storyboard_json: {exc}") from None

    # -- read ---------------------------------------------------------------

    async def get(self, job_id: str) -> animation_pb2.Animation:
        keys.check_job_id(job_id)
        state, _ = await self.jobs.get(job_id)
        return await asyncio.to_thread(self.view, state, True)

    def view(self, state: animation_pb2.JobState, files: bool = True) -> animation_pb2.Animation:
        """The client's view of a job; with files, presigned URLs of every stored file.

        Once COMPLETED, ``outputs`` and ``frame_files`` carry size and sha256. Once
        planned but not completed (running, failed, cancelled), the storyboard and every
        file stored so far come in ``frame_files`` with their URL only: they may still
        change, and listing them costs no read per file (the web page shows frames
        as they land this way).
        """
        req = state.request
        anim = animation_pb2.Animation(
            job_id=state.job_id,
            status=state.status,
            frames_total=state.frames,
            frames_done=sum(1 for f in state.frame_states if f.rendered),
            error=state.error,
            seed=state.seed,
            attempt=state.attempt,
            title=state.title,
            planner_backend=state.planner_backend,
            created_at=state.created_at,
            updated_at=state.updated_at,
            profile=req.profile,
            idea=req.idea,
        )
        if files and state.status not in (
            types_pb2.JOB_STATUS_PENDING,
            types_pb2.JOB_STATUS_PLANNING,
        ):
            with contextlib.suppress(KeyError):
                anim.storyboard_json = self.store.get(keys.plan_key(state.job_id)).decode()
            for key in self.store.list(keys.job_prefix(state.job_id)):
                if state.status != types_pb2.JOB_STATUS_COMPLETED:
                    anim.frame_files.append(
                        types_pb2.OutputFile(
                            name=key.rsplit("/", 1)[-1],
                            key=key,
                            url=self.store.presign_get(key, self.presign_ttl_s),
                        )
                    )
                    continue
                info = self.store.stat(key)
                if info is None:
                    continue
                name = key.rsplit("/", 1)[-1]
                out = types_pb2.OutputFile(
                    name=name,
                    key=key,
                    size_bytes=info.size,
                    sha256=info.sha256 or "",
                    content_type=info.content_type or "",
                    url=self.store.presign_get(key, self.presign_ttl_s),
                )
                relative = key[len(keys.job_prefix(state.job_id)) :]
                (anim.outputs if relative in _OUTPUT_NAMES else anim.frame_files).append(out)
        return anim

    async def list(
        self, page_size: int, page_token: str, status: int
    ) -> animation_pb2.ListAnimationsResponse:
        size = page_size or limits.DEFAULT_LIST_PAGE_SIZE
        limits.LIST_PAGE_SIZE.check("page_size", size)
        if page_token and not keys.is_job_id(page_token):
            raise ValueError("page_token: must be a token from a previous page")
        ids = sorted(await self.jobs.list())
        if page_token:
            ids = [i for i in ids if i > page_token]
        out = animation_pb2.ListAnimationsResponse()
        for job_id in ids:
            try:
                state, _ = await self.jobs.get(job_id)
            except JobNotFound:
                continue  # deleted meanwhile
            if status and state.status != status:
                continue
            out.animations.append(self.view(state, files=False))
            if len(out.animations) == size:
                out.next_page_token = job_id
                break
        return out

    # -- cancel -------------------------------------------------------------

    async def cancel(self, job_id: str) -> animation_pb2.Animation:
        keys.check_job_id(job_id)

        def mutate(state: animation_pb2.JobState) -> None:
            if state.status in _CANCELLABLE:
                state.status = types_pb2.JOB_STATUS_CANCELLED
                state.error = "cancelled by the user"

        state = await self.jobs.update(job_id, mutate)
        if state.status != types_pb2.JOB_STATUS_CANCELLED:
            raise FailedPrecondition(
                f"job_id: job {job_id} is {status_name(state.status)}, "
                "only PENDING, PLANNING, RENDERING or ASSEMBLING jobs can be cancelled "
                "(cancelling a CANCELLED job again is harmless)"
            )
        event = bus.new_event(
            bus_pb2.EVENT_TYPE_JOB_CANCELLED,
            job_id,
            -1,
            state.attempt,
            state.last_event_id,
            service="planner",
            reason="cancelled by the user",
        )
        await bus.publish_event(self.bus.js, event)
        return self.view(state, files=False)

    # -- resume -------------------------------------------------------------

    async def resume(self, job_id: str) -> animation_pb2.Animation:
        """FAILED or CANCELLED -> on again from the first frame without a record.

        Same seed, specs, profile and colour references; ``attempt`` + 1 so the
        re-published work is not dropped as a duplicate. A frame counts as done
        when its PNG and its record are in the store (the store, not the events,
        since a cancelled job's last frame.rendered may have been ignored).
        """
        keys.check_job_id(job_id)
        state, _ = await self.jobs.get(job_id)
        if state.status not in (types_pb2.JOB_STATUS_FAILED, types_pb2.JOB_STATUS_CANCELLED):
            raise FailedPrecondition(
                f"job_id: job {job_id} is {status_name(state.status)}, "
                "only FAILED or CANCELLED jobs can be resumed"
            )
        stored = set(await asyncio.to_thread(self.store.list, keys.job_prefix(job_id)))

        def mutate(s: animation_pb2.JobState) -> None:
            if s.status not in (types_pb2.JOB_STATUS_FAILED, types_pb2.JOB_STATUS_CANCELLED):
                return
            s.attempt += 1
            s.error = ""
            if not s.frame_specs:
                s.status = types_pb2.JOB_STATUS_PENDING  # stopped before planning ended
                return
            for fs in s.frame_states:
                fs.rendered = {
                    keys.frame_key(job_id, fs.index),
                    keys.frame_record_key(job_id, fs.index),
                } <= stored
                fs.depth_ready = keys.depth_key(job_id, fs.index) in stored
            done = all(fs.rendered for fs in s.frame_states)
            s.status = types_pb2.JOB_STATUS_ASSEMBLING if done else types_pb2.JOB_STATUS_RENDERING

        state = await self.jobs.update(job_id, mutate)
        if state.status == types_pb2.JOB_STATUS_PENDING:
            await self._start(state)
            return self.view(state, files=False)
        first = next((fs.index for fs in state.frame_states if not fs.rendered), None)
        resumed = bus.new_event(
            bus_pb2.EVENT_TYPE_JOB_PLANNED,
            job_id,
            -1,
            state.attempt,
            state.last_event_id,
            service="planner",
            reason=f"resumed at frame {first}" if first is not None else "resumed: assembling",
        )
        await bus.publish_event(self.bus.js, resumed)
        await self._publish_resumed(state, first, resumed.event_id)
        log.info("job resumed", extra={"job_id": job_id, "frame": first})
        return self.view(state, files=False)

    async def _publish_resumed(
        self, state: animation_pb2.JobState, first: int | None, cause: str
    ) -> None:
        from ghibli_anim.services.planner.conductor import assemble_work, next_work, publish_step

        for fs in state.frame_states:
            # Frames found in the store carry no event id: the resume stands in.
            fs.rendered_event_id = fs.rendered_event_id or cause
            fs.depth_event_id = fs.depth_event_id or cause
        if first is None:
            step, work = "assemble", assemble_work(state)
        elif first == 0:
            step = "render"
            work = bus_pb2.RenderWork(
                job_id=state.job_id,
                frame=0,
                attempt=state.attempt,
                causation_id=cause,
                spec=state.frame_specs[0],
            )
        else:
            step, work = next_work(state, first - 1)
        await publish_step(self.bus, state, step, work)

    # -- delete and retention -----------------------------------------------

    async def delete(self, job_id: str) -> animation_pb2.DeleteAnimationResponse:
        """Remove a finished job: its store objects, its events, its KV state.

        Only COMPLETED, FAILED or CANCELLED jobs: a running job's workers would
        write again behind the delete (cancel it first). The KV key goes last, so
        an interrupted delete can simply be called again.
        """
        keys.check_job_id(job_id)
        state, _ = await self.jobs.get(job_id)
        if not is_terminal(state.status):
            raise FailedPrecondition(
                f"job_id: job {job_id} is {status_name(state.status)}; cancel it before deleting"
            )
        removed = await asyncio.to_thread(self.store.delete_prefix, keys.job_prefix(job_id))
        await self.bus.js.purge_stream(bus.EVENTS_STREAM, subject=bus.job_events_filter(job_id))
        if state.request.idempotency_key:
            await self.jobs.release_idempotency(
                state.request.client_id, state.request.idempotency_key, job_id
            )
        await self.jobs.delete(job_id)
        log.info("job deleted", extra={"job_id": job_id, "objects": removed})
        return animation_pb2.DeleteAnimationResponse(objects_deleted=removed)

    async def expire(self, older_than_s: float, now: float | None = None) -> list[str]:
        """Delete finished jobs last updated more than ``older_than_s`` seconds ago."""
        now = time.time() if now is None else now
        expired = []
        for job_id in await self.jobs.list():
            try:
                state, _ = await self.jobs.get(job_id)
            except JobNotFound:
                continue
            updated = state.updated_at.ToSeconds() if state.HasField("updated_at") else now
            if is_terminal(state.status) and now - updated > older_than_s:
                await self.delete(job_id)
                expired.append(job_id)
        return expired

    # -- overall time limit ---------------------------------------------------

    async def time_out(self, limit_s: float, now: float | None = None) -> list[str]:
        """Fail every unfinished job that started more than ``limit_s`` seconds ago.

        A job starts when it is created, and again when it is resumed: a resumed job
        gets the whole limit anew. The reason names the limit, the state and, while
        rendering, the first frame not yet done. Work still in flight for the job is
        ignored when it reports back (the conductor only advances running jobs).
        Returns the ids of the jobs this call failed (replicas racing fail each once).
        """
        now = time.time() if now is None else now
        failed = []
        for job_id in await self.jobs.list():
            try:
                state, _ = await self.jobs.get(job_id)
            except JobNotFound:
                continue
            if is_terminal(state.status):
                continue
            started = await self._started_at(state, now, limit_s)
            if now - started <= limit_s:
                continue
            try:
                if await self._fail_timed_out(state.job_id, limit_s, now - started):
                    failed.append(job_id)
            except JobNotFound:
                continue
        return failed

    async def _started_at(self, state: animation_pb2.JobState, now: float, limit_s: float) -> float:
        """When the job's current attempt began (seconds since the epoch)."""
        created = state.created_at.ToSeconds() if state.HasField("created_at") else now
        if state.attempt <= 1 or now - created <= limit_s:
            return created  # the cheap answer settles it
        # Resumed: the first event of the current attempt marks its start (JobState keeps
        # no time per attempt). Read only for resumed jobs older than the limit.
        for event in await bus.read_job_events(self.bus.js, state.job_id):
            if event.attempt == state.attempt and event.HasField("time"):
                return event.time.ToSeconds()
        # Its events are gone (stream age limit): the last change is the best lower bound.
        return state.updated_at.ToSeconds() if state.HasField("updated_at") else created

    async def _fail_timed_out(self, job_id: str, limit_s: float, elapsed_s: float) -> bool:
        """FAILED with the reason, then job.failed; False when the job finished meanwhile."""
        reasons: list[str] = []

        def fail(state: animation_pb2.JobState) -> None:
            reasons.clear()
            if is_terminal(state.status):
                return
            where = status_name(state.status)
            if state.status == types_pb2.JOB_STATUS_RENDERING:
                frame = next((f.index for f in state.frame_states if not f.rendered), None)
                if frame is not None:
                    where += f" at frame {frame}"
            reason = (
                f"job exceeded ANIM_JOB_TIMEOUT_S={limit_s:g} while {where} "
                f"(started {elapsed_s:.0f} s ago)"
            )
            reasons.append(reason)
            state.status = types_pb2.JOB_STATUS_FAILED
            state.error = reason

        state = await self.jobs.update(job_id, fail)
        if not reasons or state.status != types_pb2.JOB_STATUS_FAILED:
            return False
        event = bus.new_event(
            bus_pb2.EVENT_TYPE_JOB_FAILED,
            job_id,
            -1,
            state.attempt,
            state.last_event_id,
            service="planner",
            reason=reasons[0],
        )
        await bus.publish_event(self.bus.js, event)
        log.warning("job timed out", extra={"job_id": job_id, "reason": reasons[0]})
        return True

    # -- watch --------------------------------------------------------------

    async def watch(self, job_id: str, after_sequence: int) -> AsyncIterator[bus_pb2.Event]:
        """The job's events in order, from after_sequence, until its terminal event."""
        keys.check_job_id(job_id)
        state, _ = await self.jobs.get(job_id)  # NOT_FOUND before streaming anything
        if is_terminal(state.status):
            # Everything is stored already: replay it and end, even when the
            # caller is past the terminal event.
            for event in await bus.read_job_events(
                self.bus.js, job_id, after_sequence=after_sequence
            ):
                yield event
            return
        watch = await bus.watch_job_events(self.bus.js, job_id, after_sequence=after_sequence)
        try:
            async for event in watch:
                yield event
                # A resumed job has terminal events of earlier attempts behind it.
                if event.type in _TERMINAL_EVENTS and event.attempt >= state.attempt:
                    return
        finally:
            await watch.close()
