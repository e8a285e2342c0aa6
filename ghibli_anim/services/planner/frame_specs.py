"""Resolve a storyboard into one FrameSpec per frame, up front.

Precedence of settings: request > storyboard hints > profile
defaults. Everything a renderer needs is in the spec, so workers never read the
plan: the image a frame starts from (``source_key``), the depth map that guides
it (``depth_key``), and the frame whose colours it keeps (``color_reference_key``).

Per-frame values come from keyframe schedules (:mod:`ghibli_anim.contracts.schedules`):
strength: ``strength_schedule`` > ``strength`` > the shot's ``strength`` hint > profile;
guidance: ``guidance_schedule`` > ``guidance`` > profile; sharpen: ``sharpen`` (else off);
camera: the request's ``camera`` schedule > the shots' cameras.

Camera: shot i's move is applied to frame i before it seeds frame i+1 (ARCHITECTURE.md). A renderer
sees only frame i+1's spec, so ``FrameSpec.camera`` of frame i+1 carries the move of frame i:
**a spec's camera is the move applied to its source image** (and to the depth map of that
image) before img2img. Frame 0 and cuts start from no previous frame and carry a still camera;
the last frame's own move seeds nothing and is not carried. The camera schedule's keyframes
count the same way as the storyboard's shots: ``5:zoom=1.1`` is frame 5's move, carried by
frame 6's spec.

Models: ``profile`` is the resolved one (``profiles.resolve_profile``: the request's LoRAs,
base model, ControlNet and preset applied), copied into every spec. With an init image, frame
0 is img2img from ``jobs/{id}/init.png`` (``keys.init_key`` and ``source_key``).

Colour: every spec names its reference frame and mode (``color_coherence``, default lab), so a
redelivered, resumed or re-rendered frame is matched to the same reference. Frame 0, a cut and
a ``palette: shift`` make the frame its own reference and the reference of the frames after.
"""

from __future__ import annotations

from ghibli_anim.contracts import keys, limits, schedules, seeds
from ghibli_anim.contracts.pb import animation_pb2, types_pb2
from ghibli_anim.contracts.storyboard import Storyboard, full_prompt


def _pick(req: animation_pb2.CreateAnimationRequest, field: str, hint, default):
    if req.HasField(field):
        return getattr(req, field)
    if hint is not None:
        return hint
    return default


def _schedule(
    req: animation_pb2.CreateAnimationRequest, field: str, bound: limits.FloatRange
) -> schedules.Schedule | None:
    text = getattr(req, field)
    return schedules.parse_schedule(text, field, bound) if text.strip() else None


def _moves(
    req: animation_pb2.CreateAnimationRequest, board: Storyboard
) -> list[types_pb2.CameraMove]:
    """Each shot's own camera move (the request's camera schedule replaces the storyboard's)."""
    if req.camera.strip():
        track = schedules.parse_camera_schedule(req.camera, "camera")
        return [types_pb2.CameraMove(**track.at(i)) for i in range(len(board.frames))]
    return [
        types_pb2.CameraMove(
            zoom=shot.camera.zoom,
            pan_x=shot.camera.pan_x,
            pan_y=shot.camera.pan_y,
            rotate=shot.camera.rotate,
        )
        for shot in board.frames
    ]


def resolve_frames(
    job_id: str,
    req: animation_pb2.CreateAnimationRequest,
    job_seed: int,
    board: Storyboard,
    profile: types_pb2.Profile,
) -> list[types_pb2.FrameSpec]:
    specs: list[types_pb2.FrameSpec] = []
    reference = 0  # frame whose colours later frames keep
    modes = seeds.mode_schedule(req.seed_mode_schedule) if req.seed_mode_schedule else None

    def seed_mode(i: int) -> int:
        return seeds.SEED_MODES[modes.at(i)] if modes else req.seed_mode

    strength = _schedule(req, "strength_schedule", limits.STRENGTH)
    guidance = _schedule(req, "guidance_schedule", limits.GUIDANCE)
    sharpen = _schedule(req, "sharpen", limits.SHARPEN)
    moves = _moves(req, board)
    color_mode = req.color_coherence.strip().lower() or limits.DEFAULT_COLOR_COHERENCE
    for i, shot in enumerate(board.frames):
        cut = i == 0 or shot.continuity == "cut"
        if cut or shot.palette == "shift":
            reference = i
        spec = types_pb2.FrameSpec(
            index=i,
            prompt=full_prompt(shot, board),
            negative_prompt=req.negative_prompt or shot.negative_prompt or profile.negative_prompt,
            seed=seeds.frame_seed(job_seed, i, seed_mode(i)),
            strength=(
                strength.at(i)
                if strength
                else _pick(req, "strength", shot.strength, profile.strength)
            ),
            guidance=guidance.at(i) if guidance else _pick(req, "guidance", None, profile.guidance),
            steps=_pick(req, "steps", None, profile.steps),
            scheduler=profile.scheduler,
            width=_pick(req, "width", None, profile.width),
            height=_pick(req, "height", None, profile.height),
            continuity=types_pb2.CONTINUITY_CUT if cut else types_pb2.CONTINUITY_CONTINUE,
            source_key="" if cut else keys.frame_key(job_id, i - 1),
            depth_key=keys.depth_key(job_id, i - 1) if (req.depth and not cut) else "",
            controlnet_scale=profile.controlnet_scale,
            # The move of the previous frame, applied to the source (see the module docs).
            camera=types_pb2.CameraMove(zoom=1.0) if cut else moves[i - 1],
            color_reference_key=keys.frame_key(job_id, reference),
            color_coherence=color_mode,
            sharpen=sharpen.at(i) if sharpen else 0.0,
            profile=profile,
            preset=req.preset,
            truncate_prompt=req.truncate_prompts,
        )
        if req.blend_prompts and not cut:
            # Prompt keyframes: this frame's text embedding leans towards the previous
            # prompt, so a change of prompt eases in instead of jumping.
            spec.blend_prompt = specs[-1].prompt
            spec.blend_weight = limits.BLEND_WEIGHT
        if i == 0 and req.init_upload_id:
            # Frame 0 is img2img from the job's validated init image (see jobs_api.create).
            spec.init_key = keys.init_key(job_id)
            spec.source_key = spec.init_key
            spec.continuity = types_pb2.CONTINUITY_CONTINUE
        specs.append(spec)
    return specs
