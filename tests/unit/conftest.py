"""Fixtures of unit tests in several folders (tests/conftest.py has the shared servers)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ghibli_anim.cli import main as cli
from ghibli_anim.contracts.config import Settings
from ghibli_anim.contracts.model_refs import tiny_dir


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_cache_dir: Path, tiny_settings: Settings) -> Path:
    """ANIM_MODEL_ROOTS holding the tiny models and, from the CLI, their single-file export."""
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(tiny_dir(tiny_settings) / "pipeline", root / "tiny" / "pipeline")
    shutil.copytree(tiny_dir(tiny_settings) / "lcm_lora", root / "lcm")
    # Existing components are kept: only the single file is written.
    assert cli.main(["models", "tiny", str(root / "tiny"), "--single-file"]) == 0
    return root
