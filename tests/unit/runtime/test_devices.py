"""runtime/devices.py: the device and dtype, and why an NVIDIA GPU goes unused.

torch here is a CPU build, so ``torch.cuda.is_available()`` is really False; nvidia-smi is a
stand-in script first on PATH (tests/support/nvidia_smi.py), since no NVIDIA driver can be
installed here. Where a test needs a CUDA build of torch (driver too old for it, hidden devices),
it sets ``torch.version.cuda``: no CUDA build of torch can be installed here either.
"""

from __future__ import annotations

import logging

import pytest
import torch
from support.nvidia_smi import NO_DRIVER, fake_nvidia_smi, without_nvidia_smi

from ghibli_anim.contracts import config
from ghibli_anim.runtime import devices

ADA = ("NVIDIA GeForce RTX 4090", "8.9")
PASCAL = ("NVIDIA GeForce GTX 1080", "6.1")
TURING = ("NVIDIA GeForce RTX 2080", "7.5")
BLACKWELL = ("NVIDIA GeForce RTX 5090", "12.0")
REDO = "`rm -rf .venv && make setup` installs the torch build for this driver and GPU"
WHL = "https://download.pytorch.org/whl/"
CPU_BUILD = f"torch {torch.__version__} is a CPU build (torch.version.cuda is None)"

pytestmark = pytest.mark.skipif(
    torch.version.cuda is not None, reason="the tests assume a CPU build of torch"
)


def settings(device: str) -> config.Settings:
    return config.load("client", {"ANIM_DEVICE": device})


def index(tag: str) -> str:
    return f"{REDO} (or, after `rm -rf .venv`, `make setup TORCH_INDEX={WHL}{tag}`)"


NEW_DRIVER = f"update the NVIDIA driver to R580+ (CUDA 13 builds), then {REDO}"
ANY_DRIVER = f"update the NVIDIA driver (R525+ for CUDA 12 builds, R580+ for CUDA 13), then {REDO}"


@pytest.mark.parametrize(
    ("driver", "gpu", "fix"),
    [
        ("590.44.01", ADA, index("cu130")),
        ("580.65.06", ADA, index("cu130")),
        ("580.65.05", ADA, index("cu126")),
        ("560.35.03", ADA, index("cu126")),
        ("590.44.01", PASCAL, index("cu126")),  # CUDA 13 builds start at Turing
        ("590.44.01", TURING, index("cu130")),
        ("590.44.01", BLACKWELL, index("cu130")),
        ("575.57.08", BLACKWELL, NEW_DRIVER),  # CUDA 12.6 builds end at Hopper
        ("525.60.13", ADA, index("cu126")),
        ("525.60.12", ADA, ANY_DRIVER),
        ("470.82.01", ADA, ANY_DRIVER),
    ],
)
def test_a_cpu_build_beside_an_nvidia_gpu(tmp_path, monkeypatch, driver, gpu, fix):
    fake_nvidia_smi(tmp_path, monkeypatch, driver, (gpu,))
    sm = "sm_" + gpu[1].replace(".", "")
    assert devices.cuda_problem() == (
        f"nvidia-smi lists {gpu[0]} ({sm}, driver {driver}), but {CPU_BUILD}; {fix}"
    )


def test_auto_warns_and_computes_on_the_cpu(tmp_path, monkeypatch, caplog):
    fake_nvidia_smi(tmp_path, monkeypatch, "590.44.01", (ADA,))
    with caplog.at_level(logging.WARNING, logger=devices.__name__):
        assert devices.pick_device(settings("auto")) == "cpu"
    assert [r.getMessage() for r in caplog.records] == [
        f"nvidia-smi lists {ADA[0]} (sm_89, driver 590.44.01), but {CPU_BUILD}; "
        f"{index('cu130')}; computing on the CPU"
    ]


def test_cuda_asked_for_says_why_it_is_missing(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, monkeypatch, "560.35.03", (ADA,))
    with pytest.raises(ValueError) as refused:
        devices.pick_device(settings("cuda"))
    assert str(refused.value) == (
        "ANIM_DEVICE: cuda requested, but torch sees no CUDA device: nvidia-smi lists "
        f"{ADA[0]} (sm_89, driver 560.35.03), but {CPU_BUILD}; {index('cu126')}"
    )


def test_without_nvidia_smi_nothing_to_say(tmp_path, monkeypatch, caplog):
    without_nvidia_smi(tmp_path, monkeypatch)
    assert devices.cuda_problem() is None
    with caplog.at_level(logging.WARNING, logger=devices.__name__):
        assert devices.pick_device(settings("auto")) == "cpu"
    assert caplog.records == []
    with pytest.raises(ValueError) as refused:
        devices.pick_device(settings("cuda"))
    assert str(refused.value) == (
        "ANIM_DEVICE: cuda requested, but torch sees no CUDA device: nvidia-smi lists no GPU "
        "here; run on a machine with an NVIDIA GPU and its driver (in a container: the NVIDIA "
        "container runtime, with a GPU requested), or set ANIM_DEVICE=auto or cpu"
    )


def test_a_failing_nvidia_smi_lists_no_gpu(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, monkeypatch, fail=NO_DRIVER)
    assert devices.nvidia_gpu() is None
    assert devices.cuda_problem() is None


def test_an_old_driver_without_compute_cap(tmp_path, monkeypatch):
    folder = fake_nvidia_smi(tmp_path, monkeypatch, "470.82.01", (ADA,), compute_cap=False)
    assert devices.nvidia_gpu() == devices.NvidiaGpu("470.82.01", ADA[0], None)
    assert len((folder / "calls").read_text().splitlines()) == 2  # asked again without the field
    assert devices.cuda_problem() == (
        f"nvidia-smi lists {ADA[0]} (driver 470.82.01), but {CPU_BUILD}; {ANY_DRIVER}"
    )


def test_the_first_of_several_gpus(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, monkeypatch, "590.44.01", (PASCAL, ADA))
    assert devices.nvidia_gpu() == devices.NvidiaGpu("590.44.01", PASCAL[0], (6, 1))


@pytest.mark.parametrize(
    ("built", "driver", "need"),
    [("13.0", "575.57.08", "580.65.06"), ("12.6", "470.82.01", "525.60.13")],
)
def test_a_cuda_build_with_a_driver_too_old_for_it(tmp_path, monkeypatch, built, driver, need):
    monkeypatch.setattr(torch.version, "cuda", built)  # stands for a CUDA build of torch
    fake_nvidia_smi(tmp_path, monkeypatch, driver, (ADA,))
    problem = devices.cuda_problem()
    assert problem is not None
    assert problem.startswith(
        f"nvidia-smi lists {ADA[0]} (sm_89, driver {driver}), but torch {torch.__version__} is "
        f"built for CUDA {built}, which needs driver {need} or newer; "
    )


def test_a_cuda_build_with_a_recent_driver_points_at_the_visible_devices(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "13.0")  # stands for a CUDA build of torch
    fake_nvidia_smi(tmp_path, monkeypatch, "580.65.06", (ADA,))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert devices.cuda_problem() == (
        f"nvidia-smi lists {ADA[0]} (sm_89, driver 580.65.06), but torch (CUDA 13.0) sees no "
        "device: CUDA_VISIBLE_DEVICES=''"
    )
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert devices.cuda_problem() == (
        f"nvidia-smi lists {ADA[0]} (sm_89, driver 580.65.06), but torch (CUDA 13.0) sees no "
        "device: check that the driver works (nvidia-smi, the /dev/nvidia* devices)"
    )


def test_dtype_follows_the_device() -> None:
    auto = config.load("client", {})
    assert devices.pick_dtype(auto, "cuda") == torch.float16
    assert devices.pick_dtype(auto, "cpu") == torch.float32
    named = config.load("client", {"ANIM_DTYPE": "bfloat16"})
    assert devices.pick_dtype(named, "cuda") == torch.bfloat16


def test_check_device_computes_on_the_chosen_device() -> None:
    assert devices.check_device(settings("cpu")) == "cpu"
    assert devices.check_device(settings("auto")) == "cpu"


def test_check_device_refuses_a_gpu_that_torch_lists_but_cannot_run_on(tmp_path, monkeypatch):
    # torch lists a CUDA device (the stand-in) that it has no kernels for: here the CPU build's
    # own refusal, as a GPU too new or too old for the build refuses its first kernel.
    fake_nvidia_smi(tmp_path, monkeypatch, "590.44.01", (ADA,))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ValueError) as refused:
        devices.check_device(settings("cuda"))
    assert str(refused.value) == (
        f"ANIM_DEVICE: cuda cannot compute (Torch not compiled with CUDA enabled); {index('cu130')}"
    )


def test_check_device_says_why_cuda_is_missing(tmp_path, monkeypatch):
    without_nvidia_smi(tmp_path, monkeypatch)
    with pytest.raises(ValueError, match=r"^ANIM_DEVICE: cuda requested, but torch sees no CUDA"):
        devices.check_device(settings("cuda"))
