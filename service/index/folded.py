"""``FoldedRows``: the sorted look-up arrays of an index's first rows, built in one O(N) pass.

This is the large, immutable half of an ``IndexState`` (the small half is a ``Delta``). It is built
from scratch when an index is opened, and rebuilt by merging a delta into it (``merged``) only when
the delta has grown past a fraction of the index, so each row costs O(1) amortised.

``order`` lists the active rows sorted by packed ID and ``sorted_packed`` their packed IDs, so a
prefix query is two ``searchsorted`` calls; ``retired_packed`` holds the reserved IDs of retired rows
(sorted, ``retired_order`` their rows). Int item ids are found through a sorted copy of the active
rows' ids; string ids through a dict. ``taken`` counts the IDs no new item may take per base bucket.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from semid.service.ids.dedup import BucketCounts
from semid.service.index.delta import NO_ROWS, Delta


@dataclass(frozen=True, kw_only=True)
class FoldedRows:
    rows: int  # rows [0, rows) are folded
    active: np.ndarray  # bool [rows]: the item's current row (False: retired)
    inactive_rows: np.ndarray  # int64, sorted: rows with active False (k-NN skips them)
    order: np.ndarray  # int64 [A], active rows sorted by packed id
    sorted_packed: np.ndarray  # int64 [A]
    retired_order: np.ndarray  # int64 [R], retired rows whose id is reserved, sorted by packed id
    retired_packed: np.ndarray  # int64 [R]
    id_order: np.ndarray | None  # int ids: active rows sorted by item id
    sorted_item_ids: np.ndarray | None  # int ids: item_ids[id_order]
    row_of_item: dict[str, int] | None  # str ids -> active row
    kept: pa.Table | None  # kept columns of rows [0, rows), one chunk
    taken: BucketCounts  # per base bucket: active + reserved ids

    @property
    def size(self) -> int:
        return int(self.order.shape[0])

    @classmethod
    def build(
        cls, *, id_kind: str, bits: int, item_ids: np.ndarray, packed: np.ndarray, kept: pa.Table | None
    ) -> FoldedRows:
        """From scratch, O(N log N): the last row of each item is active, earlier ones retired."""
        distinct = id_kind == "int" and _increasing(item_ids)  # the usual catalog: one row per item, in order
        groups = NO_ROWS if distinct else item_groups(id_kind, item_ids)
        active = np.ones(item_ids.shape[0], dtype=bool) if distinct else group_end(groups, last=True)
        every = distinct or bool(active.all())  # no re-codes: skip the gathers (GBs of copies at 10M rows)
        active_rows = np.arange(packed.shape[0], dtype=np.int64) if every else np.flatnonzero(active)
        order = stable_argsort(packed) if every else active_rows[stable_argsort(packed[active_rows])]
        retired_order = NO_ROWS if every else _reserved_rows(groups, packed, active_rows)
        id_order, sorted_ids, row_of_item = _item_lookup(id_kind, item_ids, active_rows)
        sorted_packed = packed[order]
        retired_packed = packed[retired_order]
        return cls(
            rows=int(packed.shape[0]),
            active=active,
            inactive_rows=np.flatnonzero(~active),
            order=order,
            sorted_packed=sorted_packed,
            retired_order=retired_order,
            retired_packed=retired_packed,
            id_order=id_order,
            sorted_item_ids=sorted_ids,
            row_of_item=row_of_item,
            kept=kept.combine_chunks() if kept is not None else None,
            taken=_taken_counts(sorted_packed, retired_packed, bits),
        )

    def merged(self, delta: Delta) -> FoldedRows:
        """These rows with ``delta``'s folded in, O(N): sorted arrays merged, retired rows dropped."""
        if delta.stop == self.rows:
            return self
        active = np.ones(delta.stop, dtype=bool)
        active[: self.rows] = self.active
        active[delta.retired_base] = False
        active[delta.retired_new] = False
        keep = active[self.order]
        order, sorted_packed = _merge(self.order[keep], self.sorted_packed[keep], delta.order, delta.sorted_packed)
        retired_order, retired_packed = _merge(
            self.retired_order, self.retired_packed, delta.reserved_order, delta.reserved_packed
        )
        id_order, sorted_ids, row_of_item = self.id_order, self.sorted_item_ids, self.row_of_item
        if self.id_order is not None and self.sorted_item_ids is not None:
            keep_id = active[self.id_order]
            id_order, sorted_ids = _merge(
                self.id_order[keep_id], self.sorted_item_ids[keep_id], delta.id_rows, delta.sorted_ids
            )
        else:
            row_of_item = dict(self.row_of_item or {})
            row_of_item.update(delta.row_of_item or {})
        kept = self.kept
        if delta.kept is not None:
            kept = delta.kept if kept is None else pa.concat_tables([kept, delta.kept.cast(kept.schema)])
            kept = kept.combine_chunks()
        return FoldedRows(
            rows=delta.stop,
            active=active,
            inactive_rows=np.flatnonzero(~active),
            order=order,
            sorted_packed=sorted_packed,
            retired_order=retired_order,
            retired_packed=retired_packed,
            id_order=id_order,
            sorted_item_ids=sorted_ids,
            row_of_item=row_of_item,
            kept=kept,
            taken=merge_counts(self.taken, delta.taken),
        )


def merge_counts(base: BucketCounts, extra: BucketCounts) -> BucketCounts:
    """``base`` + ``extra`` in O(len(base) + len(extra)), both sorted by key."""
    if len(extra) == 0:
        return base
    keys, counts = base.keys, base.counts.copy()
    pos = np.searchsorted(keys, extra.keys)
    hit = pos < keys.shape[0]
    hit[hit] = keys[pos[hit]] == extra.keys[hit]
    np.add.at(counts, pos[hit], extra.counts[hit])
    out = BucketCounts()
    out._keys = np.insert(keys, pos[~hit], extra.keys[~hit])
    out._counts = np.insert(counts, pos[~hit], extra.counts[~hit])
    return out


def find_sorted(sorted_values: np.ndarray, order: np.ndarray, query: np.ndarray) -> np.ndarray:
    """``order`` at each query's position in ``sorted_values``, -1 where it is absent."""
    if sorted_values.shape[0] == 0:
        return np.full(query.shape[0], -1, dtype=np.int64)
    pos = np.searchsorted(sorted_values, query)
    pos = np.minimum(pos, sorted_values.shape[0] - 1)
    hit = sorted_values[pos] == query
    return np.where(hit, order[pos], -1).astype(np.int64)


def _merge(
    rows_a: np.ndarray, keys_a: np.ndarray, rows_b: np.ndarray, keys_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Two (rows, sorted keys) lists merged into one, b after a among equal keys."""
    if keys_b.shape[0] == 0:
        return rows_a, keys_a
    at = np.searchsorted(keys_a, keys_b, side="right")
    return np.insert(rows_a, at, rows_b), np.insert(keys_a, at, keys_b)


def _taken_counts(sorted_packed: np.ndarray, retired_packed: np.ndarray, bits: int) -> BucketCounts:
    taken = sorted_packed
    if retired_packed.shape[0]:
        taken = np.sort(np.concatenate([sorted_packed, retired_packed]), kind="stable")
    return BucketCounts.from_sorted_keys(taken >> bits)


def _item_lookup(
    id_kind: str, item_ids: np.ndarray, active_rows: np.ndarray
) -> tuple[np.ndarray | None, np.ndarray | None, dict[str, int] | None]:
    if id_kind == "int":
        every = active_rows.shape[0] == item_ids.shape[0]  # active_rows is then 0..n-1
        id_order = stable_argsort(item_ids) if every else active_rows[stable_argsort(item_ids[active_rows])]
        if every and _increasing(item_ids):  # already in id order (id_order is 0..n-1): no copy
            return id_order, item_ids, None
        return id_order, item_ids[id_order], None
    return None, None, dict(zip(item_ids[active_rows].tolist(), active_rows.tolist(), strict=True))


def stable_argsort(keys: np.ndarray) -> np.ndarray:
    """``np.argsort(keys, kind="stable")`` for int64 keys, several times faster at millions of rows.

    Opening a 10M-item index sorts its packed IDs and item ids; NumPy's stable argsort of 10M random
    int64 takes about 9 s here, its ``np.sort`` (SIMD) under 1 s. So when key range and row count fit
    in 63 bits together, the keys are shifted above the row numbers and sorted as values: equal keys
    then come out in row order, which is what stable means. Already sorted keys (catalogs usually
    come in id order) are detected in O(n).
    """
    arr = np.asarray(keys)
    n = arr.shape[0]
    if n < 2 or arr.dtype.kind not in "iu":
        return np.argsort(arr, kind="stable")
    arr = arr.astype(np.int64, copy=False)
    if bool((arr[1:] >= arr[:-1]).all()):
        return np.arange(n, dtype=np.int64)
    low = int(arr.min())
    span = int(arr.max()) - low
    row_bits = max(1, (n - 1).bit_length())
    if span.bit_length() + row_bits > 63:
        return np.argsort(arr, kind="stable")
    combined = (arr - low) << row_bits  # no overflow: span < 2 ** (63 - row_bits)
    combined |= np.arange(n, dtype=np.int64)
    combined.sort()
    combined &= (1 << row_bits) - 1
    return combined


def _increasing(values: np.ndarray) -> bool:
    return bool((values[1:] > values[:-1]).all())


def item_groups(id_kind: str, item_ids: np.ndarray) -> np.ndarray:
    """A dense int per distinct item id (equal ids, equal ints; numbered in sorted id order)."""
    keys = item_ids if id_kind == "int" else item_ids.astype(np.str_)
    if keys.shape[0] == 0:
        return NO_ROWS
    if id_kind != "int":
        return np.unique(keys, return_inverse=True)[1].reshape(-1)
    if _increasing(keys):  # distinct and in order: the usual catalog
        return np.arange(keys.shape[0], dtype=np.int64)
    order = stable_argsort(keys)
    ordered = keys[order]
    ranks = np.empty(keys.shape[0], dtype=np.int64)
    ranks[order] = np.cumsum(np.r_[False, ordered[1:] != ordered[:-1]])
    return ranks


def group_end(groups: np.ndarray, *, last: bool) -> np.ndarray:
    """bool per row: it is the last (else the first) row, in row order, of its group."""
    if _increasing(groups):  # one row per group
        return np.ones(groups.shape[0], dtype=bool)
    out = np.zeros(groups.shape[0], dtype=bool)
    if groups.shape[0]:
        by_group = stable_argsort(groups)
        g = groups[by_group]
        change = g[1:] != g[:-1]
        out[by_group[np.r_[change, True] if last else np.r_[True, change]]] = True
    return out


def _reserved_rows(groups: np.ndarray, packed: np.ndarray, active_rows: np.ndarray) -> np.ndarray:
    """Retired rows whose id is reserved, sorted by packed id: one row per (item, id), and
    none for an id the item's active row still holds."""
    if groups.shape[0] == active_rows.shape[0]:
        return NO_ROWS
    current = np.empty(int(groups.max()) + 1, dtype=np.int64)
    current[groups[active_rows]] = packed[active_rows]
    retired = np.ones(groups.shape[0], dtype=bool)
    retired[active_rows] = False
    rows = np.flatnonzero(retired)
    rows = rows[packed[rows] != current[groups[rows]]]
    if rows.shape[0] == 0:
        return NO_ROWS
    by = np.lexsort((rows, groups[rows], packed[rows]))  # packed, then item, then row (few rows: re-codes)
    rows = rows[by]
    last = np.r_[(packed[rows][1:] != packed[rows][:-1]) | (groups[rows][1:] != groups[rows][:-1]), True]
    return rows[last]
