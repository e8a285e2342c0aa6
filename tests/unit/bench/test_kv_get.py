"""bench/kv_get.py: a small run prints both ways of reading a job's state and their ratio."""

from __future__ import annotations

import re

from support.bench import run_bench


def test_small_run_prints_both_ways_for_each_size() -> None:
    proc = run_bench("kv_get.py", "--frames", "2,5", "--reads", "3", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for frames in (2, 5):
        for way in ("MSG.GET API", "direct get"):
            # KiB, wall, client CPU and server CPU.
            row = rf"^{frames} frames, {way} +(?:[\d.]+ +){{3}}[\d.]+$"
            assert re.search(row, proc.stdout, re.M), (frames, way, proc.stdout)
        ratio = rf"^{frames} frames: ratio of wall times \(API / direct\): [\d.]+$"
        assert re.search(ratio, proc.stdout, re.M)


def test_bad_sizes_are_refused_by_name() -> None:
    proc = run_bench("kv_get.py", "--frames", "24,x", timeout=60)
    assert (
        proc.returncode == 2 and "--frames: expected counts like 24,120, got '24,x'" in proc.stderr
    )
    proc = run_bench("kv_get.py", "--frames", "0", timeout=60)
    assert proc.returncode == 2 and "--frames: each count must be at least 1" in proc.stderr
