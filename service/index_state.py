"""The in-memory arrays of an index and the look-ups on them.

Rows are numbered in segment order. ``order = argsort(packed)`` and
``sorted_packed = packed[order]`` make every prefix query two ``searchsorted``
calls. Int item ids are found through a sorted copy as well; string ids through a
dict. An ``IndexState`` is immutable: an append builds a new one (O(N) merge), so a
reader holding the old one is never disturbed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from service.ids import IdLayout
from service.segments import SegmentData


@dataclass(frozen=True, kw_only=True)
class IndexState:
    layout: IdLayout
    id_kind: str
    item_ids: np.ndarray  # int64 [N] or object [N] of str
    semantic_ids: np.ndarray  # int64 [N, L+1]
    packed: np.ndarray  # int64 [N]
    base_codes: np.ndarray  # int64 [N, L]
    fallback: np.ndarray  # bool [N]
    embedding_hashes: np.ndarray  # uint64 [N]
    kept: pa.Table | None  # kept columns, N rows; None when the index keeps none
    order: np.ndarray  # int64 [N], rows sorted by packed id
    sorted_packed: np.ndarray  # int64 [N]
    id_order: np.ndarray | None  # int ids: rows sorted by item id
    sorted_item_ids: np.ndarray | None  # int ids: item_ids[id_order]
    row_of_item: dict[str, int] | None  # str ids

    @property
    def size(self) -> int:
        return int(self.packed.shape[0])

    # --- construction --------------------------------------------------------------

    @classmethod
    def from_segments(cls, *, layout: IdLayout, id_kind: str, parts: Sequence[SegmentData]) -> IndexState:
        width = layout.width
        if id_kind == "int":
            item_ids = _concat([p.item_ids for p in parts], np.int64, (0,))
        else:
            item_ids = _concat([p.item_ids for p in parts], object, (0,))
        semantic_ids = _concat([p.semantic_ids for p in parts], np.int64, (0, width))
        packed = layout.pack(semantic_ids) if semantic_ids.shape[0] else np.zeros(0, dtype=np.int64)
        kept_tables = [p.kept for p in parts if p.kept.num_columns]
        order = np.argsort(packed, kind="stable")
        id_order, sorted_ids, row_of_item = _item_lookup(id_kind, item_ids)
        return cls(
            layout=layout,
            id_kind=id_kind,
            item_ids=item_ids,
            semantic_ids=semantic_ids,
            packed=packed,
            base_codes=_concat([p.base_codes for p in parts], np.int64, (0, layout.levels)),
            fallback=_concat([p.fallback for p in parts], bool, (0,)),
            embedding_hashes=_concat([p.embedding_hashes for p in parts], np.uint64, (0,)),
            kept=pa.concat_tables(kept_tables) if kept_tables else None,
            order=order,
            sorted_packed=packed[order],
            id_order=id_order,
            sorted_item_ids=sorted_ids,
            row_of_item=row_of_item,
        )

    def extended(self, part: SegmentData) -> IndexState:
        """A new state with ``part``'s rows appended (sorted arrays merged, O(N))."""
        n = self.size
        packed_new = self.layout.pack(part.semantic_ids)
        order_new = np.argsort(packed_new, kind="stable")
        at = np.searchsorted(self.sorted_packed, packed_new[order_new], side="right")
        order = np.insert(self.order, at, order_new + n)
        sorted_packed = np.insert(self.sorted_packed, at, packed_new[order_new])
        item_ids = np.concatenate([self.item_ids, part.item_ids.astype(self.item_ids.dtype)])
        id_order, sorted_ids, row_of_item = self.id_order, self.sorted_item_ids, self.row_of_item
        if self.id_kind == "int":
            assert self.id_order is not None and self.sorted_item_ids is not None  # invariant of int kind
            new_ids = item_ids[n:]
            by_id = np.argsort(new_ids, kind="stable")
            at_id = np.searchsorted(self.sorted_item_ids, new_ids[by_id], side="right")
            id_order = np.insert(self.id_order, at_id, by_id + n)
            sorted_ids = np.insert(self.sorted_item_ids, at_id, new_ids[by_id])
        else:
            row_of_item = dict(self.row_of_item or {})
            row_of_item.update(zip(part.item_ids.tolist(), range(n, n + part.rows), strict=True))
        kept = self.kept
        if part.kept.num_columns:
            kept = part.kept if kept is None else pa.concat_tables([kept, part.kept.cast(kept.schema)])
        return IndexState(
            layout=self.layout,
            id_kind=self.id_kind,
            item_ids=item_ids,
            semantic_ids=np.concatenate([self.semantic_ids, part.semantic_ids]),
            packed=np.concatenate([self.packed, packed_new]),
            base_codes=np.concatenate([self.base_codes, part.base_codes]),
            fallback=np.concatenate([self.fallback, part.fallback]),
            embedding_hashes=np.concatenate([self.embedding_hashes, part.embedding_hashes]),
            kept=kept,
            order=order,
            sorted_packed=sorted_packed,
            id_order=id_order,
            sorted_item_ids=sorted_ids,
            row_of_item=row_of_item,
        )

    # --- look-ups ------------------------------------------------------------------

    def rows_of_items(self, item_ids: np.ndarray) -> np.ndarray:
        """Row per item id, -1 if unknown. Ids must already have the index's kind."""
        if self.id_kind == "int":
            assert self.sorted_item_ids is not None and self.id_order is not None
            query = np.asarray(item_ids, dtype=np.int64).reshape(-1)
            return _find_sorted(self.sorted_item_ids, self.id_order, query)
        table = self.row_of_item or {}
        return np.fromiter((table.get(i, -1) for i in item_ids), dtype=np.int64, count=len(item_ids))

    def rows_of_packed(self, keys: np.ndarray) -> np.ndarray:
        """Row per packed semantic id, -1 if no item has it."""
        return _find_sorted(self.sorted_packed, self.order, np.asarray(keys, dtype=np.int64).reshape(-1))

    def sorted_bounds(self, lo: int, hi: int) -> tuple[int, int]:
        """Positions ``[start, stop)`` in sorted order of the packed ids in ``[lo, hi)``."""
        start = int(np.searchsorted(self.sorted_packed, lo, side="left"))
        stop = int(np.searchsorted(self.sorted_packed, hi, side="left"))
        return start, stop

    def children(self, prefix: tuple[int, ...]) -> list[tuple[int, int]]:
        """(next code, item count) under a validated prefix of length 0..L."""
        layout = self.layout
        if prefix:
            start, stop = self.sorted_bounds(*layout.prefix_range(prefix))
        else:
            start, stop = 0, self.size
        if start == stop:
            return []
        shift = layout.bits * (layout.width - 1 - len(prefix))
        codes = (self.sorted_packed[start:stop] >> shift) & ((1 << layout.bits) - 1)
        # codes are sorted inside a prefix range, so runs give the counts in O(n)
        starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
        counts = np.diff(np.r_[starts, codes.shape[0]])
        return list(zip(codes[starts].tolist(), counts.tolist(), strict=True))

    def duplicate_packed(self) -> np.ndarray:
        """Packed semantic ids held by more than one row."""
        same = self.sorted_packed[1:] == self.sorted_packed[:-1]
        return np.unique(self.sorted_packed[1:][same])

    def duplicate_item_ids(self) -> list[object]:
        if self.id_kind == "int":
            assert self.sorted_item_ids is not None
            s = self.sorted_item_ids
            return np.unique(s[1:][s[1:] == s[:-1]]).tolist()
        uniq, counts = np.unique(self.item_ids.astype(np.str_), return_counts=True)
        return uniq[counts > 1].tolist()


def _find_sorted(sorted_values: np.ndarray, order: np.ndarray, query: np.ndarray) -> np.ndarray:
    if sorted_values.shape[0] == 0:
        return np.full(query.shape[0], -1, dtype=np.int64)
    pos = np.searchsorted(sorted_values, query)
    pos = np.minimum(pos, sorted_values.shape[0] - 1)
    hit = sorted_values[pos] == query
    return np.where(hit, order[pos], -1).astype(np.int64)


def _item_lookup(
    id_kind: str, item_ids: np.ndarray
) -> tuple[np.ndarray | None, np.ndarray | None, dict[str, int] | None]:
    if id_kind == "int":
        id_order = np.argsort(item_ids, kind="stable")
        return id_order, item_ids[id_order], None
    return None, None, dict(zip(item_ids.tolist(), range(item_ids.shape[0]), strict=True))


def _concat(arrays: Sequence[np.ndarray], dtype: type, empty_shape: tuple[int, ...]) -> np.ndarray:
    if not arrays:
        return np.zeros(empty_shape, dtype=dtype)
    return np.concatenate([np.asarray(a).astype(dtype, copy=False) for a in arrays])
