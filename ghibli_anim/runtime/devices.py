"""Which torch device and dtype a process computes on: ANIM_DEVICE and ANIM_DTYPE.

One rule for the renderer, the depth service and the trainer's captioner:
``auto`` picks CUDA, then Apple's MPS, then the CPU; a device asked for by name
must exist. The dtype follows the device unless ANIM_DTYPE names one: float16 on
CUDA, float32 elsewhere (float16 on MPS has given black frames on some macOS
versions, and CPU kernels are slow or missing in float16). When torch sees no
CUDA device but nvidia-smi lists a GPU, the warning (auto) or the error (cuda)
says why: a CPU build of torch, or a driver too old for its CUDA. ``check_device``
also computes once on the chosen device (services run it at start, so a GPU that
torch lists but cannot run on stops the process there, not at its first frame).
torch is imported only when called.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
import sys
from typing import Any, NamedTuple

from ghibli_anim.contracts.config import Settings

log = logging.getLogger(__name__)

# The oldest driver each CUDA major runs on (NVIDIA's minor version compatibility, CUDA Toolkit
# release notes): Linux, Windows. ghibli_anim/devtools/torch_choice.py holds the full table.
_MIN_DRIVER = {12: ((525, 60, 13), (528, 33)), 13: ((580, 65, 6), (580,))}
_WHEELS = "https://download.pytorch.org/whl/"


class NvidiaGpu(NamedTuple):
    driver: str
    name: str
    cc: tuple[int, int] | None  # None where this nvidia-smi does not report it


def pick_device(settings: Settings) -> str:
    import torch

    device = settings["ANIM_DEVICE"]
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        problem = cuda_problem()
        if problem:
            log.warning("%s; computing on the CPU", problem)
        return "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        problem = cuda_problem() or (
            f"nvidia-smi lists no GPU here; {_NO_GPU_FIX}, or set ANIM_DEVICE=auto or cpu"
        )
        raise ValueError(f"ANIM_DEVICE: cuda requested, but torch sees no CUDA device: {problem}")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ValueError(
            "ANIM_DEVICE: mps requested, but torch sees no MPS device (Apple silicon, "
            "macOS 12.3 or newer); set ANIM_DEVICE=auto or cpu"
        )
    return device


_NO_GPU_FIX = (
    "run on a machine with an NVIDIA GPU and its driver (in a container: the NVIDIA "
    "container runtime, with a GPU requested)"
)


def check_device(settings: Settings) -> str:
    """The device ``pick_device`` chooses, once a small computation on it gave the right
    answer. Raises ValueError naming ANIM_DEVICE, with what is wrong and what to do, when
    the device is missing or cannot compute (say, a GPU this torch build has no kernels
    for, which ``torch.cuda.is_available()`` does not notice)."""
    import torch

    device = pick_device(settings)
    try:
        total = float(torch.arange(1, 9, device=device).float().sum().cpu())
    except (RuntimeError, AssertionError) as exc:  # a torch without CUDA asserts
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(
            f"ANIM_DEVICE: {device} cannot compute ({first}); {_fix_for(device)}"
        ) from exc
    if total != 36.0:
        raise ValueError(
            f"ANIM_DEVICE: {device} computed 1 + 2 + ... + 8 = {total:g}; {_fix_for(device)}"
        )
    return device


def _fix_for(device: str) -> str:
    """What to do about a device that torch lists but that fails to compute."""
    gpu = nvidia_gpu() if device == "cuda" else None
    if gpu is not None:
        return _fix(gpu)
    if device == "cuda":
        return f"check the driver with nvidia-smi; {_NO_GPU_FIX}"
    return "set ANIM_DEVICE=cpu"


def cuda_problem() -> str | None:
    """Why torch cannot use the NVIDIA GPU that nvidia-smi lists, and the fix; None without one.

    Only meaningful when ``torch.cuda.is_available()`` is False.
    """
    import torch

    gpu = nvidia_gpu()
    if gpu is None:
        return None
    sm = f"sm_{gpu.cc[0]}{gpu.cc[1]}, " if gpu.cc else ""
    found = f"nvidia-smi lists {gpu.name} ({sm}driver {gpu.driver})"
    built = torch.version.cuda
    if built is None:
        return (
            f"{found}, but torch {torch.__version__} is a CPU build (torch.version.cuda is None); "
            f"{_fix(gpu)}"
        )
    need = _min_driver(int(built.split(".")[0]))
    driver = _version(gpu.driver)
    if need and driver is not None and driver < need:
        return (
            f"{found}, but torch {torch.__version__} is built for CUDA {built}, which needs "
            f"driver {_dotted(need)} or newer; {_fix(gpu)}"
        )
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return f"{found}, but torch (CUDA {built}) sees no device: CUDA_VISIBLE_DEVICES={visible!r}"
    return (
        f"{found}, but torch (CUDA {built}) sees no device: check that the driver works "
        "(nvidia-smi, the /dev/nvidia* devices)"
    )


def nvidia_gpu() -> NvidiaGpu | None:
    """The first GPU nvidia-smi lists (the one on PATH), or None where it is absent or fails."""
    return _query_nvidia_smi(os.environ.get("PATH", ""))


@functools.lru_cache(maxsize=8)
def _query_nvidia_smi(path: str) -> NvidiaGpu | None:
    # Cached per PATH: the driver and GPUs do not change while a process runs.
    exe = shutil.which("nvidia-smi", path=path)
    if exe is None:
        return None
    # Drivers older than the compute_cap field refuse the whole query: ask again without it.
    for fields in ("driver_version,name,compute_cap", "driver_version,name"):
        try:
            out = subprocess.run(
                [exe, f"--query-gpu={fields}", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        line = next((row for row in out.stdout.splitlines() if row.strip()), "")
        if out.returncode == 0 and line:
            cells = [cell.strip() for cell in line.split(",")]
            cc = _version(cells.pop()) if fields.endswith("compute_cap") else None
            return NvidiaGpu(cells[0], ", ".join(cells[1:]), (cc[0], cc[1]) if cc else None)
    return None


def _min_driver(cuda_major: int) -> tuple[int, ...] | None:
    linux, windows = _MIN_DRIVER.get(cuda_major, (None, None))
    return windows if sys.platform == "win32" else linux


def _fix(gpu: NvidiaGpu) -> str:
    driver = _version(gpu.driver) or (0,)
    redo = "`rm -rf .venv && make setup` installs the torch build for this driver and GPU"
    if driver < (_min_driver(12) or ()):
        return (
            f"update the NVIDIA driver (R525+ for CUDA 12 builds, R580+ for CUDA 13), then {redo}"
        )
    # CUDA 13 builds have no kernels before Turing (7.5), CUDA 12.6 builds none after Hopper (9.x).
    cuda13 = driver >= (_min_driver(13) or ())
    if gpu.cc is not None and gpu.cc >= (10, 0) and not cuda13:
        return f"update the NVIDIA driver to R580+ (CUDA 13 builds), then {redo}"
    tag = "cu130" if cuda13 and (gpu.cc is None or gpu.cc >= (7, 5)) else "cu126"
    return f"{redo} (or, after `rm -rf .venv`, `make setup TORCH_INDEX={_WHEELS}{tag}`)"


def _version(text: str) -> tuple[int, ...] | None:
    try:
        return tuple(int(part) for part in text.strip().split("."))
    except ValueError:  # "[N/A]"
        return None


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(f"{n:02d}" if i else str(n) for i, n in enumerate(version))


def pick_dtype(settings: Settings, device: str) -> Any:
    """The torch dtype for ``device`` (see the module docs)."""
    import torch

    name = settings["ANIM_DTYPE"]
    if name == "auto":
        name = "float16" if device == "cuda" else "float32"
    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[name]
