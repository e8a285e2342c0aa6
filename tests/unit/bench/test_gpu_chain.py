"""bench/gpu_chain.py: its CPU smoke run with tiny models prints every figure."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def _values(line: str) -> dict[str, float]:
    return {k: float(v) for k, v in re.findall(r"(\w+)=([0-9.]+)", line)}


def test_gpu_chain_smoke_run_on_cpu(tmp_path: Path) -> None:
    """bench/gpu_chain.py --tiny: the embedded chain and gpu_frame's (c) on the models it
    wrote, then every key=value line with numbers that agree with each other."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANIM_")}
    env |= {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_chain.py"), "--tiny"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("gpu_chain: tiny random weights, 64x64, float32, cpu")
    (c,) = [line for line in lines if line.startswith("(c) gpu_frame")]
    assert " ms   floor " in c and "1 denoising steps" in c  # 10 steps x 0.15
    (work,) = [line for line in lines if line.startswith("chain work: ")]
    # 4 frames: frames 1..3 are ControlNet img2img like (c), none re-rendered in float32.
    assert "3 controlnet_img2img frames of 1 denoising steps" in work
    assert work.endswith("float32 re-renders: 0")

    *_, chain, gpu, ratio, jobs = lines
    chain_v, gpu_v, ratio_v, jobs_v = map(_values, (chain, gpu, ratio, jobs))
    assert chain.startswith("chain_ms_per_frame=") and set(chain_v) == {
        "chain_ms_per_frame",
        "p95",
    }
    assert 0 < chain_v["chain_ms_per_frame"] <= chain_v["p95"]
    assert gpu.startswith("gpu_ms_per_frame=") and gpu_v["gpu_ms_per_frame"] > 0
    assert ratio.startswith("ratio=") and "chain/gpu" in ratio
    expected = chain_v["chain_ms_per_frame"] / gpu_v["gpu_ms_per_frame"]
    assert abs(ratio_v["ratio"] - expected) <= 0.01 * expected + 0.001
    assert jobs.startswith("jobs=4 concurrency=2 ")
    assert jobs_v["fps"] > 0 and jobs_v["one_job_fps"] > 0
    speedup = jobs_v["fps"] / jobs_v["one_job_fps"]
    assert abs(jobs_v["speedup"] - speedup) <= 0.02 * speedup + 0.01
