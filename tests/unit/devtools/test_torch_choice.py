"""devtools/torch_choice.py: the torch build ``make setup`` installs for a driver, GPU and platform.

nvidia-smi is a stand-in script first on PATH (tests/support/nvidia_smi.py): no NVIDIA driver can
be installed where the tests run. Everything else is real: the script's own nvidia-smi call and
parsing, the script run as a file by a bare interpreter, and the Makefile's setup recipe (with
pip replaced by echo: the tests install nothing).
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.nvidia_smi import NO_DRIVER, fake_nvidia_smi, without_nvidia_smi

from ghibli_anim.devtools import torch_choice
from ghibli_anim.devtools.torch_choice import choose, probe_nvidia_smi

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "ghibli_anim" / "devtools" / "torch_choice.py"
SPEC = "torch==2.13.0"
WHL = "https://download.pytorch.org/whl/"
PASCAL = ("NVIDIA GeForce GTX 1080", "6.1")
TURING = ("NVIDIA GeForce RTX 2080", "7.5")
ADA = ("NVIDIA GeForce RTX 4090", "8.9")
HOPPER = ("NVIDIA H100 80GB HBM3", "9.0")
BLACKWELL = ("NVIDIA GeForce RTX 5090", "12.0")
B300 = ("NVIDIA B300", "10.3")
ON_LINUX_X86 = torch_choice.platform_key(platform.system(), platform.machine()) == "linux-x86_64"


def linux(tmp_path, monkeypatch, driver, *gpus, **kwargs):
    fake_nvidia_smi(tmp_path, monkeypatch, driver, gpus, **kwargs)
    return choose(probe_nvidia_smi(), "Linux", "x86_64")


@pytest.mark.parametrize(
    ("driver", "gpu", "build", "note"),
    [
        ("535.183.01", PASCAL, "cu126", " (cu130 needs driver 580.65.06+)"),
        ("535.183.01", HOPPER, "cu126", " (cu130 needs driver 580.65.06+)"),
        ("560.35.03", ADA, "cu126", " (cu130 needs driver 580.65.06+)"),
        ("575.57.08", TURING, "cu126", " (cu130 needs driver 580.65.06+)"),
        ("580.95.05", TURING, "cu130", ""),
        ("590.44.01", ADA, "cu130", ""),
        ("590.44.01", BLACKWELL, "cu130", ""),
        ("590.44.01", B300, "cu130", ""),  # sm_100 machine code runs on 10.3
        ("590.44.01", PASCAL, "cu126", " (cu130 has no kernels for sm_61)"),
        # The minimum drivers are inclusive.
        ("580.65.06", ADA, "cu130", ""),
        ("580.65.05", ADA, "cu126", " (cu130 needs driver 580.65.06+)"),
        ("525.60.13", ADA, "cu126", " (cu130 needs driver 580.65.06+)"),
    ],
)
def test_a_cuda_build_the_driver_and_gpu_run(tmp_path, monkeypatch, driver, gpu, build, note):
    choice = linux(tmp_path, monkeypatch, driver, gpu)
    assert choice.args == [SPEC, "--index-url", WHL + build]
    cuda = {"cu126": "12.6", "cu130": "13.0"}[build]
    sm = "sm_" + gpu[1].replace(".", "")
    assert choice.reason == (
        f"driver {driver}, {gpu[0]} ({sm}) -> {build} (CUDA {cuda}) from {WHL}{build}{note}"
    )


@pytest.mark.parametrize(
    ("driver", "gpu", "why"),
    [
        ("525.60.12", ADA, "cu130 needs driver 580.65.06+; cu126 needs driver 525.60.13+"),
        ("575.57.08", BLACKWELL, "cu130 needs driver 580.65.06+; cu126 has no kernels for sm_120"),
        ("470.82.01", ("Tesla K80", "3.7"), "cu130 needs driver 580.65.06+; cu126 needs driver "
         "525.60.13+"),
        ("590.44.01", ("Tesla K80", "3.7"), "cu130 has no kernels for sm_37; cu126 has no kernels "
         "for sm_37"),
    ],
)  # fmt: skip
def test_the_cpu_build_when_no_cuda_build_runs(tmp_path, monkeypatch, driver, gpu, why):
    choice = linux(tmp_path, monkeypatch, driver, gpu)
    assert choice.args == [SPEC, "--index-url", WHL + "cpu"]
    sm = "sm_" + gpu[1].replace(".", "")
    assert choice.reason == (
        f"driver {driver}, {gpu[0]} ({sm}) -> the CPU build from {WHL}cpu: no CUDA build of "
        f"torch 2.13.0 runs here ({why}).\nUpdate the NVIDIA driver or pick a build with "
        "TORCH_INDEX, then `rm -rf .venv && make setup`."
    )


def test_a_driver_without_the_compute_cap_field(tmp_path, monkeypatch):
    """Asked again without compute_cap; without it the widest line (12.6) goes first."""
    old = linux(tmp_path / "470", monkeypatch, "470.82.01", TURING, compute_cap=False)
    assert old.args == [SPEC, "--index-url", WHL + "cpu"]
    assert old.reason.startswith(
        "driver 470.82.01, NVIDIA GeForce RTX 2080 (compute capability unknown) -> the CPU build"
    )
    assert "(cu126 needs driver 525.60.13+; cu130 needs driver 580.65.06+)" in old.reason
    calls = (tmp_path / "470" / "nvidia-bin" / "calls").read_text().splitlines()
    assert calls == [
        "--query-gpu=driver_version,name,compute_cap --format=csv,noheader",
        "--query-gpu=driver_version,name --format=csv,noheader",
    ]
    unknown = linux(tmp_path / "590", monkeypatch, "590.44.01", PASCAL, compute_cap=False)
    assert unknown.args == [SPEC, "--index-url", WHL + "cu126"]


def test_several_gpus(tmp_path, monkeypatch):
    both = linux(tmp_path / "a", monkeypatch, "590.44.01", ADA, PASCAL)
    assert both.args[-1] == WHL + "cu126"  # the one line that runs both
    assert both.reason == (
        f"driver 590.44.01, {ADA[0]} (sm_89) and 1 more GPU(s) -> cu126 (CUDA 12.6) from "
        f"{WHL}cu126 (cu130 has no kernels for sm_61)"
    )
    # No line runs both: the line for device 0, which torch uses unless told otherwise.
    first = linux(tmp_path / "b", monkeypatch, "590.44.01", BLACKWELL, PASCAL)
    assert first.args[-1] == WHL + "cu130"
    assert first.reason.endswith(
        "(cu130 has no kernels for sm_61; cu126 has no kernels for sm_120)"
    )


def test_no_nvidia_smi_takes_the_default_index(tmp_path, monkeypatch):
    without_nvidia_smi(tmp_path, monkeypatch)
    choice = choose(probe_nvidia_smi(), "Linux", "x86_64")
    assert choice.args == [SPEC]
    assert (
        choice.reason
        == "no NVIDIA GPU (no nvidia-smi on PATH) -> torch==2.13.0 from the default index"
    )


def test_a_failing_nvidia_smi_is_reported(tmp_path, monkeypatch):
    choice = linux(tmp_path, monkeypatch, fail=NO_DRIVER, driver="")
    exe = tmp_path / "nvidia-bin" / "nvidia-smi"
    assert choice.args == [SPEC]
    assert choice.reason == (
        f"nvidia-smi failed ({exe} exited with 9: {NO_DRIVER}) -> torch==2.13.0 from the default "
        "index; fix the driver, then `rm -rf .venv && make setup` (or set TORCH_INDEX)"
    )


def test_an_nvidia_smi_that_lists_no_gpu(tmp_path, monkeypatch):
    choice = linux(tmp_path, monkeypatch, "590.44.01")
    assert choice.args == [SPEC]
    assert "nvidia-bin/nvidia-smi listed no GPU" in choice.reason


@pytest.mark.parametrize(
    ("system", "machine", "driver", "gpu", "build"),
    [
        ("Linux", "aarch64", "590.44.01", ("NVIDIA GB10", "12.1"), "cu130"),
        ("Linux", "aarch64", "560.35.03", ("NVIDIA A100-SXM4-80GB", "8.0"), "cu126"),
        ("Linux", "aarch64", "590.44.01", TURING, "cpu"),  # the aarch64 builds start at Ampere
        ("Windows", "AMD64", "566.36", ADA, "cu126"),
        ("Windows", "AMD64", "528.24", ADA, "cpu"),  # CUDA 12 needs 528.33 there
        ("Windows", "AMD64", "581.57", BLACKWELL, "cu130"),  # sm_120 machine code, no PTX
        # A GPU newer than every build runs the Linux builds' PTX only.
        ("Linux", "x86_64", "590.44.01", ("a later GPU", "13.0"), "cu130"),
        ("Windows", "AMD64", "590.44", ("a later GPU", "13.0"), "cpu"),
        ("Darwin", "arm64", "590.44.01", ADA, None),
        ("Linux", "ppc64le", "590.44.01", ADA, None),
    ],
)
def test_other_platforms(tmp_path, monkeypatch, system, machine, driver, gpu, build):
    fake_nvidia_smi(tmp_path, monkeypatch, driver, (gpu,))
    args = [SPEC, "--index-url", WHL + build] if build else [SPEC]
    assert choose(probe_nvidia_smi(), system, machine).args == args


def test_ppc64le_says_there_is_no_cuda_build(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, monkeypatch, "590.44.01", (ADA,))
    assert choose(probe_nvidia_smi(), "Linux", "ppc64le").reason == (
        f"driver 590.44.01, {ADA[0]} (sm_89), but torch 2.13.0 has no CUDA builds for Linux "
        "ppc64le -> torch==2.13.0 from the default index"
    )


def run_script(*args: str, path: str) -> subprocess.CompletedProcess[str]:
    # -I -S: no site-packages, no PYTHONPATH, no script folder on sys.path, as before .venv exists.
    return subprocess.run(
        [sys.executable, "-I", "-S", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": path},
        check=False,
    )


@pytest.mark.skipif(not ON_LINUX_X86, reason="the expected builds are Linux x86_64's")
def test_the_script_runs_without_the_venv(tmp_path, monkeypatch):
    folder = fake_nvidia_smi(tmp_path, monkeypatch, "560.35.03", (ADA,))
    done = run_script(path=str(folder))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{SPEC} --index-url {WHL}cu126\n"
    assert done.stderr == (
        f"torch: driver 560.35.03, {ADA[0]} (sm_89) -> cu126 (CUDA 12.6) from {WHL}cu126 "
        "(cu130 needs driver 580.65.06+)\n"
    )


def test_the_script_without_nvidia_smi_prints_the_plain_pin(tmp_path):
    """What CI and the dev machines install: torch==2.13.0 from the default index (pip's config
    there finds the CPU wheel on disk)."""
    (tmp_path / "empty").mkdir()
    done = run_script(path=str(tmp_path / "empty"))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{SPEC}\n"


def test_the_script_refuses_a_version_it_has_no_table_for(tmp_path):
    done = run_script("--torch", "2.14.0", path=str(tmp_path))
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith(
        "torch_choice: --torch: the table of CUDA builds is for torch 2.13.0, not 2.14.0;"
    )


def make_setup(tmp_path: Path, path: str, *overrides: str) -> str:
    """The real setup recipe in a fresh venv under tmp_path, with pip replaced by echo."""
    # pip is not run, so the venv is made without it (ensurepip alone takes seconds).
    python = tmp_path / "python3"
    python.parent.mkdir(parents=True)
    python.write_text(
        "#!/bin/sh\n"
        f'[ "$1 $2" = "-m venv" ] && exec {sys.executable} -m venv --without-pip "$3"\n'
        f'exec {sys.executable} "$@"\n'
    )
    python.chmod(0o755)
    done = subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), "setup", f"VENV={tmp_path / 'venv'}",
         f"PYTHON={python}", "PIP=echo PIP", *overrides],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": path},
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.skipif(
    not ON_LINUX_X86 or shutil.which("make") is None, reason="Linux x86_64 with make"
)
def test_make_setup_installs_the_chosen_build_unless_told(tmp_path, monkeypatch):
    folder = fake_nvidia_smi(tmp_path, monkeypatch, "560.35.03", (ADA,))
    path = f"{folder}:/usr/bin:/bin"
    detected = make_setup(tmp_path / "a", path)
    assert f"PIP install -q {SPEC} --index-url {WHL}cu126\n" in detected
    calls = (folder / "calls").read_text()
    told = make_setup(tmp_path / "b", path, f"TORCH_INDEX={WHL}cu130")
    assert f"PIP install -q {SPEC} --index-url {WHL}cu130\n" in told
    spec = make_setup(tmp_path / "c", path, "TORCH_SPEC=torch>=2.13")
    assert "PIP install -q torch>=2.13\n" in spec
    assert (folder / "calls").read_text() == calls  # an explicit choice skips the detection
