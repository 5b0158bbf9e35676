"""Promises of the HTTP service checked against brute force: resolve's nearest IDs, retired IDs after
re-coding, the 409 and 503 answers, and reads that stay consistent while a writer runs."""

from __future__ import annotations

import fcntl
import os
import shutil
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from semid.model.data.catalog import read_catalog
from semid.service.api.app import create_app
from semid.service.api.settings import ServiceSettings
from semid.service.api.state import ServiceState
from semid.service.assign import assign_catalog
from semid.service.export import export_table
from semid.service.ids.dedup import BucketCounts
from semid.service.index.snapshot import IndexSnapshot
from tests.service.api.test_api import KEEP, LEVELS, StrictClient, assert_error, dashed, state_of

K = 8  # nearest IDs asked for; ties between items sharing a code are common, and handled below
REL = 1e-4  # float32 distances: faiss and numpy may differ in the last bits


def client_for(index_dir: Path, *, strict: bool = True, **settings) -> TestClient:
    """A client over a loaded index; ``strict``: any 5xx fails the test (off for tests that expect a 503)."""
    defaults = {"max_batch": 32, "max_page": 1000, "max_k": 50, "write_lock_timeout": 5.0}
    state = ServiceState.load(ServiceSettings(index_dir=index_dir, **{**defaults, **settings}))
    return (StrictClient if strict else TestClient)(
        create_app(state.settings, state=state), raise_server_exceptions=False
    )


@pytest.fixture(scope="module")
def base_index(tmp_path_factory, tiny_checkpoint, tiny_catalog_file) -> Path:
    out = tmp_path_factory.mktemp("resolve") / "index"
    assign_catalog(checkpoint=tiny_checkpoint, catalog=tiny_catalog_file, index_dir=out, keep_columns=KEEP)
    return out


@pytest.fixture(scope="module")
def catalog(tiny_catalog_file):
    return read_catalog(tiny_catalog_file)


@pytest.fixture
def client(base_index, tmp_path) -> StrictClient:
    copy = tmp_path / "index"
    shutil.copytree(base_index, copy)
    return client_for(copy)


@pytest.fixture(scope="module")
def recoded(base_index, catalog, tmp_path_factory) -> tuple[StrictClient, list[list[int]]]:
    """A client over an index where 6 items were re-coded (moved embeddings): their old IDs are retired."""
    copy = tmp_path_factory.mktemp("recoded") / "index"
    shutil.copytree(base_index, copy)
    client = client_for(copy)
    rows = [3, 50, 120, 240, 360, 480]
    before = [client.get(f"/v1/items/{int(catalog.item_ids[r])}").json()["semantic_id"] for r in rows]
    items = [{"item_id": int(catalog.item_ids[r]), "embedding": (-catalog.embeddings[r]).tolist()} for r in rows]
    r = client.post("/v1/assign?recode_changed=true", json={"items": items})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert all(res["recoded"] for res in results)
    retired = [old for old, res in zip(before, results, strict=True) if res["semantic_id"] != old]
    assert len(retired) >= 4 and not state_of(client).index.state.active.all()
    return client, retired


# --- resolve vs brute force ------------------------------------------------------------


def brute_force_nearest(client: StrictClient, codes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Squared L2 distance from the query's code vector to the code vector of every *active* item
    (its emitted codes, the first L positions of its ID), and those items' row numbers."""
    state = state_of(client)
    index_state, encoder = state.index.state, state.encoder
    rows = np.flatnonzero(index_state.active)
    vectors = encoder.vectors(index_state.semantic_ids[rows, :LEVELS]).astype(np.float64)
    query = encoder.vectors(np.array([codes[:LEVELS]], dtype=np.int64)).astype(np.float64)[0]
    return ((vectors - query) ** 2).sum(axis=1), rows


def assert_nearest_is_brute_force(client: StrictClient, codes: list[int], k: int = K) -> list[dict]:
    body = client.post("/v1/resolve?rank=distance", json={"semantic_id": codes, "k": k}).json()
    nearest = body["nearest"]
    distances, rows = brute_force_nearest(client, codes)
    order = np.argsort(distances, kind="stable")
    expected = distances[order[:k]]
    got = np.array([n["distance"] for n in nearest])
    assert len(nearest) == min(k, rows.shape[0])
    np.testing.assert_allclose(got, expected, rtol=REL, atol=1e-5)
    state = state_of(client).index.state
    by_item = {state.item_ids[r].item(): r for r in rows}
    assert len({n["item_id"] for n in nearest}) == len(nearest), "an item returned twice"
    for n in nearest:
        row = by_item[n["item_id"]]  # KeyError: an item that is not active
        assert n["semantic_id"] == state.semantic_ids[row].tolist()  # its current ID, never a retired one
        assert n["distance"] == pytest.approx(distances[rows == row][0], rel=REL, abs=1e-5)
    # every item strictly nearer than the k-th answer is among the answers (ties at the k-th may go either way)
    kth = expected[-1]
    must = {state.item_ids[r].item() for r in rows[distances < kth - max(REL * kth, 1e-5)]}
    assert must <= {n["item_id"] for n in nearest}
    return nearest


def query_ids(client: StrictClient) -> list[list[int]]:
    """Full IDs of real items, free IDs, and prefixes of every length."""
    exported = export_table(state_of(client).index).to_pylist()
    taken = {tuple(r["semantic_id"]) for r in exported}
    out = [r["semantic_id"] for r in exported[:: len(exported) // 6]]
    out += [r["semantic_id"][:n] for r in exported[:: len(exported) // 3] for n in range(1, LEVELS + 1)]
    free = [list(c) for c in np.ndindex(8, 8, 8, 8) if c not in taken]
    out += free[:: len(free) // 5][:5]
    return out


def test_resolve_nearest_equals_brute_force_over_code_vectors(base_index):
    client = client_for(base_index)
    for codes in query_ids(client):
        assert_nearest_is_brute_force(client, codes)
    assert_nearest_is_brute_force(client, query_ids(client)[0], k=50)


def test_resolve_ranks_the_longest_shared_prefix_first(base_index):
    """Default ranking: every item sharing d codes with the query comes before any sharing fewer, and within
    a group the order is by distance (brute force over the active items)."""
    client = client_for(base_index)
    state = state_of(client).index.state
    for codes in query_ids(client):
        nearest = client.post("/v1/resolve", json={"semantic_id": codes, "k": K}).json()["nearest"]
        distances, rows = brute_force_nearest(client, codes)
        base = codes[:LEVELS]
        shared = np.array([_shared(state.semantic_ids[r, :LEVELS].tolist(), base) for r in rows])
        got = [_shared(n["semantic_id"][:LEVELS], base) for n in nearest]
        assert got == sorted(got, reverse=True), (codes, got)
        assert len(nearest) == min(K, rows.shape[0])
        for depth in set(got):
            group = [n["distance"] for n, g in zip(nearest, got, strict=True) if g == depth]
            assert group == sorted(group)
        if got:  # nothing sharing a longer prefix than the last answer was left out
            assert sum(g > got[-1] for g in got) == (shared > got[-1]).sum()
        # the items under the longest shared prefix are all there when they fit
        best = shared.max()
        if (shared == best).sum() <= K:
            assert got.count(best) == (shared == best).sum()


def _shared(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def test_resolve_rank_is_checked(base_index):
    client = client_for(base_index)
    r = client.post("/v1/resolve?rank=closest", json={"semantic_id": [0], "k": 3})
    assert r.status_code == 422 and "rank" in r.text


def test_resolve_after_recoding_skips_retired_ids(recoded):
    client, retired = recoded
    for old in retired:
        body = client.post("/v1/resolve", json={"semantic_id": old, "k": K}).json()
        assert body["exact"] is None, old  # the retired ID names no item any more
        nearest = assert_nearest_is_brute_force(client, old)
        assert old not in [n["semantic_id"] for n in nearest]
        for n in nearest:  # every answer is the item's current ID
            assert client.get(f"/v1/ids/{dashed(n['semantic_id'])}").json()["item_id"] == n["item_id"]
    for codes in query_ids(client):
        assert_nearest_is_brute_force(client, codes)


def test_children_and_prefix_counts_after_recoding_skip_retired_ids(recoded):
    client, retired = recoded
    exported = export_table(state_of(client).index).to_pylist()  # active items only
    assert len(exported) == len(state_of(client).index)
    for old in retired:
        assert_error(client.get(f"/v1/ids/{dashed(old)}"), 404)
        for depth in range(0, LEVELS):
            prefix = old[:depth]
            under = [r for r in exported if r["semantic_id"][:depth] == prefix]
            expected = sorted(Counter(r["semantic_id"][depth] for r in under).items())
            url = f"/v1/prefixes/{dashed(prefix)}/children" if depth else "/v1/children"
            body = client.get(url).json()
            assert [(c["code"], c["count"]) for c in body["children"]] == expected, prefix
        page = client.get(f"/v1/prefixes/{dashed(old[:LEVELS])}").json()
        assert page["count"] == len(page["items"]) == sum(r["semantic_id"][:LEVELS] == old[:LEVELS] for r in exported)
        assert old not in [it["semantic_id"] for it in page["items"]]
        assert client.get(f"/v1/prefixes/{dashed(old)}").json()["count"] == 0


# --- 409 -------------------------------------------------------------------------------


def test_index_full_is_409_and_writes_nothing(client, catalog):
    index = state_of(client).index
    emb = catalog.embeddings[0].tolist()
    # 8 last-level codes x dedup 8: at most 64 items under one level-2 prefix; identical embeddings fill it
    statuses, next_id = [], 900_000
    for _ in range(4):
        count, segments = len(index), index.segments
        body = {"items": [{"item_id": next_id + i, "embedding": emb} for i in range(32)]}
        next_id += 32
        r = client.post("/v1/assign", json=body)
        statuses.append(r.status_code)
        if r.status_code != 200:
            break
    assert statuses[-1] == 409 and set(statuses[:-1]) == {200}, statuses
    error = assert_error(r, 409)
    assert error["code"] == "index_full" and "no free semantic id" in error["message"]
    assert len(index) == count and index.segments == segments
    assert_error(client.get(f"/v1/items/{next_id - 1}"), 404)
    assert len(ServiceState.load(ServiceSettings(index_dir=index.path)).index) == count


def test_duplicate_semantic_id_is_409_and_writes_nothing(client, catalog, monkeypatch):
    # a placement that ignores what is taken (a bug, simulated) is refused by the index, not written
    index = state_of(client).index
    count, segments = len(index), index.segments
    monkeypatch.setattr(IndexSnapshot, "occupancy", lambda self: BucketCounts())
    body = {"items": [{"item_id": 910_000, "embedding": catalog.embeddings[5].tolist()}]}
    error = assert_error(client.post("/v1/assign", json=body), 409)
    assert error["code"] == "duplicate_semantic_id" and "already taken" in error["message"]
    assert len(index) == count and index.segments == segments
    assert_error(client.get("/v1/items/910000"), 404)


def test_index_replaced_by_another_checkpoints_is_409_on_write(client, catalog, tiny_checkpoint, tmp_path):
    import json

    from semid.model.data.synthetic import synthetic_catalog, write_catalog

    index = state_of(client).index
    more = synthetic_catalog(items=20, dim=16, seed=8)
    more.item_ids = more.item_ids + 500_000
    # another process grows the index on disk, and the result names another checkpoint (as if replaced)
    more_file = write_catalog(more, tmp_path / "more.parquet")
    assign_catalog(checkpoint=tiny_checkpoint, catalog=more_file, index_dir=index.path, keep_columns=KEEP)
    manifest_path = index.path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["checkpoint_fingerprint"] = "0" * 32
    manifest_path.write_text(json.dumps(manifest))
    body = {"items": [{"item_id": 920_000, "embedding": catalog.embeddings[5].tolist()}]}
    error = assert_error(client.post("/v1/assign", json=body), 409)
    assert error["code"] == "fingerprint_mismatch" and "0" * 32 in error["message"]
    assert client.get(f"/v1/items/{int(catalog.item_ids[0])}").status_code == 200  # reads: the loaded snapshot
    assert_error(client.get("/v1/items/920000"), 404)


# --- 503 -------------------------------------------------------------------------------


def test_write_while_another_process_holds_the_lock_is_503(base_index, catalog, tmp_path):
    copy = tmp_path / "index"
    shutil.copytree(base_index, copy)
    client = client_for(copy, strict=False, write_lock_timeout=0)
    index = state_of(client).index
    count = len(index)
    fd = os.open(copy / "index.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as another writer process holds it
        os.ftruncate(fd, 0)
        os.pwrite(fd, b"4242\n", 0)
        body = {"items": [{"item_id": 930_000, "embedding": catalog.embeddings[5].tolist()}]}
        response = client.post("/v1/assign", json=body)
        error = assert_error(response, 503)
        assert error["code"] == "index_locked" and "retry later" in error["message"]
        assert "4242" not in error["message"] and str(copy) not in error["message"]  # no pid or path leaks
        assert response.headers["Retry-After"] == "1"
        register = {"embeddings": [catalog.embeddings[6].tolist()], "item_ids": [930_001], "register": True}
        assert assert_error(client.post("/v1/encode", json=register), 503)["code"] == "index_locked"
        assert client.get(f"/v1/items/{int(catalog.item_ids[0])}").status_code == 200  # reads go on
        assert client.post("/v1/encode", json={"embeddings": [catalog.embeddings[6].tolist()]}).status_code == 200
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    assert len(index) == count
    assert client.post("/v1/assign", json=body).status_code == 200  # free again


def test_not_ready_is_503_on_every_index_route(base_index):
    cold = TestClient(create_app(ServiceSettings(index_dir=base_index)), raise_server_exceptions=False)
    for method, url, kw in [
        ("get", "/readyz", {}),
        ("get", "/v1/items/1", {}),
        ("get", "/v1/ids/1-2-3-0", {}),
        ("get", "/v1/prefixes/1", {}),
        ("get", "/v1/children", {}),
        ("post", "/v1/resolve", {"json": {"semantic_id": [1], "k": 2}}),
        ("post", "/v1/encode", {"json": {"embeddings": [[0.1] * 16]}}),
    ]:
        error = assert_error(getattr(cold, method)(url, **kw), 503)
        assert error["code"] == "not_ready", (url, error)
    assert cold.get("/healthz").status_code == 200


# --- reads while a writer runs ----------------------------------------------------------


def test_prefix_pages_are_consistent_while_items_are_registered(client, catalog):
    index = state_of(client).index
    prefix = index.state.semantic_ids[index.state.order[0], :1].tolist()
    near = catalog.embeddings[np.flatnonzero(index.state.semantic_ids[:, 0] == prefix[0])[:20]]
    batches, per_batch = 12, 3
    page_seen = threading.Event()
    writer_errors: list[BaseException] = []

    def writer() -> None:
        writer_client = StrictClient(client.app, raise_server_exceptions=False)
        try:
            for b in range(batches):
                ids = [940_000 + b * per_batch + i for i in range(per_batch)]
                emb = near[[(b * per_batch + i) % len(near) for i in range(per_batch)]] * 1.001
                r = writer_client.post(
                    "/v1/encode", json={"embeddings": emb.tolist(), "item_ids": ids, "register": True}
                )
                assert r.status_code == 200, r.text
                page_seen.clear()
                assert page_seen.wait(timeout=30), "the reader stopped reading"  # a read after every write
        except BaseException as exc:  # reported by the main thread
            writer_errors.append(exc)

    initial = client.get(f"/v1/prefixes/{dashed(prefix)}", params={"limit": 1000}).json()["count"]
    thread = threading.Thread(target=writer)
    counts: list[int] = []
    thread.start()
    try:
        while thread.is_alive():
            page = client.get(f"/v1/prefixes/{dashed(prefix)}", params={"limit": 1000}).json()
            assert page["count"] == len(page["items"]), page["count"]
            assert page["next_cursor"] is None
            assert all(it["semantic_id"][:1] == prefix for it in page["items"])
            ids = [it["semantic_id"] for it in page["items"]]
            assert ids == sorted(ids) and len({tuple(s) for s in ids}) == len(ids)
            children = client.get(f"/v1/prefixes/{dashed(prefix)}/children").json()["children"]
            assert sum(c["count"] for c in children) >= page["count"]  # a later snapshot: never fewer
            counts.append(page["count"])
            page_seen.set()
    finally:
        thread.join(timeout=60)
    assert not writer_errors, writer_errors
    assert counts == sorted(counts), "a later page counted fewer items"
    assert len(set(counts)) >= 2, "the reads did not overlap the writes"
    final = client.get(f"/v1/prefixes/{dashed(prefix)}", params={"limit": 1000}).json()
    registered = sum(
        client.get(f"/v1/items/{940_000 + i}").json()["semantic_id"][:1] == prefix for i in range(batches * per_batch)
    )
    assert final["count"] == len(final["items"]) == initial + registered
