"""A newcomer's first hour (issue 26): errors on their own line that name the fix, short runs that just work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner

from semid.model.data.synthetic import synthetic_catalog, write_catalog
from semid.service.cli import main

SEMID = [sys.executable, "-m", "semid.service.cli"]


def _run(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*SEMID, *map(str, args)],
        capture_output=True,
        text=True,
        env={"SEMID_THREADS": "1", "PATH": "/usr/bin:/bin"},
        timeout=600,
    )


def test_missing_keep_column_is_reported_before_any_progress_bar(tmp_path, tiny_checkpoint, tiny_catalog_file):
    done = _run(
        "assign",
        "--checkpoint",
        tiny_checkpoint,
        "--catalog",
        tiny_catalog_file,
        "--index",
        tmp_path / "idx",
        "--keep-columns",
        "genres",
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "genres" in done.stderr, done.stderr
    assert "assign:" not in done.stderr  # no bar drawn for input that was never going to work


def test_error_mid_way_starts_on_its_own_line(tmp_path, tiny_checkpoint, tiny_catalog_file):
    table = pq.read_table(tiny_catalog_file)
    emb = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    emb[-1, 0] = np.nan  # found only when the last batch is read
    bad = table.set_column(
        table.schema.get_field_index("embedding"),
        "embedding",
        pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), emb.shape[1]),
    )
    pq.write_table(bad, tmp_path / "nan.parquet")
    done = _run(
        "assign",
        "--checkpoint",
        tiny_checkpoint,
        "--catalog",
        tmp_path / "nan.parquet",
        "--index",
        tmp_path / "idx",
        "--batch-rows",
        "16",
    )
    assert done.returncode == 2
    assert any(line.startswith("error: ") and "NaN" in line for line in done.stderr.splitlines()), done.stderr


def test_csv_catalog_says_which_formats_are_accepted(tmp_path):
    (tmp_path / "items.csv").write_text("item_id,embedding\n1,0.5\n")
    result = CliRunner().invoke(main, ["train", "--catalog", str(tmp_path / "items.csv"), "--out", str(tmp_path / "c")])
    assert result.exit_code == 2
    assert "Parquet" in result.output and ".npy" in result.output and "CSV" in result.output


def test_missing_id_column_names_the_flag(tmp_path):
    path = write_catalog(synthetic_catalog(items=50, dim=8, seed=0), tmp_path / "c.parquet")
    names = ["book_id" if n == "item_id" else n for n in pq.read_schema(path).names]
    table = pq.read_table(path).rename_columns(names)
    pq.write_table(table, tmp_path / "books.parquet")
    args = ["train", "--catalog", str(tmp_path / "books.parquet"), "--out", str(tmp_path / "x")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "--id-column" in result.output and "book_id" in result.output


def test_inspect_on_an_index_points_at_its_checkpoint(tmp_path):
    idx = tmp_path / "idx"
    (idx / "checkpoint").mkdir(parents=True)
    (idx / "manifest.json").write_text("{}")
    (idx / "checkpoint" / "config.json").write_text("{}")
    result = CliRunner().invoke(main, ["inspect", str(idx)])
    assert result.exit_code == 2 and str(Path(idx) / "checkpoint") in result.output


def test_short_run_lowers_the_warm_ups_it_cannot_fit(tmp_path):
    path = write_catalog(synthetic_catalog(items=300, dim=8, seed=0), tmp_path / "c.parquet")
    done = _run(
        "train", "--catalog", path, "--out", tmp_path / "ck", "--epochs", "2", "--codebook-size", "8", "--quiet"
    )
    assert done.returncode == 0, done.stderr
    assert "ae_warmup_epochs lowered from 3 to 1" in done.stderr and "--ae-warmup-epochs" in done.stderr
    assert "quantized training" in done.stderr  # --quiet still says what phase it is in


def test_explicit_warm_up_that_does_not_fit_names_its_flag(tmp_path):
    result = CliRunner().invoke(
        main,
        ["train", "--out", str(tmp_path / "x"), "--epochs", "2", "--ae-warmup-epochs", "3", "--synthetic-items", "100"],
    )
    assert result.exit_code == 2 and "--ae-warmup-epochs" in result.output
