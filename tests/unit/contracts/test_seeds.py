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
