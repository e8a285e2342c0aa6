"""Which torch device and dtype a process computes on: ANIM_DEVICE and ANIM_DTYPE.

One rule for the renderer, the depth service and the trainer's captioner:
``auto`` picks CUDA, then Apple's MPS, then the CPU; a device asked for by name
must exist. The dtype follows the device unless ANIM_DTYPE names one: float16 on
CUDA, float32 elsewhere (float16 on MPS has given black frames on some macOS
versions, and CPU kernels are slow or missing in float16). torch is imported
only when called.
"""

from __future__ import annotations

from typing import Any

from ghibli_anim.contracts.config import Settings


def pick_device(settings: Settings) -> str:
    import torch

    device = settings["ANIM_DEVICE"]
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("ANIM_DEVICE: cuda requested, but torch sees no CUDA device")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ValueError("ANIM_DEVICE: mps requested, but torch sees no MPS device")
    return device


def pick_dtype(settings: Settings, device: str) -> Any:
    """The torch dtype for ``device`` (see the module docs)."""
    import torch

    name = settings["ANIM_DTYPE"]
    if name == "auto":
        name = "float16" if device == "cuda" else "float32"
    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[name]
