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
