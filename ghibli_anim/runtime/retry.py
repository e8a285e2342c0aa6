"""Retries: one policy per kind of failure, all built on tenacity.

- :func:`within_budget`: transient I/O failures (the object store): exponential backoff
  from ``first_wait_s``, doubling up to ``max_wait_s``, until the next try would start
  after ``budget_s`` seconds;
- :func:`with_backoff`: a remote service that asks us to slow down (the LLM backends:
  429, 5xx, unreachable): ``retries`` more tries with exponential backoff and a little
  jitter, or exactly the wait the server asked for (``Retry-After``), capped;
- :func:`on_conflict`: compare-and-swap races on the KV buckets: a few immediate tries
  with a short random wait, so a crowd of writers does not collide in lockstep.

Each returns a tenacity ``Retrying`` (or ``AsyncRetrying``) object; callers run their
operation with it and turn ``tenacity.RetryError`` (the tries ran out) into their own
error, which names what failed and how often it was tried.

The bus does not retry here: a failed message is handed back to NATS JetStream (nak with
a growing delay, see ``runtime.bus.consumer``), which redelivers it to any replica.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping

import tenacity
from tenacity import RetryCallState

RetryError = tenacity.RetryError


def within_budget(
    *,
    retry_on: Callable[[BaseException], bool],
    budget_s: float,
    first_wait_s: float = 0.1,
    max_wait_s: float = 2.0,
    log: logging.Logger | None = None,
    what: str = "",
) -> tenacity.Retrying:
    """Retry failures ``retry_on`` accepts until the next try would pass ``budget_s``."""
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(retry_on),
        wait=tenacity.wait_exponential(multiplier=first_wait_s, min=first_wait_s, max=max_wait_s),
        stop=tenacity.stop_before_delay(budget_s),
        before_sleep=_log_retry(log, what) if log is not None else None,
    )


def with_backoff(
    *,
    retry_on: type[BaseException] | tuple[type[BaseException], ...],
    retries: int,
    backoff_s: float,
    max_wait_s: float,
    asked_wait_s: Callable[[BaseException], float | None] = lambda _exc: None,
    log: logging.Logger | None = None,
    what: str = "",
    log_extra: Mapping[str, object] | None = None,
) -> tenacity.Retrying:
    """``retries`` more tries of failures of type ``retry_on``; the wait before retry n
    (from 0) is ``asked_wait_s(exc)`` when the failure carries one (a Retry-After), else
    ``backoff_s * 2**n`` with up to 10% jitter, never more than ``max_wait_s``.

    Each retry logs a warning on ``log`` (when given) with the fields ``error`` and
    ``wait_s``, plus ``log_extra`` (e.g. which backend failed)."""

    def wait(state: RetryCallState) -> float:
        outcome = state.outcome
        asked = asked_wait_s(outcome.exception()) if outcome is not None else None
        if asked is not None:
            return min(max(asked, 0.0), max_wait_s)
        # A little jitter keeps replicas that hit a rate limit together from retrying together.
        base = min(backoff_s * 2 ** (state.attempt_number - 1), max_wait_s)
        return base * (1.0 + 0.1 * random.random())

    return tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(retry_on),
        wait=wait,
        stop=tenacity.stop_after_attempt(retries + 1),
        before_sleep=_log_retry(log, what, log_extra) if log is not None else None,
    )


def on_conflict(
    *, retry_on: type[BaseException] | tuple[type[BaseException], ...], tries: int
) -> tenacity.AsyncRetrying:
    """Up to ``tries`` tries of a compare-and-swap that lost its race (``retry_on``)."""
    return tenacity.AsyncRetrying(
        retry=tenacity.retry_if_exception_type(retry_on),
        wait=tenacity.wait_random_exponential(multiplier=0.001, max=0.05),
        stop=tenacity.stop_after_attempt(tries),
    )


def _log_retry(
    log: logging.Logger, what: str, extra: Mapping[str, object] | None = None
) -> Callable[[RetryCallState], None]:
    """A ``before_sleep`` hook: one warning per retry, with structured fields for log
    queries (``extra`` keys must not be LogRecord attributes, or logging refuses them)."""

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning(
            "%s failed (%s: %s); retry %d in %.1f s",
            what or "call",
            type(error).__name__,
            str(error).splitlines()[0] if error and str(error) else "",
            state.attempt_number,
            wait,
            extra={
                **(extra or {}),
                "error": str(error) if error is not None else "",
                "wait_s": round(wait, 2),
            },
        )

    return before_sleep
