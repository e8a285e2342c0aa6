"""`ghibli-anim serve` (cli/serve.py): a service without a required variable names it and
exits 2."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(120)


def test_serve_web_names_a_missing_variable(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANIM_")}
    done = subprocess.run(
        [sys.executable, "-m", "ghibli_anim.cli", "serve", "web"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: ANIM_PLANNER_TARGET: required for web but not set")


def test_services_and_the_embedded_stack_use_short_gil_switches(monkeypatch):
    """A service's event loop must not wait Python's default 5 ms for the GIL behind a
    worker thread on every hop of a frame's path (runtime/service.py)."""
    from ghibli_anim.cli import generate, serve
    from ghibli_anim.runtime import service

    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        service.use_short_gil_switches()
        assert sys.getswitchinterval() == pytest.approx(service.GIL_SWITCH_INTERVAL_S)
        assert service.GIL_SWITCH_INTERVAL_S <= 0.001
        # Both set it first, before their settings are read (stopped there).
        stop = RuntimeError("stopped at the settings")

        def stopped(*_args, **_kwargs):
            raise stop

        monkeypatch.setattr(serve.config, "load", stopped)
        monkeypatch.setattr(generate.config, "load", stopped)
        monkeypatch.setattr(generate, "_renderer_env", lambda _args: None)
        for start in (lambda: serve.serve("planner"), lambda: generate.run(None)):
            sys.setswitchinterval(0.005)
            with pytest.raises(RuntimeError, match="stopped at the settings"):
                start()
            assert sys.getswitchinterval() == pytest.approx(service.GIL_SWITCH_INTERVAL_S)
    finally:
        sys.setswitchinterval(before)
