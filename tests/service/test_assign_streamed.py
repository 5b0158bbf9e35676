"""Large-run `semid assign`: sharded resolution and a segment vector file give the same IDs as the
in-memory path, the vector file is mapped (not read) on open and checked by `semid check`, k-NN over it
is exact, and indexes written before vector files existed still open and can be extended."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pyarrow as pa
import pytest

from semid.model.data.catalog import Catalog
from semid.model.data.synthetic import write_catalog
from semid.service import assign as assign_module
from semid.service.assign import assign_catalog
from semid.service.errors import CorruptIndexError
from semid.service.export import export_table
from semid.service.index import vector_search
from semid.service.index.check import check_index
from semid.service.index.handle import SemanticIdIndex
from semid.service.index.manifest import FAISS_NAME, MANIFEST_NAME, read_manifest
from tests.conftest import colliding_catalog

OLD_PATH = 10**9  # vector_file_min_rows no run reaches: the in-memory path with faiss.index


@pytest.fixture(scope="module")
def colliding() -> Catalog:
    """600 items in tight categories plus 3 groups of 20 exact duplicates: big buckets and fallback items."""
    return colliding_catalog()


@pytest.fixture
def small_shards(monkeypatch):
    """Resolve in many shards and write vectors in several chunks, as a 10M run does."""
    monkeypatch.setattr(assign_module, "RESOLVE_SHARD_ROWS", 64)
    monkeypatch.setattr(assign_module, "VECTOR_CHUNK_ROWS", 100)


def _run(checkpoint, catalog, index, *, streamed: bool, **kw) -> dict:
    summary = assign_catalog(
        checkpoint=checkpoint,
        catalog=catalog,
        index_dir=index,
        batch_rows=128,
        vector_file_min_rows=1 if streamed else OLD_PATH,
        **kw,
    )
    out = summary.to_dict()
    out.pop("seconds")
    out.pop("segment")
    return out


def _export_bytes(index_dir, out) -> bytes:
    import pyarrow.parquet as pq

    pq.write_table(export_table(SemanticIdIndex.open(index_dir)), out)
    return out.read_bytes()


def test_streamed_run_gives_the_in_memory_run_ids(small_shards, colliding, tiny_checkpoint, tmp_path):
    path = write_catalog(colliding, tmp_path / "cat.parquet")
    old = _run(tiny_checkpoint, path, tmp_path / "old", streamed=False)
    new = _run(tiny_checkpoint, path, tmp_path / "new", streamed=True)
    assert old == new and new["fallback_items"] > 0 and new["largest_bucket"] > 8
    assert _export_bytes(tmp_path / "new", tmp_path / "n.parquet") == _export_bytes(
        tmp_path / "old", tmp_path / "o.parquet"
    )
    manifest = read_manifest(tmp_path / "new")
    assert [s.has_vector_file for s in manifest.segments] == [True] and manifest.faiss is None
    assert not (tmp_path / "new" / FAISS_NAME).exists()
    assert (tmp_path / "new" / "segments" / "seg-000001.vectors").stat().st_size == len(colliding) * 8 * 4
    assert check_index(tmp_path / "new").ok


@pytest.mark.parametrize("recode", [False, True])
def test_streamed_run_extends_an_old_format_index(small_shards, colliding, tiny_checkpoint, tmp_path, recode):
    """Half the catalog indexed the old way (faiss.index), then the full catalog with two changed
    embeddings: the streamed run gives the old path's IDs; the old index and its extension both open."""
    half = len(colliding) // 2
    first = write_catalog(
        Catalog(item_ids=colliding.item_ids[:half], embeddings=colliding.embeddings[:half]), tmp_path / "first.parquet"
    )
    full = Catalog(item_ids=colliding.item_ids, embeddings=colliding.embeddings.copy())
    full.embeddings[0] += 0.01
    full.embeddings[1] = colliding.embeddings[-1]
    path = write_catalog(full, tmp_path / "full.parquet")
    for name in ("old", "new"):
        _run(tiny_checkpoint, first, tmp_path / name, streamed=False)
    assert (tmp_path / "new" / FAISS_NAME).exists()
    before = SemanticIdIndex.open(tmp_path / "new")  # the old format opens
    assert len(before) == half and before.snapshot.vectors.chunks
    old = _run(tiny_checkpoint, path, tmp_path / "old", streamed=False, recode_changed=recode)
    new = _run(tiny_checkpoint, path, tmp_path / "new", streamed=True, recode_changed=recode)
    assert old == new and new["existing_items"] == half and new["recoded_items"] == (2 if recode else 0)
    assert _export_bytes(tmp_path / "new", tmp_path / "n.parquet") == _export_bytes(
        tmp_path / "old", tmp_path / "o.parquet"
    )
    assert not (tmp_path / "new" / FAISS_NAME).exists()  # not used once a segment has a vector file
    # builds before vector files read format 1 only: an index with one is written as 2 so they refuse it
    assert json.loads((tmp_path / "old" / MANIFEST_NAME).read_text())["format_version"] == 1
    assert json.loads((tmp_path / "new" / MANIFEST_NAME).read_text())["format_version"] == 2
    report = check_index(tmp_path / "new")
    assert report.ok and report.notes == [], (report.problems, report.notes)
    # nearest look-ups over the inline first segment and the mapped second one agree with the old index
    queries = np.random.default_rng(3).standard_normal((5, 8)).astype(np.float32)
    d_old, r_old = SemanticIdIndex.open(tmp_path / "old").snapshot.nearest(queries, 7)
    d_new, r_new = SemanticIdIndex.open(tmp_path / "new").snapshot.nearest(queries, 7)
    np.testing.assert_array_equal(r_new, r_old)
    np.testing.assert_allclose(d_new, d_old, rtol=1e-5, atol=1e-5)


def test_vector_file_is_mapped_not_read_on_open_and_check_reports_it(colliding, tiny_checkpoint, tmp_path):
    path = write_catalog(colliding, tmp_path / "cat.parquet")
    _run(tiny_checkpoint, path, tmp_path / "idx", streamed=True)
    vectors = tmp_path / "idx" / "segments" / "seg-000001.vectors"
    data = bytearray(vectors.read_bytes())
    data[1000] ^= 0xFF  # bit rot inside the file: same size
    vectors.write_bytes(bytes(data))
    index = SemanticIdIndex.open(tmp_path / "idx")  # opens: the file is mapped, not hashed
    assert len(index) == len(colliding)
    assert index.snapshot.prefix_count([int(index.snapshot.state.semantic_ids[0, 0])]) > 0
    report = check_index(tmp_path / "idx")
    assert not report.ok
    assert any("vector file seg-000001.vectors does not match its checksum" in p for p in report.problems)

    vectors.write_bytes(bytes(data[:-4]))  # truncated: a k-NN search could not use it
    with pytest.raises(CorruptIndexError, match="vector file seg-000001.vectors has"):
        SemanticIdIndex.open(tmp_path / "idx")
    assert any("seg-000001.vectors has" in p for p in check_index(tmp_path / "idx").problems)
    vectors.unlink()
    assert any("missing" in p for p in check_index(tmp_path / "idx").problems)


def test_nearest_over_mapped_vectors_equals_a_flat_index(monkeypatch, colliding, tiny_checkpoint, tmp_path):
    """k-NN over a mapped chunk (searched in blocks), then online writes (tail and chunks after it), and
    re-coded rows skipped: the same rows and distances as one FAISS flat index over the active rows."""
    monkeypatch.setattr(vector_search, "MAPPED_BLOCK_ROWS", 97)
    path = write_catalog(colliding, tmp_path / "cat.parquet")
    _run(tiny_checkpoint, path, tmp_path / "idx", streamed=True)
    index = SemanticIdIndex.open(tmp_path / "idx")
    rng = np.random.default_rng(5)
    dim = index.vector_dim
    taken = set(index.snapshot.state.taken_sorted().tolist())
    free = [p for p in range(1 << (index.layout.bits * index.layout.width)) if p not in taken]
    for start in (20_000, 20_050):  # two small online writes: inline vectors after the mapped chunk
        n = 50
        sids = _valid(index.layout, np.array(free, dtype=np.int64))[start - 20_000 : start - 20_000 + n]
        index.append(
            item_ids=np.arange(start, start + n),
            base_codes=sids[:, :3],
            semantic_ids=sids,
            fallback=np.zeros(n, dtype=bool),
            embedding_hash=np.arange(n, dtype=np.uint64),
            vectors=rng.standard_normal((n, dim)).astype(np.float32),
            persist_vectors=True,
        )
    assert not (tmp_path / "idx" / FAISS_NAME).exists()
    reopened = SemanticIdIndex.open(tmp_path / "idx")
    for snap in (index.snapshot, reopened.snapshot):
        assert isinstance(snap.vectors.chunks[0], np.ndarray)  # the mapped chunk
        mapped = np.fromfile(tmp_path / "idx" / "segments" / "seg-000001.vectors", dtype="<f4").reshape(-1, dim)
        flat = faiss.IndexFlatL2(dim)
        flat.add(mapped)
        for chunk in snap.vectors.chunks[1:]:
            flat.add(chunk.reconstruct_n(0, chunk.ntotal) if not isinstance(chunk, np.ndarray) else chunk)
        if snap.vectors.tail.shape[0]:
            flat.add(snap.vectors.tail)
        assert flat.ntotal == snap.state.rows == len(colliding) + 100
        queries = rng.standard_normal((6, dim)).astype(np.float32)
        d, r = snap.nearest(queries, 25)
        d_ref, r_ref = flat.search(queries, 25)
        np.testing.assert_array_equal(r, r_ref)
        np.testing.assert_allclose(d, d_ref, rtol=1e-5, atol=1e-6)


def _valid(layout, packed: np.ndarray) -> np.ndarray:
    """The unpacked IDs of ``packed`` whose codes are in range (packing has spare bits)."""
    sids = layout.unpack(packed)
    ok = np.all(sids < np.asarray(layout.sizes)[None, :], axis=1)
    return sids[ok]


def test_streamed_run_with_string_ids_and_kept_column(small_shards, colliding, tiny_checkpoint, tmp_path):
    n = len(colliding)
    ids = np.array([f"item-{i}" for i in colliding.item_ids], dtype=object)
    title = pa.array([f"title {i}" for i in range(n)])
    cat = Catalog(item_ids=ids, embeddings=colliding.embeddings, columns=pa.table({"title": title}))
    path = write_catalog(cat, tmp_path / "cat.parquet")
    old = _run(tiny_checkpoint, path, tmp_path / "old", streamed=False, keep_columns=["title"])
    new = _run(tiny_checkpoint, path, tmp_path / "new", streamed=True, keep_columns=["title"])
    assert old == new
    assert _export_bytes(tmp_path / "new", tmp_path / "n.parquet") == _export_bytes(
        tmp_path / "old", tmp_path / "o.parquet"
    )


def test_an_unknown_format_version_is_refused_with_its_number(colliding, tiny_checkpoint, tmp_path):
    path = write_catalog(colliding, tmp_path / "cat.parquet")
    _run(tiny_checkpoint, path, tmp_path / "idx", streamed=True)
    manifest = tmp_path / "idx" / MANIFEST_NAME
    data = json.loads(manifest.read_text())
    data["format_version"] = 3
    manifest.write_text(json.dumps(data))
    with pytest.raises(CorruptIndexError, match=r"format_version is 3; this build reads \[1, 2\]"):
        SemanticIdIndex.open(tmp_path / "idx")
