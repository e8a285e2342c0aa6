"""Config, limits, keys, seeds and request validation: the contracts every edge shares."""

from __future__ import annotations

import filecmp
import hashlib

import pytest

from ghibli_anim.contracts import config, keys, limits, seeds
from ghibli_anim.contracts.pb import animation_pb2, types_pb2
from ghibli_anim.contracts.validate import validate_create
from ghibli_anim.devtools import protogen

# --- proto -----------------------------------------------------------------


def test_generated_code_matches_proto(tmp_path):
    """`make proto` output is checked in; regenerating must change nothing."""
    protogen.generate(tmp_path)
    generated = sorted(p.name for p in tmp_path.iterdir())
    checked_in = sorted(p.name for p in protogen.OUT_DIR.iterdir() if p.suffix in (".py", ".pyi"))
    assert generated == checked_in
    _, mismatch, errors = filecmp.cmpfiles(tmp_path, protogen.OUT_DIR, generated, shallow=False)
    assert not mismatch and not errors, f"stale generated code, run `make proto`: {mismatch}"


def test_proto_has_every_rpc_of_the_design():
    service = animation_pb2.DESCRIPTOR.services_by_name["AnimationService"]
    assert set(service.methods_by_name) == {
        "CreateAnimation",
        "GetAnimation",
        "WatchAnimation",
        "CancelAnimation",
        "ResumeAnimation",
        "ListAnimations",
        "DeleteAnimation",
        "CreateUpload",
    }
    assert service.methods_by_name["WatchAnimation"].server_streaming


# --- config ----------------------------------------------------------------


def test_missing_required_variable_is_named():
    with pytest.raises(config.ConfigError, match=r"^ANIM_NATS_URL: required for renderer"):
        config.load("renderer", {})


def test_s3_variables_required_only_for_the_s3_store():
    env = {"ANIM_NATS_URL": "nats://127.0.0.1:4222"}
    with pytest.raises(config.ConfigError, match=r"^ANIM_S3_ENDPOINT"):
        config.load("planner", env)
    settings = config.load("planner", {**env, "ANIM_STORE": "local"})
    assert settings["ANIM_STORE"] == "local"


@pytest.mark.parametrize(
    ("name", "value", "rule"),
    [
        ("ANIM_ACK_WAIT_S", "-1", "> 0"),
        ("ANIM_GRPC_PORT", "70000", "0..65535"),
        ("ANIM_STORE", "ftp", "s3, local"),
        ("ANIM_S3_SECURE", "maybe", "true or false"),
    ],
)
def test_malformed_variable_is_named(name, value, rule):
    env = {"ANIM_NATS_URL": "nats://x", "ANIM_STORE": "local", name: value}
    with pytest.raises(config.ConfigError) as info:
        config.load("renderer", env)
    assert str(info.value).startswith(f"{name}:")
    assert rule in str(info.value)


def test_secrets_are_masked_and_never_echoed():
    env = {"ANIM_NATS_URL": "x", "ANIM_S3_SECRET_KEY": "hunter2-very-secret"}
    rows = {name: shown for name, shown, _ in config.describe(env)}
    assert rows["ANIM_S3_SECRET_KEY"] == "***"
    assert "hunter2" not in config.markdown_table()


def test_default_grpc_ports_follow_the_design():
    env = {"ANIM_NATS_URL": "x", "ANIM_STORE": "local"}
    ports = {role: config.load(role, env).grpc_port() for role in config.GRPC_PORTS}
    assert ports == {"planner": 50051, "depth": 50052, "renderer": 50053, "assembler": 50054}
    assert config.load("planner", {**env, "ANIM_GRPC_PORT": "0"}).grpc_port() == 0


# --- limits ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("bound", "field", "good", "bad", "text"),
    [
        (limits.FRAMES, "frames", [1, 120], [0, -1, 121, True, 2.0], "1..120"),
        (limits.WIDTH, "width", [64, 512, 1024], [63, 513, 1032, 0], "64..1024, a multiple of 8"),
        (limits.STEPS, "steps", [1, 150], [0, 151], "1..150"),
        (limits.GUIDANCE, "guidance", [0, 7.5, 30], [-0.1, 30.5, float("nan")], "[0, 30]"),
        (limits.STRENGTH, "strength", [0.01, 1], [0, 1.01, float("inf")], "(0, 1]"),
        (limits.FPS, "fps", [1, 60], [0, 61], "1..60"),
    ],
)
def test_limits(bound, field, good, bad, text):
    for value in good:
        bound.check(field, value)
    for value in bad:
        with pytest.raises(ValueError) as info:
            bound.check(field, value)
        assert str(info.value).startswith(f"{field}: must be") and text in str(info.value)


def test_text_rules():
    assert limits.check_text("idea", "  a cat  ", 10, required=True) == "a cat"
    for bad, why in [("   ", "empty"), ("x" * 11, "at most 10"), ("a\x00b", "control")]:
        with pytest.raises(ValueError, match=why):
            limits.check_text("idea", bad, 10, required=True)


def test_formats_normalised_and_checked():
    assert limits.check_formats("formats", ["GIF", " mp4", "gif"]) == ("gif", "mp4")
    assert limits.check_formats("formats", []) == limits.DEFAULT_FORMATS
    with pytest.raises(ValueError, match="formats: must be a list of gif, mp4"):
        limits.check_formats("formats", ["avi"])


# --- keys ------------------------------------------------------------------

JOB = "0123456789abcdef0123456789abcdef"


def test_key_builders_follow_the_key_table():
    assert keys.plan_key(JOB) == f"jobs/{JOB}/plan.json"
    assert keys.plan_attempts_key(JOB) == f"jobs/{JOB}/plan_attempts.json"
    assert keys.frame_key(JOB, 7) == f"jobs/{JOB}/frames/0007.png"
    assert keys.frame_record_key(JOB, 7) == f"jobs/{JOB}/frames/0007.json"
    assert keys.depth_key(JOB, 0) == f"jobs/{JOB}/depth/0000.png"
    assert keys.manifest_key(JOB) == f"jobs/{JOB}/manifest.json"
    assert keys.output_key(JOB, "mp4") == f"jobs/{JOB}/animation.mp4"
    assert keys.output_key(JOB, "contact") == f"jobs/{JOB}/contact_sheet.png"
    assert keys.lora_key("ghibli-v2") == "loras/ghibli-v2/pytorch_lora_weights.safetensors"
    for built in (keys.frame_key(JOB, 1), keys.depth_key(JOB, 2), keys.output_key(JOB, "zip")):
        assert keys.check_key(built) == built


@pytest.mark.parametrize(
    "bad_id",
    [
        "",
        "../etc",
        JOB.upper(),
        JOB + "0",
        "0123456789abcdef0123456789abcde/",
        None,
        42,
        f"{JOB}\n",
    ],
)
def test_key_builders_reject_anything_but_valid_ids(bad_id):
    with pytest.raises(ValueError, match="job_id: must be 32 lowercase hex"):
        keys.frame_key(bad_id, 0)


@pytest.mark.parametrize("bad", [-1, 10000, True, "1"])
def test_frame_index_checked(bad):
    with pytest.raises(ValueError, match=r"frame: must be an integer in 0..9999"):
        keys.frame_key(JOB, bad)


@pytest.mark.parametrize(
    "bad_key",
    [
        f"jobs/{JOB}/../secret.png",
        "/etc/passwd",
        f"jobs/{JOB}/frames/7.png",
        "loras/../x/pytorch_lora_weights.safetensors",
        "other/thing",
    ],
)
def test_check_key_rejects_foreign_keys(bad_key):
    with pytest.raises(ValueError, match="key: not a valid store key"):
        keys.check_key(bad_key)


@pytest.mark.parametrize("bad", ["", "UPPER", "a/b", "..", "-x", "x" * 65])
def test_lora_names_checked(bad):
    with pytest.raises(ValueError, match="lora name"):
        keys.lora_key(bad)


# --- seeds -----------------------------------------------------------------


def test_seed_rules_of_the_design():
    inc, fixed, rnd = (
        types_pb2.SEED_MODE_INCREMENT,
        types_pb2.SEED_MODE_FIXED,
        types_pb2.SEED_MODE_RANDOM,
    )
    assert [seeds.frame_seed(41, i, inc) for i in range(3)] == [41, 42, 43]
    assert seeds.frame_seed(2**32 - 1, 2, inc) == 1  # wraps mod 2^32
    assert seeds.frame_seed(7, 0, types_pb2.SEED_MODE_UNSPECIFIED) == 7  # default = increment
    assert [seeds.frame_seed(41, i, fixed) for i in range(3)] == [41, 41, 41]
    expected = int.from_bytes(hashlib.sha256(b"41:2").digest()[:4], "big")
    assert seeds.frame_seed(41, 2, rnd) == expected
    assert len({seeds.frame_seed(41, i, rnd) for i in range(50)}) == 50
    with pytest.raises(ValueError, match="seed: must be"):
        seeds.frame_seed(2**32, 0)
    with pytest.raises(ValueError, match="seed_mode: must be one of increment, fixed, random"):
        seeds.parse_seed_mode("chaos")


# --- request validation ----------------------------------------------------

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
