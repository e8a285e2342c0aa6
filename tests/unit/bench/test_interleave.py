"""bench/interleave.py: two checkouts' chain runs alternate, pair by pair, then the medians."""

from __future__ import annotations

import re

from support.bench import ROOT, run_bench


def test_a_pair_of_small_runs_prints_both_figures_and_the_difference() -> None:
    # This checkout against itself: the script only needs a second checkout's path.
    proc = run_bench(
        "interleave.py", str(ROOT), "--pairs", "1", "--frames", "3", "--size", "64", timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"^ +1 +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+ +-?[\d.]+$", proc.stdout, re.M)
    assert re.search(r"this faster in [01] of 1 pairs", proc.stdout)
    last = proc.stdout.strip().splitlines()[-1]
    assert re.fullmatch(
        r"interleaved base_ms=[\d.]+ this_ms=[\d.]+ median_diff_ms=-?[\d.]+", last
    ), last


def test_a_base_that_is_not_a_checkout_is_refused_by_name(tmp_path) -> None:
    proc = run_bench("interleave.py", str(tmp_path), timeout=60)
    assert proc.returncode == 2
    assert f"base: {tmp_path} is not a checkout of this project" in proc.stderr


def test_pairs_below_one_are_refused_by_name() -> None:
    proc = run_bench("interleave.py", str(ROOT), "--pairs", "0", timeout=60)
    assert proc.returncode == 2 and "--pairs: must be at least 1, got 0" in proc.stderr
