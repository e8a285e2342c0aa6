"""bench/store_stat.py: a small run prints both ways of stating a job's files and their ratio."""

from __future__ import annotations

import re

from support.bench import run_bench


def test_small_run_prints_both_ways_and_the_ratio() -> None:
    proc = run_bench("store_stat.py", "--frames", "4", "--reps", "2", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # 4 frames: a frame, a record and a depth map each, then the plan, manifest and gif.
    assert "a completed job of 4 frames: 15 files (median of 2)" in proc.stdout
    for way in (r"one after another", r"stat_many \(8 in flight\)"):
        assert re.search(rf"^{way} +[\d.]+ ms +\d+ us a file$", proc.stdout, re.M), way
    assert re.search(r"^ratio \(one after another / stat_many\): [\d.]+$", proc.stdout, re.M)


def test_a_run_through_the_delaying_relay() -> None:
    proc = run_bench(
        "store_stat.py", "--frames", "2", "--reps", "1", "--latency-ms", "5", timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "through a relay that holds each chunk 5 ms each way" in proc.stdout
    # Every HEAD waits at least one round trip (10 ms) through the relay.
    one_by_one = re.search(r"^one after another +[\d.]+ ms +(\d+) us a file$", proc.stdout, re.M)
    assert one_by_one is not None and int(one_by_one.group(1)) >= 10_000, proc.stdout
    assert proc.stderr == ""  # the relay stops without a word


def test_reps_below_one_is_refused_by_name() -> None:
    proc = run_bench("store_stat.py", "--reps", "0", timeout=60)
    assert proc.returncode == 2 and "--reps: must be at least 1, got 0" in proc.stderr
    proc = run_bench("store_stat.py", "--latency-ms", "-1", timeout=60)
    assert proc.returncode == 2 and "--latency-ms: must be in 0..1000, got -1" in proc.stderr
