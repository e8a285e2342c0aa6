"""devtools/procfs.py: CPU time and descendants as /proc tells them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ghibli_anim.devtools import procfs


def test_cpu_seconds_counts_this_process_and_grows_with_work() -> None:
    before = procfs.cpu_seconds(os.getpid())
    mine = os.times()
    assert abs(before - (mine.user + mine.system)) < 0.05  # the same clock, in ticks
    spin_until = before + 0.2
    while procfs.cpu_seconds(os.getpid()) < spin_until:
        sum(range(10_000))
    assert procfs.cpu_seconds(os.getpid()) >= spin_until


def test_cpu_seconds_and_descendants_of_a_child() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in procfs.descendants(os.getpid())
        assert 0 <= procfs.cpu_seconds(child.pid) < 5
    finally:
        child.kill()
        child.wait()
    assert child.pid not in procfs.descendants(os.getpid())
    with pytest.raises(OSError):
        procfs.cpu_seconds(child.pid)  # gone and reaped
