"""Validation of one batch handed to ``SemanticIdIndex.append``.

Everything is checked before anything is written: shapes and dtypes, code ranges,
item ids and semantic ids unique within the batch, item ids not yet in the index
(or, for rows flagged ``recodes``, in it), semantic ids neither held by another item
nor reserved by a retired row, kept columns exactly the index's and castable to
their stored types.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa

from semid.service.errors import DuplicateItemError, DuplicateSemanticIdError, InvalidInputError, UnknownItemError
from semid.service.index.manifest import Manifest
from semid.service.index.segments import SegmentData
from semid.service.index.state import IndexState

_SHOWN = 10


def validate_batch(
    *,
    manifest: Manifest,
    state: IndexState,
    item_ids: np.ndarray,
    base_codes: np.ndarray,
    semantic_ids: np.ndarray,
    fallback: np.ndarray,
    embedding_hash: np.ndarray,
    vectors: np.ndarray | None,
    columns: Mapping[str, pa.Array],
    recodes: np.ndarray | None = None,
) -> tuple[SegmentData, np.ndarray | None]:
    """The batch as a ``SegmentData`` plus its float32 vectors, or a domain error.

    ``vectors`` None: the caller checked them already (a staged vector file checks each batch
    as it is written), and None comes back.

    ``recodes`` (bool per row) marks rows that supersede an indexed item's row: the
    item must be in the index, and its new semantic id may be its current one.
    """
    layout = manifest.layout
    ids = _batch_item_ids(item_ids, manifest.id_kind)
    n = ids.shape[0]
    flags_recode = np.zeros(n, dtype=bool) if recodes is None else np.asarray(recodes)
    if flags_recode.shape != (n,) or flags_recode.dtype != np.bool_:
        raise InvalidInputError(f"recodes must be bool of shape ({n},)", field="recodes")
    current = state.rows_of_items(ids if manifest.id_kind == "int" else ids.tolist())
    taken = (current >= 0) & ~flags_recode
    if taken.any():
        dup = ids[taken][:_SHOWN].tolist()
        raise DuplicateItemError(f"{int(taken.sum())} item ids are already in the index, e.g. {dup}", item_ids=dup)
    unknown = (current < 0) & flags_recode
    if unknown.any():
        shown = ids[unknown][:_SHOWN].tolist()
        raise UnknownItemError(
            f"{int(unknown.sum())} items to re-code are not in the index, e.g. {shown}", item_id=shown[0]
        )
    sids = _batch_array(semantic_ids, "semantic_ids", (n, layout.width))
    packed = layout.pack(sids)
    uniq, counts = np.unique(packed, return_counts=True)
    repeated = uniq[counts > 1]
    holder = state.rows_of_packed(packed)
    own = flags_recode & (holder == current)  # a re-coded item may keep its own id
    taken_sids = packed[((holder >= 0) & ~own) | (state.retired_rows_of_packed(packed) >= 0)]
    if repeated.shape[0] or taken_sids.shape[0]:
        bad = layout.unpack(np.concatenate([repeated, taken_sids])[:_SHOWN]).tolist()
        raise DuplicateSemanticIdError(
            f"{repeated.shape[0]} semantic ids repeated in the batch and {taken_sids.shape[0]} already "
            f"taken, e.g. {bad}",
            semantic_ids=bad,
        )
    codes = _batch_array(base_codes, "base_codes", (n, layout.levels))
    layout.pack_base(codes)
    flags = np.asarray(fallback)
    if flags.shape != (n,) or flags.dtype != np.bool_:
        raise InvalidInputError(
            f"fallback must be bool of shape ({n},), got {flags.dtype} {flags.shape}", field="fallback"
        )
    hashes = np.asarray(embedding_hash)
    if hashes.shape != (n,) or hashes.dtype.kind not in "iu":
        raise InvalidInputError(f"embedding_hash must be ints of shape ({n},)", field="embedding_hash")
    vecs = None if vectors is None else np.ascontiguousarray(vectors, dtype=np.float32)
    if vecs is not None and (vecs.shape != (n, manifest.vector_dim) or not np.isfinite(vecs).all()):
        raise InvalidInputError(
            f"vectors must be finite, shape ({n}, {manifest.vector_dim}); got {np.shape(vectors)}",
            field="vectors",
        )
    kept = _batch_columns(columns, manifest.keep_columns, n, state.kept_schema)
    part = SegmentData(
        item_ids=ids,
        semantic_ids=sids,
        base_codes=codes,
        fallback=flags,
        embedding_hashes=hashes.astype(np.uint64),
        recodes=flags_recode,
        kept=kept,
    )
    return part, vecs


def _batch_item_ids(item_ids: np.ndarray, id_kind: str) -> np.ndarray:
    ids = np.asarray(item_ids)
    if ids.ndim != 1 or ids.shape[0] == 0:
        raise InvalidInputError(f"item_ids must be a non-empty 1-d array, got shape {ids.shape}", field="item_ids")
    if id_kind == "int":
        if ids.dtype.kind not in "iu" or (ids.dtype == np.uint64 and (ids > np.iinfo(np.int64).max).any()):
            raise InvalidInputError(f"item_ids has dtype {ids.dtype}; this index holds int64 ids", field="item_ids")
        ids = ids.astype(np.int64)
    else:
        values = ids.tolist()
        if not all(isinstance(v, str) for v in values):
            raise InvalidInputError("item_ids must all be strings in this index", field="item_ids")
        ids = np.array(values, dtype=object)
    uniq, counts = np.unique(ids.astype(np.str_) if id_kind == "str" else ids, return_counts=True)
    if uniq.shape[0] != ids.shape[0]:
        dup = uniq[counts > 1][:_SHOWN].tolist()
        raise DuplicateItemError(f"item ids repeated in the batch: {dup}", item_ids=dup)
    return ids


def _batch_array(values: np.ndarray, field: str, shape: tuple[int, int]) -> np.ndarray:
    arr = np.asarray(values)
    if arr.shape != shape or arr.dtype.kind not in "iu":
        raise InvalidInputError(f"{field} must be ints of shape {shape}, got {arr.dtype} {arr.shape}", field=field)
    return arr.astype(np.int64)


def _batch_columns(
    columns: Mapping[str, pa.Array], keep: Sequence[str], n: int, existing: pa.Schema | None
) -> pa.Table:
    if set(columns) != set(keep):
        raise InvalidInputError(
            f"columns are {sorted(columns)}; this index keeps exactly {sorted(keep)}", field="columns"
        )
    arrays = []
    for name in keep:
        column = columns[name]
        try:
            if isinstance(column, pa.ChunkedArray):
                array = column.combine_chunks()
            elif isinstance(column, pa.Array):
                array = column
            else:
                array = pa.array(column)
            if existing is not None:
                array = array.cast(existing.field(name).type)
        except (pa.ArrowException, TypeError, ValueError) as exc:
            raise InvalidInputError(f"column {name!r}: {exc}", field=name) from None
        if len(array) != n:
            raise InvalidInputError(f"column {name!r} has {len(array)} rows; expected {n}", field=name)
        arrays.append(array)
    if not keep:
        return pa.table({})
    return pa.Table.from_arrays(arrays, names=list(keep))
