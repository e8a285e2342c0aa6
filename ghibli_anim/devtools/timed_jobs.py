"""A job run through the planner's API with the time of each frame's start and end, as the
benchmarks measure the chain (from the events' own timestamps, set where they were emitted)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ghibli_anim.contracts.pb import animation_pb2, bus_pb2, types_pb2
from ghibli_anim.runtime.client import AnimationClient


@dataclass
class TimedJob:
    """One finished job: when each frame's ``frame.started`` and ``frame.rendered`` (the
    first of each, in seconds since the epoch) were emitted."""

    job_id: str
    frames: int
    started: dict[int, float] = field(default_factory=dict)
    rendered: dict[int, float] = field(default_factory=dict)

    @property
    def intervals_s(self) -> list[float]:
        """What each frame took in the chain: frame 0 from its start, every later frame
        from the previous frame's ``frame.rendered`` to its own."""
        r = self.rendered
        return [r[0] - self.started[0]] + [r[i] - r[i - 1] for i in range(1, self.frames)]

    @property
    def first(self) -> float:
        return min(self.started.values())

    @property
    def last(self) -> float:
        return max(self.rendered.values())


async def timed_job(
    client: AnimationClient,
    request: animation_pb2.CreateAnimationRequest,
    on_last_frame: Callable[[], None] | None = None,
) -> TimedJob:
    """Create the job, watch it to its end; raises RuntimeError unless it completed with
    every frame rendered. ``on_last_frame`` is called once every frame has been seen
    rendered (before the outputs are assembled)."""
    created = await client.create(request)
    job = TimedJob(created.job_id, request.frames)
    async for event in client.watch(created.job_id):
        t = event.time.ToNanoseconds() / 1e9
        if event.type == bus_pb2.EVENT_TYPE_FRAME_STARTED:
            job.started.setdefault(event.frame, t)
        elif event.type == bus_pb2.EVENT_TYPE_FRAME_RENDERED:
            first = event.frame not in job.rendered
            job.rendered.setdefault(event.frame, t)
            if first and len(job.rendered) == request.frames and on_last_frame is not None:
                on_last_frame()
    animation = await client.get(created.job_id)
    if animation.status != types_pb2.JOB_STATUS_COMPLETED:
        raise RuntimeError(f"job {created.job_id} ended {animation.status}: {animation.error}")
    if len(job.rendered) != request.frames:
        raise RuntimeError(f"job {created.job_id}: {len(job.rendered)} of {request.frames} frames")
    return job


__all__ = ["TimedJob", "timed_job"]
