"""The last few frames the renderer stored, kept in memory by store key, as pixels."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, TypeVar

T = TypeVar("T")


class RecentFrames(Generic[T]):
    """The last few stored frames (decoded pixels, or a colour reference prepared from
    them), by store key; thread-safe.

    Frame i+1 usually renders on the replica that rendered frame i: it takes frame i's
    pixels from here instead of reading the store back and decoding the PNG. PNG is
    lossless, so these are exactly the pixels the store's bytes decode to, and both paths
    give the same frame. Values are shared, not copied: callers must not modify them.
    ``capacity`` 0 turns it off.
    """

    def __init__(self, capacity: int = 4) -> None:
        if capacity < 0:
            raise ValueError(f"capacity: must be >= 0, got {capacity}")
        self.capacity = capacity
        self._frames: OrderedDict[str, T] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def put(self, key: str, value: T) -> None:
        """Keep ``value`` under ``key`` as the most recent, dropping the oldest beyond capacity."""
        if self.capacity == 0:
            return
        with self._lock:
            self._frames[key] = value
            self._frames.move_to_end(key)
            while len(self._frames) > self.capacity:
                self._frames.popitem(last=False)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._frames

    def get(self, key: str) -> T | None:
        """The value kept under ``key``, or None; a hit makes it the most recent."""
        with self._lock:
            value = self._frames.get(key)
            if value is None:
                self.misses += 1
            else:
                self._frames.move_to_end(key)
                self.hits += 1
            return value


__all__ = ["RecentFrames"]
