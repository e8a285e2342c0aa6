"""runtime/jobstore.py without a server: the idempotency key of a client's request, and the
job store's whole contract on an in-memory bucket (the same tests run on a real NATS
bucket in tests/integration/runtime/test_jobstore.py)."""

from __future__ import annotations

import pytest
from support.jobstore_cases import *  # noqa: F403 (the shared contract tests)
from support.memory_kv import MemoryKV

from ghibli_anim.runtime import jobstore


@pytest.fixture
def jobs_kv() -> MemoryKV:
    return MemoryKV("anim-jobs")


@pytest.fixture
def idem_kv() -> MemoryKV:
    return MemoryKV("anim-idem")


def test_idempotency_key_is_stable_and_unambiguous() -> None:
    key = jobstore.idempotency_key("client", "key-1")
    assert key == jobstore.idempotency_key("client", "key-1")
    assert len(key) == 64 and all(c in "0123456789abcdef" for c in key)
    assert key != jobstore.idempotency_key("client", "key-2")
    assert key != jobstore.idempotency_key("other", "key-1")
    # A separator inside either part cannot make two pairs collide.
    assert jobstore.idempotency_key("a|b", "c") != jobstore.idempotency_key("a", "b|c")
