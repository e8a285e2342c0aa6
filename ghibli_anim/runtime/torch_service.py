"""Services that compute with torch (renderer, depth): Ready only once they can compute.

``TorchService.preflight`` checks the device of ANIM_DEVICE before NATS is reached
(``devices.check_device``: it must exist and compute). ``prepare`` loads the models of
ANIM_PROFILE (``load_models``, each service's own) with ``ANIM_PRELOAD``, while the
gRPC server answers liveness but not readiness, so a replica takes work only once its
models are in memory. Either failing raises :class:`CannotServe`, one line saying what
is wrong and what to do: a missing GPU or a driver that cannot run torch's CUDA, a model
not fetched (``HF_HUB_OFFLINE``), models that do not fit in memory. Models a request
adds later (another base model, other LoRAs) still load with its first message.

A module of its own: the planner and the assembler run on ``runtime/service.py``
without torch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

import torch

from ghibli_anim.runtime import devices, faults
from ghibli_anim.runtime.service import CannotServe, Service

log = logging.getLogger(__name__)

# What a model that cannot load raises: missing or unreadable files, a bad reference, no memory.
_LOAD_FAILURES = (OSError, ValueError, MemoryError, torch.OutOfMemoryError)


class TorchService(Service):
    """A service whose work runs torch models; subclasses say what ``load_models`` loads."""

    async def preflight(self) -> None:
        try:
            device = await asyncio.to_thread(devices.check_device, self.settings)
        except ValueError as exc:
            raise CannotServe(f"{self.name} cannot serve on this machine: {exc}") from exc
        log.info("device checked", extra={"device": device})

    def prepare(self) -> None:
        if not self.settings["ANIM_PRELOAD"]:
            return
        profile = self.settings["ANIM_PROFILE"]
        started = time.monotonic()
        time.sleep(faults.load_delay())
        try:
            loaded = self.load_models()
        except _LOAD_FAILURES as exc:
            raise models_unavailable(self.name, profile, exc) from exc
        seconds = round(time.monotonic() - started, 3)
        log.info("models loaded", extra={"profile": profile, **loaded, "seconds": seconds})

    def load_models(self) -> dict[str, str]:
        """Load the models that work on ANIM_PROFILE needs; returns what the "models
        loaded" log line adds (the device, the models). Raises :class:`CannotServe` for a
        profile that cannot be read, and what loading raises for a model."""
        raise NotImplementedError


def models_unavailable(service: str, profile: str, exc: BaseException) -> CannotServe:
    """The :class:`CannotServe` of a service that could not load the models of
    ``profile``: what failed (and its root cause) and what to do."""
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return CannotServe(
            f"{service}: the models of profile {profile!r} do not fit in memory "
            f"({_one_line(exc)}); set ANIM_LOW_VRAM=true, or run on a larger GPU"
        )
    home = os.environ.get("HF_HOME") or "~/.cache/huggingface"
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    where = f"HF_HOME ({home}{', read offline: HF_HUB_OFFLINE is set' if offline else ''})"
    return CannotServe(
        f"{service} cannot load the models of profile {profile!r}: {_one_line(exc)}; fetch "
        f"them into {where} before starting (`ghibli-anim models fetch {profile} --depth`, "
        "what the deploy files' models-fetch step runs), or correct the profile's model "
        "references"
    )


def _one_line(exc: BaseException) -> str:
    """``exc`` in one line, with the innermost exception it was raised from or during when
    that is of another kind (diffusers' messages point to a traceback that services do not
    print; transformers' repeat themselves)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    root, seen = exc, {id(exc)}
    while (below := root.__cause__ or root.__context__) is not None and id(below) not in seen:
        root = below
        seen.add(id(root))
    if type(root) is not type(exc):
        text += f" (cause: {type(root).__name__}: {' '.join(str(root).split())})"
    return text
