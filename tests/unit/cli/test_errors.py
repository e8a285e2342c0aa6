"""cli/errors.py: which failures are expected (one line, an exit status) and which are
bugs (None: the traceback shows). The exceptions are the libraries' own classes."""

from __future__ import annotations

import argparse
import errno

import grpc
import huggingface_hub.errors as hub
import nats.errors
import pytest

from ghibli_anim.cli import errors
from ghibli_anim.cli import main as cli


@pytest.mark.parametrize(
    "bug", [KeyError("x"), AttributeError("x"), TypeError("x"), RuntimeError()]
)
def test_a_bug_is_not_explained(bug: Exception) -> None:
    assert errors.explain(bug) is None


def test_bad_input_is_status_2_on_one_line() -> None:
    found = errors.explain(ValueError("frames: must be\nan integer  in 1..120"))
    assert found == errors.Explained("frames: must be an integer in 1..120", 2)


def test_a_wrapped_hub_error_gets_what_to_do() -> None:
    try:
        try:
            raise hub.LocalEntryNotFoundError("Cannot find the requested files in the cache.")
        except OSError as exc:
            raise OSError("base_model: cannot download 'a/b'") from exc
    except OSError as exc:
        found = errors.explain(exc)
    assert found is not None and found.status == 1
    assert found.message.startswith("base_model: cannot download 'a/b'; with no network, ")
    assert "`ghibli-anim models fetch PROFILE`" in found.message


def test_advice_is_not_given_twice() -> None:
    text = "profile.tokenizer: cannot fetch 'a/b/tokenizer'; fill HF_HOME first"
    try:
        try:
            raise hub.OfflineModeIsEnabled("offline")
        except OSError as exc:
            raise OSError(text) from exc
    except OSError as exc:
        assert errors.explain(exc) == errors.Explained(text, 1)


def test_grpc_codes() -> None:
    def rpc_error(code: grpc.StatusCode, details: str = "why") -> grpc.aio.AioRpcError:
        return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)

    args = argparse.Namespace(server="h:1")
    assert errors.explain(rpc_error(grpc.StatusCode.INVALID_ARGUMENT), args) == (
        errors.Explained("INVALID_ARGUMENT: why", 2)
    )
    unavailable = errors.explain(rpc_error(grpc.StatusCode.UNAVAILABLE), args)
    assert unavailable == errors.Explained(
        "UNAVAILABLE: why; is the planner running at h:1? (--server or ANIM_SERVER)", 1
    )
    # The planner answered: it is running, what it needs is not.
    planner = "the planner cannot reach NATS (TimeoutError); try again shortly"
    assert errors.explain(rpc_error(grpc.StatusCode.UNAVAILABLE, planner), args) == (
        errors.Explained(f"UNAVAILABLE: {planner}", 1)
    )
    denied = errors.explain(rpc_error(grpc.StatusCode.UNAUTHENTICATED), args)
    assert denied is not None and "ANIM_CLIENT_TOKEN" in denied.message


def test_nats_names_the_url() -> None:
    found = errors.explain(nats.errors.NoServersError(), argparse.Namespace(url="nats://h:4"))
    assert found is not None and found.status == 1
    assert found.message.endswith("is nats-server running at nats://h:4? (ANIM_NATS_URL)")


def test_files_and_disks() -> None:
    denied = PermissionError(errno.EACCES, "Permission denied", "/srv/out")
    assert errors.explain(denied) == errors.Explained(
        "permission denied: /srv/out; choose a folder you can write to, or change its permissions",
        1,
    )
    full = OSError(errno.ENOSPC, "No space left on device", "/srv/out/a.png")
    assert errors.explain(full) == errors.Explained(
        "no space left on the device for /srv/out/a.png", 1
    )
    missing = FileNotFoundError(errno.ENOENT, "No such file or directory", "/srv/x")
    assert errors.explain(missing) == errors.Explained("no such file or folder: /srv/x", 1)


def test_debug_shows_the_traceback_of_an_expected_failure(monkeypatch, capsys) -> None:
    monkeypatch.setenv("ANIM_LOG_LEVEL", "DEBUG")
    assert cli.main(["plan", "a dragon", "--frames", "0", "--profile", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert err.splitlines()[-1] == "error: frames: must be an integer in 1..120, got 0"
