"""cli/generate.py: what `generate` says before a real profile renders on the CPU.

torch here is a CPU build (no CUDA device, really); nvidia-smi is a stand-in script first on
PATH (tests/support/nvidia_smi.py): no NVIDIA driver can be installed here.
"""

from __future__ import annotations

import pytest
import torch
from support.nvidia_smi import fake_nvidia_smi, without_nvidia_smi

from ghibli_anim.cli import generate

SLOW = (
    "Stable Diffusion 1.5 on a CPU takes minutes per frame (try --steps 20 or a smaller "
    "--width/--height)\n"
)

pytestmark = pytest.mark.skipif(
    torch.cuda.is_available() or torch.backends.mps.is_available(), reason="needs no GPU"
)


def test_a_gpu_this_torch_cannot_use_is_named(tmp_path, monkeypatch, capsys):
    fake_nvidia_smi(tmp_path, monkeypatch, "560.35.03", (("NVIDIA GeForce RTX 4090", "8.9"),))
    generate._warn_if_slow("sd15-ghibli")
    assert capsys.readouterr().err == (
        "profile sd15-ghibli: nvidia-smi lists NVIDIA GeForce RTX 4090 (sm_89, driver 560.35.03), "
        f"but torch {torch.__version__} is a CPU build (torch.version.cuda is None); "
        "`rm -rf .venv && make setup` installs the torch build for this driver and GPU (or, "
        "after `rm -rf .venv`, `make setup TORCH_INDEX=https://download.pytorch.org/whl/cu126`); "
        + SLOW
    )


def test_without_an_nvidia_gpu(tmp_path, monkeypatch, capsys):
    without_nvidia_smi(tmp_path, monkeypatch)
    generate._warn_if_slow("sd15-ghibli")
    assert capsys.readouterr().err == "profile sd15-ghibli: no GPU found; " + SLOW
