"""Embedded runs in a test's own ANIM_RUNS_DIR, for the tests of forks and extensions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ghibli_anim.cli import main as cli


def use_runs_dir(
    tmp_path: Path, tiny_cache_dir: Path, monkeypatch: pytest.MonkeyPatch, **extra: str
) -> Path:
    """Make ``generate`` run on the tiny models on the CPU, its runs in a new folder of
    ``tmp_path`` (returned); ``extra`` adds variables."""
    folder = tmp_path / "runs"
    env = {
        "ANIM_CACHE_DIR": str(tiny_cache_dir),
        "ANIM_STORE": "local",
        "ANIM_DEVICE": "cpu",
        "ANIM_DTYPE": "float32",
        "ANIM_RUNS_DIR": str(folder),
        "ANIM_PROFILE": "tiny",
        "ANIM_LOG_LEVEL": "WARNING",
        **extra,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return folder


def generate(runs: Path, *args: str) -> tuple[int, str | None]:
    """Run generate; its exit status and the new run folder's job id (None if none)."""
    before = set(p.name for p in runs.iterdir()) if runs.exists() else set()
    rc = cli.main(["generate", "--quiet", *args])
    new = sorted(set(p.name for p in runs.iterdir()) - before) if runs.exists() else []
    assert len(new) <= 1
    return rc, (new[0] if new else None)


def write_board(path: Path, shots: list[dict]) -> Path:
    """A storyboard file (for ``--plan``) of ``shots``."""
    board = {"version": 1, "title": "paper boat", "style": "ghibli style", "frames": shots}
    path.write_text(json.dumps(board), encoding="utf-8")
    return path
