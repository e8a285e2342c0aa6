"""contracts/seeds.py: per-frame seeds in the increment, fixed and random modes."""

from __future__ import annotations

import hashlib

import pytest

from ghibli_anim.contracts import seeds
from ghibli_anim.contracts.pb import types_pb2


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


INC, FIXED, RND = (
    types_pb2.SEED_MODE_INCREMENT,
    types_pb2.SEED_MODE_FIXED,
    types_pb2.SEED_MODE_RANDOM,
)


def _sha_seed(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")


def test_seed_zero_and_the_maximum_are_seeds():
    top = 2**32 - 1
    assert [seeds.frame_seed(0, i) for i in range(3)] == [0, 1, 2]  # increment by default
    assert seeds.frame_seed(0, 9, FIXED) == 0
    assert seeds.frame_seed(0, 0, RND) == _sha_seed("0:0")
    assert seeds.frame_seed(top, 0, INC) == top
    assert seeds.frame_seed(top, 1, INC) == 0
    assert seeds.frame_seed(top, 5, FIXED) == top
    assert seeds.frame_seed(top, 119, RND) == _sha_seed(f"{top}:119")


def test_random_seeds_read_the_digest_big_endian():
    # sha256(b"1:0") starts a6 68 5f 3b: big-endian 0xa6685f3b, not little-endian 0x3b5f68a6.
    digest = hashlib.sha256(b"1:0").digest()[:4]
    assert digest == bytes.fromhex("a6685f3b")
    assert seeds.frame_seed(1, 0, RND) == 0xA6685F3B


@pytest.mark.parametrize("job_seed", [-1, 2**32, 2**40])
def test_job_seed_out_of_range(job_seed):
    for mode in (INC, FIXED, RND):
        with pytest.raises(ValueError) as info:
            seeds.frame_seed(job_seed, 0, mode)
        assert str(info.value) == f"seed: must be an integer in 0..4294967295, got {job_seed}"


def test_negative_frame_and_unknown_mode():
    with pytest.raises(ValueError) as info:
        seeds.frame_seed(5, -1, FIXED)
    assert str(info.value) == "frame: must be >= 0, got -1"
    with pytest.raises(ValueError) as info:
        seeds.frame_seed(5, 0, 9)
    assert str(info.value) == "seed_mode: unknown value 9"


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("increment", INC),
        ("fixed", FIXED),
        ("random", RND),
        (" Fixed ", FIXED),  # case and surrounding whitespace do not matter
        ("RANDOM", RND),
        ("\tincrement\n", INC),
    ],
)
def test_parse_seed_mode(name, mode):
    assert seeds.parse_seed_mode(name) == mode


@pytest.mark.parametrize("name", ["", "unspecified", "fix", "increment,fixed", "ﬁxed"])
def test_parse_seed_mode_rejects_other_names(name):
    with pytest.raises(ValueError) as info:
        seeds.parse_seed_mode(name)
    assert str(info.value) == f"seed_mode: must be one of increment, fixed, random, got {name!r}"


def test_seed_mode_names():
    assert [seeds.seed_mode_name(m) for m in (INC, FIXED, RND)] == ["increment", "fixed", "random"]
    # UNSPECIFIED (and any value this version does not know) behaves as increment.
    assert seeds.seed_mode_name(types_pb2.SEED_MODE_UNSPECIFIED) == "increment"
    assert seeds.seed_mode_name(99) == "increment"
    for name in seeds.SEED_MODES:
        assert seeds.seed_mode_name(seeds.parse_seed_mode(name)) == name


def test_new_job_seeds_are_valid_seeds():
    drawn = [seeds.new_job_seed() for _ in range(64)]
    assert all(isinstance(s, int) and 0 <= s <= 2**32 - 1 for s in drawn)
    assert len(set(drawn)) > 1
    assert all(seeds.frame_seed(s, 0) == s for s in drawn)
