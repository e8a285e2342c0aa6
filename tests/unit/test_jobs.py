"""The job state machine: which status changes are allowed, which are terminal."""

from __future__ import annotations

import itertools

import pytest

from ghibli_anim.contracts import lifecycle as jobs
from ghibli_anim.contracts.pb import types_pb2
from ghibli_anim.runtime import jobstore

S = types_pb2
ALL = [
    S.JOB_STATUS_PENDING,
    S.JOB_STATUS_PLANNING,
    S.JOB_STATUS_RENDERING,
    S.JOB_STATUS_ASSEMBLING,
    S.JOB_STATUS_COMPLETED,
    S.JOB_STATUS_FAILED,
    S.JOB_STATUS_CANCELLED,
]

ALLOWED = {
    (S.JOB_STATUS_PENDING, S.JOB_STATUS_PLANNING),
    (S.JOB_STATUS_PENDING, S.JOB_STATUS_CANCELLED),
    (S.JOB_STATUS_PENDING, S.JOB_STATUS_FAILED),
    (S.JOB_STATUS_PLANNING, S.JOB_STATUS_RENDERING),
    (S.JOB_STATUS_PLANNING, S.JOB_STATUS_FAILED),
    (S.JOB_STATUS_PLANNING, S.JOB_STATUS_CANCELLED),
    (S.JOB_STATUS_RENDERING, S.JOB_STATUS_ASSEMBLING),
    (S.JOB_STATUS_RENDERING, S.JOB_STATUS_FAILED),
    (S.JOB_STATUS_RENDERING, S.JOB_STATUS_CANCELLED),
    (S.JOB_STATUS_ASSEMBLING, S.JOB_STATUS_COMPLETED),
    (S.JOB_STATUS_ASSEMBLING, S.JOB_STATUS_FAILED),
    (S.JOB_STATUS_ASSEMBLING, S.JOB_STATUS_CANCELLED),
    # Resume: rendering, assembling (every frame done) or planning again (PENDING).
    (S.JOB_STATUS_FAILED, S.JOB_STATUS_RENDERING),
    (S.JOB_STATUS_FAILED, S.JOB_STATUS_ASSEMBLING),
    (S.JOB_STATUS_FAILED, S.JOB_STATUS_PENDING),
    (S.JOB_STATUS_CANCELLED, S.JOB_STATUS_RENDERING),
    (S.JOB_STATUS_CANCELLED, S.JOB_STATUS_ASSEMBLING),
    (S.JOB_STATUS_CANCELLED, S.JOB_STATUS_PENDING),
}


@pytest.mark.parametrize(("old", "new"), sorted(ALLOWED))
def test_allowed_transitions(old: int, new: int) -> None:
    assert jobs.can_transition(old, new)
    jobs.check_transition(old, new)


def test_table_is_exactly_the_allowed_set() -> None:
    table = {(old, new) for old, targets in jobs.TRANSITIONS.items() for new in targets}
    assert table == ALLOWED
    assert set(jobs.TRANSITIONS) == set(ALL)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (S.JOB_STATUS_PENDING, S.JOB_STATUS_RENDERING),  # skips planning
        (S.JOB_STATUS_PENDING, S.JOB_STATUS_COMPLETED),
        (S.JOB_STATUS_PLANNING, S.JOB_STATUS_PENDING),  # backwards
        (S.JOB_STATUS_PLANNING, S.JOB_STATUS_ASSEMBLING),
        (S.JOB_STATUS_RENDERING, S.JOB_STATUS_COMPLETED),  # skips assembling
        (S.JOB_STATUS_RENDERING, S.JOB_STATUS_PLANNING),
        (S.JOB_STATUS_ASSEMBLING, S.JOB_STATUS_RENDERING),
        (S.JOB_STATUS_COMPLETED, S.JOB_STATUS_RENDERING),  # completed is final
        (S.JOB_STATUS_COMPLETED, S.JOB_STATUS_FAILED),
        (S.JOB_STATUS_COMPLETED, S.JOB_STATUS_CANCELLED),
        (S.JOB_STATUS_FAILED, S.JOB_STATUS_COMPLETED),
        (S.JOB_STATUS_FAILED, S.JOB_STATUS_CANCELLED),
        (S.JOB_STATUS_CANCELLED, S.JOB_STATUS_FAILED),
        (S.JOB_STATUS_CANCELLED, S.JOB_STATUS_PLANNING),
        (S.JOB_STATUS_UNSPECIFIED, S.JOB_STATUS_PENDING),
    ],
)
def test_forbidden_transitions(old: int, new: int) -> None:
    assert not jobs.can_transition(old, new)
    with pytest.raises(jobs.InvalidTransition) as info:
        jobs.check_transition(old, new, "ab" * 16)
    message = str(info.value)
    assert jobs.status_name(old) in message and jobs.status_name(new) in message
    assert "ab" * 16 in message


def test_every_pair_outside_the_table_is_forbidden() -> None:
    for old, new in itertools.product(ALL, ALL):
        expected = old == new or (old, new) in ALLOWED
        assert jobs.can_transition(old, new) == expected, (old, new)


def test_same_status_is_always_allowed() -> None:
    for status in ALL:
        jobs.check_transition(status, status)


def test_terminal_states() -> None:
    assert {s for s in ALL if jobs.is_terminal(s)} == {
        S.JOB_STATUS_COMPLETED,
        S.JOB_STATUS_FAILED,
        S.JOB_STATUS_CANCELLED,
    }
    assert {s for s in ALL if s in jobs.RESUMABLE} == {
        S.JOB_STATUS_FAILED,
        S.JOB_STATUS_CANCELLED,
    }
    assert jobs.TRANSITIONS[S.JOB_STATUS_COMPLETED] == frozenset()


def test_invalid_transition_is_a_value_error_naming_what_is_allowed() -> None:
    error = jobs.InvalidTransition(S.JOB_STATUS_RENDERING, S.JOB_STATUS_PENDING)
    assert isinstance(error, ValueError)
    assert "allowed: ASSEMBLING, CANCELLED, FAILED" in str(error)
    assert "allowed: none" in str(jobs.InvalidTransition(S.JOB_STATUS_COMPLETED, 3))


def test_idempotency_key_is_stable_and_unambiguous() -> None:
    key = jobstore.idempotency_key("client", "key-1")
    assert key == jobstore.idempotency_key("client", "key-1")
    assert len(key) == 64 and all(c in "0123456789abcdef" for c in key)
    assert key != jobstore.idempotency_key("client", "key-2")
    assert key != jobstore.idempotency_key("other", "key-1")
    # A separator inside either part cannot make two pairs collide.
    assert jobstore.idempotency_key("a|b", "c") != jobstore.idempotency_key("a", "b|c")
