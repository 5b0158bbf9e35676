"""Issue 26, item 7: no silent drops, a reader that never writes, a quickstart label said once, a version."""

from __future__ import annotations

from importlib.metadata import version

import numpy as np

from semid.service.export import export_index
from tests.service.api.test_api import assert_error
from tests.service.api.test_resolve import base_index, client_for  # noqa: F401 - base_index is a fixture
from tests.service.index.test_handle import filled_index


def test_assign_with_an_unknown_field_is_422_naming_it(base_index, tmp_path, tiny_catalog):  # noqa: F811
    import shutil

    shutil.copytree(base_index, tmp_path / "index")
    client = client_for(tmp_path / "index")
    dim = tiny_catalog.dim
    item = {"item_id": 999_999, "embedding": [0.1] * dim, "title": "t", "category": 1, "genre": "drama"}
    err = assert_error(client.post("/v1/assign", json={"items": [item]}), 422, field="items.genre")
    assert "genre" in err["message"] and "--keep-columns" in err["message"]
    del item["genre"]  # the index's own kept columns are still welcome
    assert client.post("/v1/assign", json={"items": [item]}).status_code == 200


def test_export_never_writes_into_the_index(tmp_path):
    _, _ = filled_index(tmp_path / "idx", np.random.default_rng(17), batches=2)
    (tmp_path / "idx" / "faiss.index").unlink()  # the state in which opening rebuilds and used to persist it
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "idx").rglob("*") if p.is_file()}
    export_index(tmp_path / "idx", tmp_path / "out.parquet")
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "idx").rglob("*") if p.is_file()}
    assert after == before


def test_quickstart_names_its_item_once(tmp_path):
    from semid.service.quickstart import run_quickstart

    lines: list[str] = []
    run_quickstart(tmp_path / "qs", items=300, dim=8, epochs=6, seed=0, echo=lines.append)
    exported = next(line for line in lines if "items exported" in line)
    assert exported.count("item ") == 1 and "(item" not in exported, exported


def test_service_version_is_the_installed_package_version():
    import semid.service

    assert semid.service.__version__ == version("semid")
