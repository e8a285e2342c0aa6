"""contracts/validate.py: a CreateAnimationRequest normalised, or refused naming the field."""

from __future__ import annotations

import pytest
from support.model_roots import roots_settings

from ghibli_anim.contracts import limits
from ghibli_anim.contracts.pb import animation_pb2
from ghibli_anim.contracts.validate import validate_create

PROFILES = ("sd15-ghibli", "tiny")


def _request(**fields):
    base = {"idea": "a dragon over a town", "frames": 5}
    base.update(fields)
    return animation_pb2.CreateAnimationRequest(**base)


def test_valid_request_is_normalised():
    out = validate_create(
        _request(idea="  a cat  ", formats=["GIF"]), profile_names=PROFILES, default_profile="tiny"
    )
    assert out.idea == "a cat" and out.profile == "tiny" and list(out.formats) == ["gif"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"idea": ""}, "idea: must not be empty"),
        ({"idea": "   "}, "idea: must not be empty"),
        ({"idea": "x" * 1001}, "idea: must be at most 1000 characters"),
        ({"frames": 0}, "frames: must be an integer in 1..120, got 0"),
        ({"frames": 121}, "frames: must be an integer in 1..120, got 121"),
        ({"width": 513}, "width: must be an integer in 64..1024, a multiple of 8, got 513"),
        ({"height": 32}, "height: must be an integer in 64..1024"),
        ({"steps": 0}, "steps: must be an integer in 1..150"),
        ({"guidance": 31.0}, "guidance: must be a number in [0, 30]"),
        ({"strength": 0.0}, "strength: must be a number in (0, 1]"),
        ({"fps": 61}, "fps: must be an integer in 1..60"),
        ({"profile": "sdxl"}, "profile: must be one of sd15-ghibli, tiny, got 'sdxl'"),
        ({"formats": ["avi"]}, "formats: must be a list of gif, mp4, webp, zip, contact"),
        ({"storyboard_json": "x" * 70000}, "request: must be at most 65536 bytes"),
    ],
)
def test_bad_requests_name_the_field(fields, message):
    with pytest.raises(ValueError) as info:
        validate_create(_request(**fields), profile_names=PROFILES, default_profile="tiny")
    assert message in str(info.value)


# -- motion: schedules, colour coherence, interpolation -------------------------------------


def _validate(**fields) -> animation_pb2.CreateAnimationRequest:
    req = animation_pb2.CreateAnimationRequest(idea="a cat", frames=6, **fields)
    return validate_create(req, profile_names={"tiny"}, default_profile="tiny")


def test_validate_fills_defaults_and_keeps_schedules() -> None:
    out = _validate(strength_schedule="0:0.15, 10:0.35", camera=" 0:zoom=1.05 ")
    assert out.color_coherence == "lab"
    assert out.strength_schedule == "0:0.15, 10:0.35"
    assert out.camera == " 0:zoom=1.05 "  # as written: error positions stay true
    assert tuple(out.formats) == limits.DEFAULT_FORMATS == ("gif", "mp4", "webp", "contact")
    assert _validate(color_coherence=" HSV ").color_coherence == "hsv"
    assert _validate(sharpen="   ").sharpen == ""


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"color_coherence": "lub"},
            "color_coherence: must be one of lab, hsv, rgb, off, got 'lub'",
        ),
        ({"interpolate": 2}, "interpolate: must be one of 0, 1, 3, got 2"),
        ({"interpolate": -1}, "interpolate: must be one of 0, 1, 3, got -1"),
        (
            {"strength_schedule": "0:0.15, 10:x"},
            "strength_schedule: at character 12: expected a number as the value, got 'x'",
        ),
        (
            {"guidance_schedule": "0:7, 3:31"},
            "guidance_schedule: at character 8: must be a number in [0, 30], got 31",
        ),
        ({"sharpen": "0:4"}, "sharpen: at character 3: must be a number in [0, 3], got 4"),
        ({"camera": "0:zoom=0.5"}, "camera: at character 8: must be a number in [0.8, 1.25]"),
    ],
)
def test_validate_refuses_bad_motion_fields(fields, message) -> None:
    with pytest.raises(ValueError) as info:
        _validate(**fields)
    assert str(info.value).startswith(message)


def test_seed_mode_schedule_errors_name_the_position():
    req = animation_pb2.CreateAnimationRequest(
        idea="x", frames=4, seed_mode_schedule="0:increment, 2:chaos"
    )
    with pytest.raises(ValueError, match=r"seed_mode_schedule: at character 16: expected one of"):
        validate_create(req, profile_names=["tiny"], default_profile="tiny")


# -- overrides of the profile's models (ANIM_MODEL_ROOTS: tests/unit/conftest.py's `models`) --


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"loras": ["/etc/passwd.safetensors"]},
            r"^loras\[0\]: path .* is outside ANIM_MODEL_ROOTS",
        ),
        ({"loras": ["tiny:lcm_lora:9"]}, r"^loras\[0\] scale: must be a number in \[-2, 2\]"),
        ({"loras": ["tiny:lcm_lora", "tiny:lcm_lora:0.5"]}, r"^loras\[1\]: 'tiny:lcm_lora' is"),
        ({"loras": ["store://loras/Bad Name"]}, r"^loras\[0\] \(LoRA name\): must be"),
        ({"loras": ["ftp://x/y"]}, r"^loras\[0\]: unsupported scheme"),
        ({"base_model": "{m}/model.ckpt"}, r"^base_model: .*pickle checkpoint"),
        ({"base_model": "../../etc"}, r"^base_model: path .* outside ANIM_MODEL_ROOTS"),
        ({"controlnet": "tiny:nothing"}, r"^controlnet: tiny component must be one of"),
        ({"preset": "turbo"}, r"^preset: must be empty \(quality\) or fast"),
        ({"preset": "fast", "guidance": 7.5}, r"^guidance \(fast preset, LCM\): must be"),
        ({"init_upload_id": "../x"}, r"^init_upload_id: must be 32 lowercase hex"),
    ],
)
def test_override_errors_name_the_field(models, tiny_cache_dir, fields, message) -> None:
    fields = {k: v.format(m=models) if isinstance(v, str) else v for k, v in fields.items()}
    req = animation_pb2.CreateAnimationRequest(idea="a fox", frames=2, profile="tiny", **fields)
    settings = roots_settings(models, tiny_cache_dir)
    with pytest.raises(ValueError, match=message):
        validate_create(req, profile_names=["tiny"], default_profile="tiny", settings=settings)
