"""GET /v1/trie: the current trie as bytes, built once per snapshot, with an ETag and 304s."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient

from semid.model.data.catalog import read_catalog
from semid.service.api.app import create_app
from semid.service.api.settings import ServiceSettings
from semid.service.api.state import ServiceState
from semid.service.export import export_table
from semid.service.generation.trie import SemanticIdTrie


@pytest.fixture
def client(assigned_index, tmp_path) -> TestClient:
    copy = tmp_path / "index"
    shutil.copytree(assigned_index, copy)
    state = ServiceState.load(ServiceSettings(index_dir=copy, write_lock_timeout=5))
    return TestClient(create_app(state.settings, state=state), raise_server_exceptions=False)


def items_by_id(client) -> dict[tuple[int, ...], object]:
    rows = export_table(client.app.state.semid.index).to_pylist()
    return {tuple(r["semantic_id"]): r["item_id"] for r in rows}


def test_trie_route_serves_the_current_items_with_etag_and_304(client, tiny_catalog_file, monkeypatch):
    import semid.service.generation.trie as trie_module

    builds = []
    real = trie_module.SemanticIdTrie.from_snapshot.__func__
    monkeypatch.setattr(
        trie_module.SemanticIdTrie,
        "from_snapshot",
        classmethod(lambda cls, snap: builds.append(snap) or real(cls, snap)),
    )
    first = client.get("/v1/trie")
    assert first.status_code == 200, first.text
    assert first.headers["content-type"] == "application/octet-stream"
    etag = first.headers["etag"]
    trie = SemanticIdTrie.from_bytes(first.content)
    expected = items_by_id(client)
    assert len(trie) == len(expected) == 600
    assert all(trie.item_of(sid) == item for sid, item in expected.items())

    again = client.get("/v1/trie")
    assert again.headers["etag"] == etag and again.content == first.content
    assert len(builds) == 1, "the trie of one snapshot is built once"
    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        not_modified = client.get("/v1/trie", headers={"If-None-Match": header})
        assert not_modified.status_code == 304 and not_modified.content == b"" and not_modified.headers["etag"] == etag
    assert client.get("/v1/trie", headers={"If-None-Match": '"trie-stale"'}).status_code == 200

    # a registration swaps the snapshot: the ETag changes and the new trie holds the new item
    catalog = read_catalog(tiny_catalog_file)
    emb = catalog.embeddings[:1] + 0.05 * np.random.default_rng(1).standard_normal((1, 16))
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).tolist()
    reg = client.post("/v1/encode", json={"embeddings": emb, "item_ids": [900_001], "register": True})
    assert reg.status_code == 200, reg.text
    new_sid = tuple(reg.json()["results"][0]["semantic_id"])
    changed = client.get("/v1/trie", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag
    fresh = SemanticIdTrie.from_bytes(changed.content)
    assert len(fresh) == 601 and fresh.item_of(new_sid) == 900_001 and trie.item_of(new_sid) is None
    assert len(builds) == 2
    assert client.get("/v1/trie", headers={"If-None-Match": changed.headers["etag"]}).status_code == 304


def test_trie_route_is_documented(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert "application/octet-stream" in paths["/v1/trie"]["get"]["responses"]["200"]["content"]
