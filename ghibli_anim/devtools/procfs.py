"""What /proc (Linux) says about processes: which are left below a pid, their CPU time.

The orphan checks of the tests and of ``bench/soak.py`` ask it after a launcher ends;
``bench/chain_host.py`` asks each process of the stack for its CPU time.
"""

from __future__ import annotations

import os
from pathlib import Path

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int | str) -> list[str]:
    """The fields of /proc/PID/stat after ``comm`` (which may hold spaces and
    parentheses): ``fields[0]`` is the state, ``fields[1]`` the parent pid."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time ``pid`` has used so far, every thread of it included
    (its waited-for children not); ``OSError`` when it is gone."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_S


def descendants(pid: int) -> set[int]:
    """Every living process below ``pid`` (children, theirs...), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat_fields(entry.name)
        except OSError:
            continue  # gone meanwhile
        if fields[0] != "Z":  # a zombie has exited; only its parent's wait is missing
            parents[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found
