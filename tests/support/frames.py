"""FrameSpecs for rendering one frame with the tiny models, shared by the renderer's tests."""

from __future__ import annotations

from ghibli_anim.contracts.pb import types_pb2

PROMPT = "a small dragon glides over a quiet medieval town at dusk, ghibli style"


def frame_spec(profile: types_pb2.Profile, **fields) -> types_pb2.FrameSpec:
    """Frame 0 of ``profile`` (txt2img, seed 1234, strength 0.15); ``fields`` override."""
    spec = types_pb2.FrameSpec(
        index=0,
        prompt=PROMPT,
        negative_prompt=profile.negative_prompt,
        seed=1234,
        strength=0.15,
        guidance=profile.guidance,
        steps=profile.steps,
        scheduler=profile.scheduler,
        width=profile.width,
        height=profile.height,
        continuity=types_pb2.CONTINUITY_CUT,
        controlnet_scale=1.0,
        profile=profile,
    )
    for name, value in fields.items():
        setattr(spec, name, value)
    return spec


def ddim_spec(profile: types_pb2.Profile, **fields) -> types_pb2.FrameSpec:
    """Frame 0, three DDIM steps at 64x64, seed 21; ``fields`` override."""
    spec = types_pb2.FrameSpec(
        index=0,
        prompt=PROMPT,
        seed=21,
        guidance=7.5,
        steps=3,
        scheduler="DDIM",
        width=64,
        height=64,
        continuity=types_pb2.CONTINUITY_CUT,
        profile=profile,
    )
    for name, value in fields.items():
        setattr(spec, name, value)
    return spec
