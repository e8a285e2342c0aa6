"""`ghibli-anim probe`: the container health check. Exit 0 only for SERVING, from
a real gRPC server speaking grpc.health.v1."""

from __future__ import annotations

import subprocess
import sys

import pytest
from grpc_health.v1 import health_pb2

from ghibli_anim.cli import main as cli
from ghibli_anim.runtime.processes import free_port

pytestmark = pytest.mark.timeout(60)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_serving_exits_zero(health_server, capsys) -> None:
    target, servicer = health_server
    servicer.set("", SERVING)
    assert cli.main(["probe", "--target", target]) == 0
    assert capsys.readouterr().out.strip() == f"{target}: SERVING"


def test_not_serving_exits_one(health_server, capsys) -> None:
    target, servicer = health_server
    servicer.set("", NOT_SERVING)
    assert cli.main(["probe", "--target", target]) == 1
    assert "NOT_SERVING" in capsys.readouterr().out


def test_a_named_service(health_server) -> None:
    target, servicer = health_server
    servicer.set("", SERVING)
    servicer.set("animation.v1.AnimationService", NOT_SERVING)
    assert cli.main(["probe", "--target", target]) == 0
    assert (
        cli.main(["probe", "--target", target, "--service", "animation.v1.AnimationService"]) == 1
    )
    # A name the server does not know is NOT_FOUND: not healthy.
    assert cli.main(["probe", "--target", target, "--service", "no.Such"]) == 1


def test_nothing_listening_exits_one(capsys) -> None:
    target = f"127.0.0.1:{free_port()}"
    assert cli.main(["probe", "--target", target, "--timeout", "2"]) == 1
    assert "no health answer (UNAVAILABLE)" in capsys.readouterr().err


def test_default_target_is_this_services_port(health_server, monkeypatch) -> None:
    target, servicer = health_server
    servicer.set("", SERVING)
    monkeypatch.setenv("ANIM_GRPC_PORT", target.rsplit(":", 1)[1])
    assert cli.main(["probe"]) == 0


def test_bad_timeout_is_a_usage_error(capsys) -> None:
    assert cli.main(["probe", "--timeout", "0"]) == 2
    assert "--timeout" in capsys.readouterr().err


def test_the_installed_command_answers(health_server) -> None:
    # What the container's HEALTHCHECK runs: the console script's module.
    target, servicer = health_server
    servicer.set("", SERVING)
    ok = subprocess.run(
        [sys.executable, "-m", "ghibli_anim.cli", "probe", "--target", target],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ok.returncode == 0, ok.stderr
    servicer.set("", NOT_SERVING)
    bad = subprocess.run(
        [sys.executable, "-m", "ghibli_anim.cli", "probe", "--target", target],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 1
