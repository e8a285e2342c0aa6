"""The renderer service: anim.work.render -> frames/{i}.png + frames/{i}.json -> frame.rendered.

Models load once per process (``PipelineCache``) and torch runs in a worker thread,
so heartbeats keep flowing during a long frame. At start the device is checked, and
(``ANIM_PRELOAD``) the default profile's models load before the renderer reports
ready and takes work: a replica that is Ready can render. Before rendering, the job's KV
state is checked: a cancelled job or a frame already done is skipped.

Coherence (:mod:`ghibli_anim.services.renderer.continuity`): the source image (frame i-1) and
its depth map are moved by ``spec.camera`` (the previous frame's move, see
services/planner/frame_specs.py) before img2img; the new frame is sharpened (``spec.sharpen``)
and colour-matched to ``spec.color_reference_key`` before it is stored, so what
seeds the next frame is the matched frame. The record says which reference, mode
and camera were used and the CIEDE2000 distances left.

A frame re-rendered in float32 (NaN or black in float16, see
:mod:`ghibli_anim.services.renderer.diffusion`) is logged, and its frame.rendered
event's ``reason`` tells the user, suggesting ``ANIM_DTYPE=float32``; one still
NaN or black in float32 fails without retries.

A stop (SIGTERM) that waited ``ANIM_DRAIN_S`` for the frame in hand hands its message
back (another replica renders it, to the same bytes) and ends the render at its next
denoising step, so the process exits within the drain plus one step.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
from google.protobuf.json_format import MessageToDict

from ghibli_anim.contracts import events, keys, lifecycle
from ghibli_anim.contracts.pb import animation_pb2, bus_pb2
from ghibli_anim.runtime import faults, metrics, tracing
from ghibli_anim.runtime.bus.connection import Bus
from ghibli_anim.runtime.bus.consumer import (
    Delivery,
    Failure,
    NonRetryable,
    Retryable,
    work_consumer,
)
from ghibli_anim.runtime.jobstore import JobNotFound, JobStore
from ghibli_anim.runtime.png import encode_png
from ghibli_anim.runtime.service import CannotServe
from ghibli_anim.runtime.store.base import NotFound, Store, sha256_hex
from ghibli_anim.runtime.torch_service import TorchService
from ghibli_anim.services.renderer import continuity as coherence
from ghibli_anim.services.renderer.encoding import decode_gray, decode_png
from ghibli_anim.services.renderer.progress import ProgressReporter

log = logging.getLogger(__name__)

T = TypeVar("T")

CLOSE_WAIT_S = 60.0
"""How long a stopping renderer waits for a render it stopped to reach its next step."""


class FrameAbandoned(Exception):
    """Raised in the torch thread to end a render whose message was handed back."""


def _pixels(
    data: np.ndarray | bytes | None, field: str, decode: Callable = decode_png
) -> np.ndarray | None:
    """Pixels of stored PNG bytes, RGB (``decode_gray``: one channel); pixels already
    decoded pass through."""
    if data is None or isinstance(data, np.ndarray):
        return data
    try:
        return decode(data, field)
    except Exception as exc:
        raise NonRetryable(f"{field}: not a readable image ({exc})") from None


@dataclasses.dataclass
class _Inputs:
    """What a frame starts from: pixels from memory, or PNG bytes the torch thread decodes."""

    source: np.ndarray | bytes | None
    depth: np.ndarray | bytes | None
    reference: coherence.Reference | bytes | None


@dataclasses.dataclass(frozen=True)
class _DepthMap:
    """A frame's depth map: as the next frame reads it (H x W pixels) and as stored (its PNG,
    being encoded on the encoder thread)."""

    pixels: np.ndarray
    encoded: Future[bytes]


@dataclasses.dataclass(frozen=True)
class _Rendered:
    """A finished frame: the pixels kept in memory, the PNG to store and its colour
    distances (both being made on the encoder thread), the rest of its record, and its
    depth map when the work asked for one."""

    pixels: np.ndarray
    encoded: Future[bytes]
    record: dict
    color: Future[dict]
    """The record's ``sharpen`` and ``color`` entries (``continuity.Finished.record``)."""
    notice: str = ""
    depth: _DepthMap | None = None

    async def full_record(self) -> dict:
        return {**self.record, **await asyncio.wrap_future(self.color)}


class _Steps:
    """The step callback of one render (any thread): the slow-step fault, abandonment, and
    frame.progress. A frame rendered ahead has no progress reporter until its work
    arrives: its steps are kept until then and replayed in order."""

    def __init__(self, job_id: str, frame: int) -> None:
        self.job_id, self.frame = job_id, frame
        self.abandoned = threading.Event()
        self.finished = threading.Event()
        self._slow_s = faults.step_delay("render", frame)
        self._lock = threading.Lock()
        self._reporter: ProgressReporter | None = None
        self._pending: list[tuple[int, int]] = []

    def run(self, fn: Callable[..., T], *args) -> T:
        """``fn(*args)`` in the calling (torch) thread, noting when it has returned."""
        try:
            return fn(*args)
        finally:
            self.finished.set()

    def attach(self, reporter: ProgressReporter) -> None:
        with self._lock:
            for done, total in self._pending:
                reporter.on_step(done, total)
            self._pending.clear()
            self._reporter = reporter

    def __call__(self, done: int, total: int) -> None:
        # After every denoising step. A stop that stopped waiting for this frame
        # (ANIM_DRAIN_S) has handed it back already, and a frame rendered ahead for a
        # work that went elsewhere is not wanted: end the render here.
        if self._slow_s:
            time.sleep(self._slow_s)
        if self.abandoned.is_set():
            log.warning(
                "render stopped: the frame was handed back or is not wanted here",
                extra={"job_id": self.job_id, "frame": self.frame, "step": done, "steps": total},
            )
            raise FrameAbandoned(f"frame {self.frame}: stopped at step {done} of {total}")
        with self._lock:
            if self._reporter is None:
                self._pending.append((done, total))
            else:
                self._reporter.on_step(done, total)


@dataclasses.dataclass
class _Ahead:
    """A frame being rendered ahead of its work."""

    job_id: str
    frame: int
    spec: object  # the FrameSpec its work will carry
    with_depth: bool
    task: asyncio.Future
    """The render, as the event loop awaits it."""
    done: Future
    """The same render for other threads: the next frame ahead starts from it."""
    steps: _Steps
    timer: metrics.FrameTimer


class _NotInMemory(LookupError):
    """A frame's input was to come from the frame before it, which did not leave it."""


_queued = threading.local()


def _run_queued(fn: Callable[[Future], None], finished: Future) -> None:
    """``fn(finished)``, then, in this thread, whatever it queued behind it.

    A frame ahead that finishes calls back the next one in its thread (``set_result``
    runs the future's callbacks): that call is queued here and run once the finished
    frame's call has returned, so a long chain runs in a loop, not as ever deeper
    recursion holding every frame it rendered."""
    queue = getattr(_queued, "calls", None)
    if queue is not None:  # inside a queued call of this thread: run after it
        queue.append((fn, finished))
        return
    _queued.calls = queue = [(fn, finished)]
    try:
        while queue:
            call, arg = queue.pop(0)
            call(arg)
    finally:
        _queued.calls = None


def _done(value: T) -> Future:
    """A future that is already done, with ``value``."""
    future: Future = Future()
    future.set_result(value)
    return future


def _quiet(task: asyncio.Future) -> None:
    # A frame rendered ahead that nobody claims may fail (or be abandoned) unobserved.
    if not task.cancelled():
        task.exception()


def _color_record(finished: coherence.Finished, reference_key: str) -> dict:
    extra = finished.record()
    extra["color"]["reference_key"] = reference_key
    return extra


def _timed(timer: metrics.FrameTimer, stage: str, fn: Callable[..., T], *args) -> T:
    with timer.time(stage):
        return fn(*args)


def store_lora_resolver(store: Store, cache_dir: Path) -> Callable[[str], str]:
    """A ``PipelineCache`` resolver for ``store://loras/NAME`` LoRA sources.

    It downloads ``loras/NAME/pytorch_lora_weights.safetensors`` into
    ``cache_dir/NAME/<sha256>/`` and returns the file's path. A copy whose
    sha256 matches the store's is reused; a LoRA retrained under the same name
    has a new sha256, so it lands in a new folder (a running renderer keeps the
    pipeline it loaded until the profile's LoRA list changes).
    """

    def resolve(source: str) -> str:
        from ghibli_anim.contracts.model_refs import STORE_PREFIX

        parts = source.removeprefix(STORE_PREFIX).split("/")
        if not source.startswith(STORE_PREFIX) or len(parts) != 2 or parts[0] != keys.LORA_PREFIX:
            raise ValueError(f"lora source: must be store://loras/NAME, got {source!r:.200}")
        name = keys.check_name(parts[1], "lora source (LoRA name)")
        key = keys.lora_key(name)
        info = store.stat(key)
        if info is None:
            raise ValueError(f"lora source: {source} is not in the store (no {key})")
        if info.sha256:
            cached = cache_dir / name / info.sha256 / keys.LORA_WEIGHT_NAME
            if cached.is_file():
                return str(cached)
        try:
            data = store.get(key)
        except NotFound:
            raise ValueError(f"lora source: {source} is not in the store (no {key})") from None
        folder = cache_dir / name / sha256_hex(data)
        target = folder / keys.LORA_WEIGHT_NAME
        if not target.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            # Written beside, then renamed: a concurrent reader never sees half a file.
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".download-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, target)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        log.info("lora fetched", extra={"source": source, "path": str(target)})
        return str(target)

    return resolve


class RendererService(TorchService):
    name = "renderer"

    async def start(self, bus_: Bus, store) -> None:
        await super().start(bus_, store)
        from ghibli_anim.services.renderer.pipelines import PipelineCache
        from ghibli_anim.services.renderer.recent_frames import RecentFrames

        # Frame i stays in memory: frame i+1 on this replica skips the store read.
        self.recent = RecentFrames(self.settings["ANIM_FRAME_CACHE"])
        self.references = RecentFrames(8 if self.settings["ANIM_FRAME_CACHE"] else 0)
        loras_dir = Path(self.settings["ANIM_CACHE_DIR"]).expanduser() / "loras"
        self.cache = PipelineCache(
            self.settings, lora_resolver=store_lora_resolver(store, loras_dir)
        )
        self.jobs = await JobStore.open(bus_.js)
        self._estimators: dict[str, object] = {}  # depth model ref -> DepthEstimator
        self._estimators_lock = threading.Lock()
        concurrency = self.settings["ANIM_RENDER_CONCURRENCY"]
        # A frame's PNG is encoded here while the torch thread makes its depth map.
        self._encoder = ThreadPoolExecutor(
            max_workers=concurrency, thread_name_prefix="renderer-encode"
        )
        # Frames rendered ahead whose source frame was already done start here; the others
        # start in the thread that finishes their source frame.
        self._torch = ThreadPoolExecutor(max_workers=2, thread_name_prefix="renderer-ahead")
        self._ahead: _Ahead | None = None
        self._renders: set[_Steps] = set()  # renders whose thread may still run
        self.consumers = [
            work_consumer(
                bus_.js,
                "render",
                bus_pb2.RenderWork,
                self.handle,
                on_give_up=self.give_up,
                concurrency=concurrency,
            )
        ]

    def load_models(self) -> dict[str, str]:
        """What a request that names nothing renders with: the profile ANIM_PROFILE as the
        planner resolves it (ANIM_TINY_VAE included), its LoRAs, with the txt2img and
        img2img pipelines derived; and what depth guidance adds, the ControlNet and the
        depth model the renderer makes the next frame's depth map with."""
        from ghibli_anim.contracts.pb import animation_pb2
        from ghibli_anim.contracts.profiles import resolve_profile
        from ghibli_anim.services.renderer import pipelines

        try:
            profile = resolve_profile(animation_pb2.CreateAnimationRequest(), self.settings)
        except ValueError as exc:  # the profiles file or ANIM_PROFILE
            raise CannotServe(f"{self.name} cannot serve: {exc}") from exc
        modes = [pipelines.TXT2IMG, pipelines.IMG2IMG]
        if profile.controlnet:
            modes.append(pipelines.CONTROLNET_IMG2IMG)
        for mode in modes:
            _, models = self.cache.pipeline(profile, mode, profile.scheduler)
        loaded = {"device": models.device, "base_model": profile.base_model}
        if profile.controlnet and profile.depth_model:
            self._estimator(profile.depth_model)
            loaded["depth_model"] = profile.depth_model
        return loaded

    async def handle(self, work: bus_pb2.RenderWork, delivery: Delivery) -> None:
        job_id = keys.check_job_id(work.job_id)
        i = work.frame
        ahead = self._claim_ahead(work)
        try:
            state, _ = await self.jobs.get(job_id)
        except JobNotFound:
            log.info("render skipped: job deleted", extra={"job_id": job_id, "frame": i})
            return
        if state.status != lifecycle.RENDERING:
            log.info("render skipped", extra={"job_id": job_id, "frame": i})
            return
        if i < len(state.frame_states) and state.frame_states[i].rendered:
            log.info("frame already rendered", extra={"job_id": job_id, "frame": i})
            return
        # Informative only: not worth a round trip on the frame's critical path.
        await self.emit(events.FRAME_STARTED, work, acked=False)
        started = time.monotonic()
        await faults.hit("render", i)
        depth_key = ""
        if work.depth_output_key:
            depth_key = keys.check_key(work.depth_output_key, "depth_output_key")
            if keys.job_id_of_key(depth_key) != job_id:
                raise NonRetryable(f"depth_output_key: {depth_key} is not a key of job {job_id}")
        # frame.progress events from the torch thread, all out before frame.rendered.
        progress = ProgressReporter(self.bus.nc, work, self.name, started=started)
        render_ahead = self.settings["ANIM_RENDER_AHEAD"] and self.recent.capacity
        try:
            chained = None
            if render_ahead and ahead is not None:
                # This frame is still rendering ahead: the next one follows it in the same
                # thread the moment it is done, with no event-loop turn in between.
                chained = self._start_ahead(state, work, ahead.done)
            try:
                result, timer, source_read, rendered_ahead = await self._result(
                    work, delivery, ahead, depth_key, progress
                )
            except BaseException:
                self._drop(chained)
                raise
            # The next frame starts on the device now, while this one's last progress
            # event, PNG, store writes and announcement follow.
            if render_ahead:
                if not rendered_ahead:  # the chained one followed a failure
                    self._drop(chained)
                if chained is None or chained.steps.abandoned.is_set():
                    self._start_ahead(state, work, _done(result))
        finally:
            await progress.close()
        png = await asyncio.wrap_future(result.encoded)

        async def record_of() -> dict:
            return {
                **await result.full_record(),
                "job_id": job_id,
                "frame": i,
                "attempt": work.attempt,
                "causation_id": work.causation_id,
                "key": keys.frame_key(job_id, i),
                "sha256": sha256_hex(png),
                "source_read": source_read,
                "rendered_ahead": rendered_ahead,
                # The whole spec, so a fork of this job renders from exactly what this
                # frame ran with, from the store alone (services/planner/forks.py).
                "spec": MessageToDict(
                    work.spec,
                    preserving_proto_field_name=True,
                    always_print_fields_with_no_presence=True,
                ),
            }

        with timer.time("store"):
            record = await self._write(job_id, i, result, png, record_of, depth_key)
        timer.observe(record["mode"])
        if result.notice:
            log.warning(result.notice, extra={"job_id": job_id, "frame": i})
        await self.emit(
            events.FRAME_RENDERED,
            work,
            key=keys.frame_key(job_id, i),
            depth_key=depth_key,
            reason=result.notice,  # the user's notice: a re-render in float32
        )

    async def _result(
        self,
        work: bus_pb2.RenderWork,
        delivery: Delivery,
        ahead: _Ahead | None,
        depth_key: str,
        progress: ProgressReporter,
    ) -> tuple[_Rendered, metrics.FrameTimer, str | None, bool]:
        """Frame ``work.frame``: the one rendered ahead for this work, or rendered now;
        with its stage times, where its source came from, and whether it was ahead."""
        if ahead is not None:
            ahead.steps.attach(progress)
            ahead.timer.add("queue_wait", delivery.queue_wait_s)
            try:
                return await ahead.task, ahead.timer, "memory", True
            except asyncio.CancelledError:
                ahead.steps.abandoned.set()
                raise
            except Exception as exc:  # rendered again below: the same spec, the same bytes
                log.info(
                    "frame rendered ahead failed; rendering it now",
                    extra={"job_id": work.job_id, "frame": work.frame, "error": str(exc)},
                )
        spec = work.spec
        timer = metrics.FrameTimer(self.name)
        timer.add("queue_wait", delivery.queue_wait_s)
        source_read = None
        if spec.source_key:
            source_read = "memory" if spec.source_key in self.recent else "store"
        with timer.time("load"):
            # The inputs' store reads run side by side; what this replica stored is in memory.
            source, depth, reference = await asyncio.gather(
                self._read(spec.source_key, "source_key"),
                self._read(spec.depth_key, "depth_key"),
                self._read_reference(work.job_id, work.frame, spec),
            )
        inputs = _Inputs(source, depth, reference)
        steps = self._steps(work.job_id, work.frame)
        steps.attach(progress)
        try:
            result = await asyncio.to_thread(
                steps.run, self._render, spec, inputs, steps, timer, bool(depth_key)
            )
        except asyncio.CancelledError:
            steps.abandoned.set()
            raise
        if isinstance(inputs.reference, coherence.Reference):  # decoded once, kept
            self.references.put(spec.color_reference_key, inputs.reference)
        return result, timer, source_read, False

    # --- rendering ahead ----------------------------------------------------------------
    # Frame i+1 depends only on frame i and its spec, both in this process once frame i
    # is rendered. Rendering it right away, while frame i is encoded, stored and
    # announced and the conductor sends the next work, takes all of that off the chain's
    # critical path (ARCHITECTURE.md). When frame i's work arrives while frame i is still
    # rendering ahead, frame i+1 is queued behind it in that thread, so the device goes
    # from one to the next without waiting for the event loop. Nothing of a frame
    # rendered ahead is stored or announced until its work arrives; a work for anything
    # else drops it.

    def _start_ahead(
        self, state: animation_pb2.JobState, work: bus_pb2.RenderWork, rendering: Future
    ) -> _Ahead | None:
        """Render frame ``work.frame + 1`` ahead of its work, from frame ``work.frame`` once
        ``rendering`` (its render) is done: in the thread that finishes that render, or,
        when it is done already, in the torch pool. Returns the frame ahead, if any."""
        job_id, n = work.job_id, work.frame + 1
        if n >= len(state.frame_specs) or self._ahead is not None:
            return None
        if any(consumer.in_hand > 1 for consumer in self.consumers):
            return None  # another job's frame is waiting for the device: it goes first
        spec = state.frame_specs[n]
        # What frame work.frame leaves in memory comes from its render; the rest from the
        # recent frames, now: nothing is read from the store for a frame that may never be
        # asked for.
        own = {keys.frame_key(job_id, work.frame)}
        if work.depth_output_key:
            own.add(work.depth_output_key)
        found: dict[str, np.ndarray] = {}
        for key in (spec.source_key, spec.depth_key):
            if key and key not in own:
                pixels = self.recent.get(key)
                if pixels is None:
                    return None
                found[key] = pixels
        ref_key = spec.color_reference_key
        reference = None
        if ref_key and ref_key != keys.frame_key(job_id, n) and ref_key not in own:
            reference = self.references.get(ref_key)
            if reference is None:
                pixels = self.recent.get(ref_key)
                if pixels is None:
                    return None
                reference = coherence.Reference(pixels)
                self.references.put(ref_key, reference)
        timer = metrics.FrameTimer(self.name)
        steps = self._steps(job_id, n)
        with_depth = lifecycle.needs_depth(state.frame_specs, n)
        context = contextvars.copy_context()  # the render's span joins this frame's trace

        def inputs(before: _Rendered) -> _Inputs:
            memory = dict(found)
            memory[keys.frame_key(job_id, work.frame)] = before.pixels
            if before.depth is not None and work.depth_output_key:
                memory[work.depth_output_key] = before.depth.pixels

            def recall(key: str) -> np.ndarray | None:
                if not key:
                    return None
                if key not in memory:
                    raise _NotInMemory(f"{key}: not left in memory by frame {work.frame}")
                return memory[key]

            ref = reference
            if ref_key and ref_key in own:  # frame work.frame is the colour reference
                ref = coherence.Reference(recall(ref_key))
                self.references.put(ref_key, ref)
            return _Inputs(recall(spec.source_key), recall(spec.depth_key), ref)

        def render(before: _Rendered) -> _Rendered:
            attributes = {"anim.job_id": job_id, "anim.frame": n, "anim.ahead": True}
            with tracing.span(self.name, "render.ahead", attributes):
                return self._render(spec, inputs(before), steps, timer, with_depth)

        ahead_done: Future = Future()
        loop_thread = threading.get_ident()

        def launch(finished: Future) -> None:
            # Any failure lands on the frame ahead: its work then renders it anew.
            if not ahead_done.set_running_or_notify_cancel():
                steps.finished.set()
                return
            try:
                if steps.abandoned.is_set():
                    raise FrameAbandoned(f"frame {n}: not wanted here any more")
                try:
                    before = finished.result()
                except BaseException as exc:  # its own failure stays with frame work.frame
                    raise FrameAbandoned(f"frame {n}: frame {work.frame} did not finish") from exc
                value = steps.run(context.run, render, before)
            except BaseException as exc:
                ahead_done.set_exception(exc)
            else:
                ahead_done.set_result(value)  # the next frame ahead may be queued behind
            finally:
                steps.finished.set()

        def follow(finished: Future) -> None:
            try:
                # Never on the event loop: a future done before this was attached calls
                # back at once, in the attaching thread.
                if threading.get_ident() == loop_thread:
                    self._torch.submit(_run_queued, launch, finished)
                else:
                    _run_queued(launch, finished)
            except BaseException as exc:  # e.g. the pool is shut: the frame ahead fails
                if not ahead_done.done():
                    ahead_done.set_exception(exc)
                steps.finished.set()

        task = asyncio.wrap_future(ahead_done)
        task.add_done_callback(_quiet)
        self._ahead = _Ahead(job_id, n, spec, with_depth, task, ahead_done, steps, timer)
        rendering.add_done_callback(follow)
        return self._ahead

    def _drop(self, ahead: _Ahead | None) -> None:
        """Stop ``ahead`` (at its next denoising step, or before it starts)."""
        if ahead is None:
            return
        ahead.steps.abandoned.set()
        if self._ahead is ahead:
            self._ahead = None

    def _steps(self, job_id: str, frame: int) -> _Steps:
        steps = _Steps(job_id, frame)
        self._renders = {s for s in self._renders if not s.finished.is_set()}
        self._renders.add(steps)
        return steps

    def _claim_ahead(self, work: bus_pb2.RenderWork) -> _Ahead | None:
        """The frame rendered ahead for ``work``, if that is the one; any other is dropped."""
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            return None
        if (
            ahead.job_id == work.job_id
            and ahead.frame == work.frame
            and ahead.with_depth == bool(work.depth_output_key)
            and ahead.spec == work.spec
        ):
            return ahead
        ahead.steps.abandoned.set()  # ends at its next denoising step
        return None

    def _render(
        self, spec, inputs: _Inputs, on_step=None, timer=None, with_depth: bool = False
    ) -> _Rendered:
        """Frame ``spec`` from its inputs, in the torch thread: decode what came from the
        store, move the seed by the camera, render, sharpen and colour-match, then encode
        the PNG while (``with_depth``) the frame's depth map is made."""
        from ghibli_anim.services.renderer.diffusion import FrameFailed, render_frame

        timer = timer or metrics.FrameTimer(self.name)
        try:
            camera = coherence.Camera.of(spec.camera)
            with timer.time("decode"):
                source = _pixels(inputs.source, "source_key")
                # One channel: a third of the warp; ControlNet gets it as RGB (_fit).
                depth = _pixels(inputs.depth, "depth_key", decode_gray)
                if isinstance(inputs.reference, bytes):
                    inputs.reference = coherence.Reference(
                        _pixels(inputs.reference, "color_reference_key")
                    )
            if source is not None:
                with timer.time("warp"):
                    source, depth = coherence.prepare_seed(source, depth, camera)
            result = render_frame(
                spec,
                source=source,
                depth=depth,
                cache=self.cache,
                settings=self.settings,
                on_step=on_step,
            )
            # Models count as load, the pipeline call as denoise.
            timer.add("load", result.record["load_s"])
            timer.add("denoise", result.record["elapsed_s"])
            with timer.time("color"):
                finished = coherence.match_frame(
                    result.pixels,
                    reference=inputs.reference,
                    mode=spec.color_coherence,
                    sharpen=spec.sharpen,
                )
            pixels = finished.pixels
            encoding = self._encoder.submit(
                contextvars.copy_context().run, _timed, timer, "encode", encode_png, pixels
            )
            # The distances are only for the record: measured beside the PNG, not before
            # the depth map and the next frame.
            color = self._encoder.submit(
                contextvars.copy_context().run,
                _timed,
                timer,
                "measure",
                _color_record,
                finished,
                spec.color_reference_key,
            )
            depth = None
            if with_depth:
                with timer.time("depth"):
                    depth = self._depth_map(spec.profile.depth_model, pixels)
        except FrameFailed as exc:
            # NaN or black even in float32: the same spec would give the same image.
            raise NonRetryable(str(exc)) from exc
        except (ValueError, OSError) as exc:
            # A bad spec or a missing model will not get better on retry.
            raise NonRetryable(f"{type(exc).__name__}: {exc}") from exc
        camera_record = camera.as_record() if source is not None else None
        # Not waiting for the PNG: the next frame can start from the pixels meanwhile.
        return _Rendered(
            pixels=pixels,
            encoded=encoding,
            record={**result.record, "camera": camera_record},
            color=color,
            notice=result.notice,
            depth=depth,
        )

    def _estimator(self, model_ref: str):
        """The depth model ``model_ref``, loaded once (at start with ANIM_PRELOAD)."""
        from ghibli_anim.runtime.depth_maps import DepthEstimator

        if not model_ref:
            raise ValueError("depth_model: the profile names no depth model")
        with self._estimators_lock:
            estimator = self._estimators.get(model_ref)
            if estimator is None:
                estimator = self._estimators[model_ref] = DepthEstimator(model_ref, self.settings)
        return estimator

    def _depth_map(self, model_ref: str, pixels: np.ndarray) -> _DepthMap:
        """The depth map of a frame's pixels, with its PNG; the model is loaded once."""
        estimator = self._estimator(model_ref)
        # The device runs one model call at a time: the depth model waits for the
        # diffusion of another work in hand (ANIM_RENDER_CONCURRENCY), and it for it.
        with self.cache.lock:
            gray = estimator.estimate_array(pixels)
        gray.setflags(write=False)
        # The stored PNG decodes to exactly these pixels: the next frame on this replica
        # is guided as it would be by the map read from the store.
        # Encoded off the torch thread, like the frame: the next frame only needs the pixels.
        return _DepthMap(pixels=gray, encoded=self._encoder.submit(encode_png, gray))

    async def _read(self, key: str, field: str) -> np.ndarray | bytes | None:
        """The pixels of ``key`` if this replica has them in memory, else its stored bytes
        (decoded in the torch thread); None for no key."""
        if not key:
            return None
        keys.check_key(key, field)
        pixels = self.recent.get(key)  # what this replica stored, if still in memory
        if pixels is not None:
            return pixels
        return await self._load_bytes(key, field)

    async def _read_reference(
        self, job_id: str, i: int, spec
    ) -> coherence.Reference | bytes | None:
        """Frame i's colour reference; None when it is its own (frame 0, a cut, a shift)."""
        key = spec.color_reference_key
        if not key or key == keys.frame_key(job_id, i):
            return None
        if keys.job_id_of_key(keys.check_key(key, "color_reference_key")) != job_id:
            raise NonRetryable(f"color_reference_key: {key} is not a key of job {job_id}")
        # A reference serves many frames: kept apart from the recent frames, whose
        # window it soon leaves, with its colour statistics computed once.
        reference = self.references.get(key)
        if reference is not None:
            return reference
        pixels = self.recent.get(key)
        if pixels is not None:
            return await asyncio.to_thread(coherence.Reference, pixels)
        return await self._load_bytes(key, "color_reference_key")

    async def _load_bytes(self, key: str, field: str) -> bytes:
        try:
            return await asyncio.to_thread(self.store.get, key)
        except NotFound:
            # The previous frame should exist; it may be mid-write on a slow store.
            raise Retryable(f"{field}: {key} is not in the store yet") from None

    async def _write(
        self,
        job_id: str,
        i: int,
        result: _Rendered,
        png: bytes,
        record_of: Callable[[], Awaitable[dict]],
        depth_key: str = "",
    ) -> dict:
        """Store the frame, its record and its depth map side by side, each PUT started as
        soon as its bytes are ready: the frame's first, while its record waits for the
        colour distances and the map for its PNG. Then keep the pixels for the next frame
        on this replica. Returns the record."""
        frame_key = keys.frame_key(job_id, i)
        writes: list[asyncio.Future] = []

        def put(key: str, data: bytes, content_type: str) -> None:
            writes.append(
                asyncio.ensure_future(asyncio.to_thread(self.store.put, key, data, content_type))
            )

        try:
            put(frame_key, png, "image/png")
            record = await record_of()
            record_json = json.dumps(record, indent=2, sort_keys=True).encode()
            put(keys.frame_record_key(job_id, i), record_json, "application/json")
            if depth_key and result.depth is not None:
                put(depth_key, await asyncio.wrap_future(result.depth.encoded), "image/png")
            await asyncio.gather(*writes)
        except BaseException:
            for write in writes:  # nothing waits for them now; a retry writes the same bytes
                write.cancel()
            raise
        # The stored PNGs decode to exactly these pixels (PNG is lossless): the next
        # frame on this replica starts from them, as it would from the store.
        result.pixels.setflags(write=False)
        self.recent.put(frame_key, result.pixels)
        if depth_key and result.depth is not None:
            self.recent.put(depth_key, result.depth.pixels)
        return record

    async def close(self) -> None:
        # Every render still running (one handed back by the drain, one rendered ahead that
        # nobody will ask for) ends at its next denoising step: wait for that, so the
        # process exits with its threads done and their last words logged.
        self._ahead = None
        running = [steps for steps in self._renders if not steps.finished.is_set()]
        for steps in running:
            steps.abandoned.set()
        for steps in running:
            await asyncio.to_thread(steps.finished.wait, CLOSE_WAIT_S)
        # Off the event loop: a render that has not reached a step yet may take a while.
        await asyncio.to_thread(self._torch.shutdown, wait=True)
        await asyncio.to_thread(self._encoder.shutdown, wait=True)
        await super().close()

    async def give_up(self, work: bus_pb2.RenderWork, failure: Failure) -> None:
        metrics.renderer().failed(failure.retryable)
        await self.emit(
            events.FRAME_FAILED,
            work,
            reason=failure.reason,
            retryable=failure.retryable,
        )


SERVICE = RendererService
