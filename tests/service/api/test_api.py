"""The HTTP contract of design.md, route by route, against a tiny checkpoint and a real index on disk.

Every response is checked for "never a 500"; every error for the JSON body
``{"error": {"code", "message", "field"?}}`` and, where one input is to blame, its name.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
from fastapi.testclient import TestClient

from semid.model.data.catalog import read_catalog
from semid.service.api.app import create_app
from semid.service.api.settings import ServiceSettings
from semid.service.api.state import ServiceState
from semid.service.assign import assign_catalog
from semid.service.errors import FingerprintMismatchError
from semid.service.export import export_table
from tests.conftest import tiny_config

ARROW = "application/vnd.apache.arrow.stream"
KEEP = ("title", "category")
LEVELS = 3  # tiny_config: 3 levels of 8 codes, so IDs are 4 codes long
WIDTH = LEVELS + 1
SIZE = 8
MAX_BATCH = 32
MAX_PAGE = 50
MAX_K = 20


class StrictClient(TestClient):
    """A test client that fails the test on any 5xx instead of returning it."""

    def request(self, method, url, *args, **kwargs):  # type: ignore[override]
        response = super().request(method, url, *args, **kwargs)
        assert response.status_code < 500, f"{method} {url} -> {response.status_code}: {response.text}"
        return response


def make_client(index_dir: Path, **settings) -> StrictClient:
    state = ServiceState.load(
        ServiceSettings(
            index_dir=index_dir, max_batch=MAX_BATCH, max_page=MAX_PAGE, max_k=MAX_K, write_lock_timeout=5, **settings
        )
    )
    return StrictClient(create_app(state.settings, state=state), raise_server_exceptions=False)


def state_of(client: TestClient) -> ServiceState:
    return client.app.state.semid


def assert_error(response, status: int, field: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) <= {"code", "message", "field"}, err
    assert isinstance(err["code"], str) and err["code"]
    assert isinstance(err["message"], str) and err["message"]
    if field is not None:
        assert err.get("field") == field, err
    return err


def dashed(codes) -> str:
    return "-".join(str(c) for c in codes)


def arrow_stream(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def fixed_list(x: np.ndarray) -> pa.Array:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])


# --- fixtures ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_index(tmp_path_factory, tiny_checkpoint, tiny_catalog_file) -> Path:
    out = tmp_path_factory.mktemp("api") / "index"
    assign_catalog(checkpoint=tiny_checkpoint, catalog=tiny_catalog_file, index_dir=out, keep_columns=KEEP)
    return out


@pytest.fixture(scope="module")
def catalog(tiny_catalog_file):
    return read_catalog(tiny_catalog_file)


@pytest.fixture(scope="module")
def api(base_index) -> StrictClient:
    """Read-only client: tests using it never write."""
    return make_client(base_index)


@pytest.fixture(scope="module")
def exported(api) -> list[dict]:
    """Every item as `semid export` writes it, in semantic-ID order: the brute-force reference."""
    return export_table(state_of(api).index).to_pylist()


@pytest.fixture
def writable(base_index, tmp_path) -> StrictClient:
    """A client over a private copy of the index, for tests that write."""
    copy = tmp_path / "index"
    shutil.copytree(base_index, copy)
    return make_client(copy)


@pytest.fixture
def keyed(base_index, tmp_path) -> StrictClient:
    copy = tmp_path / "index"
    shutil.copytree(base_index, copy)
    return make_client(copy, api_key="s3cret")


def new_embeddings(catalog, n: int, seed: int = 7) -> np.ndarray:
    """Unit vectors near catalog items, so they land in realistic buckets."""
    rng = np.random.default_rng(seed)
    x = catalog.embeddings[rng.choice(len(catalog), size=n, replace=False)] + 0.05 * rng.standard_normal((n, 16))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# --- POST /v1/encode ---------------------------------------------------------------


def test_encode_one_and_many_embeddings_give_base_codes(api, catalog):
    one = api.post("/v1/encode", json={"embeddings": [catalog.embeddings[0].tolist()]})
    assert one.status_code == 200
    (res,) = one.json()["results"]
    assert len(res["base_code"]) == LEVELS and all(0 <= c < SIZE for c in res["base_code"])
    assert res["semantic_id"] is None and res["token"] is None and res["item_id"] is None

    many = api.post("/v1/encode", json={"embeddings": catalog.embeddings[:10].tolist()}).json()["results"]
    assert len(many) == 10
    assert many[0]["base_code"] == res["base_code"]
    for i, r in enumerate(many):
        assert len(r["base_code"]) == LEVELS
        # the index stored the same base code when it assigned this catalog
        assert r["base_code"] == api.get(f"/v1/items/{catalog.item_ids[i]}").json()["base_code"]


def test_encode_known_items_get_their_ids_and_unknown_get_null(api, catalog):
    ids = [int(i) for i in catalog.item_ids[:4]] + [10**9]
    emb = np.vstack([catalog.embeddings[:4], catalog.embeddings[:1]]).tolist()
    results = api.post("/v1/encode", json={"embeddings": emb, "item_ids": ids}).json()["results"]
    for r, item_id in zip(results[:4], ids[:4], strict=True):
        item = api.get(f"/v1/items/{item_id}").json()
        assert r["item_id"] == item_id
        assert r["semantic_id"] == item["semantic_id"] and len(r["semantic_id"]) == WIDTH
        assert r["token"] == item["token"]
        assert r["existing"] is True
    unknown = results[4]
    assert unknown["item_id"] == 10**9
    assert unknown["semantic_id"] is None and unknown["token"] is None and unknown["existing"] is False


def test_encode_arrow_stream_matches_json(api, writable, catalog):
    emb = catalog.embeddings[:20]  # under the fixture's max_batch
    json_codes = [r["base_code"] for r in api.post("/v1/encode", json={"embeddings": emb.tolist()}).json()["results"]]
    body = arrow_stream(pa.table({"embedding": fixed_list(emb)}))
    headers = {"content-type": "application/vnd.apache.arrow.stream"}
    arrow = api.post("/v1/encode", content=body, headers=headers)
    assert arrow.status_code == 200, arrow.text
    assert [r["base_code"] for r in arrow.json()["results"]] == json_codes
    # with item ids and ?register=true, unknown items get IDs, known ones keep theirs
    ids = pa.array([int(catalog.item_ids[0]), 555_000_001], pa.int64())
    table = pa.table({"item_id": ids, "embedding": fixed_list(new_embeddings(catalog, 2))})
    reg = writable.post("/v1/encode?register=true", content=arrow_stream(table), headers=headers)
    assert reg.status_code == 200, reg.text
    known, new = reg.json()["results"]
    assert (
        known["existing"] is True and known["semantic_id"] == writable.get(f"/v1/items/{ids[0]}").json()["semantic_id"]
    )
    assert new["existing"] is False and writable.get("/v1/items/555000001").json()["semantic_id"] == new["semantic_id"]
    assert_error(
        writable.post(
            "/v1/encode?register=true",
            content=arrow_stream(pa.table({"embedding": fixed_list(emb[:2])})),
            headers=headers,
        ),
        422,
        "item_id",
    )


def test_encode_register_assigns_unique_persisted_ids(writable, catalog, base_index):
    before = len(state_of(writable).index)
    taken = {tuple(r["semantic_id"]) for r in export_table(state_of(writable).index).to_pylist()}
    new_ids = [100_001, 100_002, 100_003, 100_004, 100_005]
    known_id = int(catalog.item_ids[3])
    emb = np.vstack([new_embeddings(catalog, 5), catalog.embeddings[3:4]]).tolist()
    r = writable.post("/v1/encode", json={"embeddings": emb, "item_ids": [*new_ids, known_id], "register": True})
    assert r.status_code == 200, r.text
    body = r.json()
    results = body["results"]
    assert [x["existing"] for x in results] == [False] * 5 + [True]
    assert body["segment"]
    sids = [tuple(x["semantic_id"]) for x in results]
    assert all(len(s) == WIDTH for s in sids)
    assert len(set(sids)) == 6
    assert not set(sids[:5]) & taken, "a new item got an ID that was already taken"
    assert sids[5] in taken
    assert len(state_of(writable).index) == before + 5

    for item_id, sid, res in zip(new_ids, sids[:5], results[:5], strict=True):
        item = writable.get(f"/v1/items/{item_id}").json()
        assert tuple(item["semantic_id"]) == sid and item["token"] == res["token"]
        assert writable.get(f"/v1/ids/{dashed(sid)}").json()["item_id"] == item_id

    # registering again returns the same IDs and writes nothing
    again = writable.post("/v1/encode", json={"embeddings": emb, "item_ids": [*new_ids, known_id], "register": True})
    assert [tuple(x["semantic_id"]) for x in again.json()["results"]] == sids
    assert all(x["existing"] for x in again.json()["results"])
    assert again.json()["segment"] is None

    # persisted: a fresh load from disk sees them
    reopened = ServiceState.load(ServiceSettings(index_dir=state_of(writable).index.path))
    assert len(reopened.index) == before + 5
    for item_id, sid in zip(new_ids, sids[:5], strict=True):
        assert tuple(reopened.index.snapshot.get_item(item_id)["semantic_id"]) == sid
    # ... and the shared module index was not touched
    assert len(ServiceState.load(ServiceSettings(index_dir=base_index)).index) == before


def test_encode_register_needs_item_ids(writable, catalog):
    r = writable.post("/v1/encode", json={"embeddings": catalog.embeddings[:2].tolist(), "register": True})
    assert_error(r, 422, "item_ids")


def test_encode_wrong_dimension(api):
    assert_error(api.post("/v1/encode", json={"embeddings": [[0.1] * 15]}), 422, "embeddings")
    assert_error(api.post("/v1/encode", json={"embeddings": [[]]}), 422, "embeddings")


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_encode_non_finite_values(api, literal):
    content = '{"embeddings": [[0.5, ' + literal + ", " + ", ".join(["0.1"] * 14) + "]]}"
    r = api.post("/v1/encode", content=content, headers={"content-type": "application/json"})
    assert_error(r, 422, "embeddings")


def test_encode_value_overflowing_float32(api):
    assert_error(api.post("/v1/encode", json={"embeddings": [[1e39] * 16]}), 422, "embeddings")


def test_encode_empty_list(api):
    assert_error(api.post("/v1/encode", json={"embeddings": []}), 422, "embeddings")


def test_encode_batch_over_max_batch(api):
    r = api.post("/v1/encode", json={"embeddings": [[0.25] * 16] * (MAX_BATCH + 1)})
    assert_error(r, 413, "embeddings")
    assert api.post("/v1/encode", json={"embeddings": [[0.25] * 16] * MAX_BATCH}).status_code == 200


def test_encode_ragged_embeddings(api):
    assert_error(api.post("/v1/encode", json={"embeddings": [[0.25] * 16, [0.25] * 15]}), 422, "embeddings")


def test_encode_item_ids_length_mismatch(api):
    r = api.post("/v1/encode", json={"embeddings": [[0.25] * 16] * 2, "item_ids": [1]})
    assert_error(r, 422, "item_ids")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"embeddings": "x"}, "embeddings"),
        ({"embeddings": [1, 2]}, "embeddings.0"),
        ({"embeddings": [[0.25] * 16], "item_ids": ["abc"]}, "item_ids"),  # the index holds integer ids
        ({"embeddings": [[0.25] * 16], "item_ids": [2**70]}, "item_ids"),
        ({"embeddings": [[0.25] * 16], "extra": 1}, "extra"),
        ({}, "embeddings"),
    ],
)
def test_encode_malformed_bodies(api, body, field):
    assert_error(api.post("/v1/encode", json=body), 422, field)


def test_encode_body_not_json(api):
    r = api.post("/v1/encode", content=b"{not json", headers={"content-type": "application/json"})
    assert_error(r, 422, "body")


@pytest.mark.parametrize(
    "raw",
    [
        b'{"emb\xffeddings": [[0.25]]}',  # invalid UTF-8 in a key: msgspec raised UnicodeDecodeError, a 500
        b'{"embeddings": [[0.25]], "item_ids": ["\xff"]}',
        b'\xff\xfe{"embeddings": [[0.25]]}',
    ],
)
def test_encode_body_with_invalid_utf8_is_a_422(api, raw):
    assert api.post("/v1/encode", content=raw, headers={"content-type": "application/json"}).status_code == 422


def test_encode_register_duplicate_ids_changes_nothing(writable, catalog):
    index = state_of(writable).index
    count, segments = len(index), index.segments
    emb = new_embeddings(catalog, 3).tolist()
    r = writable.post("/v1/encode", json={"embeddings": emb, "item_ids": [200_001, 200_002, 200_001], "register": True})
    assert_error(r, 422, "item_ids")
    assert len(index) == count and index.segments == segments
    assert_error(writable.get("/v1/items/200002"), 404, "item_id")
    assert len(ServiceState.load(ServiceSettings(index_dir=index.path)).index) == count


# --- API key -------------------------------------------------------------------------


def _register_body(catalog, item_id: int) -> dict:
    return {"embeddings": new_embeddings(catalog, 1).tolist(), "item_ids": [item_id], "register": True}


def _assign_body(catalog, item_id: int) -> dict:
    return {"items": [{"item_id": item_id, "embedding": new_embeddings(catalog, 1, seed=3)[0].tolist()}]}


@pytest.mark.parametrize("route", ["/v1/encode", "/v1/assign"])
def test_write_routes_need_the_api_key(keyed, catalog, route):
    body = (_register_body if route == "/v1/encode" else _assign_body)(catalog, 300_001)
    count = len(state_of(keyed).index)
    err = assert_error(keyed.post(route, json=body), 401, "X-API-Key")
    assert "X-API-Key" in err["message"]
    assert_error(keyed.post(route, json=body, headers={"X-API-Key": "wrong"}), 403, "X-API-Key")
    assert_error(keyed.post(route, json=body, headers={"X-API-Key": ""}), 401, "X-API-Key")
    assert len(state_of(keyed).index) == count
    ok = keyed.post(route, json=body, headers={"X-API-Key": "s3cret"})
    assert ok.status_code == 200, ok.text
    assert len(state_of(keyed).index) == count + 1


def test_read_routes_need_no_api_key(keyed, catalog):
    item = keyed.get(f"/v1/items/{catalog.item_ids[0]}")
    assert item.status_code == 200
    sid = item.json()["semantic_id"]
    emb = catalog.embeddings[:1].tolist()
    for response in [
        keyed.post("/v1/encode", json={"embeddings": emb}),
        keyed.post("/v1/encode", json={"embeddings": emb, "item_ids": [int(catalog.item_ids[0])]}),
        keyed.get(f"/v1/ids/{dashed(sid)}"),
        keyed.get(f"/v1/prefixes/{sid[0]}"),
        keyed.get(f"/v1/prefixes/{sid[0]}/children"),
        keyed.get("/v1/children"),
        keyed.post("/v1/resolve", json={"semantic_id": sid, "k": 2}),
        keyed.get("/readyz"),
        keyed.get("/metrics"),
    ]:
        assert response.status_code == 200, response.text


# --- POST /v1/assign -----------------------------------------------------------------


def test_assign_json_writes_one_segment_and_keeps_ids(writable, catalog):
    index = state_of(writable).index
    segments, count = len(index.segments), len(index)
    emb = new_embeddings(catalog, 3)
    known = int(catalog.item_ids[5])
    known_sid = writable.get(f"/v1/items/{known}").json()["semantic_id"]
    items = [
        {"item_id": 400_000 + i, "embedding": emb[i].tolist(), "title": f"new {i}", "category": i} for i in range(3)
    ]
    items.append({"item_id": known, "embedding": catalog.embeddings[5].tolist(), "title": "ignored", "category": 9})
    r = writable.post("/v1/assign", json={"items": items})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["existing"] for x in body["results"]] == [False, False, False, True]
    assert [x["item_id"] for x in body["results"]] == [it["item_id"] for it in items]
    assert not any(x["embedding_changed"] for x in body["results"])
    assert body["results"][3]["semantic_id"] == known_sid
    assert body["segment"] and index.segments[-1] == body["segment"]
    assert len(index.segments) == segments  # a small write rewrites the small tail segment, in one atomic step
    assert len(index) == count + 3
    assert writable.get("/readyz").json()["items"] == count + 3

    for i in range(3):
        got = writable.get(f"/v1/items/{400_000 + i}").json()
        assert got["title"] == f"new {i}" and got["category"] == i
        assert got["semantic_id"] == body["results"][i]["semantic_id"]
    assert writable.get(f"/v1/items/{known}").json()["title"] != "ignored"  # known items are not rewritten

    again = writable.post("/v1/assign", json={"items": items}).json()
    assert all(x["existing"] for x in again["results"])
    assert [x["semantic_id"] for x in again["results"]] == [x["semantic_id"] for x in body["results"]]
    assert again["segment"] is None and len(index.segments) == segments


def test_assign_arrow_stream(writable, catalog):
    index = state_of(writable).index
    segments = len(index.segments)
    emb = new_embeddings(catalog, 4, seed=11)
    ids = [500_001, 500_002, 500_003, int(catalog.item_ids[0])]
    emb[3] = catalog.embeddings[0]
    table = pa.table({"item_id": ids, "embedding": fixed_list(emb), "title": ["a", "b", "c", "d"]})
    r = writable.post("/v1/assign", content=arrow_stream(table), headers={"content-type": ARROW})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["existing"] for x in body["results"]] == [False, False, False, True]
    assert len({tuple(x["semantic_id"]) for x in body["results"]}) == 4
    assert len(index.segments) == segments and body["segment"] == index.segments[-1]  # small tail rewritten
    for i, title in zip(ids[:3], "abc", strict=False):
        got = writable.get(f"/v1/items/{i}").json()
        assert got["title"] == title and got["category"] is None

    again = writable.post("/v1/assign", content=arrow_stream(table), headers={"content-type": f"{ARROW}; charset=x"})
    assert again.status_code == 200
    assert again.json()["segment"] is None and all(x["existing"] for x in again.json()["results"])
    assert [x["semantic_id"] for x in again.json()["results"]] == [x["semantic_id"] for x in body["results"]]
    assert index.segments[-1] == body["segment"] and len(index.segments) == segments  # nothing new written


def test_assign_arrow_with_list_of_doubles_and_string_ids_rejected(writable, catalog):
    emb = new_embeddings(catalog, 2, seed=5)
    ok = pa.table({"item_id": [510_001, 510_002], "embedding": pa.array(emb.astype(float).tolist())})
    assert writable.post("/v1/assign", content=arrow_stream(ok), headers={"content-type": ARROW}).status_code == 200
    strings = pa.table({"item_id": ["a", "b"], "embedding": fixed_list(emb)})
    r = writable.post("/v1/assign", content=arrow_stream(strings), headers={"content-type": ARROW})
    assert_error(r, 422, "item_id")


def test_assign_changed_embedding_is_reported_and_keeps_the_id(writable, catalog):
    item_id = int(catalog.item_ids[10])
    before = writable.get(f"/v1/items/{item_id}").json()["semantic_id"]
    moved = (-catalog.embeddings[10]).tolist()
    r = writable.post("/v1/assign", json={"items": [{"item_id": item_id, "embedding": moved}]})
    assert r.status_code == 200
    (res,) = r.json()["results"]
    assert res["existing"] is True and res["embedding_changed"] is True and res["semantic_id"] == before
    assert r.json()["segment"] is None
    assert writable.get(f"/v1/items/{item_id}").json()["semantic_id"] == before


def test_assign_recode_changed_gives_a_new_id_and_retires_the_old(writable, catalog):
    item_id = int(catalog.item_ids[10])
    before = writable.get(f"/v1/items/{item_id}").json()
    moved = (-catalog.embeddings[10]).tolist()
    body = {"items": [{"item_id": item_id, "embedding": moved, "title": "moved", "category": 1}]}
    r = writable.post("/v1/assign?recode_changed=true", json=body)
    assert r.status_code == 200, r.text
    (res,) = r.json()["results"]
    assert res["existing"] and res["embedding_changed"] and res["recoded"]
    assert res["semantic_id"] != before["semantic_id"] and r.json()["segment"] is not None
    now = writable.get(f"/v1/items/{item_id}").json()
    assert now["semantic_id"] == res["semantic_id"] and now["title"] == "moved"
    old = writable.get(f"/v1/ids/{dashed(before['semantic_id'])}")
    error = assert_error(old, 404)
    assert "retired" in error["message"] and dashed(res["semantic_id"]) in error["message"]
    count = writable.get(f"/v1/prefixes/{dashed(before['semantic_id'])}").json()["count"]
    assert count == 0
    # the same request again changes nothing more
    again = writable.post("/v1/assign?recode_changed=true", json=body).json()
    assert again["segment"] is None and not again["results"][0]["recoded"]


def test_assign_wrong_content_type(writable):
    r = writable.post("/v1/assign", content=b"item_id,embedding\n1,2", headers={"content-type": "text/csv"})
    assert_error(r, 422, "content-type")


def test_assign_garbage_arrow_body(writable):
    count = len(state_of(writable).index)
    r = writable.post("/v1/assign", content=b"\x00garbage" * 10, headers={"content-type": ARROW})
    assert_error(r, 422, "body")
    assert_error(writable.post("/v1/assign", content=b"", headers={"content-type": ARROW}), 422, "body")
    assert len(state_of(writable).index) == count


@pytest.mark.parametrize(
    ("columns", "field"),
    [
        ({"embedding": "ok"}, "item_id"),  # no item_id column
        ({"item_id": [1.5], "embedding": "ok"}, "item_id"),
        ({"item_id": [600_001], "embedding": pa.array(["x"])}, "embedding"),
        ({"item_id": [600_001, 600_002], "embedding": pa.array([[0.1] * 16, [0.1] * 15])}, "embedding"),
        ({"item_id": [600_001, 600_002], "embedding": pa.array([[0.1] * 16, None])}, "embedding"),
        ({"item_id": [600_001], "embedding": pa.array([[float("nan")] * 16])}, "embedding"),
        ({"item_id": [600_001], "embedding": pa.array([[0.1] * 8])}, "embedding"),
        ({"item_id": [600_001, 600_001], "embedding": pa.array([[0.1] * 16] * 2)}, "item_ids"),
        ({"item_id": [600_001], "embedding": "ok", "category": ["not an int"]}, "category"),
        ({"item_id": pa.array([], pa.int64()), "embedding": pa.array([], pa.list_(pa.float32()))}, "items"),
    ],
)
def test_assign_bad_arrow_tables(writable, catalog, columns, field):
    index = state_of(writable).index
    count, segments = len(index), index.segments
    n = len(columns.get("item_id", [0, 0]))
    columns = {k: (fixed_list(new_embeddings(catalog, n)) if isinstance(v, str) else v) for k, v in columns.items()}
    r = writable.post("/v1/assign", content=arrow_stream(pa.table(columns)), headers={"content-type": ARROW})
    assert_error(r, 422, field)
    assert len(index) == count and index.segments == segments


@pytest.mark.parametrize(
    ("items", "field"),
    [
        ([], "items"),
        ([{"item_id": 1, "embedding": [0.1] * 16}] * (MAX_BATCH + 1), "items"),
        ([{"item_id": "abc", "embedding": [0.1] * 16}], "items.item_id"),
        (
            [{"item_id": 700_001, "embedding": [0.1] * 16}, {"item_id": 700_002, "embedding": [0.1] * 3}],
            "items.embedding",
        ),
        ([{"item_id": 700_001, "embedding": [0.1] * 3}], "embedding"),
        ([{"item_id": 700_001, "embedding": [float("nan")] * 16}], "embedding"),
        ([{"item_id": 700_001}], "items.0.embedding"),
        ([{"item_id": 700_001, "embedding": [0.1] * 16, "category": "zz"}], "category"),
        ([{"item_id": 700_001, "embedding": [0.1] * 16, "title": {"a": 1}}], "title"),
        ([{"item_id": 700_001, "embedding": [0.1] * 16}] * 2, "item_ids"),
    ],
)
def test_assign_bad_json_items(writable, items, field):
    index = state_of(writable).index
    count, segments = len(index), index.segments
    r = writable.post("/v1/assign", content=json.dumps({"items": items}), headers={"content-type": "application/json"})
    assert_error(r, 413 if len(items) > MAX_BATCH else 422, field)
    assert len(index) == count and index.segments == segments


def test_assign_json_body_not_an_object(writable):
    assert_error(writable.post("/v1/assign", content=b"[1, 2]", headers={"content-type": "application/json"}), 422)
    assert_error(writable.post("/v1/assign", json={"items": [], "extra": 1}), 422, "extra")


# --- GET /v1/items, GET /v1/ids ------------------------------------------------------


def test_get_item(api, tiny_catalog, exported):
    item_id = int(tiny_catalog.item_ids[0])
    item = api.get(f"/v1/items/{item_id}").json()
    assert item["item_id"] == item_id
    assert len(item["semantic_id"]) == WIDTH and len(item["base_code"]) == LEVELS
    assert item["title"] == tiny_catalog.columns.column("title")[0].as_py()
    assert item["category"] == tiny_catalog.columns.column("category")[0].as_py()
    ref = next(r for r in exported if r["item_id"] == item_id)
    assert item["semantic_id"] == ref["semantic_id"] and item["token"] == ref["token"]


@pytest.mark.parametrize("item_id", ["999999", "abc", "-1", "9" * 30])
def test_get_unknown_item(api, item_id):
    assert_error(api.get(f"/v1/items/{item_id}"), 404, "item_id")


def test_get_by_semantic_id_round_trip(api, exported):
    for ref in exported[:: len(exported) // 20]:
        item = api.get(f"/v1/ids/{dashed(ref['semantic_id'])}").json()
        assert item["item_id"] == ref["item_id"] and item["semantic_id"] == ref["semantic_id"]
        assert item == api.get(f"/v1/items/{ref['item_id']}").json()


def _free_id(exported) -> list[int]:
    taken = {tuple(r["semantic_id"]) for r in exported}
    for sid in np.ndindex(*(SIZE,) * WIDTH):
        if sid not in taken:
            return list(sid)
    raise AssertionError("every ID is taken")


def test_get_by_unknown_semantic_id(api, exported):
    assert_error(api.get(f"/v1/ids/{dashed(_free_id(exported))}"), 404, "semantic_id")


@pytest.mark.parametrize("text", ["1-x", "1-2-3-4-5", "9999-0-0-0", "0-0-0-9999", "1-2-3", "1--2-3", "-1-0-0-0"])
def test_get_by_malformed_semantic_id(api, text):
    assert_error(api.get(f"/v1/ids/{text}"), 422, "semantic_id")


# --- GET /v1/prefixes ----------------------------------------------------------------


def _under(exported, prefix) -> list[dict]:
    return [r for r in exported if r["semantic_id"][: len(prefix)] == list(prefix)]


def _prefixes(exported) -> list[tuple[int, ...]]:
    """A few prefixes of every length 1..L+1 taken from real items, plus a crowded one."""
    out: list[tuple[int, ...]] = []
    for ref in exported[:: len(exported) // 5]:
        out += [tuple(ref["semantic_id"][:n]) for n in range(1, WIDTH + 1)]
    first = Counter(r["semantic_id"][0] for r in exported).most_common(1)[0][0]
    return [*dict.fromkeys(out), (first,)]


def test_prefix_count_equals_brute_force(api, exported):
    for prefix in _prefixes(exported):
        page = api.get(f"/v1/prefixes/{dashed(prefix)}", params={"limit": 3}).json()
        assert page["prefix"] == list(prefix)
        assert page["count"] == len(_under(exported, prefix)), prefix
        assert page["items"] == [api.get(f"/v1/items/{r['item_id']}").json() for r in _under(exported, prefix)[:3]]


def test_prefix_pages_walk_every_item_once_in_order(api, exported):
    for prefix in _prefixes(exported):
        seen, cursor, pages = [], None, 0
        while True:
            params = {"limit": 7} | ({"cursor": cursor} if cursor else {})
            page = api.get(f"/v1/prefixes/{dashed(prefix)}", params=params).json()
            assert len(page["items"]) <= 7
            seen += page["items"]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
            assert len(page["items"]) == 7
            assert pages < 1000
        expected = _under(exported, prefix)
        assert [(s["item_id"], s["semantic_id"]) for s in seen] == [(r["item_id"], r["semantic_id"]) for r in expected]
        assert pages == max(1, -(-len(expected) // 7))


def test_full_length_prefix(api, exported):
    ref = exported[len(exported) // 2]
    page = api.get(f"/v1/prefixes/{dashed(ref['semantic_id'])}").json()
    assert page["count"] == 1 and page["next_cursor"] is None
    assert page["items"][0]["item_id"] == ref["item_id"]


def test_default_page_size_respects_max_page(api, exported):
    first = Counter(r["semantic_id"][0] for r in exported).most_common(1)[0][0]
    page = api.get(f"/v1/prefixes/{first}").json()
    assert page["count"] > MAX_PAGE  # the setting (50) is below the default page size (100)
    assert len(page["items"]) == MAX_PAGE and page["next_cursor"]


def test_empty_prefix_is_a_page_of_nothing(api, exported):
    free = _free_id(exported)
    page = api.get(f"/v1/prefixes/{dashed(free)}").json()
    assert page == {"prefix": free, "count": 0, "items": [], "next_cursor": None}


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"limit": MAX_PAGE + 1}, "limit"),
        ({"limit": 0}, "limit"),
        ({"limit": -3}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"cursor": "zzz"}, "cursor"),
        ({"cursor": "!!!!"}, "cursor"),
        ({"cursor": "A" * 70}, "cursor"),
    ],
)
def test_prefix_bad_queries(api, exported, query, field):
    first = exported[0]["semantic_id"][0]
    assert_error(api.get(f"/v1/prefixes/{first}", params=query), 422, field)


def test_prefix_cursor_of_another_prefix(api, exported):
    counts = Counter(r["semantic_id"][0] for r in exported)
    (a, _), (b, _) = counts.most_common(2)
    cursor = api.get(f"/v1/prefixes/{a}", params={"limit": 1}).json()["next_cursor"]
    assert cursor
    assert_error(api.get(f"/v1/prefixes/{b}", params={"cursor": cursor}), 422, "cursor")


@pytest.mark.parametrize("prefix", ["1-2-3-4-5", "0-0-0-0-0-0", "9999", "0-8", "1-x", "x", "1--2", "-1"])
def test_prefix_malformed(api, prefix):
    assert_error(api.get(f"/v1/prefixes/{prefix}"), 422, "prefix")


# --- children ------------------------------------------------------------------------


def _brute_children(exported, prefix) -> list[dict]:
    counts = Counter(r["semantic_id"][len(prefix)] for r in _under(exported, prefix))
    return [{"code": c, "count": n} for c, n in sorted(counts.items())]


def test_root_children(api, exported):
    body = api.get("/v1/children").json()
    assert body["prefix"] == []
    assert sorted(body["children"], key=lambda c: c["code"]) == _brute_children(exported, ())
    assert sum(c["count"] for c in body["children"]) == len(exported)


def test_prefix_children_equal_brute_force(api, exported):
    for prefix in _prefixes(exported):
        if len(prefix) > LEVELS:
            continue
        body = api.get(f"/v1/prefixes/{dashed(prefix)}/children").json()
        assert body["prefix"] == list(prefix)
        assert sorted(body["children"], key=lambda c: c["code"]) == _brute_children(exported, prefix), prefix
        count = api.get(f"/v1/prefixes/{dashed(prefix)}", params={"limit": 1}).json()["count"]
        assert sum(c["count"] for c in body["children"]) == count


def test_children_of_an_empty_prefix(api, exported):
    used = {tuple(r["semantic_id"][:LEVELS]) for r in exported}
    free = next(list(c) for c in np.ndindex(*(SIZE,) * LEVELS) if c not in used)  # 600 items, 512 base codes
    assert api.get(f"/v1/prefixes/{dashed(free)}/children").json() == {"prefix": free, "children": []}


@pytest.mark.parametrize("prefix", ["1-2-3-0", "1-2-3-4-5", "9999", "1-x"])
def test_children_malformed(api, prefix):
    assert_error(api.get(f"/v1/prefixes/{prefix}/children"), 422, "prefix")


# --- POST /v1/resolve ----------------------------------------------------------------


def _check_nearest(api, nearest, k):
    assert len(nearest) == k
    distances = [n["distance"] for n in nearest]
    assert distances == sorted(distances) and all(d >= 0 for d in distances)
    for n in nearest:
        item = api.get(f"/v1/items/{n['item_id']}").json()
        assert item["semantic_id"] == n["semantic_id"]


def test_resolve_existing_id(api, exported):
    ref = exported[len(exported) // 3]
    body = api.post("/v1/resolve", json={"semantic_id": ref["semantic_id"], "k": 4}).json()
    assert body["exact"] == api.get(f"/v1/items/{ref['item_id']}").json()
    _check_nearest(api, body["nearest"], 4)
    assert body["nearest"][0]["distance"] == pytest.approx(0.0, abs=1e-6)


def test_resolve_missing_id_gives_nearest(api, exported):
    free = _free_id(exported)
    body = api.post("/v1/resolve", json={"semantic_id": free, "k": 5}).json()
    assert body["exact"] is None
    _check_nearest(api, body["nearest"], 5)


@pytest.mark.parametrize("length", [1, 2, LEVELS])
def test_resolve_prefix_gives_nearest(api, exported, length):
    body = api.post("/v1/resolve", json={"semantic_id": exported[0]["semantic_id"][:length], "k": 3}).json()
    assert body["exact"] is None
    _check_nearest(api, body["nearest"], 3)


def test_resolve_default_k(api, exported):
    assert len(api.post("/v1/resolve", json={"semantic_id": exported[0]["semantic_id"]}).json()["nearest"]) == 5


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"semantic_id": [1, 2, 3, 0], "k": MAX_K + 1}, "k"),
        ({"semantic_id": [1, 2, 3, 0], "k": 0}, "k"),
        ({"semantic_id": [1, 2, 3, 0], "k": 2**70}, "k"),
        ({"semantic_id": [1, 2, 3, 0], "k": "3"}, "k"),
        ({"semantic_id": [1, 2, 9999, 0]}, "semantic_id"),
        ({"semantic_id": [-1]}, "semantic_id"),
        ({"semantic_id": [2**70]}, "semantic_id"),
        ({"semantic_id": []}, "semantic_id"),
        ({"semantic_id": [1, 2, 3, 0, 0]}, "semantic_id"),
        ({"semantic_id": "1-2-3-0"}, "semantic_id"),
        ({"semantic_id": [1.0]}, "semantic_id.0"),
        ({"k": 3}, "semantic_id"),
    ],
)
def test_resolve_bad_bodies(api, body, field):
    assert_error(api.post("/v1/resolve", json=body), 422, field)


# --- operations ----------------------------------------------------------------------


def test_healthz_and_readyz(api, tiny_checkpoint):
    from semid.model.training.checkpoint import load_checkpoint

    assert api.get("/healthz").json()["status"] == "ok"
    ready = api.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "items": len(state_of(api).index),
        "fingerprint": load_checkpoint(tiny_checkpoint).fingerprint,
        "version": state_of(api).index.version,
        "role": "writer",
        "pid": os.getpid(),
    }


def test_metrics(api):
    api.get("/v1/children")
    text = api.get("/metrics").text
    assert "semid_requests_total" in text
    assert 'route="/v1/children"' in text
    (line,) = [ln for ln in text.splitlines() if ln.startswith("semid_index_items")]
    assert float(line.split()[-1]) == len(state_of(api).index)


def test_docs_and_openapi(api):
    docs = api.get("/docs")
    assert docs.status_code == 200 and "text/html" in docs.headers["content-type"]
    paths = api.get("/openapi.json").json()["paths"]
    expected = {
        "/v1/encode": "post",
        "/v1/assign": "post",
        "/v1/items/{item_id}": "get",
        "/v1/ids/{semantic_id}": "get",
        "/v1/prefixes/{prefix}": "get",
        "/v1/prefixes/{prefix}/children": "get",
        "/v1/children": "get",
        "/v1/resolve": "post",
        "/healthz": "get",
        "/readyz": "get",
    }
    for path, method in expected.items():
        assert method in paths.get(path, {}), path
    assert ARROW in paths["/v1/assign"]["post"]["requestBody"]["content"]


def test_unknown_route_and_method(api):
    assert_error(api.get("/v2/nothing"), 404)
    assert_error(api.get("/v1/prefixes/"), 404)
    assert_error(api.get("/v1/encode"), 405)


def test_body_over_the_limit(base_index, tmp_path):
    client = make_client(base_index, max_body_bytes=2048)
    big = {"embeddings": [[0.123456789] * 16] * 20}
    assert len(json.dumps(big)) > 2048
    assert_error(client.post("/v1/encode", json=big), 413, "body")

    def chunks():  # no Content-Length: the limit applies while the body streams in
        data = json.dumps(big).encode()
        for s in range(0, len(data), 512):
            yield data[s : s + 512]

    assert_error(client.post("/v1/encode", content=chunks(), headers={"content-type": "application/json"}), 413)
    assert client.post("/v1/encode", json={"embeddings": [[0.1] * 16]}).status_code == 200


def test_not_ready_without_state_then_ready_through_the_lifespan(base_index):
    settings = ServiceSettings(index_dir=base_index)
    cold = TestClient(create_app(settings), raise_server_exceptions=False)  # lifespan not run: 503, not 500
    assert_error(cold.get("/readyz"), 503)
    assert_error(cold.get("/v1/items/1"), 503)
    assert cold.get("/healthz").status_code == 200
    with StrictClient(create_app(settings)) as warm:
        assert warm.get("/readyz").json()["items"] == len(ServiceState.load(settings).index)


def test_index_from_another_checkpoint_is_refused(base_index, tmp_path, tiny_catalog):
    from semid.model.training.job import train_tokenizer

    other = tmp_path / "other"
    train_tokenizer(tiny_catalog.embeddings, tiny_config(seed=1), other)
    settings = ServiceSettings(index_dir=base_index, checkpoint_dir=other)
    with pytest.raises(FingerprintMismatchError) as info:
        ServiceState.load(settings)
    assert info.value.expected != info.value.actual
    assert info.value.expected in str(info.value) and info.value.actual in str(info.value)
