"""`ghibli-anim up-local` killed however it ends leaves no process behind: NATS,
SeaweedFS and every service die with it (runtime/processes.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from support.processes import descendants, wait_until_gone

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")


def test_sigkill_of_up_local_leaves_no_child(tmp_path, tiny_cache_dir) -> None:
    env = {
        **os.environ,
        "ANIM_CACHE_DIR": str(tiny_cache_dir),
        "ANIM_PROFILE": "tiny",
        "OMP_NUM_THREADS": "1",
    }
    launcher = subprocess.Popen(
        [sys.executable, "-m", "ghibli_anim.cli", "up-local", "--dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 180
        seen = []
        for line in launcher.stdout:
            seen.append(line)
            if "Ctrl-C stops everything." in line or time.monotonic() > deadline:
                break
        assert "Ctrl-C stops everything." in seen[-1], "".join(seen)[-3000:]
        children = descendants(launcher.pid)
        # nats-server, SeaweedFS, planner, renderer, depth, assembler, web.
        assert len(children) >= 7, children
        launcher.send_signal(signal.SIGKILL)
        launcher.wait(timeout=10)
        assert wait_until_gone(children, timeout=10) == set()
    finally:
        launcher.kill()
        launcher.wait()
