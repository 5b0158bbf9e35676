"""The in-memory arrays of an index and the look-ups on them.

Rows are numbered in segment order. A row flagged ``recodes`` supersedes the
earlier row of the same item (``semid assign --recode-changed``): the later row is
the item's *active* row, the earlier one is *retired*. A retired semantic ID stays
reserved (never handed to another item) but is no longer served.

``order`` lists the active rows sorted by packed ID and ``sorted_packed`` their
packed IDs, so every prefix query is two ``searchsorted`` calls; ``retired_packed``
holds the reserved IDs of retired rows (sorted, ``retired_order`` their rows). Int
item ids are found through a sorted copy of the active rows' ids; string ids through
a dict. An ``IndexState`` is immutable: an append builds a new one (O(N) merge), so
a reader holding the old one is never disturbed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from semid.service.ids.layout import IdLayout
from semid.service.index.segments import SegmentData


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
    recodes: np.ndarray  # bool [N]: the row supersedes the item's earlier row
    active: np.ndarray  # bool [N]: the item's current row (False: retired)
    kept: pa.Table | None  # kept columns, N rows; None when the index keeps none
    order: np.ndarray  # int64 [A], active rows sorted by packed id
    sorted_packed: np.ndarray  # int64 [A]
    retired_order: np.ndarray  # int64 [R], retired rows sorted by packed id
    retired_packed: np.ndarray  # int64 [R], their reserved packed ids (a re-coded item keeping its ID is not here)
    id_order: np.ndarray | None  # int ids: active rows sorted by item id
    sorted_item_ids: np.ndarray | None  # int ids: item_ids[id_order]
    row_of_item: dict[str, int] | None  # str ids -> active row

    @property
    def size(self) -> int:
        """Items (active rows)."""
        return int(self.order.shape[0])

    @property
    def rows(self) -> int:
        """Rows in the segments, retired ones included (the FAISS index holds one vector per row)."""
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
        recodes = _concat([p.recodes for p in parts], bool, (0,))
        groups = _item_groups(id_kind, item_ids)
        active = _group_end(groups, last=True)
        active_rows = np.flatnonzero(active)
        order = active_rows[np.argsort(packed[active_rows], kind="stable")]
        retired_order = _reserved_rows(groups, packed, active_rows)
        id_order, sorted_ids, row_of_item = _item_lookup(id_kind, item_ids, active_rows)
        return cls(
            layout=layout,
            id_kind=id_kind,
            item_ids=item_ids,
            semantic_ids=semantic_ids,
            packed=packed,
            base_codes=_concat([p.base_codes for p in parts], np.int64, (0, layout.levels)),
            fallback=_concat([p.fallback for p in parts], bool, (0,)),
            embedding_hashes=_concat([p.embedding_hashes for p in parts], np.uint64, (0,)),
            recodes=recodes,
            active=active,
            kept=pa.concat_tables(kept_tables) if kept_tables else None,
            order=order,
            sorted_packed=packed[order],
            retired_order=retired_order,
            retired_packed=packed[retired_order],
            id_order=id_order,
            sorted_item_ids=sorted_ids,
            row_of_item=row_of_item,
        )

    def extended(self, part: SegmentData) -> IndexState:
        """A new state with ``part``'s rows appended (sorted arrays merged, O(N)).

        ``part`` is validated: its ``recodes`` rows name active items, its other rows new
        ones. Each re-coded item's old row is retired; its ID becomes reserved unless the
        new row keeps it.
        """
        n = self.rows
        packed_new = self.layout.pack(part.semantic_ids)
        item_ids = np.concatenate([self.item_ids, part.item_ids.astype(self.item_ids.dtype)])
        recoded_new = np.flatnonzero(part.recodes)
        old_rows = self.rows_of_items(part.item_ids[recoded_new]) if recoded_new.shape[0] else _NO_ROWS
        active = np.concatenate([self.active, np.ones(part.rows, dtype=bool)])
        active[old_rows] = False
        # active sorted arrays: drop the retired rows, merge in the new ones
        order, sorted_packed = self.order, self.sorted_packed
        if old_rows.shape[0]:
            drop = np.searchsorted(sorted_packed, self.packed[old_rows])
            order, sorted_packed = np.delete(order, drop), np.delete(sorted_packed, drop)
        order_new = np.argsort(packed_new, kind="stable")
        at = np.searchsorted(sorted_packed, packed_new[order_new], side="right")
        order = np.insert(order, at, order_new + n)
        sorted_packed = np.insert(sorted_packed, at, packed_new[order_new])
        # reserved ids: the retired rows' ids unless the superseding row kept them
        retired_order, retired_packed = self.retired_order, self.retired_packed
        if old_rows.shape[0]:
            moved = old_rows[self.packed[old_rows] != packed_new[recoded_new]]
            by_packed = np.argsort(self.packed[moved], kind="stable")
            at_r = np.searchsorted(retired_packed, self.packed[moved][by_packed])
            retired_order = np.insert(retired_order, at_r, moved[by_packed])
            retired_packed = np.insert(retired_packed, at_r, self.packed[moved][by_packed])
        id_order, sorted_ids, row_of_item = self.id_order, self.sorted_item_ids, self.row_of_item
        if self.id_kind == "int":
            assert self.id_order is not None and self.sorted_item_ids is not None  # invariant of int kind
            id_order = self.id_order.copy()
            if recoded_new.shape[0]:  # the item keeps its place in id order; its row moves to the new one
                pos = np.searchsorted(self.sorted_item_ids, part.item_ids[recoded_new])
                id_order[pos] = recoded_new + n
            fresh = np.flatnonzero(~part.recodes)
            new_ids = item_ids[n + fresh]
            by_id = np.argsort(new_ids, kind="stable")
            at_id = np.searchsorted(self.sorted_item_ids, new_ids[by_id], side="right")
            id_order = np.insert(id_order, at_id, fresh[by_id] + n)
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
            recodes=np.concatenate([self.recodes, part.recodes]),
            active=active,
            kept=kept,
            order=order,
            sorted_packed=sorted_packed,
            retired_order=retired_order,
            retired_packed=retired_packed,
            id_order=id_order,
            sorted_item_ids=sorted_ids,
            row_of_item=row_of_item,
        )

    # --- look-ups ------------------------------------------------------------------

    def rows_of_items(self, item_ids: np.ndarray) -> np.ndarray:
        """Active row per item id, -1 if unknown. Ids must already have the index's kind."""
        if self.id_kind == "int":
            assert self.sorted_item_ids is not None and self.id_order is not None
            query = np.asarray(item_ids, dtype=np.int64).reshape(-1)
            return _find_sorted(self.sorted_item_ids, self.id_order, query)
        table = self.row_of_item or {}
        return np.fromiter((table.get(i, -1) for i in item_ids), dtype=np.int64, count=len(item_ids))

    def rows_of_packed(self, keys: np.ndarray) -> np.ndarray:
        """Active row per packed semantic id, -1 if no item has it now."""
        return _find_sorted(self.sorted_packed, self.order, np.asarray(keys, dtype=np.int64).reshape(-1))

    def retired_rows_of_packed(self, keys: np.ndarray) -> np.ndarray:
        """Retired row per packed semantic id (a reserved id), -1 if none."""
        return _find_sorted(self.retired_packed, self.retired_order, np.asarray(keys, dtype=np.int64).reshape(-1))

    def taken_sorted(self) -> np.ndarray:
        """Every packed id no new item may take (active and reserved), sorted."""
        if self.retired_packed.shape[0] == 0:
            return self.sorted_packed
        return np.sort(np.concatenate([self.sorted_packed, self.retired_packed]), kind="stable")

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
        """Packed semantic ids held by more than one item (active or reserved)."""
        taken = self.taken_sorted()
        same = taken[1:] == taken[:-1]
        return np.unique(taken[1:][same])

    def duplicate_item_ids(self) -> list[object]:
        """Item ids with a second row that does not say it re-codes the item."""
        groups = _item_groups(self.id_kind, self.item_ids)
        first = _group_end(groups, last=False)
        bad = np.flatnonzero(first == self.recodes)  # a first row must not re-code; a later row must
        return [_plain(x) for x in self.item_ids[bad].tolist()]


def _find_sorted(sorted_values: np.ndarray, order: np.ndarray, query: np.ndarray) -> np.ndarray:
    if sorted_values.shape[0] == 0:
        return np.full(query.shape[0], -1, dtype=np.int64)
    pos = np.searchsorted(sorted_values, query)
    pos = np.minimum(pos, sorted_values.shape[0] - 1)
    hit = sorted_values[pos] == query
    return np.where(hit, order[pos], -1).astype(np.int64)


_NO_ROWS = np.zeros(0, dtype=np.int64)


def _item_lookup(
    id_kind: str, item_ids: np.ndarray, active_rows: np.ndarray
) -> tuple[np.ndarray | None, np.ndarray | None, dict[str, int] | None]:
    if id_kind == "int":
        id_order = active_rows[np.argsort(item_ids[active_rows], kind="stable")]
        return id_order, item_ids[id_order], None
    return None, None, dict(zip(item_ids[active_rows].tolist(), active_rows.tolist(), strict=True))


def _item_groups(id_kind: str, item_ids: np.ndarray) -> np.ndarray:
    """A dense int per distinct item id (equal ids, equal ints)."""
    keys = item_ids if id_kind == "int" else item_ids.astype(np.str_)
    if keys.shape[0] == 0:
        return _NO_ROWS
    return np.unique(keys, return_inverse=True)[1].reshape(-1)


def _group_end(groups: np.ndarray, *, last: bool) -> np.ndarray:
    """bool per row: it is the last (else the first) row, in row order, of its group."""
    out = np.zeros(groups.shape[0], dtype=bool)
    if groups.shape[0]:
        by_group = np.argsort(groups, kind="stable")
        g = groups[by_group]
        change = g[1:] != g[:-1]
        out[by_group[np.r_[change, True] if last else np.r_[True, change]]] = True
    return out


def _reserved_rows(groups: np.ndarray, packed: np.ndarray, active_rows: np.ndarray) -> np.ndarray:
    """Retired rows whose id is reserved, sorted by packed id: one row per (item, id), and
    none for an id the item's active row still holds."""
    if groups.shape[0] == active_rows.shape[0]:
        return _NO_ROWS
    current = np.empty(int(groups.max()) + 1, dtype=np.int64)
    current[groups[active_rows]] = packed[active_rows]
    retired = np.ones(groups.shape[0], dtype=bool)
    retired[active_rows] = False
    rows = np.flatnonzero(retired)
    rows = rows[packed[rows] != current[groups[rows]]]
    if rows.shape[0] == 0:
        return _NO_ROWS
    by = np.lexsort((rows, groups[rows], packed[rows]))  # packed, then item, then row
    rows = rows[by]
    last = np.r_[(packed[rows][1:] != packed[rows][:-1]) | (groups[rows][1:] != groups[rows][:-1]), True]
    return rows[last]


def _plain(value: object) -> object:
    return value.item() if isinstance(value, np.generic) else value


def _concat(arrays: Sequence[np.ndarray], dtype: type, empty_shape: tuple[int, ...]) -> np.ndarray:
    if not arrays:
        return np.zeros(empty_shape, dtype=dtype)
    return np.concatenate([np.asarray(a).astype(dtype, copy=False) for a in arrays])
