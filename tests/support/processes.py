"""Probing the child servers of the launcher's tests: does a port answer, how often did a
server start, a port taken by another listener, and which processes are left below a pid."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ghibli_anim.devtools.procfs import descendants
from ghibli_anim.runtime import processes as launcher

__all__ = ["alive", "answers", "descendants", "port_taken", "starts", "wait_until_gone"]


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
