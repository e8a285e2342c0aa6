"""Validation of CreateAnimationRequest, shared by the gRPC API, the bus and the CLI.

``validate_create`` returns a normalised copy (trimmed text, profile filled in,
formats lower-cased) or raises ``ValueError`` whose message names the field and
the allowed range; the edges turn it into INVALID_ARGUMENT with the same text.
"""

from __future__ import annotations

from collections.abc import Collection

from ghibli_anim.contracts import keys, limits, schedules, seeds
from ghibli_anim.contracts.config import Settings
from ghibli_anim.contracts.pb import animation_pb2, types_pb2

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
    settings: Settings | None = None,
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
    if req.seed_mode_schedule:
        seeds.mode_schedule(req.seed_mode_schedule)  # ScheduleError names the position
    for name, bound in _OPTIONAL_RANGES:
        if req.HasField(name):
            # float32 on the wire: compare what the caller most likely meant (1.0000001 is
            # 1); round() gives an int back unchanged.
            bound.check(name, round(getattr(req, name), 6))
    out.negative_prompt = limits.check_text(
        "negative_prompt", req.negative_prompt, limits.NEGATIVE_PROMPT_CHARS, required=False
    )
    formats = limits.check_formats("formats", list(req.formats))
    del out.formats[:]
    out.formats.extend(formats)
    _check_motion(req, out)
    _check_models(req, out, settings)
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


_SCHEDULES = (
    ("strength_schedule", limits.STRENGTH),
    ("guidance_schedule", limits.GUIDANCE),
    ("sharpen", limits.SHARPEN),
)


def _check_motion(
    req: animation_pb2.CreateAnimationRequest, out: animation_pb2.CreateAnimationRequest
) -> None:
    """Colour coherence, in-betweens and keyframe schedules (errors name field and position)."""
    mode = req.color_coherence.strip().lower() or limits.DEFAULT_COLOR_COHERENCE
    if mode not in limits.COLOR_COHERENCE:
        raise ValueError(
            f"color_coherence: must be one of {', '.join(limits.COLOR_COHERENCE)}, "
            f"got {req.color_coherence!r:.40}"
        )
    out.color_coherence = mode
    if req.interpolate not in limits.INTERPOLATE:
        raise ValueError(
            f"interpolate: must be one of {', '.join(map(str, limits.INTERPOLATE))}, "
            f"got {req.interpolate}"
        )
    # Schedules are kept as written, so a position in a later message still points into them.
    for name, bound in _SCHEDULES:
        text = getattr(req, name)
        if text.strip():
            schedules.parse_schedule(text, name, bound)
        else:
            setattr(out, name, "")
    if req.camera.strip():
        schedules.parse_camera_schedule(req.camera, "camera")
    else:
        out.camera = ""


def _check_models(
    req: animation_pb2.CreateAnimationRequest,
    out: animation_pb2.CreateAnimationRequest,
    settings: Settings | None,
) -> None:
    """Model overrides, preset and init image id (paths only under ANIM_MODEL_ROOTS,
    LoRAs also as store://loras/NAME); nothing is loaded here."""
    from ghibli_anim.contracts.profiles import check_overrides

    del out.loras[:]
    out.loras.extend(text.strip() for text in req.loras)
    out.base_model = req.base_model.strip()
    out.controlnet = req.controlnet.strip()
    out.preset = req.preset.strip().lower()
    check_overrides(out, settings)
    if req.init_upload_id:
        keys.check_upload_id(req.init_upload_id, "init_upload_id")
