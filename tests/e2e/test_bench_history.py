"""bench/history.py runs end to end on a small history: every figure prints, and a burst of
one client's creates is admitted up to the cap exactly (the rest refused, none failing)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_history_benchmark_small_run() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["--sizes", "0,120", "--samples", "3", "--jobs", "1", "--burst", "24"]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "history.py"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    rows = [line for line in lines if re.match(r"^\| [\d,]+ \|", line)]
    assert [row.split("|")[1].strip() for row in rows] == ["0", "120"]
    for row in rows:  # every figure printed, timers and filtered listings included
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 8 and all(re.fullmatch(r"[\d.,/ -]+", c) for c in cells), row
    assert "24 concurrent creates of one client (cap 16) with 120 jobs: 16 admitted, 8 refused" in (
        proc.stdout
    )
    assert ", 0 errors" in proc.stdout
    assert re.fullmatch(
        r"create_p95_ms_120=[\d.]+ list_p95_ms_120=[\d.]+ e2e_ratio_120=[\d.]+", lines[-1]
    ), lines[-1]
