"""Probing the child servers of the launcher's tests: does a port answer, how often did a
server start, and a port taken by another listener."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

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
