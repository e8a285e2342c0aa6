"""Settings of a process whose ANIM_MODEL_ROOTS is the ``models`` fixture's folder
(tests/unit/conftest.py): the tiny models as local paths and a single-file export."""

from __future__ import annotations

from pathlib import Path

from ghibli_anim.contracts import config
from ghibli_anim.contracts.config import Settings


def roots_settings(models: Path, tiny_cache_dir: Path, **extra: str) -> Settings:
    """CPU, float32 settings with ``models`` as the model root; ``models/profiles.toml``
    is the profiles file when it exists; ``extra`` adds or overrides variables."""
    profiles = models / "profiles.toml"
    env = {
        "ANIM_CACHE_DIR": str(tiny_cache_dir),
        "ANIM_MODEL_ROOTS": str(models),
        "ANIM_DEVICE": "cpu",
        "ANIM_DTYPE": "float32",
        "ANIM_STORE": "local",
        **({"ANIM_PROFILES_FILE": str(profiles)} if profiles.exists() else {}),
        **extra,
    }
    return config.load("client", env)
