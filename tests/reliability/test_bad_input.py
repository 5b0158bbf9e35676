"""Every row of the bad-input table in docs/reliability.md: the documented status (or exit 2), field and message,
and the index unchanged.

The expected result of each case is read from the table itself (status or ``exit N``, the field in backticks,
each quoted text, ``...`` standing for any text); `test_every_documented_row_has_a_case` keeps the table and
the cases in step.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from semid.model.data.synthetic import synthetic_catalog, write_catalog
from semid.service.api.app import create_app
from semid.service.api.settings import ServiceSettings
from semid.service.api.state import ServiceState
from semid.service.assign import assign_catalog
from semid.service.cli import main
from tests.conftest import ROOT
from tests.reliability.conftest import assign_args

DIM = 16
DOC = ROOT / "docs" / "reliability.md"


def documented_rows() -> dict[str, dict]:
    """{row id: {"status", "field", "messages"}} from the "Bad input" table of docs/reliability.md."""
    text = DOC.read_text()
    section = text.split("## Bad input", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        m = re.match(r"\| `((?:api|cli)-[a-z0-9-]+)` \|.*\| ([^|]+) \|$", line)
        if not m:
            continue
        result = m.group(2)
        status = re.match(r"(?:exit )?(\d+)", result)
        assert status, f"row {m.group(1)}: no status or exit code in {result!r}"
        field = re.search(r"field `([^`]+)`", result)
        rows[m.group(1)] = {
            "status": int(status.group(1)),
            "field": field.group(1) if field else None,
            "messages": re.findall(r'"([^"]+)"', result),
        }
    return rows


DOCUMENTED = documented_rows()


def assert_documented_message(row: str, message: str) -> None:
    expected = DOCUMENTED[row]["messages"]
    assert expected, f"row {row} documents no message"
    for text in expected:
        pattern = ".+?".join(re.escape(part) for part in text.split("..."))
        assert re.search(pattern, message), (row, text, message)


def snapshot(index: Path) -> dict[str, str]:
    """Content hash of every file of the index (the lock file aside): equal snapshots, unchanged index."""
    return {
        str(p.relative_to(index)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(index.rglob("*"))
        if p.is_file() and p.name != "index.lock"
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_checkpoint, tiny_catalog_file):
    root = tmp_path_factory.mktemp("bad")
    index = root / "idx"
    assign_catalog(checkpoint=tiny_checkpoint, catalog=tiny_catalog_file, index_dir=index, keep_columns=("title",))
    settings = ServiceSettings(index_dir=index, api_key="secret", max_batch=8, max_body_bytes=64 * 1024, max_page=50)
    app = create_app(settings, state=ServiceState.load(settings))
    return {"root": root, "index": index, "app": app, "checkpoint": tiny_checkpoint, "catalog": tiny_catalog_file}


KEY = {"X-API-Key": "secret"}
VEC = [0.1] * DIM

# (row id, method, path, kwargs); the expected result is the row's in docs/reliability.md
API_CASES = [
    ("api-wrong-dimension", "post", "/v1/encode", {"json": {"embeddings": [[0.1] * 5]}}),
    ("api-infinite-value", "post", "/v1/encode", {"content": '{"embeddings": [[1e400' + ", 0.1" * 15 + "]]}"}),
    ("api-empty-batch", "post", "/v1/encode", {"json": {"embeddings": []}}),
    ("api-oversized-batch", "post", "/v1/encode", {"json": {"embeddings": [VEC] * 9}}),
    ("api-non-numeric", "post", "/v1/encode", {"json": {"embeddings": [["a"] * DIM]}}),
    ("api-ragged-batch", "post", "/v1/encode", {"json": {"embeddings": [VEC, VEC[:3]]}}),
    (
        "api-duplicate-ids-in-request",
        "post",
        "/v1/encode",
        {"json": {"embeddings": [VEC, VEC], "item_ids": [90001, 90001], "register": True}, "headers": KEY},
    ),
    ("api-missing-api-key", "post", "/v1/assign", {"json": {"items": [{"item_id": 90002, "embedding": VEC}]}}),
    (
        "api-wrong-api-key",
        "post",
        "/v1/assign",
        {"json": {"items": [{"item_id": 90003, "embedding": VEC}]}, "headers": {"X-API-Key": "nope"}},
    ),
    (
        "api-corrupt-arrow",
        "post",
        "/v1/assign",
        {"content": b"not arrow", "headers": {**KEY, "content-type": "application/vnd.apache.arrow.stream"}},
    ),
    ("api-unknown-item", "get", "/v1/items/123456789", {}),
    ("api-malformed-prefix", "get", "/v1/prefixes/1-x", {}),
    ("api-out-of-range-prefix", "get", "/v1/prefixes/999", {}),
    ("api-too-long-prefix", "get", "/v1/prefixes/1-1-1-1-1", {}),
    ("api-huge-page", "get", "/v1/prefixes/1?limit=100000", {}),
    ("api-bad-cursor", "get", "/v1/prefixes/1?cursor=%%%", {}),
    ("api-path-traversal-id", "get", "/v1/items/..%2F..%2Fmanifest.json", {}),
    ("api-malformed-semantic-id", "get", "/v1/ids/1-2-x", {}),
    ("api-resolve-out-of-range", "post", "/v1/resolve", {"json": {"semantic_id": [9999], "k": 3}}),
    ("api-body-too-large", "post", "/v1/encode", {"content": b"[" + b"0," * 40000 + b"0]"}),
]


@pytest.mark.parametrize("case", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_bad_input(setup, case):
    row, method, path, kwargs = case
    status, field = DOCUMENTED[row]["status"], DOCUMENTED[row]["field"]
    before = snapshot(setup["index"])
    with TestClient(setup["app"], raise_server_exceptions=False) as client:
        kwargs = dict(kwargs)
        if "content" in kwargs and "headers" not in kwargs:
            kwargs["headers"] = {"content-type": "application/json"}
        response = getattr(client, method)(path, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] and error["message"]
    assert error.get("field") == field, error
    assert_documented_message(row, error["message"])
    assert snapshot(setup["index"]) == before


def _damaged_checkpoint(setup, tmp: Path, how: str) -> Path:
    ck = tmp / f"ck-{how}"
    shutil.copytree(setup["checkpoint"], ck)
    if how == "corrupt":
        (ck / "model.safetensors").write_bytes(b"\x00garbage")
    elif how == "foreign":
        (ck / "config.json").write_text(json.dumps({"kind": "other-tool", "format_version": 1}))
    elif how == "missing-weights":
        (ck / "model.safetensors").unlink()
    return ck


def _catalog(tmp: Path, how: str) -> Path:
    path = tmp / f"{how}.parquet"
    cat = synthetic_catalog(items=50, dim=DIM, seed=9)
    if how == "nan":
        cat.embeddings[7, 3] = np.nan
    if how == "duplicate-ids":
        cat.item_ids[5] = cat.item_ids[4]
    if how == "wrong-dimension":
        cat = synthetic_catalog(items=50, dim=DIM + 1, seed=9)
    write_catalog(cat, path)
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    return path


# (row id, what is bad, how); the expected result is the row's in docs/reliability.md
CLI_CASES = [
    ("cli-truncated-parquet", "catalog", "truncated"),
    ("cli-nan-in-catalog", "catalog", "nan"),
    ("cli-duplicate-ids-in-catalog", "catalog", "duplicate-ids"),
    ("cli-wrong-dimension-catalog", "catalog", "wrong-dimension"),
    ("cli-corrupt-checkpoint", "checkpoint", "corrupt"),
    ("cli-foreign-checkpoint", "checkpoint", "foreign"),
    ("cli-missing-safetensors", "checkpoint", "missing-weights"),
    ("cli-index-from-another-checkpoint", "checkpoint", "other-seed"),
    ("cli-missing-keep-column", "keep", "../../etc/passwd"),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input(setup, tmp_path, case):
    row, kind, how = case
    index = setup["index"]
    before = snapshot(index)
    checkpoint, catalog, keep = setup["checkpoint"], setup["catalog"], "title"
    if kind == "catalog":
        catalog = _catalog(tmp_path, how)
    elif kind == "checkpoint" and how == "other-seed":
        from semid.model.training.job import train_tokenizer
        from tests.conftest import tiny_config as cfg

        checkpoint = tmp_path / "other"
        train_tokenizer(synthetic_catalog(items=300, dim=DIM, seed=2).embeddings, cfg(seed=5), checkpoint)
    elif kind == "checkpoint":
        checkpoint = _damaged_checkpoint(setup, tmp_path, how)
    elif kind == "keep":
        keep = f"title,{how}"
    result = CliRunner().invoke(main, assign_args(checkpoint, catalog, index, "--keep-columns", keep))
    assert DOCUMENTED[row]["status"] == 2
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert_documented_message(row, lines[0])
    if row == "cli-corrupt-checkpoint":
        assert str(checkpoint) in lines[0]
    if row == "cli-index-from-another-checkpoint":
        from semid.model.training.checkpoint import load_checkpoint

        fingerprints = (load_checkpoint(setup["checkpoint"]).fingerprint, load_checkpoint(checkpoint).fingerprint)
        assert all(f in lines[0] for f in fingerprints), lines[0]
    assert snapshot(index) == before


def test_manifest_pointing_to_a_missing_segment_is_reported(setup, tmp_path):
    broken = tmp_path / "idx"
    shutil.copytree(setup["index"], broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["segments"].append({"name": "seg-000099.parquet", "rows": 3})
    manifest["item_count"] += 3
    (broken / "manifest.json").write_text(json.dumps(manifest))
    before = snapshot(broken)
    runner = CliRunner()
    check = runner.invoke(main, ["check", "--index", str(broken)])
    assert check.exit_code == 1 and "seg-000099.parquet" in check.output
    export = runner.invoke(main, ["export", "--index", str(broken), "--out", str(tmp_path / "x.parquet")])
    assert export.exit_code == 2 and "seg-000099.parquet" in export.output and "Traceback" not in export.output
    assert snapshot(broken) == before


def test_segment_name_with_path_traversal_in_manifest_is_refused(setup, tmp_path):
    broken = tmp_path / "idx"
    shutil.copytree(setup["index"], broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["segments"][0]["name"] = "../../../etc/passwd"
    (broken / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(main, ["export", "--index", str(broken), "--out", str(tmp_path / "x.parquet")])
    assert result.exit_code == 2 and "error:" in result.output and "Traceback" not in result.output


def test_every_documented_row_has_a_case():
    tested = [c[0] for c in API_CASES] + [c[0] for c in CLI_CASES]
    assert len(tested) == len(set(tested)), "a row id is tested twice"
    mentioned = set(re.findall(r"`((?:api|cli)-[a-z0-9-]+)`", DOC.read_text()))
    assert set(DOCUMENTED) == mentioned, "a row id in the docs is not in the table's format"
    assert set(tested) == set(DOCUMENTED), {
        "documented, not tested": sorted(set(DOCUMENTED) - set(tested)),
        "tested, not documented": sorted(set(tested) - set(DOCUMENTED)),
    }
    assert len(DOCUMENTED) >= 29


def test_documented_messages_are_matched_not_ignored():
    assert_documented_message("cli-duplicate-ids-in-catalog", "error: duplicate item_id 5 at rows 4 and 5")
    with pytest.raises(AssertionError):
        assert_documented_message("cli-duplicate-ids-in-catalog", "error: duplicate item_id 5")


def test_arrow_catalog_columns_reach_the_index(setup, tmp_path):
    # positive control for the Arrow route used above: a valid stream registers (and changes the index);
    # on a copy of the index, so the cases above see the same index whatever the order
    index = tmp_path / "idx"
    shutil.copytree(setup["index"], index)
    settings = ServiceSettings(index_dir=index, api_key="secret")
    app = create_app(settings, state=ServiceState.load(settings))
    before = snapshot(index)
    table = pa.table(
        {
            "item_id": pa.array([777001], pa.int64()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(VEC, pa.float32()), DIM),
            "title": ["arrow item"],
        }
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    with TestClient(app) as client:
        r = client.post(
            "/v1/assign",
            content=sink.getvalue().to_pybytes(),
            headers={**KEY, "content-type": "application/vnd.apache.arrow.stream"},
        )
        assert r.status_code == 200, r.text
        assert client.get("/v1/items/777001").json()["title"] == "arrow item"
    assert snapshot(index) != before
