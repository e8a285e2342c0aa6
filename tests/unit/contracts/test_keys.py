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


UPLOAD = "fedcba9876543210fedcba9876543210"


def test_every_builder_makes_the_documented_key_and_check_key_accepts_it():
    built = {
        keys.job_prefix(JOB): f"jobs/{JOB}/",
        keys.init_key(JOB): f"jobs/{JOB}/init.png",
        keys.plan_key(JOB): f"jobs/{JOB}/plan.json",
        keys.frame_key(JOB, 0): f"jobs/{JOB}/frames/0000.png",
        # The last frame index keeps four digits, so its key still passes check_key.
        keys.frame_key(JOB, 9999): f"jobs/{JOB}/frames/9999.png",
        keys.frame_record_key(JOB, 9999): f"jobs/{JOB}/frames/9999.json",
        keys.depth_key(JOB, 9999): f"jobs/{JOB}/depth/9999.png",
        keys.output_key(JOB, "gif"): f"jobs/{JOB}/animation.gif",
        keys.output_key(JOB, "webp"): f"jobs/{JOB}/animation.webp",
        keys.output_key(JOB, "zip"): f"jobs/{JOB}/frames.zip",
        keys.upload_key(UPLOAD): f"uploads/{UPLOAD}",
        keys.lora_key("a"): "loras/a/pytorch_lora_weights.safetensors",
        # The longest name check_name takes: its key must pass check_key too.
        keys.lora_key("x" * 64): f"loras/{'x' * 64}/pytorch_lora_weights.safetensors",
        keys.lora_key("v1.2_b-c"): "loras/v1.2_b-c/pytorch_lora_weights.safetensors",
    }
    for key, expected in built.items():
        assert key == expected
        if not key.endswith("/"):
            assert keys.check_key(key) == key


def test_new_ids_are_valid_and_distinct():
    job_ids = {keys.new_job_id() for _ in range(20)}
    upload_ids = {keys.new_upload_id() for _ in range(20)}
    assert len(job_ids) == len(upload_ids) == 20
    assert all(keys.is_job_id(i) and keys.check_upload_id(i) == i for i in job_ids | upload_ids)


# Ids that look almost right: one hex digit short or long, upper case, non-ASCII digits
# (which a `\d` would take), a trailing newline (which `$` alone would take), a path.
HOSTILE_IDS = [
    "",
    JOB[:-1],
    JOB + "0",
    JOB.upper(),
    "g" * 32,
    "\u0660" * 32,  # ARABIC-INDIC DIGIT ZERO
    f"{JOB}\n",
    f" {JOB[1:]}",
    "../" + JOB[3:],
    "/" + JOB[1:],
    None,
    0,
    b"0123456789abcdef0123456789abcdef",
]


@pytest.mark.parametrize("bad_id", HOSTILE_IDS)
def test_id_checks_reject_hostile_ids(bad_id):
    assert keys.is_job_id(bad_id) is False
    for check, field in ((keys.check_job_id, "job_id"), (keys.check_upload_id, "upload_id")):
        with pytest.raises(
            ValueError, match=rf"^{field}: must be 32 lowercase hex characters, got"
        ):
            check(bad_id)
    with pytest.raises(ValueError, match=r"^upload_id: must be 32 lowercase hex characters"):
        keys.upload_key(bad_id)
    with pytest.raises(ValueError, match=r"^job_id: must be 32 lowercase hex characters"):
        keys.init_key(bad_id)


def test_id_checks_return_the_id_and_name_the_given_field():
    assert keys.is_job_id(JOB) is True
    assert keys.check_job_id(JOB) == JOB
    assert keys.check_upload_id(UPLOAD) == UPLOAD
    assert keys.check_frame_index(9999) == 9999
    assert keys.check_frame_index(0) == 0
    assert keys.check_name("ghibli") == "ghibli"
    with pytest.raises(ValueError, match=r"^parent_id: must be 32 lowercase hex characters"):
        keys.check_job_id("nope", "parent_id")
    with pytest.raises(ValueError, match=r"^init_upload_id: must be 32 lowercase hex characters"):
        keys.check_upload_id("nope", "init_upload_id")
    with pytest.raises(ValueError, match=r"^index: must be an integer in 0\.\.9999, got 10000$"):
        keys.check_frame_index(10000, "index")
    with pytest.raises(ValueError, match=r"^style: must be 1-64 characters"):
        keys.check_name("Nope", "style")


@pytest.mark.parametrize("index", [-1, 10000, 99999, True, False, 1.0, "0001", None])
def test_every_frame_builder_checks_the_index(index):
    for build in (keys.frame_key, keys.frame_record_key, keys.depth_key):
        with pytest.raises(ValueError, match=r"^frame: must be an integer in 0\.\.9999, got"):
            build(JOB, index)


@pytest.mark.parametrize(
    "bad",
    ["", "A", "a/b", ".", "..", "-x", "x-", "_x", "x.", "a b", "é", "x" * 65, "a\n", None, 7],
)
def test_names_checked_with_the_rule_in_the_message(bad):
    message = (
        r"must be 1-64 characters of a-z, 0-9, '\.', '_' or '-', "
        r"starting and ending with a letter or digit, got "
    )
    with pytest.raises(ValueError, match=rf"^name: {message}"):
        keys.check_name(bad)
    with pytest.raises(ValueError, match=rf"^lora name: {message}"):
        keys.lora_key(bad)


@pytest.mark.parametrize("fmt", ["", "GIF", "avi", "gif ", "contact_sheet.png", "../plan.json"])
def test_output_formats_checked(fmt):
    with pytest.raises(ValueError) as info:
        keys.output_key(JOB, fmt)
    assert str(info.value) == (f"format: must be one of gif, mp4, webp, zip, contact, got {fmt!r}")


def test_output_key_checks_the_job_id_too():
    with pytest.raises(ValueError, match=r"^job_id: must be 32 lowercase hex"):
        keys.output_key("../x", "gif")


@pytest.mark.parametrize(
    "bad_key",
    [
        # A name that matches the loras/ shape but climbs out of it: only the '..' guard
        # stops these.
        "loras/x/..",
        "loras/x../pytorch_lora_weights.safetensors",
        "loras/x/../plan.json",
        "loras/a..b/x",
        f"uploads/{UPLOAD}/../{UPLOAD}",
        f"jobs/{JOB}/frames/00007.png",  # five digits: frame keys keep four
        f"jobs/{JOB}/frames/007.png",
        f"jobs/{JOB}/frames/0007",
        f"jobs/{JOB[:-1]}/plan.json",
        f"jobs/{JOB}0/plan.json",
        f"jobs/{JOB.upper()}/plan.json",
        f"jobs/{JOB}/plan.json\n",
        f"jobs/{JOB}/plan.json/",
        f"jobs/{JOB}/Plan.json",
        f"jobs/{JOB}/a/b/plan.json",
        f"jobs/{JOB}/.json",
        f"jobs/{JOB}//0001.png",
        f"jobs/{JOB}/",
        f"/jobs/{JOB}/plan.json",
        f"jobs//{JOB}/plan.json",
        f"jobs\\{JOB}\\plan.json",
        f"uploads/{UPLOAD[:-1]}",
        f"uploads/{UPLOAD}/x",
        "uploads/",
        "loras/X/pytorch_lora_weights.safetensors",
        "loras/x-/pytorch_lora_weights.safetensors",  # names end in a letter or digit
        f"loras/{'x' * 65}/pytorch_lora_weights.safetensors",
        "loras/x",
        "loras/x/",
        "loras/x/a/b",
        "",
        " ",
        None,
        b"uploads/fedcba9876543210fedcba9876543210",
    ],
)
def test_check_key_rejects_hostile_keys(bad_key):
    with pytest.raises(ValueError, match=r"^key: not a valid store key, got"):
        keys.check_key(bad_key)


def test_check_key_names_the_given_field():
    assert keys.check_key(f"uploads/{UPLOAD}", "source") == f"uploads/{UPLOAD}"
    with pytest.raises(ValueError, match=r"^source: not a valid store key, got 'loras/x/\.\.'$"):
        keys.check_key("loras/x/..", "source")


@pytest.mark.parametrize(
    ("key", "job_id"),
    [
        (f"jobs/{JOB}/plan.json", JOB),
        (f"jobs/{JOB}/frames/0003.png", JOB),
        (f"jobs/{JOB}/", JOB),
        (f"jobs/{JOB}", None),  # the folder name alone is not a key in it
        (f"jobs/{JOB[:-1]}/plan.json", None),
        (f"jobs/{JOB.upper()}/plan.json", None),
        (f"uploads/{JOB}/x", None),
        (f"JOBS/{JOB}/plan.json", None),
        (f"/jobs/{JOB}/plan.json", None),
        (f"x/jobs/{JOB}/plan.json", None),
        ("jobs", None),
        ("", None),
    ],
)
def test_job_id_of_key(key, job_id):
    assert keys.job_id_of_key(key) == job_id
