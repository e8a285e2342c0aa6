"""How each frame's seed derives from the job seed, in one place.

- increment (default): frame_seed = (job_seed + i) mod 2^32
- fixed: frame_seed = job_seed
- random: first four bytes (big-endian) of sha256(f"{job_seed}:{i}")

Renderers always draw noise from a CPU ``torch.Generator`` seeded with the frame
seed, so a seed means the same image on every device.
"""

from __future__ import annotations

import hashlib
import secrets

from ghibli_anim.contracts.pb import types_pb2

SEED_MODES = {
    "increment": types_pb2.SEED_MODE_INCREMENT,
    "fixed": types_pb2.SEED_MODE_FIXED,
    "random": types_pb2.SEED_MODE_RANDOM,
}
_MOD = 2**32


def new_job_seed() -> int:
    """A job seed for requests that set none; it is recorded in the job state."""
    return secrets.randbelow(_MOD)


def parse_seed_mode(name: str) -> int:
    try:
        return SEED_MODES[name.strip().lower()]
    except KeyError:
        raise ValueError(
            f"seed_mode: must be one of {', '.join(SEED_MODES)}, got {name!r:.40}"
        ) from None


def mode_schedule(text: str):
    """Seed modes by keyframe, ``"0:increment, 10:fixed"`` (a step per keyframe)."""
    from ghibli_anim.contracts.schedules import parse_choice_schedule

    return parse_choice_schedule(text, "seed_mode_schedule", tuple(SEED_MODES))


def seed_mode_name(mode: int) -> str:
    for name, value in SEED_MODES.items():
        if value == mode:
            return name
    return "increment"


def frame_seed(job_seed: int, index: int, mode: int = types_pb2.SEED_MODE_INCREMENT) -> int:
    if not 0 <= job_seed < _MOD:
        raise ValueError(f"seed: must be an integer in 0..{_MOD - 1}, got {job_seed}")
    if index < 0:
        raise ValueError(f"frame: must be >= 0, got {index}")
    if mode == types_pb2.SEED_MODE_FIXED:
        return job_seed
    if mode == types_pb2.SEED_MODE_RANDOM:
        digest = hashlib.sha256(f"{job_seed}:{index}".encode()).digest()
        return int.from_bytes(digest[:4], "big")
    if mode in (types_pb2.SEED_MODE_INCREMENT, types_pb2.SEED_MODE_UNSPECIFIED):
        return (job_seed + index) % _MOD
    raise ValueError(f"seed_mode: unknown value {mode}")
