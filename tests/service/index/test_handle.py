"""SemanticIdIndex: round trips, queries vs slow references, atomicity, locking, repair."""

from __future__ import annotations

import collections
import fcntl
import json
import logging
import os
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import semid.service.index.handle as index_module
import semid.service.index.segments as segments_module
import semid.service.index.store as store
from semid.service.errors import (
    CorruptIndexError,
    DuplicateItemError,
    DuplicateSemanticIdError,
    FingerprintMismatchError,
    IndexExistsError,
    IndexLockedError,
    IndexNotFoundError,
    InvalidInputError,
    InvalidPrefixError,
    InvalidSemanticIdError,
    UnknownItemError,
    UnknownSemanticIdError,
)
from semid.service.ids.dedup import BucketCounts, resolve_collisions
from semid.service.ids.hashing import embedding_hash
from semid.service.ids.layout import IdLayout
from semid.service.index.check import check_index
from semid.service.index.handle import SemanticIdIndex
from tests.conftest import ROOT

LAYOUT = IdLayout(codebook_sizes=(4, 4, 4), dedup_size=4)
DIM = 3


def make_batch(rng, n, *, start=0, occupancy=None, str_ids=False, layout=LAYOUT, values=None):
    values = values or layout.codebook_sizes[0]
    codes = rng.integers(0, values, size=(n, layout.levels))
    ids = np.arange(start, start + n)
    item_ids = np.array([f"it-{i}" for i in ids], dtype=object) if str_ids else ids
    result = resolve_collisions(
        layout=layout,
        base_codes=codes,
        distances=rng.random(n),
        item_ids=item_ids,
        alternatives=codes[:, -1:],
        occupancy=occupancy or BucketCounts(),
    )
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    return {
        "item_ids": item_ids,
        "base_codes": codes,
        "semantic_ids": result.semantic_ids,
        "fallback": result.used_fallback,
        "embedding_hash": embedding_hash(vectors),
        "vectors": vectors,
        "columns": {"title": pa.array([f"title {i}" for i in ids])},
    }


def new_index(path, *, str_ids=False, layout=LAYOUT, checkpoint_dir=None):
    return SemanticIdIndex.create(
        path,
        layout=layout,
        fingerprint="fp-1",
        id_kind="str" if str_ids else "int",
        vector_dim=DIM,
        keep_columns=["title"],
        checkpoint_dir=checkpoint_dir,
    )


def filled_index(path, rng, *, batches=2, n=20, str_ids=False, layout=LAYOUT, values=None):
    index = new_index(path, str_ids=str_ids, layout=layout)
    all_batches = []
    for b in range(batches):
        batch = make_batch(
            rng, n, start=b * n, occupancy=index.snapshot.occupancy(), str_ids=str_ids, layout=layout, values=values
        )
        index.append(**batch)
        all_batches.append(batch)
    return index, all_batches


def dir_state(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name != "index.lock"
    }


@pytest.mark.parametrize("str_ids", [False, True])
def test_create_append_reopen_round_trip(tmp_path, str_ids):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text('{"levels": 3}')
    index = new_index(tmp_path / "idx", str_ids=str_ids, checkpoint_dir=ckpt)
    assert len(index) == 0 and index.checkpoint_dir == tmp_path / "idx" / "checkpoint"
    assert (index.checkpoint_dir / "config.json").read_text() == '{"levels": 3}'
    rng = np.random.default_rng(0)
    b1 = make_batch(rng, 15, str_ids=str_ids)
    assert index.append(**b1) == "seg-000001.parquet"
    b2 = make_batch(rng, 10, start=15, occupancy=index.snapshot.occupancy(), str_ids=str_ids)
    assert index.append(**b2) == "seg-000002.parquet"

    reopened = SemanticIdIndex.open(tmp_path / "idx", expected_fingerprint="fp-1")
    # two small writes: the second rewrote the first's small segment with its rows appended
    assert len(reopened) == 25 and reopened.segments == ("seg-000002.parquet",)
    assert reopened.layout == LAYOUT and reopened.id_kind == ("str" if str_ids else "int")
    assert reopened.keep_columns == ("title",) and reopened.vector_dim == DIM
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["item_count"] == 25 and manifest["format_version"] == 1
    ids = np.concatenate([b1["item_ids"], b2["item_ids"]])
    sids = np.concatenate([b1["semantic_ids"], b2["semantic_ids"]])
    for handle in (index, reopened):
        rows = handle.snapshot.lookup_items(ids)
        np.testing.assert_array_equal(rows, np.arange(25))
        for i in (0, 14, 24):
            item = handle.snapshot.get_item(ids[i])
            assert item["item_id"] == ids[i] and item["semantic_id"] == sids[i].tolist()
            assert item["title"] == f"title {i}" and item["token"] == LAYOUT.token(sids[i])
        hashes = handle.snapshot.embedding_hashes(rows)
        np.testing.assert_array_equal(hashes, np.concatenate([b1["embedding_hash"], b2["embedding_hash"]]))
        assert handle.snapshot.occupancy().total == 25
    unknown = "nope" if str_ids else 999
    assert reopened.snapshot.lookup_items([unknown]).tolist() == [-1]
    with pytest.raises(UnknownItemError) as info:
        reopened.snapshot.get_item(unknown)
    assert isinstance(info.value, KeyError) and info.value.item_id == unknown


def test_int_index_accepts_decimal_strings(tmp_path):
    index, _ = filled_index(tmp_path / "idx", np.random.default_rng(1), batches=1)
    assert index.snapshot.lookup_items(["3", "x", 3, "99"]).tolist() == [3, -1, 3, -1]


def test_children_counts_match_python(tmp_path):
    index, batches = filled_index(tmp_path / "idx", np.random.default_rng(4), batches=2, n=40, values=3)
    sids = [tuple(s) for b in batches for s in b["semantic_ids"].tolist()]
    for k in range(0, 4):
        for prefix in {s[:k] for s in sids}:
            counter = collections.Counter(s[k] for s in sids if s[:k] == prefix)
            assert index.snapshot.children(prefix) == sorted(counter.items()), prefix
    assert index.snapshot.children((3, 3, 3)) == []
    with pytest.raises(InvalidInputError):
        index.snapshot.children((0, 0, 0, 0))  # a full id has no children
    with pytest.raises(InvalidPrefixError):
        index.snapshot.children((9,))


def test_get_by_semantic_id(tmp_path):
    index, batches = filled_index(tmp_path / "idx", np.random.default_rng(5), batches=1)
    sid = batches[0]["semantic_ids"][7]
    assert index.snapshot.get_by_semantic_id(sid.tolist())["item_id"] == 7
    taken = {tuple(s) for s in batches[0]["semantic_ids"].tolist()}
    free = next(s for s in np.ndindex(4, 4, 4, 4) if s not in taken)
    with pytest.raises(UnknownSemanticIdError) as info:
        index.snapshot.get_by_semantic_id(free)
    assert info.value.semantic_id == free and isinstance(info.value, KeyError)
    with pytest.raises(InvalidSemanticIdError):
        index.snapshot.get_by_semantic_id([0, 0, 0])
    with pytest.raises(InvalidSemanticIdError):
        index.snapshot.get_by_semantic_id([0, 0, 0, 4])


def test_prefix_count_matches_python_loop(tmp_path):
    layout = IdLayout(codebook_sizes=(6, 5, 7), dedup_size=5)
    rng = np.random.default_rng(6)
    index, batches = filled_index(tmp_path / "idx", rng, batches=4, n=120, layout=layout, values=5)
    sids = [tuple(s) for b in batches for s in b["semantic_ids"].tolist()]
    assert len(set(sids)) == len(sids) == 480
    for _ in range(300):
        k = int(rng.integers(1, 5))
        prefix = tuple(int(rng.integers(0, size)) for size in layout.sizes[:k])
        expected = sum(1 for s in sids if s[:k] == prefix)
        assert index.snapshot.prefix_count(prefix) == expected, prefix


def test_nearest_finds_the_items_own_vector(tmp_path):
    index, batches = filled_index(tmp_path / "idx", np.random.default_rng(7), batches=2)
    vectors = np.concatenate([b["vectors"] for b in batches])
    distances, rows = index.snapshot.nearest(vectors[[3, 31]], k=2)
    assert rows[:, 0].tolist() == [3, 31]
    np.testing.assert_allclose(distances[:, 0], 0.0, atol=1e-6)
    d_all, r_all = index.snapshot.nearest(vectors[0], k=1000)
    assert r_all.shape == (1, 40) and sorted(r_all[0].tolist()) == list(range(40))
    with pytest.raises(InvalidInputError):
        index.snapshot.nearest(np.zeros((1, DIM + 1)), k=1)


def test_duplicates_refused_and_nothing_written(tmp_path):
    rng = np.random.default_rng(8)
    index, batches = filled_index(tmp_path / "idx", rng, batches=1)
    before = dir_state(tmp_path / "idx")
    fresh = make_batch(rng, 5, start=100, occupancy=index.snapshot.occupancy())

    again = dict(fresh, item_ids=np.array([100, 101, 5, 103, 104]))  # 5 is indexed
    with pytest.raises(DuplicateItemError) as info:
        index.append(**again)
    assert info.value.item_ids == [5]
    in_batch = dict(fresh, item_ids=np.array([100, 101, 100, 103, 104]))
    with pytest.raises(DuplicateItemError):
        index.append(**in_batch)
    taken = fresh["semantic_ids"].copy()
    taken[1] = batches[0]["semantic_ids"][0]
    with pytest.raises(DuplicateSemanticIdError) as sid_info:
        index.append(**dict(fresh, semantic_ids=taken))
    assert sid_info.value.semantic_ids == [tuple(batches[0]["semantic_ids"][0].tolist())]
    repeated = fresh["semantic_ids"].copy()
    repeated[2] = repeated[3]
    with pytest.raises(DuplicateSemanticIdError):
        index.append(**dict(fresh, semantic_ids=repeated))
    with pytest.raises(InvalidInputError):
        index.append(**dict(fresh, columns={"other": pa.array(["x"] * 5)}))

    assert dir_state(tmp_path / "idx") == before
    assert len(index) == 20 and index.snapshot.lookup_items([100]).tolist() == [-1]
    assert len(SemanticIdIndex.open(tmp_path / "idx")) == 20
    index.append(**fresh)  # the valid batch still goes in
    assert len(SemanticIdIndex.open(tmp_path / "idx")) == 25


def test_fingerprint_mismatch_refused(tmp_path):
    filled_index(tmp_path / "idx", np.random.default_rng(9), batches=1)
    with pytest.raises(FingerprintMismatchError) as info:
        SemanticIdIndex.open(tmp_path / "idx", expected_fingerprint="fp-2")
    assert "fp-1" in str(info.value) and "fp-2" in str(info.value)
    assert (info.value.expected, info.value.actual) == ("fp-2", "fp-1")


def test_create_refuses_existing_and_open_refuses_missing(tmp_path):
    filled_index(tmp_path / "idx", np.random.default_rng(10), batches=1)
    with pytest.raises(IndexExistsError):
        new_index(tmp_path / "idx")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(IndexExistsError):
        new_index(tmp_path / "other")
    with pytest.raises(IndexNotFoundError):
        SemanticIdIndex.open(tmp_path / "nothing-here")


def test_crash_before_manifest_leaves_previous_index(tmp_path, monkeypatch):
    rng = np.random.default_rng(11)
    index, batches = filled_index(tmp_path / "idx", rng, batches=1)
    manifest_before = (tmp_path / "idx" / "manifest.json").read_bytes()
    batch = make_batch(rng, 6, start=50, occupancy=index.snapshot.occupancy())

    def crash(*args, **kwargs):
        raise OSError("simulated crash before the manifest is replaced")

    monkeypatch.setattr(index_module, "write_manifest", crash)
    with pytest.raises(OSError, match="simulated crash"):
        index.append(**batch)
    monkeypatch.undo()
    assert (tmp_path / "idx" / "segments" / "seg-000002.parquet").exists()  # written, but not listed
    assert (tmp_path / "idx" / "manifest.json").read_bytes() == manifest_before
    assert len(index) == 20  # the handle did not move on either

    reopened = SemanticIdIndex.open(tmp_path / "idx")  # faiss.index has 26 vectors now: rebuilt
    assert len(reopened) == 20 and reopened.snapshot.lookup_items([50]).tolist() == [-1]
    assert reopened.check().ok
    # the next write cleans the orphan up and reuses the name
    assert reopened.append(**batch) == "seg-000002.parquet"
    again = SemanticIdIndex.open(tmp_path / "idx")
    assert len(again) == 26 and again.check().ok


def test_missing_segment_is_named(tmp_path):
    filled_index(tmp_path / "idx", np.random.default_rng(12), batches=2)
    (tmp_path / "idx" / "segments" / "seg-000002.parquet").unlink()
    with pytest.raises(CorruptIndexError, match="seg-000002.parquet"):
        SemanticIdIndex.open(tmp_path / "idx")
    report = check_index(tmp_path / "idx")
    assert not report.ok and any("seg-000002.parquet" in p for p in report.problems)


def test_bad_manifest_is_corrupt(tmp_path):
    filled_index(tmp_path / "idx", np.random.default_rng(13), batches=1)
    (tmp_path / "idx" / "manifest.json").write_text("{not json")
    with pytest.raises(CorruptIndexError, match="manifest.json"):
        SemanticIdIndex.open(tmp_path / "idx")


def test_lock_held_by_another_fd(tmp_path, monkeypatch):
    rng = np.random.default_rng(14)
    index, _ = filled_index(tmp_path / "idx", rng, batches=1)
    fd = os.open(tmp_path / "idx" / "index.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(fd, 0)
        os.pwrite(fd, b"4242\n", 0)
        with pytest.raises(IndexLockedError) as info:
            index.append(**make_batch(rng, 3, start=100))
        assert info.value.holder_pid == 4242
        assert str(info.value) == f"index {tmp_path / 'idx'} is being written by another process (pid 4242)"

        # a waiting writer gets the lock once it is released: the holder lets go when the writer first
        # finds the lock taken and waits (no timers: the order is forced, not hoped for)
        waits: list[float] = []

        def wait_then_release(seconds: float) -> None:
            if not waits:
                fcntl.flock(fd, fcntl.LOCK_UN)
            waits.append(seconds)

        clock = types.SimpleNamespace(monotonic=time.monotonic, sleep=wait_then_release)
        monkeypatch.setattr(store, "time", clock)  # the lock's polling clock only
        with index.writer(timeout=10):
            assert len(waits) == 1  # it waited once, then got the lock
            index.append(**make_batch(rng, 3, start=100, occupancy=index.snapshot.occupancy()))
        monkeypatch.undo()
    finally:
        os.close(fd)
    assert len(SemanticIdIndex.open(tmp_path / "idx")) == 23


def test_lock_held_by_another_process(tmp_path):
    rng = np.random.default_rng(15)
    index, _ = filled_index(tmp_path / "idx", rng, batches=1)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from semid.service.index.store import WriterLock; "
            "lock = WriterLock(Path(sys.argv[1]), description='x'); lock.acquire(); "
            "print('locked', flush=True); time.sleep(30)",
            str(tmp_path / "idx" / "index.lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(IndexLockedError) as info:
            index.append(**make_batch(rng, 3, start=100))
        assert info.value.holder_pid == holder.pid and f"pid {holder.pid}" in str(info.value)
    finally:
        holder.kill()
        holder.wait()
    index.append(**make_batch(rng, 3, start=100, occupancy=index.snapshot.occupancy()))  # free again
    assert len(index) == 23


def test_writer_excludes_other_threads_of_the_same_handle(tmp_path):
    rng = np.random.default_rng(22)
    index, _ = filled_index(tmp_path / "idx", rng, batches=1)
    errors: list[BaseException] = []

    def other_thread() -> None:
        try:
            index.append(**make_batch(rng, 2, start=500))
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    with index.writer():
        index.append(**make_batch(rng, 2, start=400, occupancy=index.snapshot.occupancy()))  # re-entrant
        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
    assert len(errors) == 1 and isinstance(errors[0], IndexLockedError)
    assert "another thread" in str(errors[0])
    assert len(index) == 22


def test_second_handle_catches_up_before_writing(tmp_path):
    rng = np.random.default_rng(16)
    first, _ = filled_index(tmp_path / "idx", rng, batches=1)
    second = SemanticIdIndex.open(tmp_path / "idx")
    first.append(**make_batch(rng, 5, start=100, occupancy=first.snapshot.occupancy()))
    assert len(second) == 20  # stale until it writes or refreshes
    with second.writer():
        assert len(second) == 25
        batch = make_batch(rng, 5, start=200, occupancy=second.snapshot.occupancy())
        second.append(**batch)
    with pytest.raises(DuplicateItemError):
        first.append(**make_batch(rng, 2, start=200, occupancy=first.snapshot.occupancy()))
    final = SemanticIdIndex.open(tmp_path / "idx")
    assert len(final) == 30 and final.check().ok
    np.testing.assert_array_equal(final.snapshot.nearest(batch["vectors"], k=1)[1][:, 0], np.arange(25, 30))


def test_faiss_rebuilt_when_missing(tmp_path, caplog):
    rng = np.random.default_rng(17)
    _, batches = filled_index(tmp_path / "idx", rng, batches=2)
    faiss_path = tmp_path / "idx" / "faiss.index"
    faiss_path.unlink()
    report = check_index(tmp_path / "idx")
    assert report.ok and any("faiss.index is missing" in n for n in report.notes)
    with caplog.at_level(logging.WARNING, logger="semid.service.index.handle"):
        index = SemanticIdIndex.open(tmp_path / "idx")
    assert "faiss.index missing" in caplog.text
    assert faiss_path.exists() and check_index(tmp_path / "idx").ok
    vectors = np.concatenate([b["vectors"] for b in batches])
    np.testing.assert_array_equal(index.snapshot.nearest(vectors, k=1)[1][:, 0], np.arange(40))


def test_small_writes_fold_into_one_tail_segment_and_large_ones_do_not(tmp_path, monkeypatch):
    monkeypatch.setattr(segments_module, "SMALL_SEGMENT_ROWS", 30)
    index, _ = filled_index(tmp_path / "idx", np.random.default_rng(31), batches=4, n=10)
    # 10 -> seg1; 10+10 -> seg2 replaces it; 20+10 -> seg3 replaces that; 30+10 > 30 -> seg4 beside it
    assert index.segments == ("seg-000003.parquet", "seg-000004.parquet")
    files = sorted(p.name for p in (tmp_path / "idx" / "segments").iterdir())
    assert files == ["seg-000003.parquet", "seg-000004.parquet"]  # replaced tails removed by later writes
    reopened = SemanticIdIndex.open(tmp_path / "idx")
    np.testing.assert_array_equal(reopened.state.item_ids, index.state.item_ids)  # row order kept
    np.testing.assert_array_equal(reopened.state.semantic_ids, index.state.semantic_ids)
    assert check_index(tmp_path / "idx").ok


def test_faiss_rebuilt_when_stale(tmp_path):
    rng = np.random.default_rng(18)
    filled_index(tmp_path / "idx", rng, batches=2)
    import faiss

    faiss.write_index(faiss.IndexFlatL2(DIM), str(tmp_path / "idx" / "faiss.index"))  # 0 vectors
    report = check_index(tmp_path / "idx")
    assert report.ok  # derived data: a note, not a problem
    assert any("holds 0 vectors" in n for n in report.notes)
    assert len(SemanticIdIndex.open(tmp_path / "idx").snapshot.nearest(np.zeros(DIM), k=50)[1][0]) == 40
    assert check_index(tmp_path / "idx").ok


def corrupt_with_duplicate(root: Path, *, item_id: int | None = None) -> None:
    """Append by hand a segment that repeats row 0's semantic id (and item id, unless
    ``item_id`` is given), without a re-code flag, and list it."""
    seg = root / "segments"
    table = pq.read_table(seg / "seg-000001.parquet").slice(0, 1)
    if item_id is not None:
        table = table.set_column(0, "item_id", pa.array([item_id], pa.int64()))
    pq.write_table(table, seg / "seg-000009.parquet")
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["segments"].append({"name": "seg-000009.parquet", "rows": 1})
    manifest["item_count"] += 1
    (root / "manifest.json").write_text(json.dumps(manifest))


def test_check_reports_manual_duplicates(tmp_path):
    index, _ = filled_index(tmp_path / "idx", np.random.default_rng(19), batches=2)
    assert index.check().ok and index.check().item_count == 40
    corrupt_with_duplicate(tmp_path / "idx")
    report = index.check()
    assert not report.ok
    assert any("item ids are held by several rows" in p for p in report.problems)
    assert any("faiss.index holds 40 vectors" in n for n in report.notes)
    with pytest.raises(CorruptIndexError, match="item ids held by several rows"):
        SemanticIdIndex.open(tmp_path / "idx")


def test_check_reports_semantic_id_held_by_two_items(tmp_path):
    index, _ = filled_index(tmp_path / "idx", np.random.default_rng(19), batches=2)
    corrupt_with_duplicate(tmp_path / "idx", item_id=10**9)
    report = index.check()
    assert not report.ok
    assert not any("item ids" in p for p in report.problems)
    assert any("semantic ids are held by several items" in p for p in report.problems)
    with pytest.raises(CorruptIndexError, match="semantic ids held by several items"):
        SemanticIdIndex.open(tmp_path / "idx")


def test_check_reports_row_count_mismatch(tmp_path):
    filled_index(tmp_path / "idx", np.random.default_rng(20), batches=1)
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    manifest["segments"][0]["rows"] = 21
    manifest["item_count"] = 21
    (tmp_path / "idx" / "manifest.json").write_text(json.dumps(manifest))
    report = check_index(tmp_path / "idx")
    assert any("has 20 rows; the manifest says 21" in p for p in report.problems)
    with pytest.raises(CorruptIndexError, match="seg-000001.parquet has 20 rows"):
        SemanticIdIndex.open(tmp_path / "idx")


def test_base_code_stats(tmp_path):
    index = new_index(tmp_path / "idx")
    batch = make_batch(np.random.default_rng(21), 3)
    batch["base_codes"] = np.array([[1, 1, 1], [1, 1, 1], [2, 2, 2]])
    batch["semantic_ids"] = np.array([[1, 1, 1, 0], [1, 1, 1, 1], [2, 2, 2, 0]])
    index.append(**batch)
    assert index.snapshot.base_code_stats() == {
        "distinct": 2,
        "largest_bucket": 2,
        "collision_rate": pytest.approx(1 / 3),  # 1 - distinct / items, as the reference scorer
    }
