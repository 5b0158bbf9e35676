"""Collision resolution: turn base codes into unique semantic ids ``(c1..cL, d)``.

TIGER-style rule. Every bucket (base code ``c1..cL``) holds the dedup digits
``0..count-1`` contiguously, so its occupancy is a single count. Items of a batch
landing in one bucket are ranked by ``(distance, item_id)`` and get
``d = count + rank``. Items for which that reaches ``dedup_size`` fall back to
another last-level code under the same ``c1..c_{L-1}``: first their ranked
``alternatives``, then every code ``0..K_L-1`` in increasing order, each taking
``d = count of that bucket``. Fallback items are placed one by one in the order
``(bucket, distance, item_id)`` after all main-path items are placed. The result
does not depend on the order of the input rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from semid.service.errors import DuplicateItemError, IndexFullError, InvalidInputError
from semid.service.ids.layout import IdLayout

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Assignment:
    """Result of ``resolve_collisions``, rows in the order of the input."""

    semantic_ids: np.ndarray  # int64 [N, L+1]
    used_fallback: np.ndarray  # bool [N]

    @property
    def fallback_count(self) -> int:
        return int(self.used_fallback.sum())


class BucketCounts:
    """How many items sit in each base bucket: sorted unique int64 keys + int64 counts.

    Keys are ``IdLayout.pack_base`` of base codes (equivalently ``pack(id) >> bits``).
    """

    def __init__(self, keys: np.ndarray | None = None, counts: np.ndarray | None = None) -> None:
        """Build from parallel arrays; keys need not be sorted or unique (counts are summed)."""
        if keys is None:
            self._keys = np.zeros(0, dtype=np.int64)
            self._counts = np.zeros(0, dtype=np.int64)
            return
        keys = np.asarray(keys, dtype=np.int64).reshape(-1)
        counts = np.ones_like(keys) if counts is None else np.asarray(counts, dtype=np.int64).reshape(-1)
        if counts.shape != keys.shape:
            raise InvalidInputError(f"counts has {counts.shape[0]} entries; expected {keys.shape[0]}", field="counts")
        self._keys, self._counts = _sum_by_key(keys, counts)

    @classmethod
    def from_keys(cls, keys: np.ndarray) -> BucketCounts:
        """One count per occurrence of each key."""
        return cls(keys)

    @classmethod
    def from_sorted_keys(cls, keys: np.ndarray) -> BucketCounts:
        """One count per occurrence of each key, for keys already sorted ascending (O(n))."""
        sorted_keys = np.asarray(keys, dtype=np.int64).reshape(-1)
        if sorted_keys.shape[0] and (sorted_keys[1:] < sorted_keys[:-1]).any():
            raise InvalidInputError("keys are not sorted ascending", field="keys")
        out = cls()
        if sorted_keys.shape[0]:
            starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
            out._keys = sorted_keys[starts]
            out._counts = np.diff(np.r_[starts, sorted_keys.shape[0]]).astype(np.int64)
        return out

    @classmethod
    def from_semantic_ids(cls, layout: IdLayout, ids: np.ndarray) -> BucketCounts:
        """Occupancy of existing items from their full semantic ids ``[N, L+1]``."""
        return cls(layout.pack(ids) >> layout.bits)

    @property
    def keys(self) -> np.ndarray:
        return self._keys

    @property
    def counts(self) -> np.ndarray:
        return self._counts

    def __len__(self) -> int:
        """Number of non-empty buckets."""
        return int(self._keys.shape[0])

    @property
    def total(self) -> int:
        """Number of items counted."""
        return int(self._counts.sum())

    def counts_for(self, keys: np.ndarray) -> np.ndarray:
        """int64 count per key (0 for unseen keys)."""
        query = np.asarray(keys, dtype=np.int64).reshape(-1)
        if self._keys.shape[0] == 0:
            return np.zeros(query.shape[0], dtype=np.int64)
        pos = np.searchsorted(self._keys, query)
        pos_clipped = np.minimum(pos, self._keys.shape[0] - 1)
        hit = self._keys[pos_clipped] == query
        return np.where(hit, self._counts[pos_clipped], 0)

    def add(self, keys: np.ndarray) -> None:
        """Count one more item per occurrence of each key (mutates this object)."""
        new = np.asarray(keys, dtype=np.int64).reshape(-1)
        if new.shape[0] == 0:
            return
        self._keys, self._counts = _sum_by_key(
            np.concatenate([self._keys, new]), np.concatenate([self._counts, np.ones_like(new)])
        )

    def copy(self) -> BucketCounts:
        out = BucketCounts()
        out._keys = self._keys.copy()
        out._counts = self._counts.copy()
        return out


def resolve_collisions(
    *,
    layout: IdLayout,
    base_codes: np.ndarray,
    distances: np.ndarray,
    item_ids: np.ndarray,
    alternatives: np.ndarray,
    occupancy: BucketCounts,
) -> Assignment:
    """Give each item of a batch a unique semantic id, given the index's occupancy.

    ``base_codes`` int64 ``[N, L]``; ``distances`` float ``[N]`` (item to its code's
    reconstruction, smaller gets the lower digit); ``item_ids`` ``[N]`` int or str,
    unique, the tie-break; ``alternatives`` int64 ``[N, C]`` last-level codes ranked
    by quantization distance (column 0 is usually the item's own code; negative
    entries are padding and skipped).

    ``occupancy`` is NOT modified. After the ids are persisted the caller records
    them with ``occupancy.add(layout.pack_base(result.semantic_ids[:, :L]))``.

    Raises ``IndexFullError`` when an item's whole ``c1..c_{L-1}`` prefix is full,
    ``DuplicateItemError`` for repeated item ids, ``InvalidInputError`` for bad shapes.
    """
    keys = layout.pack_base(base_codes)
    codes = np.asarray(base_codes, dtype=np.int64)
    n = keys.shape[0]
    dist = _check_distances(distances, n)
    id_rank = _item_id_ranks(item_ids, n)
    alts = _check_alternatives(alternatives, n, layout.codebook_sizes[-1])

    # main path: rank within bucket by (distance, item_id); deterministic under row permutation
    order = np.lexsort((id_rank, dist, keys))
    sorted_keys = keys[order]
    rank = _rank_within_runs(sorted_keys)
    digit_sorted = occupancy.counts_for(sorted_keys) + rank
    overflow_sorted = digit_sorted >= layout.dedup_size

    semantic_ids = np.empty((n, layout.width), dtype=np.int64)
    semantic_ids[:, : layout.levels] = codes
    semantic_ids[order, layout.levels] = digit_sorted
    used_fallback = np.zeros(n, dtype=bool)
    if not overflow_sorted.any():
        return Assignment(semantic_ids=semantic_ids, used_fallback=used_fallback)

    # fallback: placed one by one, in (bucket, distance, item_id) order, after the main path
    placed = BucketCounts(sorted_keys[~overflow_sorted])
    counter = _LiveCounts(occupancy=occupancy, placed=placed)
    last_size = layout.codebook_sizes[-1]
    fallback_rows = order[overflow_sorted]
    for row in fallback_rows.tolist():
        prefix_key = int(keys[row]) >> layout.bits
        code = _pick_fallback_code(prefix_key=prefix_key, candidates=alts[row], counter=counter, layout=layout)
        if code is None:
            prefix = codes[row, :-1].tolist()
            raise IndexFullError(
                f"every bucket under prefix {'-'.join(map(str, prefix)) or '(root)'} holds "
                f"{layout.dedup_size} items ({last_size} last-level codes); no free semantic id",
                prefix=prefix,
            )
        key = (prefix_key << layout.bits) | code
        semantic_ids[row, layout.levels - 1] = code
        semantic_ids[row, layout.levels] = counter.take(key)
        used_fallback[row] = True
    logger.info("collision fallback placed %d of %d items", len(fallback_rows), n)
    return Assignment(semantic_ids=semantic_ids, used_fallback=used_fallback)


def resolution_shards(layout: IdLayout, base_codes: np.ndarray, shards: int) -> np.ndarray:
    """int64 shard ``[N]`` per item such that ``resolve_collisions`` may run on each shard alone.

    An item's ID depends only on the occupancy and the batch items under its own prefix
    ``c1..c_{L-1}``: the main path ranks within one bucket, and the fallback moves an item only to
    another last-level code under that prefix, in an order restricted to it. So the shard is a
    function of the prefix (``pack_base >> bits``, spread by a multiplicative hash), and resolving
    each shard against the same occupancy gives exactly the IDs of one call over the whole batch.
    This is what lets a distributed engine resolve in parallel with the single-machine rule.
    """
    if shards < 1:
        raise InvalidInputError(f"shards is {shards}; expected an int >= 1", field="shards")
    prefix = (layout.pack_base(base_codes) >> layout.bits).astype(np.uint64)
    spread = prefix * np.uint64(0x9E3779B97F4A7C15)  # wraps modulo 2**64: a cheap, fixed mixing of the bits
    return ((spread >> np.uint64(32)) % np.uint64(shards)).astype(np.int64)


class _LiveCounts:
    """Occupancy + this batch's placements, updated as fallback items are placed."""

    def __init__(self, *, occupancy: BucketCounts, placed: BucketCounts) -> None:
        self._occupancy = occupancy
        self._placed = placed
        self._extra: dict[int, int] = {}

    def counts(self, keys: np.ndarray) -> np.ndarray:
        out = self._occupancy.counts_for(keys) + self._placed.counts_for(keys)
        if self._extra:
            out += np.fromiter((self._extra.get(int(k), 0) for k in keys), dtype=np.int64, count=len(keys))
        return out

    def take(self, key: int) -> int:
        """Digit for one more item in bucket ``key`` (its current count); counts it."""
        digit = int(self.counts(np.array([key], dtype=np.int64))[0])
        self._extra[key] = self._extra.get(key, 0) + 1
        return digit


def _pick_fallback_code(
    *, prefix_key: int, candidates: np.ndarray, counter: _LiveCounts, layout: IdLayout
) -> int | None:
    wanted = candidates[candidates >= 0]
    if wanted.shape[0]:
        counts = counter.counts((prefix_key << layout.bits) | wanted)
        free = np.flatnonzero(counts < layout.dedup_size)
        if free.shape[0]:
            return int(wanted[free[0]])
    every = np.arange(layout.codebook_sizes[-1], dtype=np.int64)
    counts = counter.counts((prefix_key << layout.bits) | every)
    free = np.flatnonzero(counts < layout.dedup_size)
    return int(free[0]) if free.shape[0] else None


def _rank_within_runs(sorted_keys: np.ndarray) -> np.ndarray:
    """0, 1, 2... within each run of equal consecutive keys."""
    n = sorted_keys.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    run_lengths = np.diff(np.r_[starts, n])
    return np.arange(n, dtype=np.int64) - np.repeat(starts, run_lengths)


def _sum_by_key(keys: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    uniq, inverse = np.unique(keys, return_inverse=True)
    summed = np.bincount(inverse.reshape(-1), weights=counts, minlength=uniq.shape[0])
    return uniq.astype(np.int64), np.rint(summed).astype(np.int64)


def _check_distances(distances: np.ndarray, n: int) -> np.ndarray:
    dist = np.asarray(distances, dtype=np.float64).reshape(-1) if np.ndim(distances) else None
    if dist is None or dist.shape[0] != n:
        raise InvalidInputError(f"distances must have {n} entries", field="distances")
    if np.isnan(dist).any():
        raise InvalidInputError("distances contain NaN", field="distances")
    return dist


def _item_id_ranks(item_ids: np.ndarray, n: int) -> np.ndarray:
    """Rank of each item id in sorted order (ints numerically, strings by code point)."""
    ids = np.asarray(item_ids)
    if ids.ndim != 1 or ids.shape[0] != n:
        raise InvalidInputError(f"item_ids has shape {ids.shape}; expected ({n},)", field="item_ids")
    if ids.dtype.kind == "O":
        if not all(isinstance(x, str) for x in ids.tolist()):
            raise InvalidInputError("item_ids must be all ints or all strings", field="item_ids")
        ids = ids.astype(np.str_)
    elif ids.dtype.kind not in "iuU" and n:
        raise InvalidInputError(f"item_ids has dtype {ids.dtype}; expected int or str", field="item_ids")
    uniq, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    if uniq.shape[0] != n:
        repeated = uniq[counts > 1][:5].tolist()
        raise DuplicateItemError(f"item_ids repeated in the batch: {repeated}", item_ids=repeated)
    return inverse.reshape(-1).astype(np.int64)


def _check_alternatives(alternatives: np.ndarray, n: int, last_size: int) -> np.ndarray:
    alts = np.asarray(alternatives)
    if alts.ndim == 1:
        alts = alts[:, None]
    if alts.ndim != 2 or alts.shape[0] != n or alts.shape[1] < 1:
        raise InvalidInputError(
            f"alternatives has shape {np.shape(alternatives)}; expected ({n}, C) with C >= 1",
            field="alternatives",
        )
    if n and alts.dtype.kind not in "iu":
        raise InvalidInputError(f"alternatives has dtype {alts.dtype}; expected integers", field="alternatives")
    alts = alts.astype(np.int64, copy=False)
    if (alts >= last_size).any():
        raise InvalidInputError(f"alternatives must be < {last_size} (or negative padding)", field="alternatives")
    return alts
