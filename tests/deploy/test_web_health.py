"""The web page's health checks, run for real: compose's healthcheck command and
the Kubernetes probes' paths against ``run_web`` (what ``ghibli-anim serve web``
runs) in front of a grpc.health.v1 server standing in for the planner (the
page's /readyz asks the planner nothing else)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from grpc_health.v1 import health_pb2
from support.deploy import compose, find, objects

from ghibli_anim.contracts import config
from ghibli_anim.services.web.service import run_web

pytestmark = pytest.mark.timeout(120)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def web_port(health_server) -> Iterator[int]:
    """The web service on a free loopback port, in a thread with its own event loop."""
    target, _ = health_server
    settings = config.load(
        "web",
        {
            "ANIM_PLANNER_TARGET": target,
            "ANIM_WEB_HOST": "127.0.0.1",
            "ANIM_WEB_PORT": "0",
            "ANIM_DRAIN_S": "5",
        },
    )
    bound = threading.Event()
    state: dict[str, Any] = {}

    def ready(port: int) -> None:
        state["port"] = port
        bound.set()

    async def main() -> None:
        state["loop"] = asyncio.get_running_loop()
        state["stop"] = asyncio.Event()
        await run_web(settings, state["stop"], ready=ready)

    def serve() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # reported by the test instead of a silent thread
            state["error"] = exc
            bound.set()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert bound.wait(60), "the web service did not bind"
    assert "error" not in state, state.get("error")
    try:
        yield state["port"]
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(60)
        assert not thread.is_alive(), "the web service did not stop"


def compose_check(port: int) -> subprocess.CompletedProcess[str]:
    """Compose's healthcheck command, aimed at ``port`` instead of the container's 8080."""
    test = compose()["services"]["web"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    address = f"127.0.0.1:{config.WEB_PORT}"
    assert address in test[3]
    code = test[3].replace(address, f"127.0.0.1:{port}")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)


def http_status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_compose_healthcheck_passes_only_while_the_planner_serves(
    health_server, web_port: int
) -> None:
    _, servicer = health_server
    servicer.set("", SERVING)
    result = compose_check(web_port)
    assert result.returncode == 0, result.stderr
    servicer.set("", NOT_SERVING)
    assert compose_check(web_port).returncode != 0


@pytest.mark.parametrize("overlay", ["dev", "gpu"])
def test_kubernetes_probes_ask_the_right_paths(health_server, web_port: int, overlay) -> None:
    (container,) = find(objects(f"overlays/{overlay}"), "Deployment", "web")["spec"]["template"][
        "spec"
    ]["containers"]
    ready = container["readinessProbe"]["httpGet"]["path"]
    alive = container["livenessProbe"]["httpGet"]["path"]
    _, servicer = health_server
    servicer.set("", SERVING)
    assert http_status(web_port, ready) == 200
    assert http_status(web_port, alive) == 200
    # A planner outage makes the page unready, never restarts it.
    servicer.set("", NOT_SERVING)
    assert http_status(web_port, ready) == 503
    assert http_status(web_port, alive) == 200
