"""Two checkouts' chain cost side by side: ``bench/chain_host.py`` from each, alternating.

The development machine's speed drifts by tens of per cent within an hour (README, "Read them
with the machine's drift in mind"): far more than most changes move the chain's time per
frame. So a change is judged only against its base measured in the same sitting,
alternately. This script runs ``bench/chain_host.py --arms distributed`` from another
checkout (the base, e.g. a ``git worktree`` of an earlier commit) and from this one, in ABBA
order (base then this, this then base, ...) so that a steady drift weighs on both alike, and
prints each pair's ``host_ms_per_frame`` and total CPU time per frame, both medians, in how
many pairs this checkout was faster, and the median of the differences (base minus this).

    git worktree add /tmp/base COMMIT
    python bench/interleave.py /tmp/base [--pairs 6] [--frames 24] [--size 512]

Each run uses its checkout's code: it runs with that checkout as working directory and
``PYTHONPATH``, so the services it starts (``python -m``) import that checkout's package. A
base whose ``chain_host.py`` has no ``--no-breakdown`` also runs its traced arm first (slower;
the figure is the same untraced run). Last line:
``interleaved base_ms=<median> this_ms=<median> median_diff_ms=<median of base - this>``.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 900.0
_FIGURE = re.compile(r"^host_ms_per_frame=([\d.]+) p95=[\d.]+$", re.M)
_CPU = re.compile(r"^ +total; over \d+ cores +([\d.]+) +[\d.]+$", re.M)


@dataclass(frozen=True)
class Figure:
    ms: float
    """``host_ms_per_frame`` of the untraced distributed arm."""
    cpu_ms: float
    """CPU time per frame of every process of its stack together."""


def _script(checkout: Path) -> Path:
    return checkout / "bench" / "chain_host.py"


def _chain_host(checkout: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(_script(checkout)), *args],
        cwd=checkout,
        env={**os.environ, "PYTHONPATH": str(checkout)},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )


def measure(checkout: Path, frames: int, size: int) -> Figure:
    """One untraced run of the distributed arm from ``checkout``."""
    args = ["--arms", "distributed", "--frames", str(frames), "--size", str(size)]
    if "--no-breakdown" in _chain_host(checkout, "--help").stdout:
        args.append("--no-breakdown")
    proc = _chain_host(checkout, *args)
    figures, cpu = _FIGURE.findall(proc.stdout), _CPU.findall(proc.stdout)
    if proc.returncode != 0 or not figures or not cpu:
        raise SystemExit(
            f"bench/chain_host.py failed in {checkout} (exit {proc.returncode}):\n"
            f"{proc.stderr[-3000:]}"
        )
    return Figure(float(figures[-1]), float(cpu[-1]))  # the untraced run reports last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path, help="the other checkout (e.g. a git worktree)")
    parser.add_argument("--pairs", type=int, default=6, help="runs of each checkout")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--size", type=int, default=512, help="frame width and height")
    args = parser.parse_args()
    base = args.base.resolve()
    if not _script(base).is_file():
        parser.error(f"base: {base} is not a checkout of this project (no bench/chain_host.py)")
    if args.pairs < 1:
        parser.error(f"--pairs: must be at least 1, got {args.pairs}")
    if args.frames < 2:
        parser.error(f"--frames: must be at least 2, got {args.frames}")
    print(f"base: {base}\nthis: {HERE}\n")
    print(f"{'pair':>4}  {'base ms':>8} {'CPU':>6}  {'this ms':>8} {'CPU':>6}  {'base - this':>11}")
    pairs: list[tuple[Figure, Figure]] = []
    for k in range(args.pairs):
        order = (base, HERE) if k % 2 == 0 else (HERE, base)
        got = {checkout: measure(checkout, args.frames, args.size) for checkout in order}
        before, after = got[base], got[HERE]
        pairs.append((before, after))
        print(
            f"{k + 1:>4}  {before.ms:>8.1f} {before.cpu_ms:>6.1f}  {after.ms:>8.1f}"
            f" {after.cpu_ms:>6.1f}  {before.ms - after.ms:>11.1f}",
            flush=True,
        )
    base_ms = statistics.median(b.ms for b, _ in pairs)
    this_ms = statistics.median(t.ms for _, t in pairs)
    diff = statistics.median(b.ms - t.ms for b, t in pairs)
    faster = sum(t.ms < b.ms for b, t in pairs)
    cpu_diff = statistics.median(b.cpu_ms - t.cpu_ms for b, t in pairs)
    print(
        f"\nmedians: base {base_ms:.1f} ms, this {this_ms:.1f} ms; this faster in {faster} of "
        f"{len(pairs)} pairs; CPU time a frame, base minus this: {cpu_diff:.1f} ms (median)"
    )
    print(f"interleaved base_ms={base_ms:.1f} this_ms={this_ms:.1f} median_diff_ms={diff:.1f}")


if __name__ == "__main__":
    main()
