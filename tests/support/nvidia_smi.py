"""A stand-in ``nvidia-smi`` first on PATH: tests of the choice of torch build and of the device.

No NVIDIA driver can be installed on the machines that run the tests, so a small shell script
answers the one query the project makes (``--query-gpu=driver_version,name[,compute_cap]
--format=csv,noheader``) the way the real tool does: one CSV row per GPU on stdout, exit 0. It
can also refuse the ``compute_cap`` field (as drivers from before that field do) or fail.
Every call's arguments are appended to ``calls`` beside the script.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest

# What nvidia-smi prints when it cannot reach the driver (a stand-in text, exit code 9).
NO_DRIVER = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
    "Make sure that the latest NVIDIA driver is installed and running."
)


QUERY = "--query-gpu=driver_version,name,"
FORMAT = "--format=csv,noheader"


def _print(rows: list[str]) -> str:
    return "".join(f"echo {shlex.quote(row)}; " for row in rows) + "exit 0"


def fake_nvidia_smi(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    driver: str = "",
    gpus: tuple[tuple[str, str], ...] = (),
    *,
    compute_cap: bool = True,
    fail: str | None = None,
) -> Path:
    """Put a stand-in nvidia-smi for ``gpus`` ((name, compute capability) pairs) first on PATH.

    ``compute_cap=False``: it refuses the compute_cap field. ``fail``: it prints this and exits 9.
    Returns the folder put on PATH (it holds ``calls``).
    """
    if fail is not None:
        with_cc = without_cc = f"echo {shlex.quote(fail)}; exit 9"
    else:
        without_cc = _print([f"{driver}, {name}" for name, _ in gpus])
        with_cc = _print([f"{driver}, {name}, {cc}" for name, cc in gpus])
        if not compute_cap:
            with_cc = "echo 'Field \"compute_cap\" is not a valid field to query.' >&2; exit 2"
    folder = tmp_path / "nvidia-bin"
    folder.mkdir(parents=True)
    script = folder / "nvidia-smi"
    script.write_text(
        "#!/bin/sh\n"
        'echo "$@" >> "$(dirname "$0")/calls"\n'
        'case "$*" in\n'
        f"  '{QUERY}compute_cap {FORMAT}') {with_cc} ;;\n"
        f"  '{QUERY[:-1]} {FORMAT}') {without_cc} ;;\n"
        "esac\n"
        'echo "unexpected arguments: $*" >&2; exit 2\n'
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ.get('PATH', '')}")
    return folder


def without_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PATH without any nvidia-smi (an empty folder), as on a machine without an NVIDIA driver."""
    folder = tmp_path / "empty-bin"
    folder.mkdir(parents=True)
    monkeypatch.setenv("PATH", str(folder))
