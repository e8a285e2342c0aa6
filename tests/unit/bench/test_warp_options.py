"""bench/warp_options.py: both warp routes timed, and their bytes compared."""

from __future__ import annotations

import re

from support.bench import run_bench


def test_small_run_times_both_routes_and_finds_the_same_bytes() -> None:
    proc = run_bench("warp_options.py", "--size", "64", "--repeat", "3", timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for route in ("RGB frame, 3 channels", r"RGB frame as RGBA \(warp_camera\)", "depth map"):
        assert re.search(rf"^  {route}.* [\d.]+$", proc.stdout, re.M), route
    assert "  same bytes: yes" in proc.stdout
    assert re.search(r"^rgba_speedup=[\d.]+$", proc.stdout, re.M)


def test_a_size_below_eight_is_refused_by_name() -> None:
    proc = run_bench("warp_options.py", "--size", "4", timeout=60)
    assert proc.returncode == 2 and "--size: must be at least 8, got 4" in proc.stderr
