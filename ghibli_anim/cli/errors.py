"""Expected failures as one line on stderr: what went wrong and what to do.

:func:`ghibli_anim.cli.main.main` hands whatever a command raises to :func:`explain`.
Failures a user can cause (a bad flag or setting, a missing or unreadable file, a folder
without write permission, no network, a model the hub or the cache does not have, a
server that does not answer) become ``error: <what>; <what to do>`` and an exit status:
2 for bad input (``ValueError``, ``INVALID_ARGUMENT``), 1 for the rest. Anything else is
a bug and keeps its traceback. ``ANIM_LOG_LEVEL=DEBUG`` prints the traceback of an
expected failure too.

Library exceptions are recognised only when their library is already imported (looked
up in ``sys.modules``): a library that was never imported raised nothing, and this module
stays as light as the parser (``ghibli-anim probe`` runs every few seconds).
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

BAD_INPUT = 2
FAILED = 1

_FETCH_HINT = (
    "with no network, `ghibli-anim models fetch PROFILE` on a connected machine fills "
    "HF_HOME, and `--profile tiny` needs no download"
)


@dataclass(frozen=True)
class Explained:
    """The line to print (without ``error: ``) and the exit status."""

    message: str
    status: int = FAILED


def explain(exc: BaseException, args: argparse.Namespace | None = None) -> Explained | None:
    """One line for an expected failure, or None for a bug (let its traceback show)."""
    for rule in _RULES:
        found = rule(exc, args)
        if found is not None:
            return Explained(_one_line(found.message), found.status)
    return None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _class(module: str, name: str) -> type | None:
    """``module.name`` when ``module`` is imported already, else None."""
    mod = sys.modules.get(module)
    found = getattr(mod, name, None) if mod is not None else None
    return found if isinstance(found, type) else None


def _classes(module: str, *names: str) -> tuple[type, ...]:
    return tuple(c for c in (_class(module, n) for n in names) if c is not None)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or during, innermost last."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


# -- rules, most specific first --------------------------------------------------------


def _grpc(exc: BaseException, args: argparse.Namespace | None) -> Explained | None:
    grpc = sys.modules.get("grpc")
    if grpc is None or not isinstance(exc, grpc.RpcError):
        return None
    code, details = exc.code(), exc.details() or ""
    codes = grpc.StatusCode
    server = getattr(args, "server", None)
    hint = ""
    # An UNAVAILABLE the planner wrote itself (it cannot reach NATS or S3) says so: the
    # planner is running, so no hint that it may not be (services/planner/grpc_api.py).
    from_planner = details.startswith("the planner cannot reach ")
    if code in (codes.UNAVAILABLE, codes.DEADLINE_EXCEEDED) and server and not from_planner:
        hint = f"; is the planner running at {server}? (--server or ANIM_SERVER)"
    elif code in (codes.UNAUTHENTICATED, codes.PERMISSION_DENIED):
        hint = "; check ANIM_CLIENT_TOKEN and the ANIM_CLIENT_TLS_* files"
    status = BAD_INPUT if code == codes.INVALID_ARGUMENT else FAILED
    return Explained(f"{code.name}: {details}{hint}", status)


def _hub(exc: BaseException, args: argparse.Namespace | None) -> Explained | None:
    """Hugging Face Hub failures, raised directly or wrapped by transformers/diffusers."""
    mod = "huggingface_hub.errors"
    gated = _classes(mod, "GatedRepoError")
    missing_repo = _classes(mod, "RepositoryNotFoundError")
    missing_revision = _classes(mod, "RevisionNotFoundError")
    offline = _classes(mod, "OfflineModeIsEnabled", "LocalEntryNotFoundError")
    http = _classes(mod, "HfHubHTTPError")
    if not http or not isinstance(exc, OSError):  # hub errors and their wrappers
        return None
    for cause in _chain(exc):
        if gated and isinstance(cause, gated):
            hint = "the model is gated: accept its terms on its hub page and set HF_TOKEN"
        elif missing_repo and isinstance(cause, missing_repo):
            hint = "check the model id; a private repository needs HF_TOKEN"
        elif missing_revision and isinstance(cause, missing_revision):
            hint = "check the revision"
        elif offline and isinstance(cause, offline):
            hint = _FETCH_HINT
        elif isinstance(cause, http):
            hint = "the Hugging Face Hub did not answer as expected; try again later"
        else:
            continue
        message = str(exc) or type(exc).__name__
        # Messages of this package carry their own advice already.
        if "HF_HOME" in message or "HF_TOKEN" in message:
            return Explained(message)
        return Explained(f"{message}; {hint}")
    return None


def _nats(exc: BaseException, args: argparse.Namespace | None) -> Explained | None:
    bus_missing = _classes("ghibli_anim.runtime.bus.consumer", "BusNotInitialized")
    if bus_missing and isinstance(exc, bus_missing):
        return Explained(f"{exc}; run `ghibli-anim bus init` first")
    js_missing = _classes("nats.js.errors", "NotFoundError")
    if js_missing and isinstance(exc, js_missing):
        return Explained(f"{exc}; the bus is not set up: run `ghibli-anim bus init` first")
    no_js = _classes("nats.js.errors", "ServiceUnavailableError")
    if no_js and isinstance(exc, no_js):
        return Explained(f"{exc}; is JetStream enabled on the NATS server (nats-server -js)?")
    auth = _classes("nats.errors", "AuthorizationError")
    if auth and isinstance(exc, auth):
        return Explained(f"{exc}; check ANIM_NATS_USER and ANIM_NATS_PASSWORD, or ANIM_NATS_CREDS")
    errors = _classes("nats.errors", "Error") + _classes("nats.js.errors", "Error")
    if errors and isinstance(exc, errors):
        url = getattr(args, "url", None) or os.environ.get("ANIM_NATS_URL", "")
        where = f" at {url}" if url else ""
        return Explained(f"NATS: {exc}; is nats-server running{where}? (ANIM_NATS_URL)")
    return None


def _store(exc: BaseException, args: argparse.Namespace | None) -> Explained | None:
    mod = "ghibli_anim.runtime.store.base"
    auth = _classes(mod, "StoreAuthError")
    if auth and isinstance(exc, auth):
        return Explained(f"{exc}; check ANIM_S3_ACCESS_KEY and ANIM_S3_SECRET_KEY")
    unavailable = _classes(mod, "StoreUnavailable")
    if unavailable and isinstance(exc, unavailable):
        return Explained(f"{exc}; is the S3 server running at ANIM_S3_ENDPOINT?")
    other = _classes(mod, "StoreError")
    if other and isinstance(exc, other):
        return Explained(str(exc))
    return None


# RuntimeErrors of this package that report the environment, not a bug; their
# messages name what failed.
_OWN_RUNTIME_ERRORS = (
    ("ghibli_anim.runtime.client", "DownloadError"),
    ("ghibli_anim.runtime.processes", "LauncherError"),
    ("ghibli_anim.runtime.service", "CannotServe"),
    ("ghibli_anim.services.web.service", "BindError"),
    ("ghibli_anim.services.planner.chat_backends", "LLMError"),
)


def _own(exc: BaseException, args: argparse.Namespace | None) -> Explained | None:
    known = tuple(c for c in (_class(m, n) for m, n in _OWN_RUNTIME_ERRORS) if c is not None)
    if known and isinstance(exc, known):
        return Explained(str(exc))
    return None


def _memory(exc: BaseException, args: argparse.Namespace | None) -> Explained | None:
    oom = (MemoryError, *_classes("torch", "OutOfMemoryError"))
    if isinstance(exc, oom):
        first = (str(exc).splitlines() or [""])[0]
        return Explained(
            f"out of memory{f' ({first})' if first else ''}; try smaller sizes or batches "
            "(--width/--height, --batch-size, --resolution) or --low-vram"
        )
    return None


def _os(exc: BaseException, args: argparse.Namespace | None) -> Explained | None:
    if not isinstance(exc, OSError):
        return None
    name = exc.filename
    if isinstance(exc, PermissionError) and name is not None:
        return Explained(
            f"permission denied: {name}; choose a folder you can write to, or change "
            "its permissions"
        )
    if isinstance(exc, FileNotFoundError) and name is not None:
        return Explained(f"no such file or folder: {name}")
    if exc.errno == errno.ENOSPC:
        return Explained(f"no space left on the device{f' for {name}' if name else ''}")
    if name is not None and exc.strerror:
        return Explained(f"{name}: {exc.strerror}")
    return Explained(str(exc) or type(exc).__name__)


def _value(exc: BaseException, args: argparse.Namespace | None) -> Explained | None:
    if isinstance(exc, ValueError):  # validation errors name the field
        return Explained(str(exc), BAD_INPUT)
    if isinstance(exc, FloatingPointError):  # training diverged: the message says how
        return Explained(str(exc))
    return None


_RULES: tuple[Callable[[BaseException, argparse.Namespace | None], Explained | None], ...] = (
    _grpc,
    _hub,
    _nats,
    _store,
    _own,
    _memory,
    _os,
    _value,
)
