"""``Delta``: what changed since an index's rows were last folded, small and rebuilt per write.

An online write appends a few rows. Instead of merging them into index-sized sorted arrays (O(N)),
it extends the delta: the rows ``[start, stop)`` appended since the fold, kept in their own small
sorted arrays, plus the folded rows they retired. Readers ask the folded rows and the delta and
combine the answers (``IndexState``); a write costs O(batch + delta), and the delta is folded away
once it reaches a fraction of the index (``IndexState.extended``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from semid.service.ids.dedup import BucketCounts

NO_ROWS = np.zeros(0, dtype=np.int64)  # no rows (shared by the folded rows and the index state)


@dataclass(frozen=True, kw_only=True)
class Delta:
    start: int  # first row not folded
    stop: int  # rows [start, stop) are in the delta
    retired_base: np.ndarray  # int64 sorted: folded rows retired since the fold (they were active)
    retired_base_packed: np.ndarray  # int64 sorted: their packed ids (removed from the folded order)
    retired_new: np.ndarray  # int64 sorted: delta rows superseded by a later delta row
    order: np.ndarray  # int64: active delta rows sorted by packed id
    sorted_packed: np.ndarray  # int64: their packed ids
    reserved_order: np.ndarray  # int64: rows retired since the fold whose id stays reserved, by packed id
    reserved_packed: np.ndarray  # int64: those reserved ids
    id_rows: np.ndarray | None  # int ids: active delta rows sorted by item id
    sorted_ids: np.ndarray | None  # int ids: their item ids
    row_of_item: dict[str, int] | None  # str ids -> active delta row
    taken: BucketCounts  # ids taken since the fold, per base bucket
    kept: pa.Table | None  # kept columns of rows [start, stop)

    @classmethod
    def empty(cls, start: int, id_kind: str) -> Delta:
        return cls(
            start=start,
            stop=start,
            retired_base=NO_ROWS,
            retired_base_packed=NO_ROWS,
            retired_new=NO_ROWS,
            order=NO_ROWS,
            sorted_packed=NO_ROWS,
            reserved_order=NO_ROWS,
            reserved_packed=NO_ROWS,
            id_rows=NO_ROWS if id_kind == "int" else None,
            sorted_ids=NO_ROWS if id_kind == "int" else None,
            row_of_item=None if id_kind == "int" else {},
            taken=BucketCounts(),
            kept=None,
        )

    @property
    def rows(self) -> int:
        return self.stop - self.start

    @property
    def size_change(self) -> int:
        """Active items added: new delta rows that are active, minus folded rows retired."""
        return int(self.order.shape[0]) - int(self.retired_base.shape[0])

    def extended(
        self,
        *,
        packed: np.ndarray,
        item_ids: np.ndarray,
        recodes: np.ndarray,
        old_rows: np.ndarray,
        bits: int,
        kept: pa.Table | None,
    ) -> Delta:
        """The delta with rows ``[stop, stop + n)`` appended, O(n + delta).

        ``packed``: the packed ids of every row up to the new stop (the index's column); ``item_ids``
        and ``recodes``: the new rows' (validated); ``old_rows``: the active row each re-coding row
        supersedes, in the order of the re-coding rows.
        """
        n0, n = self.stop, item_ids.shape[0]
        new_rows = np.arange(n0, n0 + n, dtype=np.int64)
        packed_new = packed[n0 : n0 + n]
        recoding = np.flatnonzero(recodes)
        retired_base, retired_base_packed = self.retired_base, self.retired_base_packed
        retired_new, order, sorted_packed = self.retired_new, self.order, self.sorted_packed
        reserved_order, reserved_packed = self.reserved_order, self.reserved_packed
        kept_id = np.zeros(n, dtype=bool)
        if recoding.shape[0]:
            in_base = old_rows < self.start
            old_base, old_new = old_rows[in_base], old_rows[~in_base]
            retired_base = np.sort(np.concatenate([retired_base, old_base]))
            retired_base_packed = np.sort(np.concatenate([retired_base_packed, packed[old_base]]))
            if old_new.shape[0]:
                retired_new = np.sort(np.concatenate([retired_new, old_new]))
                drop = np.searchsorted(sorted_packed, packed[old_new])
                order, sorted_packed = np.delete(order, drop), np.delete(sorted_packed, drop)
            kept_id[recoding] = packed[old_rows] == packed_new[recoding]
            moved = old_rows[~kept_id[recoding]]
            if moved.shape[0]:
                by = np.argsort(packed[moved], kind="stable")
                at = np.searchsorted(reserved_packed, packed[moved][by], side="right")
                reserved_order = np.insert(reserved_order, at, moved[by])
                reserved_packed = np.insert(reserved_packed, at, packed[moved][by])
        by_packed = np.argsort(packed_new, kind="stable")
        at = np.searchsorted(sorted_packed, packed_new[by_packed], side="right")
        order = np.insert(order, at, new_rows[by_packed])
        sorted_packed = np.insert(sorted_packed, at, packed_new[by_packed])
        id_rows, sorted_ids, row_of_item = self.id_rows, self.sorted_ids, self.row_of_item
        if id_rows is not None and sorted_ids is not None:
            ids = item_ids.astype(np.int64)
            pos = np.searchsorted(sorted_ids, ids)
            found = pos < sorted_ids.shape[0]
            found[found] = sorted_ids[pos[found]] == ids[found]  # re-coded delta item: its row moves
            id_rows = id_rows.copy()
            id_rows[pos[found]] = new_rows[found]
            fresh = np.flatnonzero(~found)
            by_id = np.argsort(ids[fresh], kind="stable")
            at_id = np.searchsorted(sorted_ids, ids[fresh][by_id], side="right")
            id_rows = np.insert(id_rows, at_id, new_rows[fresh][by_id])
            sorted_ids = np.insert(sorted_ids, at_id, ids[fresh][by_id])
        else:
            row_of_item = dict(row_of_item or {})
            row_of_item.update(zip(item_ids.tolist(), new_rows.tolist(), strict=True))
        taken = self.taken.copy()
        taken.add(packed_new[~kept_id] >> bits)
        out_kept = self.kept
        if kept is not None:
            out_kept = kept if out_kept is None else pa.concat_tables([out_kept, kept.cast(out_kept.schema)])
        return Delta(
            start=self.start,
            stop=n0 + n,
            retired_base=retired_base,
            retired_base_packed=retired_base_packed,
            retired_new=retired_new,
            order=order,
            sorted_packed=sorted_packed,
            reserved_order=reserved_order,
            reserved_packed=reserved_packed,
            id_rows=id_rows,
            sorted_ids=sorted_ids,
            row_of_item=row_of_item,
            taken=taken,
            kept=out_kept,
        )
