"""What an exception becomes at the planner's edges (gRPC status and message, the same on
the bus): the caller's mistakes name the field, a NATS or S3 outage is UNAVAILABLE (worth
trying again, and the watch does), anything else is INTERNAL with the type alone."""

from __future__ import annotations

import logging

import grpc
import nats.errors
import nats.js.errors
import pytest

from ghibli_anim.contracts import lifecycle
from ghibli_anim.contracts.lifecycle import InvalidTransition
from ghibli_anim.runtime.jobstore import JobNotFound
from ghibli_anim.runtime.store.base import StoreError, StoreUnavailable
from ghibli_anim.services.planner.grpc_api import BACKEND_UNAVAILABLE, classify
from ghibli_anim.services.planner.jobs_api import FailedPrecondition, ParentNotFound, QuotaExceeded

Code = grpc.StatusCode


@pytest.mark.parametrize(
    ("exc", "code", "message"),
    [
        (JobNotFound("no job 'ab'"), Code.NOT_FOUND, "job_id: no job 'ab'"),
        (
            ParentNotFound("parent_job_id: no job 'cd'"),
            Code.NOT_FOUND,
            "parent_job_id: no job 'cd'",
        ),
        (
            QuotaExceeded("client_id: 4 unfinished"),
            Code.RESOURCE_EXHAUSTED,
            "client_id: 4 unfinished",
        ),
        (FailedPrecondition("job_id: running"), Code.FAILED_PRECONDITION, "job_id: running"),
        (
            InvalidTransition(lifecycle.COMPLETED, lifecycle.RENDERING),
            Code.FAILED_PRECONDITION,
            "status cannot change from COMPLETED to RENDERING (allowed: none)",
        ),
        (
            ValueError("frames: must be 1..240, got 0"),
            Code.INVALID_ARGUMENT,
            "frames: must be 1..240, got 0",
        ),
    ],
)
def test_the_callers_mistakes_keep_their_message(exc, code, message) -> None:
    assert classify(exc) == (code, message)


@pytest.mark.parametrize(
    ("exc", "what"),
    [
        (nats.errors.TimeoutError(), "NATS (TimeoutError)"),
        (nats.errors.FlushTimeoutError(), "NATS (FlushTimeoutError)"),
        (nats.errors.ConnectionClosedError(), "NATS (ConnectionClosedError)"),
        (nats.errors.ConnectionReconnectingError(), "NATS (ConnectionReconnectingError)"),
        (nats.errors.NoRespondersError(), "NATS (NoRespondersError)"),
        (nats.errors.NoServersError(), "NATS (NoServersError)"),
        (nats.errors.UnexpectedEOF(), "NATS (UnexpectedEOF)"),
        (nats.js.errors.ServiceUnavailableError(), "NATS (ServiceUnavailableError)"),
        (nats.js.errors.NoStreamResponseError(), "NATS (NoStreamResponseError)"),
        (
            StoreUnavailable("put: S3 at http://10.0.0.7:8333 still failing"),
            "the object store (StoreUnavailable)",
        ),
    ],
)
def test_an_outage_is_unavailable_and_hides_where_the_servers_are(exc, what, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="ghibli_anim.services.planner.grpc_api")
    code, message = classify(exc)
    assert code == Code.UNAVAILABLE
    assert message == f"{BACKEND_UNAVAILABLE}{what}; try again shortly"
    assert message.startswith("the planner cannot reach ")  # what the CLI looks for
    assert "10.0.0.7" not in message
    # The log keeps the detail, as a warning: an outage is not a bug.
    [record] = caplog.records
    assert record.levelno == logging.WARNING and str(exc) in record.getMessage()


@pytest.mark.parametrize(
    "exc",
    [
        RuntimeError("boom at 10.0.0.7"),
        TimeoutError(),  # not from the bus: a bug of ours until shown otherwise
        nats.js.errors.BadRequestError(),
        nats.js.errors.KeyWrongLastSequenceError(),
        StoreError("put: refused"),
    ],
)
def test_anything_else_is_internal_with_the_type_alone(exc, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="ghibli_anim.services.planner.grpc_api")
    assert classify(exc) == (Code.INTERNAL, f"internal error: {type(exc).__name__}")
    [record] = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is not None
