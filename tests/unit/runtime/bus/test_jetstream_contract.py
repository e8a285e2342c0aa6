"""The in-memory JetStream of the unit tests (tests/support/memory_js.py) keeps the contract
the conductor and the job store rely on; the same tests run on a real nats-server in
tests/integration/runtime/bus/test_jetstream_contract.py."""

from __future__ import annotations

import pytest
from support.jetstream_cases import *  # noqa: F403 (the shared contract tests)
from support.memory_js import MemoryJetStream, MemoryNats, _matches


@pytest.fixture
def js() -> MemoryJetStream:
    return MemoryJetStream()


@pytest.fixture
def nc(js: MemoryJetStream) -> MemoryNats:
    return MemoryNats(js)


@pytest.mark.parametrize(
    ("pattern", "subject", "matches"),
    [
        ("anim.work.>", "anim.work.render", True),
        ("anim.work.>", "anim.work", False),
        ("anim.event.*.*.*", "anim.event.job.created.ab", True),
        ("anim.event.*.*.*", "anim.event.job.created", False),
        ("$KV.anim-jobs.>", "$KV.anim-idem.x", False),
        ("a.b", "a.b.c", False),
    ],
)
def test_subjects_match_as_on_the_server(pattern, subject, matches):
    assert _matches(pattern, subject) is matches
