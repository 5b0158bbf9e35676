"""The in-memory arrays of an index and the look-ups on them.

Rows are numbered in segment order. A row flagged ``recodes`` supersedes the
earlier row of the same item (``semid assign --recode-changed``): the later row is
the item's *active* row, the earlier one is *retired*. A retired semantic ID stays
reserved (never handed to another item) but is no longer served.

An ``IndexState`` is immutable and log-structured, so a write costs O(batch), not O(index):

- per-row columns (``item_ids``, ``semantic_ids``, ``packed``...) are views of append-only
  buffers (``AppendBuffer``) that successive states share;
- the sorted look-up arrays come in two halves: ``FoldedRows`` over the first rows (large,
  built once) and a ``Delta`` over the rows appended since (small, rebuilt per write). Every
  look-up asks both and combines the answers;
- when the delta passes ``max(FOLD_MIN_ROWS, rows / FOLD_FRACTION)`` rows, the write that
  passed it folds it in (O(N), so O(FOLD_FRACTION) per row amortised; in memory only).

Bulk readers (export, the trie, stats, evaluation) use the whole-index arrays ``order``,
``sorted_packed``, ``active``...: they are merged on first use and cached on the state (that
merge is the fold, so the next write starts from it). A reader holding an old state is never
disturbed: nothing it can see is ever written again.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from semid.service.ids.dedup import BucketCounts
from semid.service.ids.layout import IdLayout
from semid.service.index.buffers import AppendBuffer
from semid.service.index.delta import Delta
from semid.service.index.folded import NO_ROWS, FoldedRows, find_sorted, group_end, item_groups, merge_counts
from semid.service.index.segments import SegmentData

FOLD_MIN_ROWS = 16_384  # a delta smaller than this is never folded
FOLD_FRACTION = 8  # ... nor one smaller than rows / FOLD_FRACTION
_COLUMNS = ("item_ids", "semantic_ids", "packed", "base_codes", "fallback", "embedding_hashes", "recodes")


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
    folded: FoldedRows  # look-ups over rows [0, folded.rows)
    delta: Delta  # look-ups over rows [folded.rows, N) and the folded rows they retired
    buffers: dict[str, AppendBuffer] = field(repr=False, compare=False)

    @property
    def size(self) -> int:
        """Items (active rows)."""
        return self.folded.size + self.delta.size_change

    @property
    def rows(self) -> int:
        """Rows in the segments, retired ones included (the vector index holds one vector per row)."""
        return int(self.packed.shape[0])

    # --- construction --------------------------------------------------------------

    @classmethod
    def from_segments(cls, *, layout: IdLayout, id_kind: str, parts: Sequence[SegmentData]) -> IndexState:
        """From scratch (opening an index), O(N log N); the result is fully folded."""
        dtype: type = np.int64 if id_kind == "int" else object
        item_ids = _concat([p.item_ids for p in parts], dtype, (0,))
        semantic_ids = _concat([p.semantic_ids for p in parts], np.int64, (0, layout.width))
        packed = _concat(
            [p.packed if p.packed is not None else layout.pack(p.semantic_ids) for p in parts], np.int64, (0,)
        )
        kept_tables = [p.kept for p in parts if p.kept.num_columns]
        columns = {
            "item_ids": item_ids,
            "semantic_ids": semantic_ids,
            "packed": packed,
            "base_codes": _concat([p.base_codes for p in parts], np.int64, (0, layout.levels)),
            "fallback": _concat([p.fallback for p in parts], bool, (0,)),
            "embedding_hashes": _concat([p.embedding_hashes for p in parts], np.uint64, (0,)),
            "recodes": _concat([p.recodes for p in parts], bool, (0,)),
        }
        buffers = {name: AppendBuffer(values) for name, values in columns.items()}
        folded = FoldedRows.build(
            id_kind=id_kind,
            bits=layout.bits,
            item_ids=item_ids,
            packed=packed,
            kept=pa.concat_tables(kept_tables) if kept_tables else None,
        )
        return cls(
            layout=layout,
            id_kind=id_kind,
            **{name: buf.view() for name, buf in buffers.items()},
            folded=folded,
            delta=Delta.empty(folded.rows, id_kind),
            buffers=buffers,
        )

    def extended(self, part: SegmentData) -> IndexState:
        """A new state with ``part``'s rows appended, O(part + delta) (amortised: see the module).

        ``part`` is validated: its ``recodes`` rows name active items, its other rows new
        ones. Each re-coded item's old row is retired; its ID becomes reserved unless the
        new row keeps it.
        """
        if self.rows == 0:  # e.g. the first batch of a new index: build it folded, once
            return IndexState.from_segments(layout=self.layout, id_kind=self.id_kind, parts=[part])
        recoding = np.flatnonzero(part.recodes)
        old_rows = self.rows_of_items(part.item_ids[recoding]) if recoding.shape[0] else NO_ROWS
        new_columns = {
            "item_ids": np.asarray(part.item_ids).astype(self.item_ids.dtype),
            "semantic_ids": part.semantic_ids,
            "packed": self.layout.pack(part.semantic_ids),
            "base_codes": part.base_codes,
            "fallback": part.fallback,
            "embedding_hashes": part.embedding_hashes,
            "recodes": part.recodes,
        }
        buffers, views = {}, {}
        for name in _COLUMNS:
            buffers[name], views[name] = self.buffers[name].append(getattr(self, name), new_columns[name])
        folded, delta = self.folded, self.delta
        merged = self.__dict__.get("_merged")
        if merged is not None:  # a bulk reader already paid for the fold: start from it
            folded, delta = merged, Delta.empty(merged.rows, self.id_kind)
        delta = delta.extended(
            packed=views["packed"],
            item_ids=new_columns["item_ids"],
            recodes=part.recodes,
            old_rows=old_rows,
            bits=self.layout.bits,
            kept=part.kept if part.kept.num_columns else None,
        )
        if delta.rows >= max(FOLD_MIN_ROWS, delta.stop // FOLD_FRACTION):
            folded, delta = folded.merged(delta), Delta.empty(delta.stop, self.id_kind)
        return IndexState(
            layout=self.layout, id_kind=self.id_kind, **views, folded=folded, delta=delta, buffers=buffers
        )

    def conflicts(self, part: SegmentData) -> str | None:
        """Why ``part`` cannot extend this state (what ``duplicate_item_ids`` / ``duplicate_packed``
        would find after it), or None; O(part) look-ups."""
        ids = np.asarray(part.item_ids).astype(self.item_ids.dtype)
        keys = ids.astype(np.str_) if self.id_kind == "str" else ids
        if np.unique(keys).shape[0] != keys.shape[0]:
            return "item ids repeated in the segment"
        rows = self.rows_of_items(ids if self.id_kind == "int" else ids.tolist())
        wrong = (rows >= 0) != part.recodes
        if wrong.any():
            shown = ids[wrong][:10].tolist()
            return f"item ids held by several rows without a re-code (or re-coding an unknown item): {shown}"
        packed = self.layout.pack(part.semantic_ids)
        holder = self.rows_of_packed(packed)
        own = part.recodes & (holder == rows)
        taken = ((holder >= 0) & ~own) | (self.retired_rows_of_packed(packed) >= 0)
        if taken.any() or np.unique(packed).shape[0] != packed.shape[0]:
            return f"semantic ids held by several items: {self.layout.unpack(packed[taken][:10]).tolist()}"
        return None

    # --- point look-ups: O(log N + delta) --------------------------------------------

    def rows_of_items(self, item_ids: np.ndarray | Sequence[object]) -> np.ndarray:
        """Active row per item id, -1 if unknown. Ids must already have the index's kind."""
        folded, delta = self.folded, self.delta
        if self.id_kind == "int":
            assert folded.sorted_item_ids is not None and folded.id_order is not None  # invariant of int kind
            assert delta.sorted_ids is not None and delta.id_rows is not None
            query = np.asarray(item_ids, dtype=np.int64).reshape(-1)
            rows = find_sorted(delta.sorted_ids, delta.id_rows, query)  # a re-coded item's row is in the delta
            missing = rows < 0
            if missing.any():
                rows[missing] = find_sorted(folded.sorted_item_ids, folded.id_order, query[missing])
            return rows
        recent, table = delta.row_of_item or {}, folded.row_of_item or {}
        return np.fromiter((recent.get(i, table.get(i, -1)) for i in item_ids), dtype=np.int64, count=len(item_ids))

    def rows_of_packed(self, keys: np.ndarray) -> np.ndarray:
        """Active row per packed semantic id, -1 if no item has it now."""
        query = np.asarray(keys, dtype=np.int64).reshape(-1)
        rows = find_sorted(self.delta.sorted_packed, self.delta.order, query)
        missing = rows < 0
        if missing.any():
            found = find_sorted(self.folded.sorted_packed, self.folded.order, query[missing])
            retired = self.delta.retired_base
            if retired.shape[0]:
                found[np.isin(found, retired)] = -1
            rows[missing] = found
        return rows

    def retired_rows_of_packed(self, keys: np.ndarray) -> np.ndarray:
        """Retired row per packed semantic id (a reserved id), -1 if none."""
        query = np.asarray(keys, dtype=np.int64).reshape(-1)
        rows = find_sorted(self.delta.reserved_packed, self.delta.reserved_order, query)
        missing = rows < 0
        if missing.any():
            rows[missing] = find_sorted(self.folded.retired_packed, self.folded.retired_order, query[missing])
        return rows

    def occupancy(self) -> BucketCounts:
        """Taken ids (active and reserved) per base bucket, without merging the halves (a caller's
        ``add`` changes only its own object, never the state's counts)."""
        return LayeredCounts(self.folded.taken, self.delta.taken)

    def inactive_rows(self) -> np.ndarray:
        """Rows that are not an item's current row, sorted (k-NN skips them)."""
        delta = self.delta
        if not (delta.retired_base.shape[0] or delta.retired_new.shape[0]):
            return self.folded.inactive_rows
        return np.sort(np.concatenate([self.folded.inactive_rows, delta.retired_base, delta.retired_new]))

    def kept_rows(self, rows: np.ndarray) -> list[dict[str, object]]:
        """The kept columns of ``rows`` as dicts ({} each when the index keeps none)."""
        folded, delta = self.folded, self.delta
        if folded.kept is None and delta.kept is None:
            return [{} for _ in range(rows.shape[0])]
        out: list[dict[str, object]] = [{}] * rows.shape[0]
        old = rows < folded.rows
        for mask, table, offset in ((old, folded.kept, 0), (~old, delta.kept, folded.rows)):
            at = np.flatnonzero(mask)
            if at.shape[0] and table is not None:
                for i, values in zip(at.tolist(), table.take(pa.array(rows[at] - offset)).to_pylist(), strict=True):
                    out[i] = values
        return out

    @property
    def kept_schema(self) -> pa.Schema | None:
        table = self.folded.kept if self.folded.kept is not None else self.delta.kept
        return table.schema if table is not None else None

    # --- prefix look-ups ---------------------------------------------------------------

    def count_between(self, lo: int, hi: int) -> int:
        """Active items whose packed id is in ``[lo, hi)``."""
        folded, delta = self.folded, self.delta
        bounds = np.array([lo, hi], dtype=np.int64)
        b = np.searchsorted(folded.sorted_packed, bounds)
        count = int(b[1] - b[0])
        if delta.retired_base_packed.shape[0]:  # an empty delta (just opened, or just folded) costs nothing
            r = np.searchsorted(delta.retired_base_packed, bounds)
            count -= int(r[1] - r[0])
        if delta.sorted_packed.shape[0]:
            d = np.searchsorted(delta.sorted_packed, bounds)
            count += int(d[1] - d[0])
        return count

    def page_between(self, lo: int, hi: int, limit: int) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``limit`` active rows with packed id in ``[lo, hi)``, in packed order, and their packed ids."""
        folded, delta = self.folded, self.delta
        bounds = np.array([lo, hi], dtype=np.int64)
        b = np.searchsorted(folded.sorted_packed, bounds)
        if not (delta.retired_base_packed.shape[0] or delta.sorted_packed.shape[0]):  # nothing to combine
            stop = min(int(b[1]), int(b[0]) + limit)
            return folded.order[b[0] : stop], folded.sorted_packed[b[0] : stop]
        r = np.searchsorted(delta.retired_base_packed, bounds)
        stop = min(int(b[1]), int(b[0]) + limit + int(r[1] - r[0]))
        rows, packed = folded.order[b[0] : stop], folded.sorted_packed[b[0] : stop]
        if r[1] > r[0]:
            live = ~np.isin(rows, delta.retired_base)
            rows, packed = rows[live], packed[live]
        d = np.searchsorted(delta.sorted_packed, bounds)
        if d[1] > d[0]:
            d_stop = min(int(d[1]), int(d[0]) + limit)
            rows = np.concatenate([rows, delta.order[d[0] : d_stop]])
            packed = np.concatenate([packed, delta.sorted_packed[d[0] : d_stop]])
            by = np.argsort(packed, kind="stable")
            rows, packed = rows[by], packed[by]
        return rows[:limit], packed[:limit]

    def children(self, prefix: tuple[int, ...]) -> list[tuple[int, int]]:
        """(next code, item count) under a validated prefix of length 0..L."""
        layout = self.layout
        lo, hi = layout.prefix_range(prefix) if prefix else (np.iinfo(np.int64).min, np.iinfo(np.int64).max)
        shift = layout.bits * (layout.width - 1 - len(prefix))
        mask = (1 << layout.bits) - 1
        folded, delta = self.folded, self.delta
        bounds = np.array([lo, hi], dtype=np.int64)
        b = np.searchsorted(folded.sorted_packed, bounds)
        codes = (folded.sorted_packed[b[0] : b[1]] >> shift) & mask
        # codes are sorted inside a prefix range, so runs give the counts in O(n)
        starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]]) if codes.shape[0] else NO_ROWS
        keys, counts = codes[starts], np.diff(np.r_[starts, codes.shape[0]])
        r = np.searchsorted(delta.retired_base_packed, bounds)
        d = np.searchsorted(delta.sorted_packed, bounds)
        if r[1] > r[0] or d[1] > d[0]:
            removed = (delta.retired_base_packed[r[0] : r[1]] >> shift) & mask
            added = (delta.sorted_packed[d[0] : d[1]] >> shift) & mask
            all_keys = np.concatenate([keys, removed, added])
            weights = np.concatenate([counts, -np.ones_like(removed), np.ones_like(added)])
            keys, inverse = np.unique(all_keys, return_inverse=True)
            counts = np.bincount(inverse.reshape(-1), weights=weights, minlength=keys.shape[0]).astype(np.int64)
            nonzero = counts > 0
            keys, counts = keys[nonzero], counts[nonzero]
        return list(zip(keys.tolist(), counts.tolist(), strict=True))

    # --- whole-index arrays: merged once per state, for bulk readers ---------------------

    @functools.cached_property
    def _merged(self) -> FoldedRows:
        return self.folded.merged(self.delta)

    @property
    def active(self) -> np.ndarray:
        """bool [N]: the item's current row (False: retired)."""
        return self._merged.active

    @property
    def order(self) -> np.ndarray:
        """int64 [A]: active rows sorted by packed id."""
        return self._merged.order

    @property
    def sorted_packed(self) -> np.ndarray:
        return self._merged.sorted_packed

    @property
    def retired_order(self) -> np.ndarray:
        """int64 [R]: retired rows sorted by packed id (a re-coded item keeping its ID is not here)."""
        return self._merged.retired_order

    @property
    def retired_packed(self) -> np.ndarray:
        """int64 [R]: their reserved packed ids."""
        return self._merged.retired_packed

    @property
    def id_order(self) -> np.ndarray | None:
        return self._merged.id_order

    @property
    def sorted_item_ids(self) -> np.ndarray | None:
        return self._merged.sorted_item_ids

    @property
    def row_of_item(self) -> dict[str, int] | None:
        return self._merged.row_of_item

    @property
    def kept(self) -> pa.Table | None:
        """Kept columns, N rows; None when the index keeps none."""
        return self._merged.kept

    def taken_sorted(self) -> np.ndarray:
        """Every packed id no new item may take (active and reserved), sorted."""
        merged = self._merged
        if merged.retired_packed.shape[0] == 0:
            return merged.sorted_packed
        return np.sort(np.concatenate([merged.sorted_packed, merged.retired_packed]), kind="stable")

    def duplicate_packed(self) -> np.ndarray:
        """Packed semantic ids held by more than one item (active or reserved)."""
        taken = self.taken_sorted()
        same = taken[1:] == taken[:-1]
        if not same.any():  # the usual case; np.unique's first call also costs a lazy import
            return NO_ROWS
        return np.unique(taken[1:][same])

    def duplicate_item_ids(self) -> list[object]:
        """Item ids with a second row that does not say it re-codes the item."""
        if self.id_kind == "int" and bool((self.item_ids[1:] > self.item_ids[:-1]).all()):
            bad = np.flatnonzero(self.recodes)  # every row is its item's first: none may re-code
        else:
            groups = item_groups(self.id_kind, self.item_ids)
            first = group_end(groups, last=False)
            bad = np.flatnonzero(first == self.recodes)  # a first row must not re-code; a later row must
        return [_plain(x) for x in self.item_ids[bad].tolist()]


class LayeredCounts(BucketCounts):
    """Occupancy of folded rows plus a delta's, summed per query (``counts_for``) without merging;
    the merged ``keys``/``counts`` are built only if asked for."""

    def __init__(self, base: BucketCounts, extra: BucketCounts) -> None:
        super().__init__()
        self._base, self._extra = base, extra
        self._merged: BucketCounts | None = None

    def counts_for(self, keys: np.ndarray) -> np.ndarray:
        return self._base.counts_for(keys) + self._extra.counts_for(keys)

    def _whole(self) -> BucketCounts:
        if self._merged is None:
            self._merged = merge_counts(self._base, self._extra)
        return self._merged

    @property
    def keys(self) -> np.ndarray:
        return self._whole().keys

    @property
    def counts(self) -> np.ndarray:
        return self._whole().counts

    def __len__(self) -> int:
        return len(self._whole())

    @property
    def total(self) -> int:
        return self._base.total + self._extra.total

    def add(self, keys: np.ndarray) -> None:
        extra = self._extra.copy()
        extra.add(keys)
        self._extra, self._merged = extra, None

    def copy(self) -> BucketCounts:
        return self._whole().copy()


def _plain(value: object) -> object:
    return value.item() if isinstance(value, np.generic) else value


def _concat(arrays: Sequence[np.ndarray], dtype: type, empty_shape: tuple[int, ...]) -> np.ndarray:
    """One array (not a copy when there is one part: the ``AppendBuffer`` copies it anyway)."""
    if not arrays:
        return np.zeros(empty_shape, dtype=dtype)
    if len(arrays) == 1:
        return np.asarray(arrays[0]).astype(dtype, copy=False)
    return np.concatenate([np.asarray(a).astype(dtype, copy=False) for a in arrays])
