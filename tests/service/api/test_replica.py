"""`semid serve --read-only` and `--workers` at the API level: refused writes, readers catching up."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from semid.service.api.settings import ServiceSettings
from semid.service.api.workers import worker_settings
from semid.service.assign import assign_catalog
from semid.service.index.handle import SemanticIdIndex
from tests.service.api.test_api import KEEP, make_client, new_embeddings, state_of


@pytest.fixture(scope="module")
def base_index(tmp_path_factory, tiny_checkpoint, tiny_catalog_file):
    out = tmp_path_factory.mktemp("replica") / "index"
    assign_catalog(checkpoint=tiny_checkpoint, catalog=tiny_catalog_file, index_dir=out, keep_columns=KEEP)
    return out


@pytest.fixture
def pair(base_index, tmp_path):
    """A writer and a read-only replica serving one index directory."""
    shutil.copytree(base_index, tmp_path / "index")
    return make_client(tmp_path / "index"), make_client(tmp_path / "index", read_only=True)


def _items(emb: np.ndarray, start: int) -> list[dict]:
    return [{"item_id": start + i, "embedding": e, "title": f"t{i}", "category": 1} for i, e in enumerate(emb.tolist())]


def test_replica_refuses_writes_with_403_naming_the_writer(pair, tiny_catalog_file):
    from semid.model.data.catalog import read_catalog

    writer, replica = pair
    emb = new_embeddings(read_catalog(tiny_catalog_file), 2)
    for response in (
        replica.post("/v1/assign", json={"items": _items(emb, 900_000)}),
        replica.post("/v1/encode", json={"embeddings": emb.tolist(), "item_ids": [1, 2], "register": True}),
    ):
        assert response.status_code == 403, response.text
        assert response.json()["error"] == {
            "code": "read_only_replica",
            "message": "this replica is read-only; send writes to the writer",
        }
    assert replica.post("/v1/encode", json={"embeddings": emb.tolist()}).status_code == 200
    assert replica.get("/readyz").json()["role"] == "replica"
    assert len(SemanticIdIndex.open(state_of(writer).index.path)) == len(state_of(replica).index)


def test_replica_answers_the_writers_registration_on_its_next_request(pair, tiny_catalog_file):
    from semid.model.data.catalog import read_catalog

    writer, replica = pair
    before = replica.get("/readyz").json()["version"]
    emb = new_embeddings(read_catalog(tiny_catalog_file), 3)
    done = writer.post("/v1/assign", json={"items": _items(emb, 900_100)})
    assert done.status_code == 200, done.text
    sid = done.json()["results"][0]["semantic_id"]
    got = replica.get("/v1/items/900100")
    assert got.status_code == 200, got.text
    assert got.json()["semantic_id"] == sid
    assert replica.get("/readyz").json()["version"] > before


def test_worker_threads_split_the_cores_unless_set():
    assert worker_settings(ServiceSettings(workers=2), cpus=8).threads == 4
    assert worker_settings(ServiceSettings(workers=4), cpus=2).threads == 1
    assert worker_settings(ServiceSettings(workers=2, threads=3), cpus=8).threads == 3


def test_a_failed_refresh_keeps_serving_the_snapshot_held(pair, tiny_catalog_file, caplog):
    from semid.model.data.catalog import read_catalog

    writer, replica = pair
    before = replica.get("/readyz").json()
    emb = new_embeddings(read_catalog(tiny_catalog_file), 2)
    assert writer.post("/v1/assign", json={"items": _items(emb, 900_200)}).status_code == 200
    index = state_of(writer).index
    (index.path / "segments" / index.segments[-1]).unlink()  # the new segment vanishes before the replica loads it
    for _ in range(3):
        ready = replica.get("/readyz")
        assert ready.status_code == 200 and ready.json()["version"] == before["version"]
        assert replica.get("/v1/stats").status_code == 200
    assert "refresh failed" in caplog.text
