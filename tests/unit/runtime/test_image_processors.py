"""runtime/image_processors.py: renderer, depth and tiny-model runs say nothing about
torchvision (which this package does not install)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(300)


def _torchvision_installed() -> bool:
    from transformers.utils import is_torchvision_available

    return is_torchvision_available()


def test_diffusers_pipelines_import_without_a_torchvision_warning() -> None:
    if _torchvision_installed():
        pytest.skip("torchvision is installed: transformers has nothing to fall back from")
    code = (
        "from ghibli_anim.runtime import image_processors\n"
        "image_processors.use_pil_classes()\n"
        "import transformers\n"
        "from diffusers import StableDiffusionControlNetImg2ImgPipeline, StableDiffusionPipeline\n"
        "print(transformers.CLIPImageProcessor.__name__)\n"
        "print(transformers.SiglipImageProcessor.__name__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=240, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["CLIPImageProcessorPil", "SiglipImageProcessorPil"]
    assert "torchvision" not in done.stderr, done.stderr[-3000:]


def test_a_tiny_run_says_nothing_about_torchvision(tiny_cache_dir: Path, tmp_path: Path) -> None:
    """``generate --depth`` on the tiny models with DEBUG logs (which keep the libraries'
    warnings): it renders, estimates depth and assembles, and never mentions torchvision."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANIM_", "HF_"))}
    env.update(
        ANIM_CACHE_DIR=str(tiny_cache_dir),
        ANIM_RUNS_DIR=str(tmp_path / "runs"),
        ANIM_LOG_LEVEL="DEBUG",
        HF_HOME=str(tmp_path / "hf"),
        HF_HUB_OFFLINE="1",
    )
    argv = ["generate", "a lighthouse", "--frames", "2", "--profile", "tiny", "--depth"]
    done = subprocess.run(
        [sys.executable, "-m", "ghibli_anim.cli", *argv, "--steps", "2", "--quiet"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "torchvision" not in done.stderr, [
        line for line in done.stderr.splitlines() if "torchvision" in line
    ]
