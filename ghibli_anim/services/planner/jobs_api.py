"""The job API as plain async Python: create, fork, get, list, approve, cancel, resume,
delete, watch.

gRPC and the bus request subject (:mod:`.grpc_api`) both call :class:`JobsApi`; they
differ only in how they carry errors. Validation happens before anything is written,
so a bad request leaves no trace in KV or the store. Status changes are transitions of
:mod:`ghibli_anim.contracts.lifecycle`; what runs after a create or a resume is the
conductor's decision (the API only announces ``job.created`` or ``job.planned``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp

from ghibli_anim.contracts import events, keys, lifecycle, limits, seeds
from ghibli_anim.contracts.config import Settings
from ghibli_anim.contracts.pb import animation_pb2, bus_pb2, types_pb2
from ghibli_anim.contracts.profiles import load_profile, resolve_profile
from ghibli_anim.contracts.storyboard import Storyboard, parse_storyboard, prompts_with_style
from ghibli_anim.contracts.tokens import TokenCounter
from ghibli_anim.contracts.uploads import check_request as check_upload_request
from ghibli_anim.contracts.validate import validate_create
from ghibli_anim.runtime import tracing
from ghibli_anim.runtime.auth import ANONYMOUS, current_client
from ghibli_anim.runtime.bus.connection import Bus
from ghibli_anim.runtime.bus.consumer import NonRetryable
from ghibli_anim.runtime.bus.names import EVENTS_STREAM, job_events_filter
from ghibli_anim.runtime.bus.publish import announce, job_event, publish_event
from ghibli_anim.runtime.bus.watch import read_job_events, watch_job_events
from ghibli_anim.runtime.jobstore import JobNotFound, JobStore, SlotsTaken, list_scope
from ghibli_anim.runtime.store.base import Store
from ghibli_anim.services.planner import forks, plan_step
from ghibli_anim.services.planner.uploads import load_upload

log = logging.getLogger(__name__)

SERVICE = "planner"
_OUTPUT_NAMES = frozenset(keys.OUTPUT_NAMES.values()) | {"manifest.json"}


class FailedPrecondition(ValueError):
    """The job is not in a state that allows the call (FAILED_PRECONDITION)."""


class QuotaExceeded(RuntimeError):
    """The client has too many unfinished jobs (RESOURCE_EXHAUSTED)."""


class ParentNotFound(LookupError):
    """A fork's parent is not in the job store (NOT_FOUND); the message names the field."""


def is_output(job_id: str, key: str) -> bool:
    """Whether a stored key of the job is an output (animation, sheet, zip, manifest),
    rather than a frame, a depth map or a planning file."""
    return key[len(keys.job_prefix(job_id)) :] in _OUTPUT_NAMES


_PAGE_TOKEN = re.compile(r"p([1-9][0-9]{0,18})(?:-([0-9a-f]{12}))?")


def _name(key: str) -> str:
    """The file name of a stored key (its last path segment)."""
    return key.rsplit("/", 1)[-1]


def next_token(position: int, client_id: str) -> str:
    """ListAnimations' next_page_token: where the listing goes on (a position in the job
    store's index, which never changes), and for one client's listing, whose."""
    if not position:
        return ""
    return f"p{position}" + (f"-{list_scope(client_id)[:12]}" if client_id else "")


def parse_page_token(token: str, client_id: str) -> int:
    """The position a page token goes on from (0 for none); ``ValueError`` naming
    page_token for one that no earlier page of this listing gave."""
    if not token:
        return 0
    found = _PAGE_TOKEN.fullmatch(token)
    tag = list_scope(client_id)[:12] if client_id else None
    if found is None or found.group(2) != tag:
        raise ValueError(
            "page_token: must be the next_page_token of a previous page of the same listing "
            f"(same client_id), got {token!r:.40}"
        )
    return int(found.group(1))


@dataclass
class JobsApi:
    bus: Bus
    jobs: JobStore
    store: Store
    profile_names: Collection[str]
    default_profile: str
    presign_ttl_s: int = 900
    max_jobs_per_client: int = 0  # 0 = no cap
    watch_heartbeat_s: float = 15.0
    """WatchAnimation sends a heartbeat after this many quiet seconds."""
    settings: Settings | None = None
    """The service's settings: with them, a user storyboard's prompts are token-checked at
    creation with the profile's tokenizer."""

    # -- create -------------------------------------------------------------

    async def create(
        self,
        request: animation_pb2.CreateAnimationRequest,
        *,
        parent: forks.ParentFrames | None = None,
    ) -> animation_pb2.CreateAnimationResponse:
        """CreateAnimation; a fork's ``parent``, when its caller has read it already."""
        req = validate_create(
            request,
            profile_names=self.profile_names,
            default_profile=self.default_profile,
            settings=self.settings,
        )
        # Model overrides and the preset resolved against the profile now, so a bad LoRA,
        # base model, ControlNet or profile entry is refused naming the field.
        await asyncio.to_thread(resolve_profile, req, self.settings)
        if req.HasField("fork"):
            parent = await self._fork_parent(req, parent)
        if req.storyboard_json and forks.to_continue(req) is None:
            # Shape errors (frame count, fields) are the caller's: refuse now. (An extension
            # left to the planner holds the parent's shots only, checked by the fork.)
            await self._user_board(req, req.storyboard_json)
        init_png = None
        if req.init_upload_id:
            # Validated and re-encoded before the job exists.
            init_png = await asyncio.to_thread(load_upload, self.store, req.init_upload_id)
        caller = current_client.get()
        if caller != ANONYMOUS or not req.client_id:
            req.client_id = caller  # with tokens, the authenticated id, whatever was sent
        job_id = keys.new_job_id()
        if req.idempotency_key:
            claimed = await self.jobs.claim_idempotency(req.client_id, req.idempotency_key, job_id)
            if claimed != job_id:
                try:
                    state, _ = await self.jobs.get(claimed)
                    if state.status == lifecycle.PENDING:
                        # The first request may have died before announcing the job;
                        # announcing it again is deduplicated if not.
                        await self._announce_created(state)
                    return animation_pb2.CreateAnimationResponse(
                        job_id=claimed, existing=True, animation=self.view(state, files=False)
                    )
                except JobNotFound:
                    # The first request died between its claim and its create:
                    # this retry finishes what it started, under the same id.
                    job_id = claimed
        await self._claim_slot(req.client_id, job_id)
        if not req.HasField("seed"):
            req.seed = seeds.new_job_seed()
        now = Timestamp()
        now.GetCurrentTime()
        state = animation_pb2.JobState(
            job_id=job_id,
            status=lifecycle.PENDING,
            request=req,
            seed=req.seed,
            frames=req.frames,
            attempt=1,
            created_at=now,
            updated_at=now,
        )
        if parent is not None:
            # The fork's own copies (server-side on S3): deleting the parent loses nothing.
            await asyncio.to_thread(forks.copy_frames, self.store, parent, job_id)
        if init_png is not None:
            # The job's own validated copy: later PUTs to the upload URL cannot change it.
            await asyncio.to_thread(self.store.put, keys.init_key(job_id), init_png, "image/png")
        await self.jobs.create(state)
        await self._announce_created(state)
        log.info("job created", extra={"job_id": job_id, "frames": req.frames})
        return animation_pb2.CreateAnimationResponse(
            job_id=job_id, existing=False, animation=self.view(state, files=False)
        )

    async def _fork_parent(
        self, req: animation_pb2.CreateAnimationRequest, parent: forks.ParentFrames | None
    ) -> forks.ParentFrames:
        """A fork's parent (read here unless given), checked (:mod:`.forks`);
        ``req.storyboard_json`` becomes the fork's whole storyboard, so planning reads
        nothing of the parent."""
        forks.check_request(req)
        parent_id = req.fork.parent_job_id
        try:
            parent_state, _ = await self.jobs.get(parent_id)
        except JobNotFound:
            # The embedded mode forks runs of earlier processes, each with a bus of its
            # own: the parent's stored files are what a fork needs (read_parent checks).
            parent_state = None
        if parent_state is not None:
            self._check_forkable(parent_state, f"{forks.FIELD}.parent_job_id")
        if parent is None:
            parent = await asyncio.to_thread(
                forks.read_parent, self.store, parent_id, req.fork.from_frame
            )
        req.storyboard_json = forks.board_of(req, parent).to_json()
        return parent

    @staticmethod
    def _check_forkable(parent: animation_pb2.JobState, field: str) -> None:
        if not lifecycle.is_terminal(parent.status):
            raise FailedPrecondition(
                f"{field}: job {parent.job_id} is "
                f"{lifecycle.status_name(parent.status)}; a fork needs a completed, "
                "failed or cancelled job"
            )

    # -- fork ---------------------------------------------------------------

    async def fork(
        self, request: animation_pb2.ForkAnimationRequest
    ) -> animation_pb2.CreateAnimationResponse:
        """ForkAnimation: the parent's request with the changes asked for, made by
        :meth:`create` as a CreateAnimationRequest with ``fork`` (:mod:`.forks`), so both
        check and write the same things, and a fork takes a slot of the client's cap."""
        if not request.HasField("fork"):
            raise ValueError("fork: required (parent_job_id and from_frame)")
        parent_id, from_frame = request.fork.parent_job_id, request.fork.from_frame
        parent_state = await self._parent_state(parent_id)
        edits = self._prompt_edits(request.prompts)
        board = self._request_board(request.storyboard_json)
        if board is None:
            board = await asyncio.to_thread(forks.read_board, self.store, parent_id)
        forks.check_from_frame(from_frame, len(board.frames))
        board = forks.edit_prompts(
            board, edits, from_frame, field="prompts", from_field="fork.from_frame"
        )
        req = forks.request_of_fork(parent_state.request, parent_state.seed, request, board)
        return await self.create(req)

    async def extend(
        self, request: animation_pb2.ExtendAnimationRequest
    ) -> animation_pb2.CreateAnimationResponse:
        """ExtendAnimation: a fork from K = N, the parent's frame count, with N + M frames
        (:func:`forks.fork_of_extension`), made by :meth:`create` as any fork. Without a
        storyboard or prompts its storyboard is the parent's N shots, which the plan step
        continues by M (:func:`forks.to_continue`)."""
        parent_id = request.parent_job_id
        field = "parent_job_id"
        parent_state = await self._parent_state(parent_id, field)
        have = len((await asyncio.to_thread(forks.read_board, self.store, parent_id, field)).frames)
        forks.check_extension_frames(request.frames, have, parent_id)
        # Every frame kept, read now so that a missing one is named as this request's.
        parent = await asyncio.to_thread(forks.read_parent, self.store, parent_id, have, field)
        board = forks.extension_board(
            parent.board,
            have + request.frames,
            self._request_board(request.storyboard_json),
            self._prompt_edits(request.prompts),
            field="prompts",
            plan_field="storyboard_json",
        )
        fork = forks.fork_of_extension(request, have)
        req = forks.request_of_fork(
            parent_state.request, parent_state.seed, fork, board, frames=have + request.frames
        )
        return await self.create(req, parent=parent)

    async def _parent_state(
        self, parent_id: str, field: str = f"{forks.FIELD}.parent_job_id"
    ) -> animation_pb2.JobState:
        """The state of the job a fork or an extension starts from: in the job store
        (ParentNotFound), finished (FailedPrecondition), not started from an init image."""
        forks.check_parent_id(parent_id, field)
        try:
            parent_state, _ = await self.jobs.get(parent_id)
        except JobNotFound:
            raise ParentNotFound(
                f"{field}: job {parent_id} not found (never created, or deleted)"
            ) from None
        self._check_forkable(parent_state, field)
        if parent_state.request.init_upload_id:
            raise ValueError(forks.started_from_init_image(parent_id, field))
        return parent_state

    @staticmethod
    def _prompt_edits(prompts) -> dict[int, str]:
        """ForkAnimation's and ExtendAnimation's ``prompts``: frame -> new prompt."""
        edits: dict[int, str] = {}
        for n, edit in enumerate(prompts):
            if edit.frame in edits:
                raise ValueError(f"prompts[{n}].frame: frame {edit.frame} is edited twice")
            edits[edit.frame] = limits.check_text(
                f"prompts[{n}].prompt", edit.prompt, limits.PROMPT_CHARS, required=True
            )
        return edits

    @staticmethod
    def _request_board(storyboard_json: str) -> Storyboard | None:
        """A fork's or an extension's ``storyboard_json``, parsed (its frame count and the
        parent's shots are checked by the fork); None when empty."""
        if not storyboard_json:
            return None
        try:
            return parse_storyboard(storyboard_json)
        except ValueError as exc:
            raise ValueError(f"storyboard_json: {exc}") from None

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

    async def _claim_slot(self, client_id: str, job_id: str) -> None:
        """One of the client's ANIM_MAX_JOBS_PER_CLIENT slots for the job (exact under
        concurrency, O(cap) reads: see :meth:`JobStore.claim_slot`)."""
        if self.max_jobs_per_client <= 0:
            return
        try:
            await self.jobs.claim_slot(client_id, job_id, self.max_jobs_per_client)
        except SlotsTaken as exc:
            raise QuotaExceeded(str(exc)) from None

    async def _announce_created(self, state: animation_pb2.JobState) -> None:
        """``job.created`` (idempotent by message id); the conductor then publishes the plan
        work. It goes out in the job's span: every later span of the job descends from it."""
        job_id, attempt = state.job_id, state.attempt
        with tracing.span(
            SERVICE,
            "job",
            {"anim.job_id": job_id, "anim.attempt": attempt, "anim.frames": state.frames},
        ):
            await announce(self.bus.js, events.JOB_CREATED, job_id, attempt, "", service=SERVICE)

    async def _user_board(
        self,
        req: animation_pb2.CreateAnimationRequest,
        storyboard_json: str,
        profile: types_pb2.Profile | None = None,
    ) -> Storyboard:
        """A storyboard a user gave (``storyboard_json`` at creation, or the edited one of
        an approval), checked the same way for both: the job's frame count and the fields
        (:func:`parse_storyboard`), then every prompt with the style within CLIP's 77
        tokens unless the request truncates; a ValueError naming ``storyboard_json``."""
        try:
            board = parse_storyboard(storyboard_json, req.frames)
        except ValueError as exc:
            raise ValueError(f"storyboard_json: {exc}") from None
        if not req.truncate_prompts:
            await self._check_tokens(req.profile, board, profile)
        return board

    async def _check_tokens(
        self, profile_name: str, board: Storyboard, profile: types_pb2.Profile | None = None
    ) -> None:
        """Refuse a storyboard whose prompt, style included, is over CLIP's 77 tokens.

        Uses the profile's tokenizer only (no torch). At creation, when the tokenizer
        cannot be loaded here, planning makes the same check before anything renders. With
        ``profile`` (a planned job's, on approval, when nothing checks later) the check
        is not skipped.
        """
        if self.settings is None:
            return
        settings = self.settings

        def counter() -> TokenCounter:
            return TokenCounter.for_profile(
                profile or load_profile(profile_name, settings), settings
            )

        try:
            tokens = await asyncio.to_thread(counter)
        except Exception as exc:  # a missing tokenizer is not the caller's fault
            if profile is not None:
                raise
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
        if req.HasField("fork"):
            anim.fork.CopyFrom(req.fork)
        if not files or state.status in (lifecycle.PENDING, lifecycle.PLANNING):
            return anim
        with contextlib.suppress(KeyError):
            anim.storyboard_json = self.store.get(keys.plan_key(state.job_id)).decode()
        stored = self.store.list(keys.job_prefix(state.job_id))
        if state.status != lifecycle.COMPLETED:
            for key in stored:
                url = self.store.presign_get(key, self.presign_ttl_s)
                anim.frame_files.append(types_pb2.OutputFile(name=_name(key), key=key, url=url))
            return anim
        # One HEAD per file (about three a frame): asked side by side.
        for key, info in zip(stored, self.store.stat_many(stored), strict=True):
            if info is None:  # deleted since the listing
                continue
            out = types_pb2.OutputFile(
                name=_name(key),
                key=key,
                size_bytes=info.size,
                sha256=info.sha256 or "",
                content_type=info.content_type or "",
                url=self.store.presign_get(key, self.presign_ttl_s),
            )
            (anim.outputs if is_output(state.job_id, key) else anim.frame_files).append(out)
        return anim

    async def list(
        self, page_size: int, page_token: str, status: int, client_id: str = ""
    ) -> animation_pb2.ListAnimationsResponse:
        """Newest first, every job or one client's, from the job store's listing indexes:
        a page reads its own jobs, not the history (:meth:`JobStore.page`). At most
        ``LIST_SCAN_LIMIT`` positions per call, so with a status filter (or jobs deleted
        in between) a page can be short, with a token to go on."""
        size = page_size or limits.DEFAULT_LIST_PAGE_SIZE
        limits.LIST_PAGE_SIZE.check("page_size", size)
        if status and status not in lifecycle.STATUSES:
            raise ValueError(
                f"status: must be one of {', '.join(lifecycle.STATUS_NAMES)} or unset, got {status}"
            )
        limits.check_text("client_id", client_id, limits.CLIENT_ID_CHARS, required=False)
        before = parse_page_token(page_token, client_id)
        states, position = await self.jobs.page(
            client_id=client_id or None,
            before=before,
            size=size,
            status=status,
            scan_limit=max(limits.LIST_SCAN_LIMIT, size),
        )
        return animation_pb2.ListAnimationsResponse(
            animations=[self.view(state, files=False) for state in states],
            next_page_token=next_token(position, client_id),
        )

    # -- review -------------------------------------------------------------

    async def approve(self, job_id: str, storyboard_json: str = "") -> animation_pb2.Animation:
        """A job waiting for review (PLANNED) -> RENDERING (:func:`lifecycle.approved`),
        as planned or with an edited storyboard; then ``job.approved``, on which the
        conductor publishes the first frame.

        The edited storyboard is checked like ``storyboard_json`` at creation, and its
        FrameSpecs are built as planning builds them (:func:`plan_step.frame_specs_of`);
        a fork's edit must keep the parent's first K shots. Every check runs before
        anything is written.
        """
        keys.check_job_id(job_id)
        state, _ = await self.jobs.get(job_id)
        self._check_planned(state)
        plan = None
        if storyboard_json:
            board = await self._user_board(state.request, storyboard_json, state.profile)
            if state.request.HasField("fork"):
                # The planned storyboard holds the parent's first K shots (checked at
                # creation); the edit must too.
                planned = await asyncio.to_thread(self.store.get, keys.plan_key(job_id))
                forks.check_board(parse_storyboard(planned), board, state.request.fork.from_frame)
            try:
                specs, stored = await asyncio.to_thread(
                    plan_step.frame_specs_of, self.store, state, board, state.profile
                )
            except NonRetryable as exc:  # a fork's copied frames damaged since creation
                raise FailedPrecondition(f"storyboard_json: {exc}") from None
            plan = (board, specs, stored)
            await asyncio.to_thread(plan_step.write_plan, self.store, job_id, board)
        # Built first: the job's state records its id as the cause of the change.
        event = job_event(
            events.JOB_APPROVED,
            job_id,
            state.attempt,
            state.last_event_id,
            service=SERVICE,
            reason="approved with an edited storyboard" if plan else "approved",
        )

        def approve(s: animation_pb2.JobState) -> bool:
            if plan is None:
                return lifecycle.approved(s, event_id=event.event_id)
            board, specs, stored = plan
            return lifecycle.approved(
                s,
                event_id=event.event_id,
                title=board.title,
                specs=specs,
                storyboard_json=board.to_json(),
                stored=stored,
            )

        state, approved_now = await self.jobs.apply(job_id, approve)
        if not approved_now:
            self._check_planned(state)  # someone else changed it meanwhile
        await publish_event(self.bus.js, event)
        log.info("job approved", extra={"job_id": job_id, "edited": plan is not None})
        return self.view(state, files=False)

    @staticmethod
    def _check_planned(state: animation_pb2.JobState) -> None:
        if state.status != lifecycle.PLANNED:
            raise FailedPrecondition(
                f"job_id: job {state.job_id} is {lifecycle.status_name(state.status)}, "
                "only a job waiting for review (PLANNED, created with review) can be approved"
            )

    # -- cancel and resume ----------------------------------------------------

    async def cancel(self, job_id: str) -> animation_pb2.Animation:
        keys.check_job_id(job_id)
        state = await self.jobs.update(job_id, lifecycle.cancelled)
        if state.status != lifecycle.CANCELLED:
            raise FailedPrecondition(
                f"job_id: job {job_id} is {lifecycle.status_name(state.status)}, "
                "only PENDING, PLANNING, PLANNED, RENDERING or ASSEMBLING jobs can be cancelled "
                "(cancelling a CANCELLED job again is harmless)"
            )
        await announce(
            self.bus.js,
            events.JOB_CANCELLED,
            job_id,
            state.attempt,
            state.last_event_id,
            service=SERVICE,
            reason=lifecycle.CANCELLED_BY_USER,
        )
        return self.view(state, files=False)

    async def resume(self, job_id: str) -> animation_pb2.Animation:
        """FAILED or CANCELLED -> on again from the first frame without a record
        (:func:`lifecycle.resumed`); the conductor then publishes what the state calls for."""
        keys.check_job_id(job_id)
        state, _ = await self.jobs.get(job_id)
        self._check_resumable(state)
        # Unfinished again: it takes a slot of its client's cap again.
        await self._claim_slot(state.request.client_id, job_id)
        stored = await asyncio.to_thread(self.store.list, keys.job_prefix(job_id))
        state, resumed_now = await self.jobs.apply(job_id, lambda s: lifecycle.resumed(s, stored))
        if not resumed_now:
            self._check_resumable(state)  # someone else changed it meanwhile
        if state.status == lifecycle.PENDING:  # stopped before planning ended
            await self._announce_created(state)
            return self.view(state, files=False)
        first = lifecycle.first_frame_not_rendered(state)
        if state.status == lifecycle.PLANNED:
            reason = f"resumed: {plan_step.REVIEW_NOTICE}"
        elif first is not None:
            reason = f"resumed at frame {first}"
        else:
            reason = "resumed: assembling"
        await announce(
            self.bus.js,
            events.JOB_PLANNED,
            job_id,
            state.attempt,
            state.last_event_id,
            service=SERVICE,
            reason=reason,
        )
        log.info("job resumed", extra={"job_id": job_id, "frame": first})
        return self.view(state, files=False)

    @staticmethod
    def _check_resumable(state: animation_pb2.JobState) -> None:
        if state.status not in lifecycle.RESUMABLE:
            raise FailedPrecondition(
                f"job_id: job {state.job_id} is {lifecycle.status_name(state.status)}, "
                "only FAILED or CANCELLED jobs can be resumed"
            )

    # -- delete -------------------------------------------------------------

    async def delete(self, job_id: str) -> animation_pb2.DeleteAnimationResponse:
        """Remove a finished job: its store objects, its events, its KV state.

        Only COMPLETED, FAILED or CANCELLED jobs: a running job's workers would
        write again behind the delete (cancel it first). The KV key goes last, so
        an interrupted delete can simply be called again.
        """
        keys.check_job_id(job_id)
        state, _ = await self.jobs.get(job_id)
        if not lifecycle.is_terminal(state.status):
            raise FailedPrecondition(
                f"job_id: job {job_id} is {lifecycle.status_name(state.status)}; "
                "cancel it before deleting"
            )
        removed = await asyncio.to_thread(self.store.delete_prefix, keys.job_prefix(job_id))
        await self.bus.js.purge_stream(EVENTS_STREAM, subject=job_events_filter(job_id))
        if state.request.idempotency_key:
            await self.jobs.release_idempotency(
                state.request.client_id, state.request.idempotency_key, job_id
            )
        await self.jobs.delete(job_id)
        log.info("job deleted", extra={"job_id": job_id, "objects": removed})
        return animation_pb2.DeleteAnimationResponse(objects_deleted=removed)

    # -- watch --------------------------------------------------------------

    async def watch(self, job_id: str, after_sequence: int) -> AsyncIterator:
        """The job's events in order, from after_sequence, until its terminal event; a
        heartbeat (``watch.heartbeat``, never stored) after every ``watch_heartbeat_s``
        without one, so the client can tell a quiet job from a dead stream."""
        keys.check_job_id(job_id)
        state, _ = await self.jobs.get(job_id)  # NOT_FOUND before streaming anything
        if lifecycle.is_terminal(state.status):
            # Everything is stored already: replay it and end, even when the
            # caller is past the terminal event.
            for event in await read_job_events(self.bus.js, job_id, after_sequence=after_sequence):
                yield event
            return
        watch = await watch_job_events(self.bus.js, job_id, after_sequence=after_sequence)
        last = after_sequence
        try:
            while True:
                try:
                    event = await watch.next(timeout=self.watch_heartbeat_s)
                except TimeoutError:
                    yield bus_pb2.Event(type=events.WATCH_HEARTBEAT, job_id=job_id, sequence=last)
                    continue
                last = event.sequence or last
                yield event
                # A resumed job has terminal events of earlier attempts behind it.
                if event.type in events.TERMINAL and event.attempt >= state.attempt:
                    return
        finally:
            await watch.close()
