"""`semid migrate` and `semid align` (semid.service.migration): the old -> new map of two indexes built
from checkpoints trained with different seeds, its report, and stable retraining end to end."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from semid.model.data.catalog import Catalog, read_catalog
from semid.model.data.synthetic import write_catalog
from semid.model.training.checkpoint import load_checkpoint
from semid.model.training.job import train_tokenizer
from semid.service.assign import assign_catalog
from semid.service.cli import main
from semid.service.index.handle import SemanticIdIndex
from semid.service.migration import IndexIds, align_checkpoint, migration_map, write_migration
from tests.conftest import tiny_config

OLD_ITEMS = slice(0, 500)  # the old index holds items 0..499, the new one 100..599
NEW_ITEMS = slice(100, 600)


def _subset(catalog: Catalog, rows: slice) -> Catalog:
    return Catalog(item_ids=catalog.item_ids[rows], embeddings=catalog.embeddings[rows])


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_catalog, tiny_catalog_file):
    """Checkpoints trained with seeds 0 and 1; an old index (seed 0) and a new one (seed 1) over overlapping items."""
    root = tmp_path_factory.mktemp("migration")
    for seed in (0, 1):
        train_tokenizer(tiny_catalog.embeddings, tiny_config(seed=seed), root / f"seed{seed}")
    for name, seed, rows in (("old", 0, OLD_ITEMS), ("new", 1, NEW_ITEMS)):
        part = write_catalog(_subset(tiny_catalog, rows), root / f"{name}.parquet")
        assign_catalog(checkpoint=root / f"seed{seed}", catalog=part, index_dir=root / f"index-{name}")
    return root


def _items(index_dir) -> dict[int, dict]:
    """item id -> item dict, read through the public look-ups (independent of the migration code)."""
    snap = SemanticIdIndex.open(index_dir).snapshot
    ids = snap.state.item_ids[snap.state.order].tolist()
    return {item: snap.get_item(item) for item in ids}


def _expected_keeps(old: dict[int, dict], new: dict[int, dict]) -> dict[str, float]:
    both = sorted(set(old) & set(new))

    def share(test) -> float:
        return sum(1 for i in both if test(old[i], new[i])) / len(both)

    return {
        "level1": share(lambda a, b: a["semantic_id"][:1] == b["semantic_id"][:1]),
        "first2": share(lambda a, b: a["semantic_id"][:2] == b["semantic_id"][:2]),
        "base_code": share(lambda a, b: a["base_code"] == b["base_code"]),
        "full_id": share(lambda a, b: a["semantic_id"] == b["semantic_id"]),
    }


def test_map_covers_every_item_of_either_index(world, tiny_catalog):
    table, report = migration_map(IndexIds.open(world / "index-old"), IndexIds.open(world / "index-new"))
    old, new = _items(world / "index-old"), _items(world / "index-new")
    rows = table.to_pylist()
    assert len(rows) == 600 and len({r["item_id"] for r in rows}) == 600
    by_status = {s: {r["item_id"] for r in rows if r["status"] == s} for s in ("both", "only_old", "only_new")}
    ids = tiny_catalog.item_ids.tolist()
    assert by_status["both"] == set(ids[100:500])
    assert by_status["only_old"] == set(ids[:100]) and by_status["only_new"] == set(ids[500:])
    assert (report.in_both, report.only_old, report.only_new) == (400, 100, 100)
    for r in rows:
        item = r["item_id"]
        if item in old:
            assert r["old_semantic_id"] == old[item]["semantic_id"] and r["old_token"] == old[item]["token"]
        else:
            assert r["old_semantic_id"] is None and r["old_token"] is None
        if item in new:
            assert r["new_semantic_id"] == new[item]["semantic_id"] and r["new_token"] == new[item]["token"]
        else:
            assert r["new_semantic_id"] is None and r["new_token"] is None


def test_report_figures_match_an_independent_count(world):
    _, report = migration_map(IndexIds.open(world / "index-old"), IndexIds.open(world / "index-new"))
    expected = _expected_keeps(_items(world / "index-old"), _items(world / "index-new"))
    assert report.keeps == pytest.approx(expected)
    assert report.keeps["level1"] < 1.0  # two seeds: codes are named differently
    assert report.old["fingerprint"] == load_checkpoint(world / "seed0").fingerprint


def test_an_index_against_itself_keeps_everything(world):
    ids = IndexIds.open(world / "index-old")
    table, report = migration_map(ids, ids)
    assert (report.in_both, report.only_old, report.only_new) == (500, 0, 0)
    assert report.keeps == {"level1": 1.0, "first2": 1.0, "base_code": 1.0, "full_id": 1.0}
    assert table.column("old_semantic_id").to_pylist() == table.column("new_semantic_id").to_pylist()


def test_an_empty_new_index_leaves_every_item_only_old(world, tmp_path):
    old = IndexIds.open(world / "index-old")
    SemanticIdIndex.create(
        tmp_path / "empty", layout=old.layout, fingerprint="0" * 32, id_kind="int", vector_dim=old.snapshot.vector_dim
    )
    table, report = migration_map(old, IndexIds.open(tmp_path / "empty"))
    assert (report.in_both, report.only_old, report.only_new) == (0, 500, 0)
    assert set(report.keeps.values()) == {None}  # no item in both: no share to report
    assert table.column("new_semantic_id").null_count == 500 and table.column("old_semantic_id").null_count == 0
    assert "level-1 code kept n/a" in report.lines()[1]


def test_cli_writes_the_map_and_the_report(world, tmp_path):
    out, report_path = tmp_path / "map.parquet", tmp_path / "report.json"
    args = [
        "migrate",
        "--from",
        world / "index-old",
        "--to",
        world / "index-new",
        "--out",
        out,
        "--report",
        report_path,
    ]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert "400 items in both, 100 only in the old index, 100 only in the new" in result.output
    report = json.loads(report_path.read_text())
    expected = _expected_keeps(_items(world / "index-old"), _items(world / "index-new"))
    assert report["keeps"] == pytest.approx(expected)
    assert f"level-1 code kept {100 * expected['level1']:.1f}%" in result.output
    table = pq.read_table(out)
    assert table.num_rows == 600
    assert table.column_names == ["item_id", "status", "old_semantic_id", "new_semantic_id", "old_token", "new_token"]


def test_cli_migrate_from_a_missing_index_is_one_line(world, tmp_path):
    args = ["migrate", "--from", tmp_path / "nope", "--to", world / "index-new", "--out", tmp_path / "m.parquet"]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code != 0 and result.output.startswith("error: ") and "Traceback" not in result.output
    assert not (tmp_path / "m.parquet").exists()


def test_align_to_the_old_index_raises_agreement_and_the_map_shows_it(world, tiny_catalog_file, tmp_path):
    """Stable retraining end to end: align the seed-1 checkpoint to the old index, assign with it, migrate."""
    args = ["align", "--checkpoint", world / "seed1", "--to", world / "index-old"]
    args += ["--catalog", tiny_catalog_file, "--out", tmp_path / "aligned"]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    aligned = load_checkpoint(tmp_path / "aligned")
    assert aligned.fingerprint != load_checkpoint(world / "seed1").fingerprint
    assert f"fingerprint {aligned.fingerprint}" in result.output
    record = aligned.metrics["alignment"]
    assert record["items"] == 500  # the catalog items the old index holds
    assert record["agreement_after"][0] > record["agreement_before"][0]
    new_part = world / "new.parquet"
    assign_catalog(checkpoint=tmp_path / "aligned", catalog=new_part, index_dir=tmp_path / "index-aligned")
    unaligned = write_migration(world / "index-old", world / "index-new", tmp_path / "before.parquet")
    realigned = write_migration(world / "index-old", tmp_path / "index-aligned", tmp_path / "after.parquet")
    assert realigned.keeps["level1"] > unaligned.keeps["level1"]
    assert realigned.keeps["base_code"] >= unaligned.keeps["base_code"]
    assert realigned.keeps == pytest.approx(
        _expected_keeps(_items(world / "index-old"), _items(tmp_path / "index-aligned"))
    )


def test_align_to_a_checkpoint_matches_aligning_on_its_codes(world, tiny_catalog_file, tmp_path):
    summary = align_checkpoint(world / "seed1", world / "seed0", tiny_catalog_file, tmp_path / "aligned")
    assert summary.items == len(read_catalog(tiny_catalog_file))
    assert summary.after[0] > summary.before[0]
    assert all(a >= b for a, b in zip(summary.after, summary.before, strict=True))
    again = align_checkpoint(tmp_path / "aligned", world / "seed0", tiny_catalog_file, tmp_path / "twice")
    assert again.before == summary.after  # the aligned checkpoint encodes to the renamed codes
    assert again.after[0] == summary.after[0]  # level 1 was already optimal


def test_align_refuses_a_target_of_another_shape(world, tiny_catalog, tiny_catalog_file, tmp_path):
    cfg = tiny_config(seed=0).with_overrides("model", levels=2)
    train_tokenizer(tiny_catalog.embeddings, cfg, tmp_path / "two-levels")
    with pytest.raises(ValueError, match="levels"):
        align_checkpoint(world / "seed1", tmp_path / "two-levels", tiny_catalog_file, tmp_path / "aligned")
    assert not (tmp_path / "aligned").exists()
