"""Test-only fault hooks: make a service pause, fail or crash at a chosen frame.

Inert unless ``ANIM_FAULT`` is set. Chaos tests use them so that a kill lands
exactly where the test wants it. The variable holds rules separated by ``;``::

    POINT:FRAME:ACTION        e.g.  render:3:pause   render:2:retry   depth:1:fail

- POINT: ``render`` (renderer, after frame.started, before rendering),
  ``depth`` (depth worker, before estimating), ``assemble`` (assembler; FRAME -1),
  ``load`` (renderer and depth worker, loading their models at start; FRAME -1,
  ACTION ``slow`` only),
  ``index`` (the job store, in any service: a job became finished or unfinished, its
  atomic write is done, the entry of what it was is still there; FRAME -1).
- FRAME: the frame index, or ``*`` for every frame.
- ACTION: ``pause`` (hold the message until the process is killed),
  ``retry`` (a retryable error on every delivery), ``fail`` (a non-retryable
  error), ``crash`` (the process exits at once with status 1, like an OOM kill),
  ``slow`` (render: every denoising step of the frame takes two seconds more, in
  the torch thread, as a slow GPU would; load: loading the models takes ten seconds
  more, as a slow disk would: long enough that a test polling health on a busy
  machine sees the replica alive and not ready).
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass

from ghibli_anim.runtime.bus.consumer import NonRetryable, Retryable

log = logging.getLogger(__name__)

POINTS = ("render", "depth", "assemble", "load", "index")
ACTIONS = ("pause", "retry", "fail", "crash", "slow")
SLOW_STEP_S = 2.0
SLOW_LOAD_S = 10.0


@dataclass(frozen=True)
class Fault:
    point: str
    frame: int | None  # None = every frame
    action: str


def parse(text: str) -> list[Fault]:
    """Rules of ``ANIM_FAULT``; ValueError names the bad rule."""
    faults = []
    for rule in filter(None, (r.strip() for r in text.split(";"))):
        parts = rule.split(":")
        if len(parts) != 3 or parts[0] not in POINTS or parts[2] not in ACTIONS:
            raise ValueError(
                f"ANIM_FAULT: rule {rule!r} must be POINT:FRAME:ACTION with POINT in "
                f"{', '.join(POINTS)} and ACTION in {', '.join(ACTIONS)}"
            )
        if parts[0] == "load" and parts[2] != "slow":
            raise ValueError(f"ANIM_FAULT: rule {rule!r}: the load point takes only slow")
        frame = None if parts[1] == "*" else int(parts[1])
        faults.append(Fault(parts[0], frame, parts[2]))
    return faults


_FAULTS = parse(os.environ.get("ANIM_FAULT", ""))


async def hit(point: str, frame: int) -> None:
    """Apply the fault configured for (point, frame), if any."""
    for fault in _FAULTS:
        if fault.point != point or fault.frame not in (None, frame):
            continue
        log.warning("fault hook", extra={"point": point, "frame": frame, "action": fault.action})
        if fault.action == "pause":
            await asyncio.Event().wait()  # until the process is killed
        elif fault.action == "retry":
            raise Retryable(f"injected retryable fault at {point} frame {frame}", delay=0.1)
        elif fault.action == "fail":
            raise NonRetryable(f"injected fault at {point} frame {frame}")
        elif fault.action == "crash":
            os._exit(1)


def step_delay(point: str, frame: int) -> float:
    """Seconds to add to every denoising step of (point, frame): ``slow``, else 0."""
    hit_slow = any(
        f.point == point and f.frame in (None, frame) and f.action == "slow" for f in _FAULTS
    )
    return SLOW_STEP_S if hit_slow else 0.0


def load_delay() -> float:
    """Seconds to add to loading the models at start: ``load:-1:slow`` (or ``load:*:slow``)."""
    return SLOW_LOAD_S if step_delay("load", -1) else 0.0
