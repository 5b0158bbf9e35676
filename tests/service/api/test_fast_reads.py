"""The hot read routes' fast path (service/api/fast_reads.py) answers exactly what the routes answer.

Two apps over one index: the real one (fast path on) and one with the fast path taken out of its middleware
stack. Every request below gets the same status, body bytes and headers from both, errors included; the
plain successful ones are answered by the fast path (the route's function is not called), the rest by the app.
"""

from __future__ import annotations

from urllib.parse import quote

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from semid.service.api import fast_reads
from semid.service.api.app import create_app
from semid.service.api.fast_reads import FastReadsMiddleware
from semid.service.api.settings import ServiceSettings
from semid.service.api.state import ServiceState
from semid.service.assign import assign_catalog
from semid.service.export import export_table
from tests.service.api.test_api import KEEP, MAX_PAGE, dashed

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _clients(index_dir) -> tuple[TestClient, TestClient]:
    settings = ServiceSettings(index_dir=index_dir, max_page=MAX_PAGE)
    fast = create_app(settings, state=ServiceState.load(settings))
    plain = create_app(settings, state=ServiceState.load(settings))
    plain.user_middleware = [m for m in plain.user_middleware if m.cls is not FastReadsMiddleware]
    return TestClient(fast, raise_server_exceptions=False), TestClient(plain, raise_server_exceptions=False)


@pytest.fixture(scope="module")
def int_index(tmp_path_factory, tiny_checkpoint, tiny_catalog_file):
    out = tmp_path_factory.mktemp("fast") / "index"
    assign_catalog(checkpoint=tiny_checkpoint, catalog=tiny_catalog_file, index_dir=out, keep_columns=KEEP)
    return out


@pytest.fixture(scope="module")
def str_index(tmp_path_factory, tiny_checkpoint, tiny_catalog_file):
    table = pq.read_table(tiny_catalog_file)
    names = [f"sku-{i}" if i % 3 else f"ünï {i}" for i in table.column("item_id").to_pylist()]
    table = table.set_column(table.schema.get_field_index("item_id"), "item_id", pa.array(names))
    path = tmp_path_factory.mktemp("fast-str") / "catalog.parquet"
    pq.write_table(table, path)
    out = path.parent / "index"
    assign_catalog(checkpoint=tiny_checkpoint, catalog=path, index_dir=out)
    return out


def _same(fast: TestClient, plain: TestClient, url: str) -> int:
    got, want = fast.get(url), plain.get(url)
    assert got.status_code == want.status_code, (url, got.text, want.text)
    assert got.content == want.content, url
    strip = {"date"}
    assert [h for h in got.headers.items() if h[0] not in strip] == [
        h for h in want.headers.items() if h[0] not in strip
    ], url
    return got.status_code


@pytest.fixture
def answered(monkeypatch) -> list[str]:
    """The paths the fast path answered itself."""
    seen: list[str] = []
    original = FastReadsMiddleware._answer

    async def spy(self, scope):
        body = await original(self, scope)
        if body is not None:
            seen.append(scope["path"] + ("?" + scope["query_string"].decode() if scope["query_string"] else ""))
        return body

    monkeypatch.setattr(FastReadsMiddleware, "_answer", spy)
    return seen


def test_prefix_pages_items_and_ids_are_the_routes_own_bytes(int_index, answered):
    fast, plain = _clients(int_index)
    rows = export_table(fast.app.state.semid.index).to_pylist()
    plain_urls = []
    for row in rows[:: max(1, len(rows) // 12)]:
        sid = row["semantic_id"]
        plain_urls += [f"/v1/prefixes/{dashed(sid[:k])}" for k in range(1, len(sid) + 1)]
        plain_urls += [f"/v1/prefixes/{dashed(sid[:1])}?limit=3", f"/v1/items/{row['item_id']}"]
        plain_urls.append(f"/v1/ids/{dashed(sid)}")
    first = dashed(rows[0]["semantic_id"][:1])
    cursor = plain.get(f"/v1/prefixes/{first}?limit=2").json()["next_cursor"]
    assert cursor is not None
    plain_urls += [f"/v1/prefixes/{first}?limit=2&cursor={cursor}", f"/v1/prefixes/{first}?cursor={cursor}&limit=2"]
    for url in plain_urls:
        assert _same(fast, plain, url) == 200
    assert sorted(answered) == sorted(plain_urls)  # every one of them answered by the fast path
    body = fast.get(f"/v1/prefixes/{first}?limit=2").json()
    assert set(body["items"][0]) >= {"item_id", "semantic_id", "title", "category"}  # kept columns included

    answered.clear()
    other = dashed(rows[-1]["semantic_id"][:1]) if rows[-1]["semantic_id"][0] != rows[0]["semantic_id"][0] else "7"
    passed_on = [
        f"/v1/prefixes/{first}?limit=0",
        f"/v1/prefixes/{first}?limit=abc",
        f"/v1/prefixes/{first}?limit={MAX_PAGE + 1}",
        f"/v1/prefixes/{first}?limit=1000000000",
        f"/v1/prefixes/{first}?limit=2&limit=3",
        f"/v1/prefixes/{first}?unknown=1",
        f"/v1/prefixes/{first}?cursor=garbage",
        f"/v1/prefixes/{other}?cursor={cursor}",
        f"/v1/prefixes/{first}?cursor=" + "A" * 65,
        "/v1/prefixes/abc",
        "/v1/prefixes/1--2",
        "/v1/prefixes/1-2-3-4-5-6",
        "/v1/prefixes/999999",
        "/v1/items/123456789",
        "/v1/items/1?x=1",
        "/v1/items/" + "9" * 300,
        "/v1/ids/1-2",
        "/v1/ids/0-0-0-7",
        "/v1/ids/x",
        "/v1/prefixes/",
        "/v1/prefixes/1/children",
    ]
    for url in passed_on:
        assert _same(fast, plain, url) != 500, url
    assert answered == []  # every one of them answered by the app, as before
    metrics = fast.get("/metrics").text
    assert 'route="/v1/prefixes/{prefix}",status="200"' in metrics.replace('method="GET",', "")
    assert 'route="/v1/ids/{semantic_id}",status="200"' in metrics.replace('method="GET",', "")


def test_string_item_ids_with_escapes_and_unicode(str_index, answered):
    fast, plain = _clients(str_index)
    rows = export_table(fast.app.state.semid.index).to_pylist()
    names = [r["item_id"] for r in rows[:10]]
    assert any(" " in n for n in names)
    for name in names:
        quoted = quote(name, safe="")
        assert _same(fast, plain, f"/v1/items/{quoted}") == 200
    assert len(answered) == len(names)
    assert _same(fast, plain, "/v1/items/no-such-sku") == 404


def test_the_fast_path_reads_what_another_process_committed(int_index, tmp_path, tiny_catalog, answered):
    """It catches up with the manifest before answering, as the routes' dependency does."""
    import shutil

    import numpy as np

    import semid

    copy = tmp_path / "index"
    shutil.copytree(int_index, copy)
    fast, _ = _clients(copy)
    assert fast.get("/v1/items/987654").status_code == 404
    other = semid.Index.open(copy)  # another handle, as a writer process holds it
    embedding = tiny_catalog.embeddings[:1] + np.float32(0.01)
    assigned = other.assign([987654], embedding)
    sid = assigned.semantic_ids[0].tolist()
    got = fast.get("/v1/items/987654")
    assert got.status_code == 200 and got.json()["semantic_id"] == sid
    page = fast.get(f"/v1/prefixes/{dashed(sid)}").json()
    assert page["count"] == 1 and page["items"][0]["item_id"] == 987654
    assert any(a.startswith("/v1/items/987654") for a in answered)


def test_the_routes_table_names_real_routes():
    from semid.service.api.routes import lookups

    paths = {r.path for r in lookups.router.routes}
    assert {path for path, _, _ in fast_reads.ROUTES.values()} <= paths
