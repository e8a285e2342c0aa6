"""Which torch build ``make setup`` installs: a CUDA build this driver and GPU run, or the default.

Runs before .venv exists (``python3 ghibli_anim/devtools/torch_choice.py``), so it uses the standard
library only. It asks ``nvidia-smi`` for the driver and each GPU's compute capability, prints pip's
arguments on stdout (``torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126``, or just
``torch==2.13.0`` where the default index is right) and what it chose and why on stderr.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass

TORCH_VERSION = "2.13.0"
WHEEL_INDEX = "https://download.pytorch.org/whl/"


@dataclass(frozen=True)
class Build:
    """One CUDA wheel line of TORCH_VERSION on one platform."""

    tag: str  # the index folder: https://download.pytorch.org/whl/<tag>
    cuda: str
    min_driver: tuple[int, ...]
    sass: tuple[tuple[int, int], ...]  # compute capabilities compiled to machine code
    ptx: tuple[int, int] | None = None  # PTX the driver can compile for newer GPUs

    def runs_on(self, cc: tuple[int, int]) -> bool:
        # Machine code for X.y runs on X.z with z >= y (same major); PTX for any later GPU.
        return any(m == cc[0] and n <= cc[1] for m, n in self.sass) or (
            self.ptx is not None and cc >= self.ptx
        )


# The CUDA lines of torch 2.13, newest first (tried in this order). Sources:
# - Builds and architectures: PyTorch's RELEASE.md (https://github.com/pytorch/pytorch/blob/main/
#   RELEASE.md), "Release Compatibility Matrix" (2.13: CUDA 12.6 and 13.0 stable, 13.2 experimental,
#   left out here) and "PyTorch CUDA Support Matrix" (one table for 2.12, 2.13 and 2.14; it went in
#   with https://github.com/pytorch/pytorch/pull/182849). Only 12.6 keeps Maxwell, Pascal and Volta
#   (CUDA 13 dropped them); the +PTX of 12.0 is in the Linux builds only. PyPI's torch 2.13 wheel
#   for Linux x86_64 is the 13.0 build.
# - Minimum drivers: NVIDIA's minor version compatibility ("CUDA 12.x >= 525, CUDA 13.x >= 580",
#   https://docs.nvidia.com/deploy/cuda-compatibility/minor-version-compatibility.html), exact
#   figures from the CUDA Toolkit release notes (https://docs.nvidia.com/cuda/
#   cuda-toolkit-release-notes/): CUDA 12.x >= 525.60.13 on Linux and >= 528.33 on Windows, CUDA
#   13.0 >= 580.65.06 on Linux. No exact Windows figure for CUDA 13 was verified: R580 is required.
_X86_126 = ((5, 0), (6, 0), (7, 0), (7, 5), (8, 0), (8, 6), (9, 0))
_X86_130 = ((7, 5), (8, 0), (8, 6), (9, 0), (10, 0), (12, 0))
BUILDS: dict[str, tuple[Build, ...]] = {
    "linux-x86_64": (
        Build("cu130", "13.0", (580, 65, 6), _X86_130, ptx=(12, 0)),
        Build("cu126", "12.6", (525, 60, 13), _X86_126),
    ),
    "linux-aarch64": (
        Build(
            "cu130", "13.0", (580, 65, 6), ((8, 0), (9, 0), (10, 0), (11, 0), (12, 0)), ptx=(12, 0)
        ),
        Build("cu126", "12.6", (525, 60, 13), ((8, 0), (9, 0))),
    ),
    "windows-x86_64": (
        Build("cu130", "13.0", (580,), _X86_130),
        Build("cu126", "12.6", (528, 33), _X86_126),
    ),
}


@dataclass(frozen=True)
class Gpu:
    name: str
    cc: tuple[int, int] | None  # None: this nvidia-smi did not say


@dataclass(frozen=True)
class Probe:
    """What nvidia-smi said: absent (no NVIDIA driver), failed (error), or the driver and GPUs."""

    state: str  # "absent", "failed" or "found"
    driver: str = ""
    gpus: tuple[Gpu, ...] = ()
    error: str = ""


@dataclass(frozen=True)
class Choice:
    args: list[str]
    reason: str


def version_tuple(text: str) -> tuple[int, ...]:
    """'535.183.01' -> (535, 183, 1); ValueError if it is not dotted numbers."""
    return tuple(int(part) for part in text.strip().split("."))


def _sm(cc: tuple[int, int] | None) -> str:
    return f"sm_{cc[0]}{cc[1]}" if cc else "compute capability unknown"


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(f"{n:02d}" if i else str(n) for i, n in enumerate(version))


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def probe_nvidia_smi(timeout: float = 30.0) -> Probe:
    """Run nvidia-smi (the first on PATH) for the driver version and each GPU."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return Probe("absent")
    # Drivers older than the compute_cap field refuse the whole query: ask again without it.
    for fields in ("driver_version,name,compute_cap", "driver_version,name"):
        try:
            out = subprocess.run(
                [exe, f"--query-gpu={fields}", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return Probe("failed", error=f"{exe}: {exc}")
        if out.returncode == 0:
            break
    else:
        detail = _first_line(out.stderr) or _first_line(out.stdout) or "no output"
        return Probe("failed", error=f"{exe} exited with {out.returncode}: {detail}")
    rows = [line.split(",") for line in out.stdout.splitlines() if line.strip()]
    if not rows:
        return Probe("failed", error=f"{exe} listed no GPU")
    with_cc = fields.endswith("compute_cap")
    gpus = []
    for row in rows:
        cells = [cell.strip() for cell in row]
        cc = None
        if with_cc:
            try:
                major, minor = version_tuple(cells.pop())
                cc = (major, minor)
            except ValueError:  # "[N/A]"
                pass
        gpus.append(Gpu(", ".join(cells[1:]), cc))
    driver = rows[0][0].strip()
    try:
        version_tuple(driver)
    except ValueError:
        return Probe("failed", error=f"{exe} gave an unreadable driver version {driver!r}")
    return Probe("found", driver=driver, gpus=tuple(gpus))


def platform_key(system: str, machine: str) -> str:
    """'Linux', 'AMD64' -> 'linux-x86_64' (the keys of BUILDS)."""
    arch = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}.get(
        machine.lower(), machine.lower()
    )
    return f"{system.lower()}-{arch}"


def choose(probe: Probe, system: str, machine: str, version: str = TORCH_VERSION) -> Choice:
    """The pip arguments for ``torch==version`` on this machine, and why."""
    spec = f"torch=={version}"
    default = [spec]
    if system == "Darwin":
        return Choice(default, f"macOS: {spec} from the default index (CPU and Apple MPS; no CUDA)")
    if probe.state == "absent":
        return Choice(
            default, f"no NVIDIA GPU (no nvidia-smi on PATH) -> {spec} from the default index"
        )
    retry = "fix the driver, then `rm -rf .venv && make setup` (or set TORCH_INDEX)"
    if probe.state == "failed":
        return Choice(
            default,
            f"nvidia-smi failed ({probe.error}) -> {spec} from the default index; {retry}",
        )
    key = platform_key(system, machine)
    first = probe.gpus[0]
    found = f"driver {probe.driver}, {first.name} ({_sm(first.cc)})"
    if len(probe.gpus) > 1:
        found += f" and {len(probe.gpus) - 1} more GPU(s)"
    if key not in BUILDS:
        return Choice(
            default,
            f"{found}, but torch {version} has no CUDA builds for {system} {machine} -> {spec} "
            "from the default index",
        )
    driver = version_tuple(probe.driver)
    builds = BUILDS[key]
    if first.cc is None:
        # Widest coverage first: without a compute capability, the line with the oldest GPUs.
        builds = tuple(sorted(builds, key=lambda b: min(b.sass)))
    why_not: list[str] = []
    fallback: Build | None = None
    for build in builds:
        if driver < build.min_driver:
            why_not.append(f"{build.tag} needs driver {_dotted(build.min_driver)}+")
            continue
        unsupported = [g for g in probe.gpus if g.cc is not None and not build.runs_on(g.cc)]
        if not unsupported:
            return _cuda(spec, build, found, why_not)
        why_not.append(f"{build.tag} has no kernels for {_sm(unsupported[0].cc)}")
        if fallback is None and first not in unsupported:
            fallback = build
    if fallback is not None:
        # No line runs every GPU: the one for device 0, which torch uses unless told otherwise.
        return _cuda(spec, fallback, found, why_not)
    return Choice(
        [spec, "--index-url", WHEEL_INDEX + "cpu"],
        f"{found} -> the CPU build from {WHEEL_INDEX}cpu: no CUDA build of torch {version} runs "
        f"here ({'; '.join(why_not)}).\nUpdate the NVIDIA driver or pick a build with TORCH_INDEX, "
        "then `rm -rf .venv && make setup`.",
    )


def _cuda(spec: str, build: Build, found: str, why_not: list[str]) -> Choice:
    url = WHEEL_INDEX + build.tag
    note = f" ({'; '.join(why_not)})" if why_not else ""
    return Choice(
        [spec, "--index-url", url],
        f"{found} -> {build.tag} (CUDA {build.cuda}) from {url}{note}",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--torch", default=TORCH_VERSION, help=f"the pinned torch version (default {TORCH_VERSION})"
    )
    args = parser.parse_args(argv)
    if args.torch != TORCH_VERSION:
        print(
            f"torch_choice: --torch: the table of CUDA builds is for torch {TORCH_VERSION}, not "
            f"{args.torch}; update BUILDS in {__file__} or set TORCH_INDEX",
            file=sys.stderr,
        )
        return 2
    choice = choose(probe_nvidia_smi(), platform.system(), platform.machine(), args.torch)
    print(f"torch: {choice.reason}", file=sys.stderr)
    print(" ".join(choice.args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
