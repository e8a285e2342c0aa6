"""contracts/keys.py: the store's key builders and the checks of ids, indexes and keys."""

from __future__ import annotations

import pytest

from ghibli_anim.contracts import keys

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
