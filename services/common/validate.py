"""Validation of CreateAnimationRequest, shared by the gRPC API, the bus and the CLI.

``validate_create`` returns a normalised copy (trimmed text, profile filled in,
formats lower-cased) or raises ``ValueError`` whose message names the field and
the allowed range; the edges turn it into INVALID_ARGUMENT with the same text.
"""

from __future__ import annotations

from collections.abc import Collection

from ghibli_anim.common import limits
from ghibli_anim.common.pb import animation_pb2, types_pb2

_SEED_MODES = {
    types_pb2.SEED_MODE_UNSPECIFIED,
    types_pb2.SEED_MODE_INCREMENT,
    types_pb2.SEED_MODE_FIXED,
    types_pb2.SEED_MODE_RANDOM,
}

_OPTIONAL_RANGES = (
    ("width", limits.WIDTH),
    ("height", limits.HEIGHT),
    ("steps", limits.STEPS),
    ("guidance", limits.GUIDANCE),
    ("strength", limits.STRENGTH),
    ("fps", limits.FPS),
)


def validate_create(
    req: animation_pb2.CreateAnimationRequest,
    *,
    profile_names: Collection[str],
    default_profile: str,
) -> animation_pb2.CreateAnimationRequest:
    size = req.ByteSize()
    if size > limits.REQUEST_BYTES:
        raise ValueError(f"request: must be at most {limits.REQUEST_BYTES} bytes, got {size}")
    out = animation_pb2.CreateAnimationRequest()
    out.CopyFrom(req)
    out.idea = limits.check_text("idea", req.idea, limits.IDEA_CHARS, required=True)
    limits.FRAMES.check("frames", req.frames)
    profile = req.profile.strip() or default_profile
    if profile not in profile_names:
        raise ValueError(
            f"profile: must be one of {', '.join(sorted(profile_names))}, got {req.profile!r:.64}"
        )
    out.profile = profile
    if req.seed_mode not in _SEED_MODES:
        raise ValueError(f"seed_mode: must be one of increment, fixed, random, got {req.seed_mode}")
    for name, bound in _OPTIONAL_RANGES:
        if req.HasField(name):
            value = getattr(req, name)
            # float32 on the wire: compare what the caller most likely meant.
            bound.check(name, round(value, 6) if isinstance(value, float) else value)
    out.negative_prompt = limits.check_text(
        "negative_prompt", req.negative_prompt, limits.NEGATIVE_PROMPT_CHARS, required=False
    )
    formats = limits.check_formats("formats", list(req.formats))
    del out.formats[:]
    out.formats.extend(formats)
    storyboard_bytes = len(req.storyboard_json.encode())
    if storyboard_bytes > limits.STORYBOARD_JSON_BYTES:
        raise ValueError(
            f"storyboard_json: must be at most {limits.STORYBOARD_JSON_BYTES} bytes, "
            f"got {storyboard_bytes}"
        )
    out.idempotency_key = limits.check_text(
        "idempotency_key", req.idempotency_key, limits.IDEMPOTENCY_KEY_CHARS, required=False
    )
    out.client_id = limits.check_text(
        "client_id", req.client_id, limits.CLIENT_ID_CHARS, required=False
    )
    return out
