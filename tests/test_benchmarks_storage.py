"""benchmarks/storage_engine_spike.py: its rows are a valid index, its appends never collide, and its request and
file counts count what happened (they are the figures the storage-engine decision rests on)."""

from __future__ import annotations

import numpy as np

from benchmarks.storage_engine_spike import count_requests, listing, semid_batch, semid_build, synthetic, written

MOTO_LOG = [
    " * Running on http://127.0.0.1:5077",
    '127.0.0.1 - - [05/Dec/2026 12:27:36] "GET /semid-spike?list-type=2&prefix=l/_versions/ HTTP/1.1" 200 -',
    '127.0.0.1 - - [05/Dec/2026 12:27:36] "PUT /semid-spike/l/data/0110.lance HTTP/1.1" 200 -',
    '127.0.0.1 - - [05/Dec/2026 12:28:10] "PUT /semid-spike/m.json HTTP/1.1" 412 -',
    '127.0.0.1 - - [05/Dec/2026 12:28:10] "GET /semid-spike/m.json HTTP/1.1" 304 -',
    '127.0.0.1 - - [05/Dec/2026 12:28:11] "DELETE /semid-spike/segments/seg-000002.parquet HTTP/1.1" 204 -',
    "WARNING: some other log line mentioning GET /x",
]


def test_requests_are_counted_per_method_from_the_servers_request_lines_only():
    assert count_requests(MOTO_LOG) == {"total": 5, "DELETE": 1, "GET": 2, "PUT": 2}
    assert count_requests([]) == {"total": 0}


def test_synthetic_rows_have_unique_semantic_ids_and_appends_never_collide_with_them():
    base = synthetic(5000, 8)
    sids = base["semantic_ids"]
    assert len({tuple(s) for s in sids.tolist()}) == 5000
    # the dedup digit is the rank inside the base code's bucket: 0..k-1 for a bucket of k items
    buckets: dict[tuple, list[int]] = {}
    for s in sids.tolist():
        buckets.setdefault(tuple(s[:3]), []).append(s[3])
    assert all(sorted(d) == list(range(len(d))) for d in buckets.values())
    assert sids[:, 0].max() < 255
    appended = [synthetic(4, 8, first_id=5000 + 4 * a, seed=a, new_bucket=True) for a in range(30)]
    new = [tuple(s) for batch in appended for s in batch["semantic_ids"].tolist()]
    assert len(set(new)) == len(new) and not set(new) & {tuple(s) for s in sids.tolist()}
    ids = np.concatenate([base["item_ids"], *(b["item_ids"] for b in appended)])
    assert len(np.unique(ids)) == len(ids)


def test_the_built_index_holds_the_rows_and_an_append_is_counted_as_the_files_it_writes(tmp_path):
    from semid.service.index.handle import SemanticIdIndex

    rows = synthetic(3000, 8)
    semid_build(tmp_path / "idx", rows, 8)
    index = SemanticIdIndex.open(tmp_path / "idx")
    assert len(index) == 3000 and index.check().ok
    item = index.snapshot.get_item(1234)
    assert item["semantic_id"] == rows["semantic_ids"][1234].tolist() and item["category"] == "cat-234"
    before = listing(tmp_path / "idx")
    batch = synthetic(4, 8, first_id=3000, seed=9, new_bucket=True)
    index.append(**semid_batch(batch), vectors=batch["vectors"], persist_vectors=False)
    files, size, removed = written(before, listing(tmp_path / "idx"))
    assert files == 2 and removed == 0  # the new 4-row segment and manifest.json; the lock file is not data
    assert size == sum((tmp_path / "idx" / name).stat().st_size for name in ("manifest.json",)) + sum(
        p.stat().st_size for p in (tmp_path / "idx" / "segments").glob("seg-000002*")
    )
