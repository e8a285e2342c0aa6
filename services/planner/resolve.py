"""Resolve a storyboard into one FrameSpec per frame, up front.

Precedence of settings (DESIGN.md): request > storyboard hints > profile
defaults. Everything a renderer needs is in the spec, so workers never read the
plan: the image a frame starts from (``source_key``), the depth map that guides
it (``depth_key``), and the frame whose colours it keeps (``color_reference_key``).
"""

from __future__ import annotations

from ghibli_anim.common import keys, seeds
from ghibli_anim.common.pb import animation_pb2, types_pb2
from ghibli_anim.common.storyboard import Storyboard, full_prompt


def _pick(req: animation_pb2.CreateAnimationRequest, field: str, hint, default):
    if req.HasField(field):
        return getattr(req, field)
    if hint is not None:
        return hint
    return default


def resolve_frames(
    job_id: str,
    req: animation_pb2.CreateAnimationRequest,
    job_seed: int,
    board: Storyboard,
    profile: types_pb2.Profile,
) -> list[types_pb2.FrameSpec]:
    specs: list[types_pb2.FrameSpec] = []
    reference = 0  # frame whose colours later frames keep
    for i, shot in enumerate(board.frames):
        cut = i == 0 or shot.continuity == "cut"
        if cut or shot.palette == "shift":
            reference = i
        spec = types_pb2.FrameSpec(
            index=i,
            prompt=full_prompt(shot, board),
            negative_prompt=req.negative_prompt or shot.negative_prompt or profile.negative_prompt,
            seed=seeds.frame_seed(job_seed, i, req.seed_mode),
            strength=_pick(req, "strength", shot.strength, profile.strength),
            guidance=_pick(req, "guidance", None, profile.guidance),
            steps=_pick(req, "steps", None, profile.steps),
            scheduler=profile.scheduler,
            width=_pick(req, "width", None, profile.width),
            height=_pick(req, "height", None, profile.height),
            continuity=types_pb2.CONTINUITY_CUT if cut else types_pb2.CONTINUITY_CONTINUE,
            source_key="" if cut else keys.frame_key(job_id, i - 1),
            depth_key=keys.depth_key(job_id, i - 1) if (req.depth and not cut) else "",
            controlnet_scale=profile.controlnet_scale,
            camera=types_pb2.CameraMove(
                zoom=shot.camera.zoom,
                pan_x=shot.camera.pan_x,
                pan_y=shot.camera.pan_y,
                rotate=shot.camera.rotate,
            ),
            color_reference_key=keys.frame_key(job_id, reference),
            profile=profile,
        )
        specs.append(spec)
    return specs


def needs_depth(specs: list[types_pb2.FrameSpec], index: int) -> bool:
    """Whether frame ``index``'s depth map guides the next frame."""
    return index + 1 < len(specs) and bool(specs[index + 1].depth_key)
