"""The last few frames' PNG bytes the renderer stored, kept in memory by store key."""

from __future__ import annotations

import threading
from collections import OrderedDict


class RecentFrames:
    """The last few stored frames' PNG bytes, by store key (thread-safe).

    Frame i+1 usually renders on the replica that rendered frame i: it takes the
    bytes from here instead of reading the store back. The bytes are the ones
    written to the store, decoded the same way, so both paths give the same
    frame. ``capacity`` 0 turns it off.
    """

    def __init__(self, capacity: int = 4) -> None:
        if capacity < 0:
            raise ValueError(f"capacity: must be >= 0, got {capacity}")
        self.capacity = capacity
        self._frames: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def put(self, key: str, png: bytes) -> None:
        """Keep ``png`` under ``key`` as the most recent, dropping the oldest beyond capacity."""
        if self.capacity == 0:
            return
        with self._lock:
            self._frames[key] = bytes(png)
            self._frames.move_to_end(key)
            while len(self._frames) > self.capacity:
                self._frames.popitem(last=False)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._frames

    def get(self, key: str) -> bytes | None:
        """The bytes stored under ``key``, or None; a hit makes them the most recent."""
        with self._lock:
            png = self._frames.get(key)
            if png is None:
                self.misses += 1
            else:
                self._frames.move_to_end(key)
                self.hits += 1
            return png


__all__ = ["RecentFrames"]
