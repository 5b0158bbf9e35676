"""`semid assign --engine ray` gives the single-machine engine's IDs: byte-identical `semid export`.

One local Ray (2 CPUs) serves the whole module. The Ray tests skip when the extra `semid[ray]` is not
installed, unless SEMID_RAY_REQUIRED=1 (CI), where they fail instead.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from semid.model.data.catalog import Catalog
from semid.model.data.synthetic import write_catalog
from semid.service.cli import main
from tests.conftest import assert_same_run, cli_export, colliding_catalog


@pytest.fixture(scope="module")
def ray_local():
    if os.environ.get("SEMID_RAY_REQUIRED") == "1":
        import ray
    else:
        ray = pytest.importorskip("ray", reason="the Ray engine's extra is not installed: pip install 'semid[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def colliding(tmp_path_factory):
    """600 items in 4 tight categories plus 3 groups of 20 exact duplicates: big buckets (dedup digit has 8
    values) and so fallback items."""
    return colliding_catalog()


def _assign(args: list[str]) -> dict:
    result = CliRunner().invoke(main, ["assign", *args, "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    # the module's Ray forwards its workers' log lines (Ray Data's own, at times) into the captured output
    return json.loads([line for line in result.output.splitlines() if line.startswith("{")][-1])


@pytest.mark.parametrize("recode", [False, True])
def test_index_that_already_holds_items_samecli_export(ray_local, colliding, tiny_checkpoint, tmp_path, recode):
    """Half the catalog is indexed first; the full catalog then adds the rest, with two known items'
    embeddings changed: without --recode-changed they are reported and keep their IDs; with it they are
    re-coded (one nudged, one moved onto another item's embedding). Same result from both engines."""
    half = len(colliding) // 2
    first = Catalog(item_ids=colliding.item_ids[:half], embeddings=colliding.embeddings[:half])
    full = Catalog(item_ids=colliding.item_ids, embeddings=colliding.embeddings.copy())
    full.embeddings[0] += 0.01
    full.embeddings[1] = colliding.embeddings[-1]
    ckpt = ["--checkpoint", str(tiny_checkpoint), "--batch-rows", "100"]
    for name in ("local", "ray"):
        _assign(
            [*ckpt, "--catalog", str(write_catalog(first, tmp_path / "first.parquet")), "--index", str(tmp_path / name)]
        )
    before = pq.read_table(tmp_path / "local" / "segments" / "seg-000001.parquet", columns=["item_id", "semantic_id"])
    path = write_catalog(full, tmp_path / "full.parquet")
    flag = ["--recode-changed"] if recode else []
    local = _assign([*ckpt, *flag, "--catalog", str(path), "--index", str(tmp_path / "local")])
    ray = _assign([*ckpt, *flag, "--catalog", str(path), "--index", str(tmp_path / "ray"), "--engine", "ray"])
    assert local["existing_items"] == half and local["changed_items"] == 2 and local["fallback_items"] > 0
    assert local["recoded_items"] == (2 if recode else 0) and local["recoded_new_ids"] == (1 if recode else 0)
    assert_same_run(local, ray)
    exported = cli_export(tmp_path / "ray", tmp_path / "ray.parquet")
    assert exported == cli_export(tmp_path / "local", tmp_path / "local.parquet")
    table = pq.read_table(tmp_path / "ray.parquet").to_pydict()
    ids = dict(zip(table["item_id"], table["semantic_id"], strict=True))
    moved = {int(colliding.item_ids[1])} if recode else set()
    for item, sid in zip(*before.to_pydict().values(), strict=True):
        assert (ids[item] != sid) if item in moved else (ids[item] == sid)


def test_collisions_and_fallback_samecli_export(ray_local, colliding, tiny_checkpoint, tmp_path):
    """String ids and a kept column; Ray reads the rows as a directory of Parquet files (hive partitions),
    the single-machine engine as one file: same summary, byte-identical export, columns kept in order."""
    n = len(colliding)
    ids = np.array([f"item-{i}" for i in colliding.item_ids], dtype=object)
    title = pa.array([f"title {i}" for i in range(n)])
    cat = Catalog(item_ids=ids, embeddings=colliding.embeddings, columns=pa.table({"title": title}))
    one = write_catalog(cat, tmp_path / "one.parquet")
    table = pq.read_table(one)
    for part, lo in enumerate(range(0, n, 250)):
        (tmp_path / "parts" / f"part={part}").mkdir(parents=True)
        pq.write_table(table.slice(lo, 250), tmp_path / "parts" / f"part={part}" / "data.parquet")
    common = ["--checkpoint", str(tiny_checkpoint), "--keep-columns", "title", "--batch-rows", "128"]
    local = _assign([*common, "--catalog", str(one), "--index", str(tmp_path / "local")])
    parts = ["--catalog", str(tmp_path / "parts"), "--engine", "ray", "--workers", "2"]
    ray = _assign([*common, *parts, "--index", str(tmp_path / "ray")])
    assert local["fallback_items"] > 0 and local["largest_bucket"] > 8  # the dedup digit has 8 values
    assert_same_run(local, ray)
    ray_bytes = cli_export(tmp_path / "ray", tmp_path / "ray.parquet")
    assert ray_bytes == cli_export(tmp_path / "local", tmp_path / "l.parquet")
    kept = pq.read_table(tmp_path / "ray" / "segments" / "seg-000001.parquet", columns=["item_id", "title"])
    assert kept.column("title").to_pylist() == title.to_pylist()


def test_bad_catalog_is_one_line_error(ray_local, tiny_checkpoint, tmp_path):
    emb = pa.array([[0.1] * 16, None, [0.2] * 16], pa.list_(pa.float32()))
    pq.write_table(pa.table({"item_id": [1, 2, 3], "embedding": emb}), tmp_path / "bad.parquet")
    args = ["assign", "--checkpoint", str(tiny_checkpoint), "--index", str(tmp_path / "idx"), "--engine", "ray"]
    result = CliRunner().invoke(main, [*args, "--catalog", str(tmp_path / "bad.parquet"), "--quiet"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: column 'embedding' has a null embedding at row 1")
    missing = CliRunner().invoke(main, [*args, "--catalog", str(tmp_path / "bad.parquet"), "--id-column", "sku"])
    assert missing.exit_code == 2 and "has no column 'sku'" in missing.output


def test_missing_extra_is_one_line_error(monkeypatch, tiny_checkpoint, tiny_catalog_file, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as without the extra
    args = ["assign", "--checkpoint", str(tiny_checkpoint), "--catalog", str(tiny_catalog_file)]
    result = CliRunner().invoke(main, [*args, "--index", str(tmp_path / "idx"), "--engine", "ray"])
    assert result.exit_code == 2
    assert result.output.startswith("error: --engine ray needs the optional extra: pip install 'semid[ray]'")
    assert result.output.count("\n") == 1
    assert not (tmp_path / "idx").exists()


def test_ray_flags_need_the_ray_engine(tiny_checkpoint, tiny_catalog_file, tmp_path):
    args = ["assign", "--checkpoint", str(tiny_checkpoint), "--catalog", str(tiny_catalog_file)]
    result = CliRunner().invoke(main, [*args, "--index", str(tmp_path / "idx"), "--workers", "2"])
    assert result.exit_code == 2 and "need --engine ray" in result.output


@pytest.mark.parametrize("first_half_streamed", [False, True])
def test_large_run_streams_its_vectors_as_the_local_engine(
    ray_local, colliding, tiny_checkpoint, tmp_path, monkeypatch, first_half_streamed
):
    """A run above the vector-file threshold (lowered here; 65,536 items by default): the Ray engine writes
    a segment vector file like the single-machine engine (several chunks, onto an index that already holds
    items written either way), the same export byte for byte, same vectors, and `semid check` passes."""
    from semid.service import assign as assign_module
    from semid.service.assign import assign_catalog
    from semid.service.assign_ray import assign_catalog_ray
    from semid.service.index.check import check_index
    from semid.service.index.handle import SemanticIdIndex

    monkeypatch.setattr(assign_module, "VECTOR_CHUNK_ROWS", 100)
    half = len(colliding) // 2
    first = write_catalog(
        Catalog(item_ids=colliding.item_ids[:half], embeddings=colliding.embeddings[:half]), tmp_path / "first.parquet"
    )
    full = write_catalog(colliding, tmp_path / "full.parquet")
    kw = {"checkpoint": tiny_checkpoint, "batch_rows": 128}
    first_rows = 1 if first_half_streamed else 10**9
    for name in ("local", "ray"):
        assign_catalog(catalog=first, index_dir=tmp_path / name, vector_file_min_rows=first_rows, **kw)
    assign_catalog(catalog=full, index_dir=tmp_path / "local", vector_file_min_rows=1, **kw)
    assign_catalog_ray(catalog=full, index_dir=tmp_path / "ray", vector_file_min_rows=1, workers=2, **kw)
    ray_bytes = cli_export(tmp_path / "ray", tmp_path / "ray.parquet")
    assert ray_bytes == cli_export(tmp_path / "local", tmp_path / "l.parquet")
    for name in ("local", "ray"):
        files = sorted(p.name for p in (tmp_path / name / "segments").glob("*.vectors"))
        assert files == (["seg-000001.vectors"] if first_half_streamed else []) + ["seg-000002.vectors"]
        assert check_index(tmp_path / name).ok
    ray_file = (tmp_path / "ray" / "segments" / "seg-000002.vectors").read_bytes()
    assert ray_file == (tmp_path / "local" / "segments" / "seg-000002.vectors").read_bytes()
    local, ray = SemanticIdIndex.open(tmp_path / "local"), SemanticIdIndex.open(tmp_path / "ray")
    assert len(ray) == len(colliding)
    probe = np.asarray(local.snapshot.state.semantic_ids[:5])
    assert np.array_equal(np.asarray(ray.snapshot.state.semantic_ids[:5]), probe)
