"""The service's in-process caches: bounded, thread-safe (endpoints run in the thread pool), per replica.

Each is a shortcut, never the truth: a cached entry is keyed (or timed) so that a change in the database
retires it, and every replica keeps its own.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Generic, TypeVar

V = TypeVar("V")


class LRU(Generic[V]):
    """Values by key, least recently used out first, within `entries` and `max_bytes` (as `size` counts them)."""

    def __init__(self, entries: int, max_bytes: int, size: Callable[[V], int] = len) -> None:  # type: ignore[assignment]
        self._items: OrderedDict[Any, V] = OrderedDict()
        self._entries, self._max_bytes, self._bytes, self._size = entries, max_bytes, 0, size
        self._lock = threading.Lock()

    def get(self, key: Any) -> V | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
            return self._items.get(key)

    def put(self, key: Any, value: V) -> None:
        if self._size(value) > self._max_bytes:
            return
        with self._lock:
            if (old := self._items.pop(key, None)) is not None:
                self._bytes -= self._size(old)
            self._items[key] = value
            self._bytes += self._size(value)
            while len(self._items) > self._entries or self._bytes > self._max_bytes:
                self._bytes -= self._size(self._items.popitem(last=False)[1])


class TTLCache(Generic[V]):
    """Values by key for `seconds` after they were put (0: nothing is kept), at most `entries` of them."""

    def __init__(self, seconds: float, entries: int = 10_000) -> None:
        self._items: dict[Any, tuple[float, V]] = {}
        self._seconds, self._entries = seconds, entries
        self._lock = threading.Lock()

    def get(self, key: Any) -> V | None:
        with self._lock:
            found = self._items.get(key)
            if found is None:
                return None
            if found[0] <= time.monotonic():
                del self._items[key]
                return None
            return found[1]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def put(self, key: Any, value: V) -> None:
        if self._seconds <= 0:
            return
        with self._lock:
            if len(self._items) >= self._entries:  # full: drop what has expired, else the oldest
                now = time.monotonic()
                for stale in [k for k, (until, _) in self._items.items() if until <= now] or [next(iter(self._items))]:
                    del self._items[stale]
            self._items[key] = (time.monotonic() + self._seconds, value)
