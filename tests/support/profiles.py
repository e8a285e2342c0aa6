"""A profiles file of the tests' own, and the settings of a process that reads it."""

from __future__ import annotations

from pathlib import Path

from ghibli_anim.contracts import config
from ghibli_anim.contracts.config import Settings

PROFILE = """
[profiles.mine]
base_model = "{base}"
scheduler = "ddim"
width = 96
height = 64
steps = 12
guidance = 7
strength = 0.3
"""


def client_settings(tmp_path: Path, **extra: str) -> Settings:
    """Settings with a model cache in ``tmp_path`` and the local store; ``extra`` adds."""
    env = {"ANIM_CACHE_DIR": str(tmp_path / "cache"), "ANIM_STORE": "local", **extra}
    return config.load("client", env)


def file_settings(tmp_path: Path, text: str, **extra: str) -> Settings:
    """``client_settings`` with ``text`` as the profiles file (ANIM_PROFILES_FILE)."""
    path = tmp_path / "profiles.toml"
    path.write_text(text)
    return client_settings(tmp_path, ANIM_PROFILES_FILE=str(path), **extra)


def half_settings(cache_dir: Path) -> Settings:
    """Float16 on the CPU, tiny models cached in ``cache_dir``, the local store."""
    env = {
        "ANIM_CACHE_DIR": str(cache_dir),
        "ANIM_STORE": "local",
        "ANIM_DEVICE": "cpu",
        "ANIM_DTYPE": "float16",
    }
    return config.load("client", env)
