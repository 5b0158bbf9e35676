"""Placing new items in an index: encode, resolve collisions against the occupancy, append one segment.

Shared by `semid assign` (whole catalogs, streamed) and the HTTP write routes (one request).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from service.dedup import Assignment, resolve_collisions
from service.encoder import CheckpointEncoder, EncodedBatch
from service.errors import DuplicateItemError
from service.hashing import embedding_hash
from service.index import SemanticIdIndex


@dataclass
class Registered:
    semantic_ids: np.ndarray  # int64 [N, L+1], for every requested item (existing or new)
    existing: np.ndarray  # bool [N]: the item was already in the index (its ID is unchanged)
    changed: np.ndarray  # bool [N]: existing item whose embedding differs from the indexed one
    segment: str | None  # the segment written, None when every item was known
    fallback: int  # new items that needed the collision fallback


def place_new_items(
    index: SemanticIdIndex,
    encoder: CheckpointEncoder,
    *,
    item_ids: np.ndarray,
    encoded: EncodedBatch,
    hashes: np.ndarray,
    columns: Mapping[str, pa.Array] | None = None,
    lock_timeout: float = 0.0,
    persist_vectors: bool = True,
) -> tuple[Assignment, str]:
    """Resolve collisions for new items and append them as one atomic segment, under the writer lock."""
    with index.writer(timeout=lock_timeout):
        result = resolve_collisions(
            layout=encoder.layout,
            base_codes=encoded.base_codes,
            distances=encoded.distances,
            item_ids=item_ids,
            alternatives=encoded.alternatives,
            occupancy=index.occupancy(),
        )
        vectors = encoder.vectors(result.semantic_ids[:, : encoder.layout.levels])
        segment = index.append(
            item_ids=item_ids,
            base_codes=encoded.base_codes,
            semantic_ids=result.semantic_ids,
            fallback=result.used_fallback,
            embedding_hash=hashes,
            vectors=vectors,
            columns=columns,
            persist_vectors=persist_vectors,
        )
    return result, segment


def register_batch(
    index: SemanticIdIndex,
    encoder: CheckpointEncoder,
    *,
    item_ids: np.ndarray,
    embeddings: np.ndarray,
    columns: Mapping[str, pa.Array] | None = None,
    lock_timeout: float = 0.0,
    persist_vectors: bool = False,
) -> Registered:
    """IDs for a batch of items: known ones keep theirs, new ones are placed in one segment."""
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
        rows = index.lookup_items(item_ids)
        existing = rows >= 0
        changed = np.zeros(n, dtype=bool)
        if existing.any():
            sids[existing] = index.state.semantic_ids[rows[existing]]
            changed[existing] = index.embedding_hashes(rows[existing]) != hashes[existing]
        segment, fallback = None, 0
        new = ~existing
        if new.any():
            sub_columns = None
            if columns:
                mask = pa.array(new)
                sub_columns = {name: col.filter(mask) for name, col in columns.items()}
            result, segment = place_new_items(
                index,
                encoder,
                item_ids=item_ids[new],
                encoded=encoder.encode(x[new]),
                hashes=hashes[new],
                columns=sub_columns,
                lock_timeout=lock_timeout,
                persist_vectors=persist_vectors,
            )
            sids[new] = result.semantic_ids
            fallback = int(result.used_fallback.sum())
    return Registered(semantic_ids=sids, existing=existing, changed=changed, segment=segment, fallback=fallback)


def _refuse_repeats(item_ids: np.ndarray) -> None:
    values = item_ids.tolist()
    if len(set(values)) != len(values):
        seen: set = set()
        dups = [v for v in values if v in seen or seen.add(v)]
        raise DuplicateItemError(
            f"item_ids repeats {dups[:5]}; each item may appear once per request", item_ids=dups[:5]
        )
