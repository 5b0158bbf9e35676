"""Re-coding indexed items: superseding rows, reserved (retired) IDs, reload and check."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from semid.service.errors import DuplicateItemError, DuplicateSemanticIdError, UnknownItemError, UnknownSemanticIdError
from semid.service.export import export_table
from semid.service.ids.dedup import resolve_collisions
from semid.service.ids.hashing import embedding_hash
from semid.service.index.handle import SemanticIdIndex
from tests.service.index.test_handle import DIM, LAYOUT, filled_index, make_batch, new_index


def free_sids(index: SemanticIdIndex, n: int, rng) -> np.ndarray:
    """``n`` full semantic ids nobody holds or reserves, placed as the service places them
    (the dedup digit is the next free one of the bucket, counting reserved ids)."""
    codes = rng.integers(0, LAYOUT.codebook_sizes[0], size=(n, LAYOUT.levels))
    result = resolve_collisions(
        layout=LAYOUT,
        base_codes=codes,
        distances=rng.random(n),
        item_ids=np.arange(n),
        alternatives=codes[:, -1:],
        occupancy=index.snapshot.occupancy(),
    )
    return result.semantic_ids


def recode_batch(index: SemanticIdIndex, item_ids, sids: np.ndarray, rng) -> dict:
    vectors = rng.standard_normal((len(item_ids), DIM)).astype(np.float32)
    return {
        "item_ids": np.asarray(item_ids),
        "base_codes": sids[:, : LAYOUT.levels],
        "semantic_ids": sids,
        "fallback": np.zeros(len(item_ids), dtype=bool),
        "embedding_hash": embedding_hash(vectors),
        "vectors": vectors,
        "columns": {"title": pa.array([f"recoded {i}" for i in item_ids])},
        "recodes": np.ones(len(item_ids), dtype=bool),
    }


def snapshot_of(index: SemanticIdIndex) -> dict:
    """The observable state, for comparing an incrementally built handle with a reload."""
    s = index.state
    items = {row["item_id"]: (row["semantic_id"], row["title"]) for row in index.snapshot.items(s.order)}
    return {
        "items": items,
        "order": s.order.tolist(),
        "sorted_packed": s.sorted_packed.tolist(),
        "retired_packed": s.retired_packed.tolist(),
        "retired_order": s.retired_order.tolist(),
        "active": s.active.tolist(),
        "lookup": index.snapshot.lookup_items(s.item_ids).tolist(),
    }


@pytest.mark.parametrize("str_ids", [False, True])
def test_recode_moves_the_item_and_reserves_its_old_id(tmp_path, str_ids):
    rng = np.random.default_rng(1)
    index, batches = filled_index(tmp_path / "idx", rng, batches=2, str_ids=str_ids)
    item = batches[0]["item_ids"][3]
    old = index.snapshot.get_item(item)
    before = len(index)
    new_sid = free_sids(index, 1, rng)
    index.append(**recode_batch(index, [item], new_sid, rng))

    now = index.snapshot.get_item(item)
    assert now["semantic_id"] == new_sid[0].tolist() and now["title"] == f"recoded {item}"
    assert len(index) == before and index.state.rows == before + 1
    # the old id is no longer served ...
    with pytest.raises(UnknownSemanticIdError, match="was retired when item .* was re-coded; it now has"):
        index.snapshot.get_by_semantic_id(old["semantic_id"])
    assert index.snapshot.prefix_count(old["semantic_id"]) == 0
    # ... but stays reserved: the occupancy counts it and nobody else may take it
    base_key = LAYOUT.pack_base(np.array([old["semantic_id"][: LAYOUT.levels]]))
    holders = (index.state.sorted_packed >> LAYOUT.bits) == base_key[0]
    assert index.snapshot.occupancy().counts_for(base_key)[0] == holders.sum() + 1
    taker = make_batch(rng, 1, start=1000, str_ids=str_ids)
    taker["semantic_ids"] = np.array([old["semantic_id"]])
    with pytest.raises(DuplicateSemanticIdError, match="already taken"):
        index.append(**taker)
    # export: one row per item, the new id
    exported = {r["item_id"]: r["semantic_id"] for r in export_table(index).to_pylist()}
    assert len(exported) == before and exported[item] == new_sid[0].tolist()
    # the same on disk
    again = SemanticIdIndex.open(tmp_path / "idx")
    assert snapshot_of(again) == snapshot_of(index)
    report = again.check()
    assert report.ok, report.problems
    assert report.item_count == before


def test_recode_may_keep_the_items_own_id(tmp_path):
    rng = np.random.default_rng(2)
    index, batches = filled_index(tmp_path / "idx", rng, batches=1)
    item = int(batches[0]["item_ids"][0])
    old = index.snapshot.get_item(item)
    index.append(**recode_batch(index, [item], np.array([old["semantic_id"]]), rng))
    assert index.snapshot.get_item(item)["semantic_id"] == old["semantic_id"]
    assert index.snapshot.get_by_semantic_id(old["semantic_id"])["item_id"] == item
    assert index.state.retired_packed.shape[0] == 0  # nothing reserved: the id is still in use
    assert SemanticIdIndex.open(tmp_path / "idx").check().ok


def test_recode_refusals_write_nothing(tmp_path):
    rng = np.random.default_rng(3)
    index, batches = filled_index(tmp_path / "idx", rng, batches=1)
    segments = index.segments
    with pytest.raises(UnknownItemError, match="items to re-code are not in the index"):
        index.append(**recode_batch(index, [99_999], free_sids(index, 1, rng), rng))
    other = index.snapshot.get_item(int(batches[0]["item_ids"][1]))["semantic_id"]
    with pytest.raises(DuplicateSemanticIdError):  # another item's id
        index.append(**recode_batch(index, [int(batches[0]["item_ids"][0])], np.array([other]), rng))
    known = make_batch(rng, 1, start=0)  # known item without the re-code flag
    known["semantic_ids"] = free_sids(index, 1, rng)
    with pytest.raises(DuplicateItemError, match="already in the index"):
        index.append(**known)
    assert index.segments == segments and index.check().ok


def test_incremental_state_matches_a_reload_over_many_recodes(tmp_path):
    """Random appends and re-codes (some keeping the id, some items re-coded twice): the handle's
    in-memory state equals the state rebuilt from the files after every step."""
    rng = np.random.default_rng(4)
    layout_values = LAYOUT.codebook_sizes[0]
    index = new_index(tmp_path / "idx")
    next_id = 0
    for step in range(12):
        if step % 3 == 0 or len(index) < 5:
            batch = make_batch(rng, 6, start=next_id, occupancy=index.snapshot.occupancy(), values=layout_values)
            next_id += 6
        else:
            items = rng.choice(index.state.item_ids[index.state.order], size=3, replace=False)
            sids = free_sids(index, 3, rng)
            sids[0] = index.snapshot.get_item(int(items[0]))["semantic_id"]  # one keeps its id
            batch = recode_batch(index, items.tolist(), sids, rng)
        index.append(**batch)
        assert snapshot_of(SemanticIdIndex.open(tmp_path / "idx")) == snapshot_of(index), step
    state = index.state
    assert state.rows > len(index) and state.retired_packed.shape[0] > 0
    taken = state.taken_sorted()
    assert np.unique(taken).shape[0] == taken.shape[0]  # active and reserved ids never overlap
    assert index.check().ok


def test_nearest_skips_retired_rows(tmp_path):
    rng = np.random.default_rng(5)
    index, batches = filled_index(tmp_path / "idx", rng, batches=1)
    item = int(batches[0]["item_ids"][2])
    old_vector = batches[0]["vectors"][2]
    index.append(**recode_batch(index, [item], free_sids(index, 1, rng), rng))
    retired_row = int(np.flatnonzero(~index.state.active)[0])
    _, rows = index.snapshot.nearest(old_vector[None, :], k=len(index))
    assert retired_row not in rows[0].tolist()
    assert sorted(rows[0].tolist()) == sorted(index.state.order.tolist())


def test_segments_written_before_recoding_existed_still_load_and_extend(tmp_path):
    rng = np.random.default_rng(6)
    index, batches = filled_index(tmp_path / "idx", rng, batches=1)
    seg = tmp_path / "idx" / "segments" / index.segments[0]
    pq.write_table(pq.read_table(seg).drop_columns(["recodes"]), seg)  # as an older semid wrote it
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    del manifest["segments"][0]["sha256"]  # an older semid recorded no checksum either
    (tmp_path / "idx" / "manifest.json").write_text(json.dumps(manifest))
    old = SemanticIdIndex.open(tmp_path / "idx")
    assert len(old) == 20 and not old.state.recodes.any()
    item = int(batches[0]["item_ids"][0])
    old.append(**recode_batch(old, [item], free_sids(old, 1, rng), rng))  # folds into the old tail segment
    again = SemanticIdIndex.open(tmp_path / "idx")
    assert len(again.segments) == 1 and again.state.recodes.sum() == 1
    assert snapshot_of(again) == snapshot_of(old) and again.check().ok


def test_check_flags_a_recode_row_for_an_item_never_indexed(tmp_path):
    rng = np.random.default_rng(7)
    index, _ = filled_index(tmp_path / "idx", rng, batches=1)
    seg = tmp_path / "idx" / "segments" / index.segments[0]
    table = pq.read_table(seg)
    flags = np.zeros(table.num_rows, dtype=bool)
    flags[0] = True  # a first row cannot supersede anything
    pq.write_table(table.set_column(table.column_names.index("recodes"), "recodes", pa.array(flags)), seg)
    report = index.check()
    assert not report.ok and any("re-code" in p for p in report.problems)
