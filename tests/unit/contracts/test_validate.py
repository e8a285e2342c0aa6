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


def _create(req, **kwargs):
    return validate_create(req, profile_names=PROFILES, default_profile="tiny", **kwargs)


def _refusal(**fields) -> str:
    with pytest.raises(ValueError) as info:
        _create(_request(**fields))
    return str(info.value)


def test_valid_request_is_normalised():
    out = validate_create(
        _request(idea="  a cat  ", formats=["GIF"]), profile_names=PROFILES, default_profile="tiny"
    )
    assert out.idea == "a cat" and out.profile == "tiny" and list(out.formats) == ["gif"]


def test_normalised_copy_trims_text_and_keeps_the_rest():
    req = _request(
        profile=" sd15-ghibli ",
        negative_prompt="  blurry  ",
        idempotency_key=" key-1 ",
        client_id=" web ",
        formats=["MP4", " gif ", "mp4"],
        width=512,
        seed=7,
        init_upload_id="0123456789abcdef" * 2,
        loras=[],
        preset=" ",
    )
    out = _create(req)
    assert out is not req
    assert (out.profile, out.negative_prompt) == ("sd15-ghibli", "blurry")
    assert (out.idempotency_key, out.client_id) == ("key-1", "web")
    assert list(out.formats) == ["mp4", "gif"]
    assert (out.width, out.seed, out.frames) == (512, 7, 5)
    assert out.init_upload_id == "0123456789abcdef" * 2
    assert out.preset == ""
    assert req.negative_prompt == "  blurry  "  # the caller's request is left as it was


def test_blank_profile_takes_the_default():
    assert _create(_request(profile="   ")).profile == "tiny"
    out = validate_create(_request(), profile_names=PROFILES, default_profile="sd15-ghibli")
    assert out.profile == "sd15-ghibli"


# (field, largest allowed, smallest allowed, refused values, the allowed range as the message says)
_RANGES = [
    ("frames", 120, 1, (0, 121, -1), "an integer in 1..120"),
    ("width", 1024, 64, (0, 56, 1032, 100, -8), "an integer in 64..1024, a multiple of 8"),
    ("height", 1024, 64, (0, 56, 1032, 100, -8), "an integer in 64..1024, a multiple of 8"),
    ("steps", 150, 1, (0, 151, -1), "an integer in 1..150"),
    ("fps", 60, 1, (0, 61, -1), "an integer in 1..60"),
    ("guidance", 30.0, 0.0, (30.5, -0.5, 31.0), "a number in [0, 30]"),
    ("strength", 1.0, 0.001, (0.0, 1.5, -0.5), "a number in (0, 1]"),
]


@pytest.mark.parametrize(("field", "hi", "lo", "refused", "allowed"), _RANGES)
def test_numeric_fields_are_checked_at_their_limits(field, hi, lo, refused, allowed):
    assert getattr(_create(_request(**{field: hi})), field) == hi
    assert getattr(_create(_request(**{field: lo})), field) == pytest.approx(lo)
    for value in refused:
        assert _refusal(**{field: value}) == f"{field}: must be {allowed}, got {value!r}"


def test_float32_noise_at_a_limit_is_not_a_refusal():
    # 1.0000001 arrives as float32 1.0000001192...: the caller meant 1 (six decimals).
    assert _create(_request(strength=1.0000001)).strength == pytest.approx(1.0)
    assert _create(_request(guidance=30.0000001)).guidance == pytest.approx(30.0)
    assert _refusal(strength=1.00001).startswith(
        "strength: must be a number in (0, 1], got 1.00001"
    )
    assert _refusal(guidance=30.00001).startswith(
        "guidance: must be a number in [0, 30], got 30.00"
    )


def test_unset_optional_numbers_are_not_checked():
    out = _create(_request())
    assert not any(out.HasField(f) for f in ("width", "height", "steps", "guidance", "strength"))


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
def test_known_seed_modes_pass(mode):
    assert _create(_request(seed_mode=mode)).seed_mode == mode


@pytest.mark.parametrize("mode", [4, 99, -1])
def test_unknown_seed_mode_is_refused(mode):
    assert _refusal(seed_mode=mode) == (
        f"seed_mode: must be one of increment, fixed, random, got {mode}"
    )


# (field, most characters)
_TEXT_FIELDS = [
    ("idea", 1000),
    ("negative_prompt", 1000),
    ("idempotency_key", 128),
    ("client_id", 128),
]


@pytest.mark.parametrize(("field", "most"), _TEXT_FIELDS)
def test_text_fields_are_checked_at_their_length_limit(field, most):
    assert getattr(_create(_request(**{field: "x" * most})), field) == "x" * most
    assert _refusal(**{field: "x" * (most + 1)}) == (
        f"{field}: must be at most {most} characters, got {most + 1}"
    )


@pytest.mark.parametrize(("field", "most"), _TEXT_FIELDS)
@pytest.mark.parametrize(("char", "shown"), [("\x00", "'\\x00'"), ("\x7f", "'\\x7f'")])
def test_text_fields_refuse_control_characters(field, most, char, shown):
    assert _refusal(**{field: f"a{char}b"}) == (
        f"{field}: must not contain control characters, found {shown}"
    )


@pytest.mark.parametrize("field", ["negative_prompt", "idempotency_key", "client_id"])
def test_optional_text_fields_may_be_empty(field):
    assert getattr(_create(_request(**{field: "   "})), field) == ""


def test_unicode_text_is_kept():
    out = _create(_request(idea=" 龍が町の上を飛ぶ ", negative_prompt="ぼやけ\tた"))
    assert (out.idea, out.negative_prompt) == ("龍が町の上を飛ぶ", "ぼやけ\tた")


def _padded(total_bytes: int) -> animation_pb2.CreateAnimationRequest:
    """A request of exactly ``total_bytes`` on the wire (padded in storyboard_json)."""
    req = _request()
    for n in range(total_bytes - 64, total_bytes):
        req.storyboard_json = "x" * n
        if req.ByteSize() == total_bytes:
            return req
    raise AssertionError(f"no padding gives {total_bytes} bytes")


def test_request_size_limit_is_inclusive():
    assert limits.REQUEST_BYTES == 65536
    assert _create(_padded(65536)).storyboard_json == _padded(65536).storyboard_json
    with pytest.raises(ValueError) as info:
        _create(_padded(65537))
    assert str(info.value) == "request: must be at most 65536 bytes, got 65537"


def test_storyboard_json_has_its_own_limit(monkeypatch):
    # Today the request limit (the same 64 KiB, with the other fields on top) refuses an
    # oversized storyboard first; the storyboard's own limit still holds if that one grows.
    monkeypatch.setattr(limits, "REQUEST_BYTES", 1 << 20)
    ok = _request(storyboard_json="x" * limits.STORYBOARD_JSON_BYTES)
    assert len(_create(ok).storyboard_json) == 65536
    with pytest.raises(ValueError) as info:
        _create(_request(storyboard_json="é" * 32768 + "x"))  # bytes, not characters
    assert str(info.value) == "storyboard_json: must be at most 65536 bytes, got 65537"


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
    ok = animation_pb2.CreateAnimationRequest(
        idea="x", frames=4, seed_mode_schedule="0:increment, 2:FIXED"
    )
    # Kept as written (positions in later messages point into it).
    assert validate_create(
        ok, profile_names=["tiny"], default_profile="tiny"
    ).seed_mode_schedule == ("0:increment, 2:FIXED")


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
