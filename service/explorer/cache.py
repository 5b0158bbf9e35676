"""Answers computed from one index snapshot, kept while that snapshot is the served one.

Snapshots are immutable, so an answer never goes stale while its snapshot is served; a write swaps in a new
snapshot and the next request starts a fresh cache. Bounded: the least recently used answers are dropped.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")


class SnapshotCache:
    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._lock = threading.Lock()
        self._owner: weakref.ref | None = None
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, snapshot: object, key: Hashable, compute: Callable[[], T]) -> T:
        """The cached answer for ``key`` of ``snapshot``, computed (outside the lock) on a miss."""
        with self._lock:
            if self._owner is not None and self._owner() is snapshot and key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        value = compute()
        with self._lock:
            if self._owner is None or self._owner() is not snapshot:
                self._owner, self._entries = weakref.ref(snapshot), OrderedDict()
            self._entries[key] = value
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return value
