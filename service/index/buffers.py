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


def _is_prefix_with_room(arr: np.ndarray, base: np.ndarray, capacity: int) -> bool:
    """``arr`` is ``base[:len(arr)]`` (same start, dtype and row shape, both C-contiguous, writable),
    ``base`` owns its memory and holds exactly ``capacity`` rows: an array from ``with_room``."""
    return (
        base.shape[0] == capacity  # exactly what ``with_room`` allocates for these rows
        and base.base is None
        and base.shape[1:] == arr.shape[1:]
        and base.dtype == arr.dtype
        and base.flags.c_contiguous
        and base.flags.writeable
        and arr.flags.c_contiguous
        and arr.__array_interface__["data"][0] == base.__array_interface__["data"][0]
    )


class AppendBuffer:
    """Backing store of one column; ``append(view, values)`` returns the longer view."""

    def __init__(self, initial: np.ndarray) -> None:
        arr = np.asarray(initial)
        capacity = max(_MIN_CAPACITY, arr.shape[0] + arr.shape[0] // 4)  # headroom: no copy at the first writes
        base = arr.base
        if isinstance(base, np.ndarray) and _is_prefix_with_room(arr, base, capacity):
            self._data = base  # made with room to grow (``with_room``): adopted, not copied (GBs at 10M rows)
        else:
            self._data = np.empty((capacity, *arr.shape[1:]), dtype=arr.dtype)
            self._data[: arr.shape[0]] = arr
        self._size = arr.shape[0]
        self._lock = threading.Lock()

    @staticmethod
    def with_room(rows: int, tail_shape: tuple[int, ...], dtype: type) -> np.ndarray:
        """An uninitialised ``[rows, *tail_shape]`` array whose base has the headroom a buffer keeps, so
        ``AppendBuffer(filled)`` adopts it instead of copying it. Only for an array nothing else writes to."""
        capacity = max(_MIN_CAPACITY, rows + rows // 4)
        return np.empty((capacity, *tail_shape), dtype=dtype)[:rows]

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
