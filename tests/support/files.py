"""Small helpers over files and processes: a folder's bytes, a Python snippet in a fresh
interpreter (for what must hold in a process that imported nothing yet, e.g. no torch)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by its relative path, with its bytes."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def run_python(code: str, env: dict[str, str] | None = None) -> str:
    """Run ``code`` in a new interpreter (``env`` added to this one's); its stdout. The
    test fails with the child's stderr when it exits with an error."""
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout
