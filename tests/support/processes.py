"""Probing the child servers of the launcher's tests: does a port answer, how often did a
server start, a port taken by another listener, and which processes are left below a pid."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ghibli_anim.runtime import processes as launcher


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@contextmanager
def port_taken(port: int) -> Iterator[None]:
    """Another process's listener on ``port`` (as if it took the port meanwhile)."""
    with socket.socket() as s:
        # The port may still have TIME_WAIT connections from an earlier probe.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
        yield


def starts(server: launcher.ChildServer) -> int:
    return server.log_path.read_text().count(" start: ")


def descendants(pid: int) -> set[int]:
    """Every living process below ``pid`` (children, theirs...), from /proc (Linux)."""
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


def alive(pids: set[int]) -> set[int]:
    """The ones of ``pids`` still running (zombies count as ended)."""
    running = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if state != "Z":
            running.add(pid)
    return running


def wait_until_gone(pids: set[int], timeout: float = 5.0) -> set[int]:
    """Wait up to ``timeout`` for every one of ``pids`` to end; those still running."""
    deadline = time.monotonic() + timeout
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive(pids)
