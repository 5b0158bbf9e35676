"""Placing items in an index: encode, resolve collisions against the occupancy, append one segment.

Shared by `semid assign` (whole catalogs, streamed) and the HTTP write routes (one request).
Known items keep their IDs. Re-coding (``recode_changed``) is explicit: a known item whose
embedding changed gets a superseding row. If its new base code is the one it had, it keeps its
full ID; otherwise it is placed like a new item and its old ID stays reserved, never reissued.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from semid.service.encoder import CheckpointEncoder, EncodedBatch
from semid.service.errors import (
    CorruptIndexError,
    DuplicateItemError,
    FingerprintMismatchError,
    InvalidInputError,
    UnknownItemError,
)
from semid.service.ids.dedup import resolve_collisions
from semid.service.ids.hashing import embedding_hash
from semid.service.index.handle import SemanticIdIndex


def check_compatible(index: SemanticIdIndex, encoder: CheckpointEncoder) -> None:
    """The index was built from this checkpoint: same fingerprint, same ID layout, same vector size."""
    if index.fingerprint != encoder.fingerprint:
        raise FingerprintMismatchError(
            f"index {index.path} was built from the checkpoint with fingerprint {index.fingerprint}, "
            f"not {encoder.fingerprint}",
            expected=index.fingerprint,
            actual=encoder.fingerprint,
        )
    if index.layout != encoder.layout or index.vector_dim != encoder.vector_dim:
        raise CorruptIndexError(
            f"index {index.path} has layout {index.layout.to_dict()} and {index.vector_dim}-d vectors but its "
            f"checkpoint makes {encoder.layout.to_dict()} and {encoder.vector_dim}-d vectors"
        )


@dataclass
class Registered:
    semantic_ids: np.ndarray  # int64 [N, L+1], for every requested item (existing or new)
    existing: np.ndarray  # bool [N]: the item was already in the index
    changed: np.ndarray  # bool [N]: existing item whose embedding differs from the indexed one
    recoded: np.ndarray  # bool [N]: changed item that was re-coded (only with recode_changed)
    segment: str | None  # the segment written, None when nothing was written
    fallback: int  # placed items that needed the collision fallback


@dataclass
class Placement:
    """IDs of one placed batch, rows in input order."""

    semantic_ids: np.ndarray  # int64 [N, L+1]
    used_fallback: np.ndarray  # bool [N]
    kept_id: np.ndarray  # bool [N]: a re-coded item whose base code did not move keeps its ID


def recoded_in_place(
    index: SemanticIdIndex, *, item_ids: np.ndarray, base_codes: np.ndarray, recodes: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IDs of re-coded rows whose base code did not move: they keep their full ID (and fallback flag).

    Returns int64 ``[N, L+1]`` IDs, bool ``[N]`` fallback and bool ``[N]`` kept, filled only for
    those rows; every other row still needs collision resolution. ``UnknownItemError`` if a row
    flagged in ``recodes`` is not indexed. Call under the writer lock (both engines do).
    """
    n = len(item_ids)
    sids = np.zeros((n, index.layout.width), dtype=np.int64)
    fallback = np.zeros(n, dtype=bool)
    kept_id = np.zeros(n, dtype=bool)
    if recodes.any():
        at = np.flatnonzero(recodes)
        rows = index.snapshot.lookup_items(item_ids[at])
        if (rows < 0).any():
            shown = item_ids[at][rows < 0][:5].tolist()
            raise UnknownItemError(f"items to re-code are not in the index: {shown}", item_id=shown[0])
        state = index.snapshot.state
        same = (state.base_codes[rows] == base_codes[at]).all(axis=1)
        kept_id[at[same]] = True
        sids[at[same]] = state.semantic_ids[rows[same]]
        fallback[at[same]] = state.fallback[rows[same]]
    return sids, fallback, kept_id


def place_new_items(
    index: SemanticIdIndex,
    encoder: CheckpointEncoder,
    *,
    item_ids: np.ndarray,
    encoded: EncodedBatch,
    hashes: np.ndarray,
    columns: Mapping[str, pa.Array] | None = None,
    recodes: np.ndarray | None = None,
    lock_timeout: float = 0.0,
    persist_vectors: bool = True,
) -> tuple[Placement, str]:
    """Resolve collisions and append the batch as one atomic segment, under the writer lock.

    Rows flagged in ``recodes`` re-code indexed items (``UnknownItemError`` if one is not
    indexed): same base code as stored -> same full ID; else a new place, the old ID reserved.
    """
    n = len(item_ids)
    levels = encoder.layout.levels
    flags = np.zeros(n, dtype=bool) if recodes is None else np.asarray(recodes, dtype=bool)
    with index.writer(timeout=lock_timeout):
        sids, fallback, kept_id = recoded_in_place(
            index, item_ids=item_ids, base_codes=encoded.base_codes, recodes=flags
        )
        todo = np.flatnonzero(~kept_id)
        if todo.shape[0]:
            result = resolve_collisions(
                layout=encoder.layout,
                base_codes=encoded.base_codes[todo],
                distances=encoded.distances[todo],
                item_ids=item_ids[todo],
                alternatives=encoded.alternatives[todo],
                occupancy=index.snapshot.occupancy(),
            )
            sids[todo], fallback[todo] = result.semantic_ids, result.used_fallback
        vectors = encoder.vectors(sids[:, :levels])
        segment = index.append(
            item_ids=item_ids,
            base_codes=encoded.base_codes,
            semantic_ids=sids,
            fallback=fallback,
            embedding_hash=hashes,
            vectors=vectors,
            columns=columns,
            recodes=flags,
            persist_vectors=persist_vectors,
        )
    return Placement(semantic_ids=sids, used_fallback=fallback, kept_id=kept_id), segment


def register_batch(
    index: SemanticIdIndex,
    encoder: CheckpointEncoder,
    *,
    item_ids: np.ndarray,
    embeddings: np.ndarray,
    columns: Mapping[str, pa.Array] | None = None,
    recode_changed: bool = False,
    lock_timeout: float = 0.0,
    persist_vectors: bool = False,
) -> Registered:
    """IDs for a batch of items: new ones are placed in one segment; known ones keep theirs,
    except, with ``recode_changed``, those whose embedding changed (re-coded in the same segment)."""
    x = encoder.check(embeddings)
    n = x.shape[0]
    if len(item_ids) != n:
        raise DuplicateItemError(f"item_ids has {len(item_ids)} entries for {n} embeddings", item_ids=[])
    _refuse_repeats(item_ids)
    if not columns and index.keep_columns:  # e.g. /v1/encode register=true: kept columns stay empty (null)
        columns = {name: pa.nulls(n) for name in index.keep_columns}
    hashes = embedding_hash(x)
    sids = np.zeros((n, index.layout.width), dtype=np.int64)
    with index.writer(timeout=lock_timeout):  # look-up and placement see the same index state
        snap = index.snapshot
        rows = snap.lookup_items(item_ids)
        existing = rows >= 0
        changed = np.zeros(n, dtype=bool)
        if existing.any():
            sids[existing] = snap.state.semantic_ids[rows[existing]]
            changed[existing] = snap.embedding_hashes(rows[existing]) != hashes[existing]
        segment, fallback = None, 0
        recoded = changed if recode_changed else np.zeros(n, dtype=bool)
        place = ~existing | recoded
        if place.any():
            sub_columns = None
            if columns:
                mask = pa.array(place)
                sub_columns = {name: col.filter(mask) for name, col in columns.items()}
            result, segment = place_new_items(
                index,
                encoder,
                item_ids=item_ids[place],
                encoded=encoder.encode(x[place]),
                hashes=hashes[place],
                columns=sub_columns,
                recodes=recoded[place],
                lock_timeout=lock_timeout,
                persist_vectors=persist_vectors,
            )
            sids[place] = result.semantic_ids
            fallback = int(result.used_fallback.sum())
    return Registered(
        semantic_ids=sids, existing=existing, changed=changed, recoded=recoded, segment=segment, fallback=fallback
    )


def _refuse_repeats(item_ids: np.ndarray) -> None:
    values = item_ids.tolist()
    if len(set(values)) != len(values):
        seen: set = set()
        dups = [v for v in values if v in seen or seen.add(v)]
        raise DuplicateItemError(
            f"item_ids repeats {dups[:5]}; each item may appear once per request", item_ids=dups[:5]
        )


@dataclass
class EncodedItems:
    """What `/v1/encode` answers: base codes for every row; full IDs for known (or registered) items."""

    base_codes: np.ndarray  # int64 [N, L]
    semantic_ids: list[list[int] | None]  # None: no item id given, or an unknown item not registered
    existing: list[bool | None]  # None when no item id was given
    segment: str | None  # the segment written by a registration
    registered: int  # new items written


def encode_items(
    index: SemanticIdIndex,
    encoder: CheckpointEncoder,
    embeddings: np.ndarray,
    item_ids: np.ndarray | None = None,
    *,
    register: bool = False,
    lock_timeout: float = 0.0,
) -> EncodedItems:
    """Base codes of embeddings; with item ids, their full IDs (known items), registering unknown ones
    when ``register`` is set (``InvalidInputError`` if it is set without item ids)."""
    n = embeddings.shape[0]
    if register and item_ids is None:
        raise InvalidInputError("register=true needs item_ids, one per embedding", field="item_ids")
    x = encoder.check(embeddings)
    base = encoder.encode(x, alternatives=1).base_codes
    sids: list[list[int] | None] = [None] * n
    existing: list[bool | None] = [None] * n
    if item_ids is None:
        return EncodedItems(base, sids, existing, None, 0)
    if register:
        reg = register_batch(index, encoder, item_ids=item_ids, embeddings=x, lock_timeout=lock_timeout)
        registered = int((~reg.existing).sum())
        return EncodedItems(base, reg.semantic_ids.tolist(), reg.existing.tolist(), reg.segment, registered)
    snap = index.snapshot
    rows = snap.lookup_items(item_ids)
    known = snap.state.semantic_ids[np.maximum(rows, 0)].tolist()
    sids = [k if r >= 0 else None for k, r in zip(known, rows.tolist(), strict=True)]
    return EncodedItems(base, sids, [r >= 0 for r in rows.tolist()], None, 0)
