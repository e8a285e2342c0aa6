"""bench/gpu_frame.py: its CPU smoke run with the tiny models prints every line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_gpu_benchmark_smoke_run_on_cpu() -> None:
    """bench/gpu_frame.py --tiny: every line prints with a floor and a ratio."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "gpu_frame.py"),
            "--tiny",
            "--no-compile",
            "--steps",
            "10",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("(")]
    assert [line[:3] for line in lines[:5]] == ["(a)", "(b)", "(c)", "(d)", "(e)"]
    for line in lines[:5]:
        assert " ms   floor " in line and " TFLOP" in line and "x" in line
    assert "1 denoising steps" in lines[4]  # the fast preset: 4 steps raised to 7, one runs
    assert "10 denoising steps" in lines[0] and "1 denoising steps" in lines[1]  # 10 x 0.15
