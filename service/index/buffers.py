"""``AppendBuffer``: a growable array whose filled prefix several snapshots share.

An index's per-row columns only ever grow at the end (rows are numbered in segment order and never
rewritten), so a write does not copy them: it fills the free capacity after the last row and hands
the new snapshot a longer view. An older snapshot keeps its shorter view, whose rows never change.
Capacity doubles when full, so appending costs amortised O(rows appended).

Only the writer appends (under the index's writer lock). A view that is no longer the buffer's
longest (a snapshot that was replaced and is extended again, e.g. after a failed write) is copied
before anything is appended, so no snapshot ever sees another one's rows.
"""

from __future__ import annotations

import threading

import numpy as np

_MIN_CAPACITY = 1024


class AppendBuffer:
    """Backing store of one column; ``append(view, values)`` returns the longer view."""

    def __init__(self, initial: np.ndarray) -> None:
        arr = np.asarray(initial)
        capacity = max(_MIN_CAPACITY, arr.shape[0] + arr.shape[0] // 4)  # headroom: no copy at the first writes
        self._data = np.empty((capacity, *arr.shape[1:]), dtype=arr.dtype)
        self._data[: arr.shape[0]] = arr
        self._size = arr.shape[0]
        self._lock = threading.Lock()

    def view(self) -> np.ndarray:
        return self._data[: self._size]

    def append(self, view: np.ndarray, values: np.ndarray) -> tuple[AppendBuffer, np.ndarray]:
        """``(buffer, view + values)``: this buffer when ``view`` is its whole filled prefix, else a
        fresh one (the caller branched from an older snapshot)."""
        values = np.asarray(values, dtype=self._data.dtype)
        with self._lock:
            if view.shape[0] != self._size or view.base is not self._data:
                fresh = AppendBuffer(np.concatenate([view, values]))
                return fresh, fresh.view()
            need = self._size + values.shape[0]
            if need > self._data.shape[0]:
                grown = np.empty((max(need, 2 * self._data.shape[0]), *self._data.shape[1:]), dtype=self._data.dtype)
                grown[: self._size] = self._data[: self._size]
                self._data = grown  # older views keep the old array alive; its rows are never written again
            self._data[self._size : need] = values
            self._size = need
            return self, self._data[:need]
