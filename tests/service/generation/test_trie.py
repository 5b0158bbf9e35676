"""SemanticIdTrie against a brute-force set of every ID: exactness, batches (numpy and torch), files."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from semid.service.generation.trie import InvalidTrieError, SemanticIdTrie

SIZES = (3, 4, 2, 5)  # small ranges: many shared prefixes and repeated IDs


def crowded_ids(rng: np.random.Generator, n: int = 80) -> np.ndarray:
    """Random IDs, skewed to a few prefixes, with exact duplicates."""
    sids = np.stack([rng.integers(0, s, n) for s in SIZES], axis=1)
    sids[: n // 3, :2] = (1, 2)  # one crowded base prefix
    return np.vstack([sids, sids[::5]])  # every fifth row twice


def all_prefixes(depth: int):
    return itertools.product(*(range(s + 1) for s in SIZES[:depth]))  # one out-of-range code per position


@pytest.fixture
def catalog(rng):
    sids = crowded_ids(rng)
    return sids, {tuple(r) for r in sids.tolist()}


def test_allowed_next_is_exactly_the_brute_force_set(catalog):
    sids, truth = catalog
    trie = SemanticIdTrie.from_semantic_ids(sids, sizes=SIZES)
    assert len(trie) == len(truth)
    assert trie.width == 4 and trie.end_token == 5 and trie.vocab_width == 6
    for depth in range(len(SIZES) + 1):
        prefixes = list(all_prefixes(depth))
        batch = trie.allowed_next_batch(np.array(prefixes, dtype=np.int64).reshape(len(prefixes), depth))
        assert batch.shape == (len(prefixes), trie.vocab_width) and batch.dtype == bool
        for prefix, row in zip(prefixes, batch, strict=True):
            if depth == len(SIZES):
                expected = [trie.end_token] if prefix in truth else []
            else:
                expected = sorted({sid[depth] for sid in truth if sid[:depth] == prefix})
            assert trie.allowed_next(prefix) == expected, prefix
            assert np.flatnonzero(row).tolist() == expected, prefix


def test_walking_the_trie_reaches_every_id_and_nothing_else(catalog):
    sids, truth = catalog
    trie = SemanticIdTrie.from_semantic_ids(sids, sizes=SIZES)
    reached, stack = set(), [()]
    while stack:
        prefix = stack.pop()
        allowed = trie.allowed_next(prefix)
        assert allowed, f"live prefix {prefix} has no continuation"
        if len(prefix) == len(SIZES):
            assert allowed == [trie.end_token]
            reached.add(prefix)
        else:
            assert trie.end_token not in allowed
            stack.extend((*prefix, code) for code in allowed)
    assert reached == truth
    assert {tuple(r) for r in trie.semantic_ids.tolist()} == truth


def test_invalid_prefixes_have_no_continuation(catalog):
    sids, truth = catalog
    trie = SemanticIdTrie.from_semantic_ids(sids, sizes=SIZES)
    missing = next(p for p in itertools.product(*(range(s) for s in SIZES[:3])) if not any(t[:3] == p for t in truth))
    for prefix in [missing, (-1,), (3,), (0, 99), (*missing, 0), (*next(iter(truth)), 0)]:
        assert trie.allowed_next(prefix) == []
    mask = trie.allowed_next_batch(np.array([[-1, 0, 0], list(missing), [0, 0, 9]]))
    assert not mask.any()
    with pytest.raises(InvalidTrieError):
        trie.allowed_next_batch(np.zeros((2, 5), dtype=np.int64))  # longer than an ID


def test_items_map_back_and_shared_ids_are_refused(rng):
    sids = np.unique(crowded_ids(rng), axis=0)
    items = np.arange(1000, 1000 + sids.shape[0])[::-1].copy()
    perm = rng.permutation(sids.shape[0])
    trie = SemanticIdTrie.from_semantic_ids(sids[perm], items[perm], sizes=SIZES)
    for sid, item in zip(sids.tolist(), items.tolist(), strict=True):
        assert trie.is_valid(sid) and trie.item_of(sid) == item
    absent = next(p for p in itertools.product(*(range(s) for s in SIZES)) if list(p) not in sids.tolist())
    assert not trie.is_valid(absent) and trie.item_of(absent) is None
    assert trie.item_of(sids[0, :3]) is None  # a prefix is not an item
    query = np.vstack([sids[:7], [absent]])
    assert trie.items_of(query).tolist() == [*items[:7].tolist(), -1]
    assert trie.items_of(torch.as_tensor(query), missing=-9)[-1] == -9
    with pytest.raises(InvalidTrieError, match="share"):
        SemanticIdTrie.from_semantic_ids(np.vstack([sids, sids[:1]]), np.arange(sids.shape[0] + 1), sizes=SIZES)
    named = SemanticIdTrie.from_semantic_ids(sids[:3], ["a", "bb", "c"], sizes=SIZES)
    assert named.item_of(sids[1]) == "bb" and named.items_of(np.vstack([sids[:1], [absent]])).tolist() == ["a", ""]


def test_codes_out_of_range_are_refused():
    with pytest.raises(InvalidTrieError, match="position 2"):
        SemanticIdTrie.from_semantic_ids(np.array([[0, 0, 2, 0]]), sizes=SIZES)
    with pytest.raises(InvalidTrieError):
        SemanticIdTrie.from_semantic_ids(np.array([[0, 0, 0]]), sizes=SIZES)
    with pytest.raises(InvalidTrieError):
        SemanticIdTrie.from_semantic_ids(np.zeros((1, 4), dtype=np.int64), sizes=(0, 1, 1, 1))


def test_torch_in_torch_out_and_numpy_agree(catalog):
    sids, _ = catalog
    trie = SemanticIdTrie.from_semantic_ids(sids, sizes=SIZES)
    for depth in range(len(SIZES) + 1):
        prefixes = sids[:16, :depth]
        expected = trie.allowed_next_batch(prefixes)
        got = trie.allowed_next_batch(torch.as_tensor(prefixes))
        assert isinstance(got, torch.Tensor) and got.dtype == torch.bool
        assert np.array_equal(got.numpy(), expected)
        assert np.array_equal(trie.allowed_next_batch(prefixes.astype(np.int32)), expected)


def test_wide_codebooks_use_both_mask_paths(rng, monkeypatch):
    """Deep levels scatter the CSR when their bit rows would exceed the budget; both give the same masks."""
    sizes = (256, 256, 256, 256)
    sids = rng.integers(0, 256, (3000, 4))
    sids[:1000, :3] = rng.integers(0, 4, (1000, 3))
    dense = SemanticIdTrie.from_semantic_ids(sids, sizes=sizes)
    monkeypatch.setattr("semid.service.generation.trie.BIT_ROWS_BUDGET", 0)
    sparse = SemanticIdTrie.from_semantic_ids(sids, sizes=sizes)
    assert all(b is None for b in sparse._bits) and all(b is not None for b in dense._bits)
    for depth in range(5):
        prefixes = np.vstack([sids[::37, :depth], rng.integers(0, 256, (20, depth))])
        assert np.array_equal(dense.allowed_next_batch(prefixes), sparse.allowed_next_batch(prefixes))


def test_save_load_round_trip(tmp_path, catalog):
    sids, _ = catalog
    sids = np.unique(sids, axis=0)
    trie = SemanticIdTrie.from_semantic_ids(sids, np.arange(sids.shape[0]) * 7, sizes=SIZES)
    trie.save(tmp_path / "t.npz")
    back = SemanticIdTrie.load(tmp_path / "t.npz")
    assert back.sizes == SIZES and len(back) == len(trie)
    assert np.array_equal(back.semantic_ids, trie.semantic_ids) and np.array_equal(back.items, trie.items)
    for depth in range(5):
        assert np.array_equal(back.allowed_next_batch(sids[:, :depth]), trie.allowed_next_batch(sids[:, :depth]))
    named = SemanticIdTrie.from_semantic_ids(sids[:2], ["x", "yz"], sizes=SIZES)
    assert SemanticIdTrie.from_bytes(named.to_bytes()).item_of(sids[1]) == "yz"


def _npz(tmp_path, **arrays) -> str:
    base = {
        "format": np.array("semid-trie"),
        "version": np.array(1),
        "sizes": np.array(SIZES),
        "keys": np.array([0, 5, 9], dtype=np.int64),
        "items": np.array([1, 2, 3]),
    }
    base.update(arrays)
    path = tmp_path / "bad.npz"
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return str(path)


@pytest.mark.parametrize(
    "arrays",
    [
        {"format": np.array("something-else")},
        {"version": np.array(2)},
        {"keys": None},
        {"keys": np.array([5, 0, 9], dtype=np.int64)},  # not sorted
        {"keys": np.array([0, 0, 9], dtype=np.int64)},  # repeated
        {"keys": np.array([0, 5, 3 * 4 * 2 * 5], dtype=np.int64)},  # beyond the sizes
        {"keys": np.array([-1, 5, 9], dtype=np.int64)},
        {"keys": np.array([0.0, 5.0, 9.0])},
        {"items": np.array([1, 2])},
        {"items": np.array([1.5, 2.5, 3.5])},
        {"items": np.array([{"x": 1}, 2, 3], dtype=object)},  # needs pickle: refused
        {"sizes": np.array([3, 0, 2, 5])},
        {"sizes": np.array([[3, 4]])},
    ],
)
def test_malformed_files_are_refused(tmp_path, arrays):
    with pytest.raises(InvalidTrieError):
        SemanticIdTrie.load(_npz(tmp_path, **arrays))


def test_a_valid_handmade_file_loads_and_garbage_does_not(tmp_path):
    trie = SemanticIdTrie.load(_npz(tmp_path))
    assert trie.semantic_ids.tolist() == [[0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 1, 4]]
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(InvalidTrieError):
        SemanticIdTrie.load(tmp_path / "junk.npz")
    with pytest.raises(InvalidTrieError):
        SemanticIdTrie.from_bytes(trie.to_bytes()[:-40])  # truncated


def test_empty_trie_allows_nothing():
    trie = SemanticIdTrie.from_semantic_ids(np.zeros((0, 4), dtype=np.int64), sizes=SIZES)
    assert len(trie) == 0 and trie.allowed_next(()) == []
    for depth in range(5):
        assert not trie.allowed_next_batch(np.zeros((3, depth), dtype=np.int64)).any()
