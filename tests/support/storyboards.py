"""Requests and storyboards of six frames for the planner's tests."""

from __future__ import annotations

from ghibli_anim.contracts.pb import animation_pb2
from ghibli_anim.contracts.storyboard import Storyboard
from ghibli_anim.contracts.validate import validate_create


def validated(**fields) -> animation_pb2.CreateAnimationRequest:
    """A validated request for "a cat" in 6 frames; ``fields`` set its fields."""
    req = animation_pb2.CreateAnimationRequest(idea="a cat", frames=6, **fields)
    return validate_create(req, profile_names={"tiny"}, default_profile="tiny")


def hinted_board(n: int = 6, **per_frame) -> Storyboard:
    """``n`` shots; ``per_frame`` gives a field one value per shot (None leaves it unset)."""
    frames = []
    for i in range(n):
        frame = {"prompt": f"shot number {i}"}
        for name, values in per_frame.items():
            if values[i] is not None:
                frame[name] = values[i]
        frames.append(frame)
    return Storyboard.model_validate({"title": "t", "frames": frames})
