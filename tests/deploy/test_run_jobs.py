"""deploy/k8s/run-jobs.sh, the scripted step that replaces an overlay's one-off Jobs.

There is no cluster here, so the script runs with a stand-in ``kubectl`` first on PATH:
``kubectl kustomize`` is the real one (the same build the tests render with), every
other call is recorded with a copy of the manifest it was given. What is checked is
what the script asks of the cluster, in order: delete the previous run's init Jobs
(and nothing else), apply the freshly built Jobs, wait for them to complete.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml
from support.deploy import INIT_SELECTOR, OVERLAYS, RUN_JOBS, kustomize, venv_tool

pytestmark = pytest.mark.timeout(120)

STAND_IN = """#!/bin/sh
if [ "$1" = kustomize ]; then exec "{real}" "$@"; fi
n=$(($(find "{calls}" -name '*.args' | wc -l) + 1))
printf '%s\\n' "$*" > "{calls}/$n.args"
prev=
for arg in "$@"; do
    if [ "$prev" = -f ]; then cp "$arg" "{calls}/$n.yaml"; fi
    prev=$arg
done
"""


def run_jobs(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], list]:
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    calls.mkdir()
    kubectl = bin_dir / "kubectl"
    kubectl.write_text(STAND_IN.format(real=venv_tool("kubectl"), calls=calls))
    kubectl.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        ["sh", str(RUN_JOBS), *args], env=env, capture_output=True, text=True, timeout=60
    )
    recorded = []
    for n in range(1, len(list(calls.glob("*.args"))) + 1):
        argv = (calls / f"{n}.args").read_text().split()
        manifest = calls / f"{n}.yaml"
        docs = list(yaml.safe_load_all(manifest.read_text())) if manifest.exists() else None
        recorded.append((argv, docs))
    return result, recorded


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deletes_the_previous_run_applies_and_waits(overlay: str, tmp_path: Path) -> None:
    result, calls = run_jobs(tmp_path, overlay, "5m")
    assert result.returncode == 0, result.stderr
    built = [d for d in yaml.safe_load_all(kustomize(f"overlays/{overlay}/jobs")) if d]
    selector = "=".join(INIT_SELECTOR)
    assert [argv for argv, _ in calls] == [
        ["delete", "-f", argv_file(calls[0]), "--selector", selector, "--ignore-not-found",
         "--wait=true"],
        ["apply", "-f", argv_file(calls[1])],
        ["wait", "-f", argv_file(calls[2]), "--selector", selector,
         "--for=condition=complete", "--timeout=5m"],
    ]  # fmt: skip
    for _, docs in calls:
        assert docs == built  # the overlay's jobs/ kustomization, as kubectl builds it
    # What the selector picks out of that manifest: the init Jobs, nothing else (the
    # ConfigMap they share with the running services is never deleted).
    key, value = INIT_SELECTOR
    picked = [d for d in built if d["metadata"].get("labels", {}).get(key) == value]
    assert picked and {d["kind"] for d in picked} == {"Job"}
    assert "bus-init" in {d["metadata"]["name"] for d in picked}


def argv_file(call: tuple[list[str], object]) -> str:
    argv, _ = call
    return argv[argv.index("-f") + 1]


def test_an_unknown_overlay_is_refused_before_touching_the_cluster(tmp_path: Path) -> None:
    result, calls = run_jobs(tmp_path, "prod")
    assert result.returncode == 2
    assert "no overlay 'prod'" in result.stderr
    assert calls == []


def test_the_overlay_is_required(tmp_path: Path) -> None:
    result, calls = run_jobs(tmp_path)
    assert result.returncode != 0 and "usage: run-jobs.sh OVERLAY" in result.stderr
    assert calls == []
