"""Log-structured index state: folded rows + delta + vector tail answer exactly like a state rebuilt
from the files, writes hand out the same IDs as before, and older snapshots are never disturbed.

Fold thresholds are made tiny so a few dozen rows go through many folds, chunk merges and deltas.
The live handle's whole-index arrays (``state.order``...) are not read inside the loops: reading
them merges the delta, and the point here is to exercise the unmerged look-ups.
"""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

import semid.service.index.segments as segments_module
import semid.service.index.state as state_module
import semid.service.index.vector_search as vector_search_module
from semid.service.export import export_table
from semid.service.ids.dedup import BucketCounts, resolve_collisions
from semid.service.ids.layout import IdLayout
from semid.service.index.buffers import AppendBuffer
from semid.service.index.handle import SemanticIdIndex
from semid.service.index.snapshot import IndexSnapshot
from semid.service.index.vector_search import VectorSet
from tests.service.index.test_handle import DIM, LAYOUT, make_batch, new_index
from tests.service.index.test_recode import recode_batch

CROWDED = IdLayout(codebook_sizes=(2, 2, 4), dedup_size=3)  # many collisions, some fallbacks


@pytest.fixture
def tiny_folds(monkeypatch):
    monkeypatch.setattr(state_module, "FOLD_MIN_ROWS", 7)
    monkeypatch.setattr(state_module, "FOLD_FRACTION", 2)
    monkeypatch.setattr(vector_search_module, "TAIL_MIN_ROWS", 5)
    monkeypatch.setattr(vector_search_module, "TAIL_FRACTION", 2)
    monkeypatch.setattr(vector_search_module, "MAX_MERGE_ROWS", 12)


def old_occupancy(snapshot: IndexSnapshot) -> BucketCounts:
    """The occupancy as the index computed it before the delta existed: every taken id, sorted."""
    state = snapshot.state
    merged = state.folded.merged(state.delta)  # not cached on the state
    taken = np.sort(np.concatenate([merged.sorted_packed, merged.retired_packed]))
    return BucketCounts.from_sorted_keys(taken >> snapshot.layout.bits)


def all_prefixes(layout: IdLayout) -> list[tuple[int, ...]]:
    out: list[tuple[int, ...]] = [()]
    for length in range(1, layout.levels + 1):
        grid = np.stack(np.meshgrid(*[np.arange(s) for s in layout.sizes[:length]], indexing="ij"), -1)
        out += [tuple(p) for p in grid.reshape(-1, length).tolist()]
    return out


def assert_same_answers(live: SemanticIdIndex, ref: SemanticIdIndex, rng) -> None:
    """Every look-up of the live (layered) snapshot equals the rebuilt one's."""
    a, b = live.snapshot, ref.snapshot
    sa, sb = a.state, b.state
    layout = a.layout
    assert len(a) == len(b) and sa.rows == sb.rows
    ids = sb.item_ids[sb.order]
    unknown = [f"nope-{i}" for i in range(3)] if sb.id_kind == "str" else [10**6, -5, 77_777]
    queried = np.concatenate([sb.item_ids, np.array(unknown, dtype=sb.item_ids.dtype)])
    assert a.lookup_items(queried).tolist() == b.lookup_items(queried).tolist()
    keys = np.concatenate([sb.packed, rng.integers(0, 1 << (layout.bits * layout.width), 20)])
    assert sa.rows_of_packed(keys).tolist() == sb.rows_of_packed(keys).tolist()
    assert sa.retired_rows_of_packed(keys).tolist() == sb.retired_rows_of_packed(keys).tolist()
    base_keys = np.arange(1 << (layout.bits * layout.levels), dtype=np.int64)
    assert a.occupancy().counts_for(base_keys).tolist() == b.occupancy().counts_for(base_keys).tolist()
    assert a.items(sb.order) == b.items(sb.order)
    prefixes = all_prefixes(layout)
    short = [p for p in prefixes if len(p) < layout.levels]
    longest = [p for p in prefixes if len(p) == layout.levels]
    picked = rng.choice(len(longest), size=min(6, len(longest)), replace=False)
    for prefix in short + [longest[i] for i in picked]:
        assert a.children(prefix) == b.children(prefix), prefix
        if prefix:
            assert a.prefix_count(prefix) == b.prefix_count(prefix), prefix
            pages_a, pages_b, after_a, after_b = [], [], None, None
            while True:
                count_a, rows_a, after_a = a.prefix_rows(prefix, limit=2, after=after_a)
                count_b, rows_b, after_b = b.prefix_rows(prefix, limit=2, after=after_b)
                assert count_a == count_b and after_a == after_b, prefix
                pages_a.append(rows_a.tolist())
                pages_b.append(rows_b.tolist())
                if after_a is None:
                    break
            assert pages_a == pages_b, prefix
    queries = rng.standard_normal((3, DIM)).astype(np.float32)
    for k in (1, 4, len(b)):
        dist_a, rows_a = a.nearest(queries, k)
        dist_b, rows_b = b.nearest(queries, k)
        assert rows_a.tolist() == rows_b.tolist()
        np.testing.assert_allclose(dist_a, dist_b, rtol=1e-5, atol=1e-5)
    assert len(ids) == len(b)


@pytest.mark.parametrize("str_ids", [False, True])
def test_layered_state_answers_like_a_rebuild_through_folds_and_recodes(tmp_path, tiny_folds, str_ids):
    rng = np.random.default_rng(11)
    index = new_index(tmp_path / "idx", str_ids=str_ids)
    next_id, folds, chunked = 0, 0, 0
    for step in range(18):
        state = index.snapshot.state
        if step % 3 == 2 and len(index) >= 6:
            active = state.folded.merged(state.delta).order
            items = rng.choice(state.item_ids[active], size=3, replace=False).tolist()
            if not str_ids:
                items = [int(i) for i in items]
            codes = rng.integers(0, 4, size=(3, LAYOUT.levels))
            sids = resolve_collisions(
                layout=LAYOUT,
                base_codes=codes,
                distances=rng.random(3),
                item_ids=np.arange(3),
                alternatives=codes[:, -1:],
                occupancy=index.snapshot.occupancy(),
            ).semantic_ids
            sids[0] = index.snapshot.get_item(items[0])["semantic_id"]  # one keeps its id
            batch = recode_batch(index, items, sids, rng)
        else:
            n = int(rng.integers(1, 6))
            batch = make_batch(rng, n, start=next_id, occupancy=index.snapshot.occupancy(), str_ids=str_ids)
            next_id += n
        index.append(**batch)
        folds += index.snapshot.state.delta.rows == 0
        chunked = max(chunked, len(index.snapshot.vectors.chunks))
        ref = SemanticIdIndex.open(tmp_path / "idx")  # rebuilt from the files, fully folded
        assert_same_answers(index, ref, rng)
    assert folds >= 2 and chunked >= 2  # the thresholds were passed several times
    ref = SemanticIdIndex.open(tmp_path / "idx")
    live, rebuilt = index.state, ref.state
    for name in ("order", "sorted_packed", "retired_order", "retired_packed", "active"):
        assert getattr(live, name).tolist() == getattr(rebuilt, name).tolist(), name
    assert export_table(index).equals(export_table(ref))
    assert index.check().ok


def test_collision_ids_are_the_ones_the_whole_index_occupancy_gives(tmp_path, tiny_folds):
    """A sequence of crowded batches (collisions, fallbacks, re-codes) registered one by one: each
    batch gets exactly the IDs that the occupancy computed from every taken id (the pre-delta rule)
    gives, and the export equals the rebuilt index's."""
    rng = np.random.default_rng(12)
    index = SemanticIdIndex.create(
        tmp_path / "idx", layout=CROWDED, fingerprint="fp", id_kind="int", vector_dim=DIM, keep_columns=[]
    )
    next_id, fallbacks = 0, 0
    for step in range(14):
        n = int(rng.integers(1, 5))
        codes = rng.integers(0, 2, size=(n, CROWDED.levels))
        codes[:, -1] = rng.integers(0, 2, size=n)  # crowd two of the four last-level codes
        item_ids = np.arange(next_id, next_id + n)
        recodes = np.zeros(n, dtype=bool)
        if step % 4 == 3:  # re-code one known item
            state = index.snapshot.state
            item_ids[0] = int(state.item_ids[state.folded.merged(state.delta).order][0])
            recodes[0] = True
        next_id += n
        args = {
            "layout": CROWDED,
            "base_codes": codes,
            "distances": rng.random(n),
            "item_ids": item_ids,
            "alternatives": np.tile(np.arange(4), (n, 1)),
        }
        try:
            got = resolve_collisions(**args, occupancy=index.snapshot.occupancy())
        except Exception as exc:  # a full prefix: the old occupancy must refuse the same way
            with pytest.raises(type(exc)):
                resolve_collisions(**args, occupancy=old_occupancy(index.snapshot))
            continue
        expected = resolve_collisions(**args, occupancy=old_occupancy(index.snapshot))
        assert got.semantic_ids.tolist() == expected.semantic_ids.tolist(), step
        assert got.used_fallback.tolist() == expected.used_fallback.tolist(), step
        fallbacks += got.fallback_count
        vectors = rng.standard_normal((n, DIM)).astype(np.float32)
        index.append(
            item_ids=item_ids,
            base_codes=codes,
            semantic_ids=got.semantic_ids,
            fallback=got.used_fallback,
            embedding_hash=np.arange(n, dtype=np.uint64),
            vectors=vectors,
            recodes=recodes,
        )
    assert fallbacks > 0
    assert export_table(index).equals(export_table(SemanticIdIndex.open(tmp_path / "idx")))


def test_an_older_snapshot_never_sees_later_rows(tmp_path, tiny_folds):
    rng = np.random.default_rng(13)
    index = new_index(tmp_path / "idx")
    index.append(**make_batch(rng, 4, start=0))
    old = index.snapshot
    old_items = old.items(np.arange(4))
    for b in range(1, 8):  # many appends: buffers grow, deltas fold, the tail becomes chunks
        index.append(**make_batch(rng, 4, start=4 * b, occupancy=index.snapshot.occupancy()))
    assert len(old) == 4 and old.state.rows == 4 and old.vectors.ntotal == 4
    assert old.items(np.arange(4)) == old_items
    assert old.lookup_items([5, 20]).tolist() == [-1, -1]
    assert old.nearest(np.zeros((1, DIM), dtype=np.float32), 10)[1].shape == (1, 4)


def test_append_buffer_copies_when_a_snapshot_is_extended_twice():
    buffer = AppendBuffer(np.arange(3))
    base = buffer.view()
    buffer_a, a = buffer.append(base, np.array([10, 11]))
    buffer_b, b = buffer.append(base, np.array([20]))  # a branch from the same view
    assert a.tolist() == [0, 1, 2, 10, 11] and b.tolist() == [0, 1, 2, 20]
    assert buffer_a is buffer and buffer_b is not buffer
    longer = a
    for i in range(3000):  # growing past the capacity keeps every earlier view intact
        buffer_a, longer = buffer_a.append(longer, np.array([i]))
    assert a.tolist() == [0, 1, 2, 10, 11] and longer.shape[0] == 3005 and longer[-1] == 2999


def test_vector_set_search_equals_one_flat_index_with_skipped_rows(tiny_folds):
    rng = np.random.default_rng(14)
    vectors = rng.standard_normal((60, DIM)).astype(np.float32)
    flat = faiss.IndexFlatL2(DIM)
    flat.add(vectors[:10])
    layered = VectorSet.from_index(flat)
    for start in range(10, 60, 3):
        layered = layered.extended(vectors[start : start + 3])
    assert layered.ntotal == 60 and len(layered.chunks) >= 2
    skip = np.array([0, 7, 12, 33, 59], dtype=np.int64)
    whole = faiss.IndexFlatL2(DIM)
    whole.add(vectors)
    queries = rng.standard_normal((4, DIM)).astype(np.float32)
    sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(skip))
    dist_ref, rows_ref = whole.search(queries, 8, params=faiss.SearchParameters(sel=sel))
    dist, rows = layered.search(queries, 8, skip)
    assert rows.tolist() == rows_ref.tolist()
    np.testing.assert_allclose(dist, dist_ref, rtol=1e-5, atol=1e-5)
    one = layered.as_index()
    np.testing.assert_array_equal(one.reconstruct_n(0, one.ntotal), vectors)


def test_small_writes_stay_few_files_through_tiered_compaction(tmp_path, monkeypatch):
    """Writes of 2 rows with tail folds of at most 4 rows and runs of 3 merged, two levels deep: every
    write rewrites few rows, the files stay few, and rows keep their order on disk."""
    monkeypatch.setattr(segments_module, "SMALL_SEGMENT_ROWS", 4)
    monkeypatch.setattr(segments_module, "COMPACT_RUN", 3)
    monkeypatch.setattr(segments_module, "COMPACT_LEVELS", 2)
    rng = np.random.default_rng(15)
    index = new_index(tmp_path / "idx")
    sizes = []
    for b in range(30):
        index.append(**make_batch(rng, 2, start=2 * b, occupancy=index.snapshot.occupancy(), values=4))
        sizes.append(json_rows(tmp_path / "idx"))
    # at most 2 trailing segments per size class (4 rows, 12 rows), merged ones of up to 36 rows before them
    assert max(len(s) for s in sizes) <= 6 and sizes[-1][0] >= 30
    assert sum(sizes[-1]) == 60
    reopened = SemanticIdIndex.open(tmp_path / "idx")
    assert reopened.state.item_ids.tolist() == list(range(60))  # row order kept
    assert export_table(reopened).equals(export_table(index))
    for b in range(6):  # writes of 5 rows never fit the tail: the 12-row class merges them in runs of 3
        index.append(**make_batch(rng, 5, start=100 + 5 * b, occupancy=index.snapshot.occupancy(), values=4))
    assert json_rows(tmp_path / "idx")[-2:] == [15, 15]
    index.append(**make_batch(rng, 1, start=1000, occupancy=index.snapshot.occupancy(), values=4))
    listed = set(index.segments)
    assert {p.name for p in (tmp_path / "idx" / "segments").iterdir()} == listed  # replaced ones removed
    assert index.check().ok


def json_rows(root) -> list[int]:
    return [s["rows"] for s in json.loads((root / "manifest.json").read_text())["segments"]]
