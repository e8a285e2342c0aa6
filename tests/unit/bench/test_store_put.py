"""bench/store_put.py: a small run prints each kind's PUT costs and the three side by side."""

from __future__ import annotations

import re

from support.bench import run_bench


def test_small_run_prints_every_kind_and_the_frame_total() -> None:
    proc = run_bench("store_put.py", "--frames", "3", "--size", "64", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for kind in ("frame", "depth map", "record"):
        # KiB, wall, client CPU and server CPU: four figures per kind.
        assert re.search(rf"^{kind} +(?:[\d.]+ +){{3}}[\d.]+$", proc.stdout, re.M), kind
    assert re.search(r"^the three side by side: [\d.]+ ms a frame \(median\)$", proc.stdout, re.M)


def test_frames_below_one_is_refused_by_name() -> None:
    proc = run_bench("store_put.py", "--frames", "0", timeout=60)
    assert proc.returncode == 2 and "--frames: must be at least 1, got 0" in proc.stderr
