"""What /proc (Linux) says about processes: which are left below a pid.

The orphan checks of the tests and of ``bench/soak.py`` ask it after a launcher ends.
"""

from __future__ import annotations

from pathlib import Path


def descendants(pid: int) -> set[int]:
    """Every living process below ``pid`` (children, theirs...), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = stat.rpartition(")")[2].split()
        if fields[0] != "Z":  # a zombie has exited; only its parent's wait is missing
            parents[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found
