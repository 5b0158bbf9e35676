"""Hostile files (issue 22, items 3-6): writers that never follow a planted symlink, and the trie, vocab and
index readers bounding what a crafted file may cost before it is refused."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from semid.model import files
from semid.model.synthetic import synthetic_catalog, write_catalog
from semid.service.cli import main

VICTIM_TEXT = b"precious: must never be overwritten\n"


@pytest.fixture(scope="module")
def index(tmp_path_factory, tiny_checkpoint, tiny_catalog_file) -> Path:
    from semid.service.assign import assign_catalog

    index_dir = tmp_path_factory.mktemp("hostile") / "index"
    assign_catalog(checkpoint=tiny_checkpoint, catalog=tiny_catalog_file, index_dir=index_dir)
    return index_dir


def _plant(directory: Path, name: str, tmp_path: Path) -> Path:
    """A symlink at ``directory/name`` to a victim file; returns the victim."""
    victim = tmp_path / f"victim-{name.strip('.')}"
    victim.write_bytes(VICTIM_TEXT)
    (directory / name).symlink_to(victim)
    return victim


def _invoke(*args: object) -> None:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output


# --- writers (item 5) ----------------------------------------------------------------------------------


def test_export_does_not_write_through_a_planted_temp_symlink(index, tmp_path):
    out = tmp_path / "out" / "ids.parquet"
    out.parent.mkdir()
    victim = _plant(out.parent, f".{out.name}.tmp", tmp_path)  # the fixed temp name semid 0.7.0 wrote to
    _invoke("export", "--index", index, "--out", out)
    assert victim.read_bytes() == VICTIM_TEXT
    assert pq.read_table(out).num_rows == 600


def test_migrate_does_not_write_through_a_planted_temp_symlink(index, tmp_path):
    out = tmp_path / "map.parquet"
    victim = _plant(tmp_path, f".{out.name}.tmp", tmp_path)
    _invoke("migrate", "--from", index, "--to", index, "--out", out)
    assert victim.read_bytes() == VICTIM_TEXT
    assert pq.read_table(out).num_rows == 600


def test_evaluate_does_not_write_through_planted_temp_symlinks(index, tiny_catalog_file, tmp_path):
    out = tmp_path / "eval"
    out.mkdir()
    victims = [_plant(out, f".{name}.tmp", tmp_path) for name in ("metrics.json", "report.html")]
    _invoke("evaluate", "--index", index, "--catalog", tiny_catalog_file, "--out", out)
    assert [v.read_bytes() for v in victims] == [VICTIM_TEXT, VICTIM_TEXT]
    assert "summary" in json.loads((out / "metrics.json").read_text())


def test_write_catalog_does_not_write_through_a_planted_temp_symlink(tmp_path):
    path = tmp_path / "catalog.parquet"
    victim = _plant(tmp_path, f"{path.name}.tmp", tmp_path)
    write_catalog(synthetic_catalog(items=50, dim=4, seed=0), path)
    assert victim.read_bytes() == VICTIM_TEXT
    assert pq.read_table(path).num_rows == 50


def test_a_symlink_at_the_final_name_is_replaced_not_followed(index, tmp_path):
    out = tmp_path / "ids.parquet"
    victim = _plant(tmp_path, out.name, tmp_path)
    _invoke("export", "--index", index, "--out", out)
    assert victim.read_bytes() == VICTIM_TEXT
    assert not out.is_symlink() and pq.read_table(out).num_rows == 600


def test_the_temporary_file_is_created_exclusively(tmp_path, monkeypatch):
    """Even a temporary name guessed in advance is never written through: the file is created with O_EXCL."""
    fixed = uuid.UUID(int=0)
    monkeypatch.setattr(files.uuid, "uuid4", lambda: fixed)
    final = tmp_path / "trie.npz"
    victim = _plant(tmp_path, files.temp_path_for(final).name, tmp_path)
    with pytest.raises(FileExistsError):
        files.write_bytes_atomically(final, b"data")
    assert victim.read_bytes() == VICTIM_TEXT
    assert not final.exists()
