"""cli/render_flags.py: `generate` and `submit` flags take a number or a keyframe schedule."""

from __future__ import annotations

import pytest

from ghibli_anim.cli import main as cli
from ghibli_anim.cli.render_flags import build_request
from ghibli_anim.contracts.pb import animation_pb2
from ghibli_anim.contracts.validate import validate_create


def _cli_request(*flags: str) -> animation_pb2.CreateAnimationRequest:
    args = cli.build_parser().parse_args(["generate", "a cat", "--frames", "4", *flags])
    return build_request(args)


def test_cli_numbers_or_schedules() -> None:
    req = _cli_request("--strength", "0.3", "--guidance", "0:7, 3:9")
    assert req.HasField("strength") and req.strength == pytest.approx(0.3)
    assert not req.HasField("guidance") and req.guidance_schedule == "0:7, 3:9"
    req = _cli_request(
        "--strength",
        "0:0.15, 10:0.35",
        "--camera",
        "0:zoom=1.02",
        "--sharpen",
        "0.2",
        "--color-coherence",
        "hsv",
        "--interpolate",
        "3",
    )
    assert not req.HasField("strength") and req.strength_schedule == "0:0.15, 10:0.35"
    assert (req.camera, req.sharpen, req.color_coherence, req.interpolate) == (
        "0:zoom=1.02",
        "0.2",
        "hsv",
        3,
    )
    validate_create(req, profile_names={"tiny"}, default_profile="tiny")
    with pytest.raises(SystemExit):
        _cli_request("--interpolate", "2")
