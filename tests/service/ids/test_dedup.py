"""resolve_collisions against a slow, obvious reference; BucketCounts basics."""

from __future__ import annotations

import numpy as np
import pytest

from semid.service.errors import DuplicateItemError, IndexFullError
from semid.service.ids.dedup import BucketCounts, resolution_shards, resolve_collisions
from semid.service.ids.layout import IdLayout


def reference_resolve(layout, base_codes, distances, item_ids, alternatives, existing):
    """Dict of bucket -> count; main path in (bucket, distance, item_id) order, then fallback."""
    counts: dict[tuple[int, ...], int] = {}
    for sid in existing:
        counts[tuple(sid[:-1])] = counts.get(tuple(sid[:-1]), 0) + 1
    rows = sorted(
        range(len(item_ids)),
        key=lambda r: (tuple(base_codes[r]), float(distances[r]), item_ids[r]),
    )
    result: dict[int, tuple[int, ...]] = {}
    fallback = []
    for r in rows:
        bucket = tuple(int(c) for c in base_codes[r])
        if counts.get(bucket, 0) < layout.dedup_size:
            result[r] = (*bucket, counts.get(bucket, 0))
            counts[bucket] = counts.get(bucket, 0) + 1
        else:
            fallback.append(r)
    for r in fallback:
        prefix = tuple(int(c) for c in base_codes[r][:-1])
        candidates = [int(a) for a in alternatives[r] if a >= 0]
        candidates += list(range(layout.codebook_sizes[-1]))
        for code in candidates:
            bucket = (*prefix, code)
            if counts.get(bucket, 0) < layout.dedup_size:
                result[r] = (*bucket, counts.get(bucket, 0))
                counts[bucket] = counts.get(bucket, 0) + 1
                break
        else:
            raise IndexFullError("full", prefix=prefix)
    return np.array([result[r] for r in range(len(item_ids))], dtype=np.int64), set(fallback)


def random_batch(rng, layout, n, *, n_values=3, n_alts=2, str_ids=False):
    codes = rng.integers(0, n_values, size=(n, layout.levels))
    # many exact ties in distance so the item_id tie-break matters
    distances = rng.integers(0, 3, size=n).astype(np.float64) / 2
    ids = rng.permutation(10 * n)[:n]
    item_ids = np.array([f"item-{i}" for i in ids]) if str_ids else ids.astype(np.int64)
    alternatives = np.concatenate(
        [codes[:, -1:], rng.integers(0, layout.codebook_sizes[-1], size=(n, n_alts - 1))], axis=1
    )
    return codes, distances, item_ids, alternatives


def existing_ids(rng, layout, n):
    """A valid occupancy: n items placed by the reference with contiguous digits."""
    codes, distances, item_ids, alternatives = random_batch(rng, layout, n)
    ids, _ = reference_resolve(layout, codes, distances, item_ids, alternatives, [])
    return ids


LAYOUT = IdLayout(codebook_sizes=(3, 3, 6), dedup_size=4)


def resolve(codes, distances, item_ids, alternatives, occupancy, layout=LAYOUT):
    """``resolve_collisions`` of a ``random_batch`` (its four arrays, in that order)."""
    return resolve_collisions(
        layout=layout,
        base_codes=codes,
        distances=distances,
        item_ids=item_ids,
        alternatives=alternatives,
        occupancy=occupancy,
    )


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("str_ids", [False, True])
def test_matches_reference_with_fallback(seed, str_ids):
    rng = np.random.default_rng(seed)
    existing = existing_ids(rng, LAYOUT, int(rng.integers(0, 40)))
    codes, distances, item_ids, alts = random_batch(rng, LAYOUT, 80, str_ids=str_ids)
    expected, expected_fallback = reference_resolve(LAYOUT, codes, distances, item_ids, alts, existing.tolist())
    occupancy = BucketCounts.from_semantic_ids(LAYOUT, existing) if len(existing) else BucketCounts()
    got = resolve(codes, distances, item_ids, alts, occupancy)
    np.testing.assert_array_equal(got.semantic_ids, expected)
    assert set(np.flatnonzero(got.used_fallback).tolist()) == expected_fallback
    # unique together with the existing ids
    everything = np.concatenate([existing.reshape(-1, LAYOUT.width), got.semantic_ids])
    assert len(np.unique(LAYOUT.pack(everything))) == len(everything)
    # occupancy not mutated
    assert occupancy.total == len(existing)


@pytest.mark.parametrize("shards", [1, 2, 5, 64])
@pytest.mark.parametrize("str_ids", [False, True])
def test_resolving_each_shard_alone_gives_the_ids_of_one_call(shards, str_ids):
    """What the Ray engine relies on: shards split by prefix, resolved separately, match one global call
    (with fallback items and an occupied index)."""
    rng = np.random.default_rng(11)
    existing = existing_ids(rng, LAYOUT, 30)
    occupancy = BucketCounts.from_semantic_ids(LAYOUT, existing)
    codes, distances, item_ids, alts = random_batch(rng, LAYOUT, 120, str_ids=str_ids)
    args = {"base_codes": codes, "distances": distances, "item_ids": item_ids, "alternatives": alts}
    whole = resolve_collisions(layout=LAYOUT, occupancy=occupancy, **args)
    assert whole.fallback_count > 0
    shard = resolution_shards(LAYOUT, codes, shards)
    assert shard.min() >= 0 and shard.max() < shards
    prefix = codes[:, :-1] @ np.array([LAYOUT.codebook_sizes[1], 1])
    for p in np.unique(prefix):  # one prefix never spans two shards
        assert len(np.unique(shard[prefix == p])) == 1
    ids = np.zeros_like(whole.semantic_ids)
    fallback = np.zeros(len(item_ids), dtype=bool)
    for s in np.unique(shard):
        rows = np.flatnonzero(shard == s)
        part = resolve_collisions(layout=LAYOUT, occupancy=occupancy, **{k: v[rows] for k, v in args.items()})
        ids[rows], fallback[rows] = part.semantic_ids, part.used_fallback
    np.testing.assert_array_equal(ids, whole.semantic_ids)
    np.testing.assert_array_equal(fallback, whole.used_fallback)


def test_resolution_shards_refuses_zero():
    with pytest.raises(ValueError, match="shards"):
        resolution_shards(LAYOUT, np.zeros((1, 3), dtype=np.int64), 0)


def test_fallback_actually_triggers_and_keeps_prefix():
    rng = np.random.default_rng(3)
    codes, distances, item_ids, alts = random_batch(rng, LAYOUT, 80)
    got = resolve(codes, distances, item_ids, alts, BucketCounts())
    fb = got.used_fallback
    assert got.fallback_count > 0
    np.testing.assert_array_equal(got.semantic_ids[fb, :-2], codes[fb, :-1])
    assert (got.semantic_ids[fb, -2] != codes[fb, -1]).all()
    np.testing.assert_array_equal(got.semantic_ids[~fb, :-1], codes[~fb])
    assert (got.semantic_ids[:, -1] < LAYOUT.dedup_size).all()


@pytest.mark.parametrize("str_ids", [False, True])
def test_deterministic_under_row_permutation(str_ids):
    rng = np.random.default_rng(7)
    codes, distances, item_ids, alts = random_batch(rng, LAYOUT, 90, str_ids=str_ids)
    occupancy = BucketCounts.from_semantic_ids(LAYOUT, existing_ids(rng, LAYOUT, 20))
    base = resolve(codes, distances, item_ids, alts, occupancy)
    for _ in range(3):
        perm = rng.permutation(len(item_ids))
        got = resolve(codes[perm], distances[perm], item_ids[perm], alts[perm], occupancy)
        np.testing.assert_array_equal(got.semantic_ids, base.semantic_ids[perm])
        np.testing.assert_array_equal(got.used_fallback, base.used_fallback[perm])


def test_distance_then_item_id_orders_digits():
    layout = IdLayout(codebook_sizes=(4, 4), dedup_size=8)
    codes = np.array([[1, 2]] * 4)
    got = resolve_collisions(
        layout=layout,
        base_codes=codes,
        distances=np.array([0.5, 0.1, 0.5, 0.3]),
        item_ids=np.array(["b", "z", "a", "c"]),
        alternatives=codes[:, -1:],
        occupancy=BucketCounts(layout.pack_base(np.array([[1, 2], [1, 2]]))),
    )
    # existing count 2, then z (0.1), c (0.3), a (0.5), b (0.5)
    assert got.semantic_ids[:, -1].tolist() == [5, 2, 4, 3]
    assert not got.used_fallback.any()


def test_index_full_error_names_prefix():
    layout = IdLayout(codebook_sizes=(2, 2), dedup_size=2)
    codes = np.array([[1, 0]] * 5)  # prefix (1,) has 2 codes x 2 digits = 4 slots
    with pytest.raises(IndexFullError) as info:
        resolve_collisions(
            layout=layout,
            base_codes=codes,
            distances=np.zeros(5),
            item_ids=np.arange(5),
            alternatives=codes[:, -1:],
            occupancy=BucketCounts(),
        )
    assert info.value.prefix == (1,)
    assert isinstance(info.value, ValueError)
    # four fit exactly
    got = resolve_collisions(
        layout=layout,
        base_codes=codes[:4],
        distances=np.zeros(4),
        item_ids=np.arange(4),
        alternatives=codes[:4, -1:],
        occupancy=BucketCounts(),
    )
    assert sorted(map(tuple, got.semantic_ids.tolist())) == [(1, 0, 0), (1, 0, 1), (1, 1, 0), (1, 1, 1)]


def test_existing_occupancy_is_respected_and_add_records_batch():
    layout = IdLayout(codebook_sizes=(2, 3), dedup_size=3)
    rng = np.random.default_rng(11)
    occupancy = BucketCounts()
    seen: set[tuple[int, ...]] = set()
    fallbacks = 0
    for batch in range(4):
        codes = np.c_[np.full(4, batch % 2), rng.integers(0, 2, size=4)]  # 8 items per prefix, 9 slots
        got = resolve_collisions(
            layout=layout,
            base_codes=codes,
            distances=rng.random(4),
            item_ids=np.arange(batch * 4, batch * 4 + 4),
            alternatives=codes[:, -1:],
            occupancy=occupancy,
        )
        fallbacks += got.fallback_count
        ids = {tuple(r) for r in got.semantic_ids.tolist()}
        assert len(ids) == 4 and not ids & seen
        seen |= ids
        occupancy.add(layout.pack_base(got.semantic_ids[:, :2]))
    assert occupancy.total == 16
    assert fallbacks > 0
    # digits contiguous per bucket
    buckets: dict[tuple[int, ...], list[int]] = {}
    for sid in seen:
        buckets.setdefault(sid[:-1], []).append(sid[-1])
    assert all(sorted(d) == list(range(len(d))) for d in buckets.values())


def test_duplicate_item_ids_in_batch_refused():
    codes = np.zeros((3, 3), dtype=np.int64)
    with pytest.raises(DuplicateItemError) as info:
        resolve_collisions(
            layout=LAYOUT,
            base_codes=codes,
            distances=np.zeros(3),
            item_ids=np.array([1, 2, 1]),
            alternatives=codes[:, -1:],
            occupancy=BucketCounts(),
        )
    assert info.value.item_ids == [1]


def test_bucket_counts_lookup_and_add():
    counts = BucketCounts(np.array([5, 3, 5, 9]))
    assert counts.counts_for(np.array([5, 3, 9, 4, 100, -1])).tolist() == [2, 1, 1, 0, 0, 0]
    counts.add(np.array([4, 5, 100]))
    assert counts.counts_for(np.array([5, 3, 9, 4, 100])).tolist() == [3, 1, 1, 1, 1]
    assert len(counts) == 5 and counts.total == 7
    assert counts.keys.tolist() == [3, 4, 5, 9, 100]
    assert BucketCounts().counts_for(np.array([1, 2])).tolist() == [0, 0]
