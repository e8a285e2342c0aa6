"""Fixtures of the planner's tests: client settings with a cache of their own, the tiny
profile, and its CLIP token counter (one of each per module)."""

from __future__ import annotations

import pytest

from ghibli_anim.contracts import config
from ghibli_anim.contracts.pb import types_pb2
from ghibli_anim.contracts.profiles import load_profile
from ghibli_anim.contracts.tokens import TokenCounter


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> config.Settings:
    cache = tmp_path_factory.mktemp("cache")
    return config.load("client", {"ANIM_CACHE_DIR": str(cache), "ANIM_STORE": "local"})


@pytest.fixture(scope="module")
def counter(settings: config.Settings) -> TokenCounter:
    return TokenCounter.for_profile(load_profile("tiny", settings), settings)


@pytest.fixture(scope="module")
def profile(settings: config.Settings) -> types_pb2.Profile:
    return load_profile("tiny", settings)
