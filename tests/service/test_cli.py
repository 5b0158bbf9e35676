"""The `semid` command line: train -> inspect -> assign -> export -> check, and its one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from semid.model.data.catalog import Catalog
from semid.model.data.synthetic import synthetic_catalog, write_catalog
from semid.model.training.checkpoint import load_checkpoint
from semid.service.cli import main
from tests.conftest import tiny_config

# the installed console script (the one beside this interpreter first), else the module: no hard-coded venv path
_SCRIPT = shutil.which("semid", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
SEMID = [_SCRIPT] if _SCRIPT else [sys.executable, "-m", "semid.service.cli"]
WIDTH = 4  # tiny_config: 3 levels + the dedup digit


def cli_config():
    """The tiny config with 16 codes per level: room for the 900 items the larger catalog brings."""
    return tiny_config(seed=1).with_overrides("model", codebook_size=16)


def run(*args: str):
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"semid {' '.join(map(str, args))} raised {result.exception!r}\n{result.output}")
    return result


def ok(*args: str):
    result = run(*args)
    assert result.exit_code == 0, f"semid {' '.join(map(str, args))} -> {result.exit_code}\n{result.output}"
    return result


def assert_one_line_error(result) -> str:
    assert result.exit_code != 0, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def assign(checkpoint: Path, catalog: Path, index: Path, *extra: str):
    return ok(
        "assign",
        "--checkpoint",
        checkpoint,
        "--catalog",
        catalog,
        "--index",
        index,
        "--keep-columns",
        "title,category",
        "--quiet",
        *extra,
    )


def export(index: Path, out: Path) -> list[dict]:
    ok("export", "--index", index, "--out", out)
    return pq.read_table(out).to_pylist()


# --- fixtures ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "tiny.json"
    path.write_text(json.dumps(cli_config().to_dict()))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_catalog_file, config_file):
    """A checkpoint written by `semid train` (seed 1, so it differs from conftest's tiny_checkpoint)."""
    out = tmp_path_factory.mktemp("cli") / "ckpt"
    result = ok("train", "--catalog", tiny_catalog_file, "--out", out, "--config", config_file, "--quiet")
    return out, result


@pytest.fixture
def index(tmp_path, trained, tiny_catalog_file) -> Path:
    out = tmp_path / "index"
    assign(trained[0], tiny_catalog_file, out)
    return out


@pytest.fixture(scope="module")
def larger_catalog_file(tmp_path_factory, tiny_catalog) -> Path:
    """The tiny catalog's 600 items first, then 300 new ones."""
    extra = synthetic_catalog(items=300, dim=16, categories=4, subcategories=3, seed=9)
    big = Catalog(
        item_ids=np.concatenate([tiny_catalog.item_ids, extra.item_ids + 10_000]),
        embeddings=np.vstack([tiny_catalog.embeddings, extra.embeddings]),
        columns=pa.concat_tables([tiny_catalog.columns, extra.columns]),
    )
    return write_catalog(big, tmp_path_factory.mktemp("cli") / "larger.parquet")


# --- train / inspect -----------------------------------------------------------------


def test_train_writes_a_checkpoint_and_reports(trained):
    out, result = trained
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert "done in" in result.stdout and "recon_mse" in result.stdout
    assert f"fingerprint {load_checkpoint(out).fingerprint}" in result.stdout


def test_inspect_prints_config_and_final_metrics(trained):
    out, _ = trained
    text = ok("inspect", out).stdout
    assert "[model]" in text and "[train]" in text and "[final metrics]" in text
    assert "codebook_size = 16" in text and "levels = 3" in text and "seed = 1" in text
    assert "recon_mse = " in text and "perplexity_l1 = " in text
    data = json.loads(ok("inspect", out, "--json").stdout)
    assert data["config"] == json.loads(json.dumps(cli_config().to_dict()))
    assert data["fingerprint"] == load_checkpoint(out).fingerprint
    assert data["final"]["recon_mse"] >= 0 and data["items"] == 600


# --- assign / export -----------------------------------------------------------------


def test_assign_prints_the_summary_and_creates_the_index(tmp_path, trained, tiny_catalog_file):
    out = tmp_path / "index"
    text = assign(trained[0], tiny_catalog_file, out).stdout
    assert "items in catalog        600" in text
    assert "new items assigned      600" in text
    assert "already in the index    0" in text
    assert "segment written         seg-" in text
    assert (out / "manifest.json").is_file()
    again = json.loads(assign(trained[0], tiny_catalog_file, out, "--json").stdout)
    assert again["new_items"] == 0 and again["existing_items"] == 600 and again["segment"] is None


def test_second_assign_keeps_every_existing_id(index, tmp_path, trained, larger_catalog_file):
    before = {r["item_id"]: r["semantic_id"] for r in export(index, tmp_path / "before.parquet")}
    summary = json.loads(assign(trained[0], larger_catalog_file, index, "--json").stdout)
    assert summary["new_items"] == 300 and summary["existing_items"] == 600 and summary["changed_items"] == 0
    assert summary["index_items"] == 900
    after = {r["item_id"]: r["semantic_id"] for r in export(index, tmp_path / "after.parquet")}
    assert len(after) == 900
    assert {k: after[k] for k in before} == before
    assert len({tuple(s) for s in after.values()}) == 900


def test_changed_embedding_is_reported_and_keeps_its_id(index, tmp_path, trained, tiny_catalog):
    before = {r["item_id"]: r["semantic_id"] for r in export(index, tmp_path / "before.parquet")}
    moved = Catalog(
        item_ids=tiny_catalog.item_ids.copy(), embeddings=tiny_catalog.embeddings.copy(), columns=tiny_catalog.columns
    )
    moved.embeddings[4] = -moved.embeddings[4]  # item 5
    changed_file = write_catalog(moved, tmp_path / "changed.parquet")
    text = assign(trained[0], changed_file, index).stdout
    assert "embedding changed       1 (ids: 5;" in text
    summary = json.loads(assign(trained[0], changed_file, index, "--json").stdout)
    assert summary["changed_items"] == 1 and summary["changed_ids"] == [5] and summary["new_items"] == 0
    after = {r["item_id"]: r["semantic_id"] for r in export(index, tmp_path / "after.parquet")}
    assert after == before


def test_recode_changed_moves_changed_items_and_reserves_their_old_ids(index, tmp_path, trained, tiny_catalog):
    before = {r["item_id"]: r["semantic_id"] for r in export(index, tmp_path / "before.parquet")}
    moved = Catalog(
        item_ids=tiny_catalog.item_ids.copy(), embeddings=tiny_catalog.embeddings.copy(), columns=tiny_catalog.columns
    )
    moved.embeddings[4] = -moved.embeddings[4]  # item 5: far away, a new base code
    moved.embeddings[9] = moved.embeddings[9] * (1 + 1e-5)  # item 10: changed bytes, same base code
    changed_file = write_catalog(moved, tmp_path / "changed.parquet")
    text = assign(trained[0], changed_file, index, "--recode-changed").stdout
    assert "embedding changed       2 (ids: 5, 10; re-coded)" in text
    assert "re-coded                2 (1 got a new ID, their old one reserved; 1 kept theirs" in text
    after = {r["item_id"]: r["semantic_id"] for r in export(index, tmp_path / "after.parquet")}
    assert len(after) == len(before)
    assert after[10] == before[10] and after[5] != before[5]
    assert {k: v for k, v in after.items() if k != 5} == {k: v for k, v in before.items() if k != 5}
    # the old id of item 5 is not served, and not handed to a newcomer
    ok("check", "--index", index)
    # evaluate sees one row per item (the current ones) and matches them with the new embeddings
    ok("evaluate", "--index", index, "--catalog", changed_file, "--out", tmp_path / "eval", "--sample", 50)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["items"] == len(before) and metrics["unique_full_ids"] == 1.0
    assert metrics["catalog_match"]["embedding_changed"] == 0
    # a rerun finds nothing changed: the superseding row carries the new embedding's hash
    summary = json.loads(assign(trained[0], changed_file, index, "--recode-changed", "--json").stdout)
    assert summary["changed_items"] == 0 and summary["recoded_items"] == 0 and summary["segment"] is None
    newcomer = Catalog(
        item_ids=np.array([77_777]),
        embeddings=tiny_catalog.embeddings[4:5].copy(),
        columns=tiny_catalog.columns.slice(4, 1),
    )
    assign(trained[0], write_catalog(newcomer, tmp_path / "newcomer.parquet"), index)
    final = {r["item_id"]: r["semantic_id"] for r in export(index, tmp_path / "final.parquet")}
    assert final[77_777] != before[5]  # same embedding as item 5 had, but its old id stays reserved
    assert final[77_777][:3] == before[5][:3]  # ... so it lands next to it in the same bucket


def test_export_writes_unique_ids(index, tmp_path):
    out = tmp_path / "deep" / "ids.parquet"
    result = ok("export", "--index", index, "--out", out)
    assert "wrote 600 items" in result.stdout
    table = pq.read_table(out)
    assert table.column_names == ["item_id", "semantic_id", "token"]
    assert pa.types.is_list(table.schema.field("semantic_id").type)
    assert pa.types.is_integer(table.schema.field("semantic_id").type.value_type)
    rows = table.to_pylist()
    assert len(rows) == 600 and len({r["item_id"] for r in rows}) == 600
    assert all(len(r["semantic_id"]) == WIDTH for r in rows)
    assert len({tuple(r["semantic_id"]) for r in rows}) == 600
    assert len({r["token"] for r in rows}) == 600
    first = rows[0]
    assert first["token"] == "".join(f"<{'abcd'[i]}_{c}>" for i, c in enumerate(first["semantic_id"]))


# --- check ---------------------------------------------------------------------------


def test_check_ok_then_fails_without_a_segment(index):
    result = ok("check", "--index", index)
    assert result.stdout.strip().splitlines()[-1] == "ok"
    assert "600 items in 1 segments" in result.stdout
    (segment,) = sorted((index / "segments").glob("seg-*.parquet"))
    segment.unlink()
    broken = run("check", "--index", index)
    assert broken.exit_code != 0
    assert "problem:" in broken.stdout and segment.name in broken.stdout
    assert "ok" not in broken.stdout.splitlines()
    # the installed console script gives the real process exit code
    done = subprocess.run([*SEMID, "check", "--index", str(index)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "problem:" in done.stdout and "Traceback" not in done.stderr


def test_installed_script_one_line_error(tmp_path):
    done = subprocess.run(
        [*SEMID, "export", "--index", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.parquet")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: ") and len(done.stderr.strip().splitlines()) == 1


# --- errors --------------------------------------------------------------------------


def test_assign_with_another_checkpoint_names_both_fingerprints(index, tiny_checkpoint, trained, tiny_catalog_file):
    line = assert_one_line_error(
        run(
            "assign",
            "--checkpoint",
            tiny_checkpoint,
            "--catalog",
            tiny_catalog_file,
            "--index",
            index,
            "--keep-columns",
            "title,category",
            "--quiet",
        )
    )
    mine, other = load_checkpoint(trained[0]).fingerprint, load_checkpoint(tiny_checkpoint).fingerprint
    assert mine != other
    assert mine in line and other in line


@pytest.fixture(scope="module")
def nan_catalog_file(tmp_path_factory, tiny_catalog) -> Path:
    bad = Catalog(
        item_ids=tiny_catalog.item_ids.copy(), embeddings=tiny_catalog.embeddings.copy(), columns=tiny_catalog.columns
    )
    bad.embeddings[7, 3] = np.nan
    return write_catalog(bad, tmp_path_factory.mktemp("cli") / "nan.parquet")


@pytest.mark.parametrize(
    "case",
    [
        "train_missing_catalog",
        "train_missing_out",
        "train_bad_lr_text",
        "train_bad_lr_range",
        "train_nan_catalog",
        "train_missing_config",
        "assign_missing_catalog",
        "assign_missing_index_option",
        "assign_nan_catalog",
        "inspect_missing_checkpoint",
        "export_missing_index",
        "unknown_command",
        "unknown_option",
    ],
)
def test_bad_inputs_give_one_line_errors(case, tmp_path, trained, tiny_catalog_file, nan_catalog_file):
    ckpt = trained[0]
    out = tmp_path / "out"
    args = {
        "train_missing_catalog": ["train", "--catalog", tmp_path / "missing.parquet", "--out", out],
        "train_missing_out": ["train", "--catalog", tiny_catalog_file],
        "train_bad_lr_text": ["train", "--catalog", tiny_catalog_file, "--out", out, "--lr", "fast"],
        "train_bad_lr_range": ["train", "--catalog", tiny_catalog_file, "--out", out, "--lr", "-1"],
        "train_nan_catalog": ["train", "--catalog", nan_catalog_file, "--out", out, "--quiet"],
        "train_missing_config": ["train", "--catalog", tiny_catalog_file, "--out", out, "--config", tmp_path / "x"],
        "assign_missing_catalog": [
            "assign",
            "--checkpoint",
            ckpt,
            "--catalog",
            tmp_path / "missing.parquet",
            "--index",
            out,
        ],
        "assign_missing_index_option": ["assign", "--checkpoint", ckpt, "--catalog", tiny_catalog_file],
        "assign_nan_catalog": [
            "assign",
            "--checkpoint",
            ckpt,
            "--catalog",
            nan_catalog_file,
            "--index",
            out,
            "--quiet",
        ],
        "inspect_missing_checkpoint": ["inspect", tmp_path / "missing"],
        "export_missing_index": ["export", "--index", tmp_path / "missing", "--out", tmp_path / "x.parquet"],
        "unknown_command": ["bogus"],
        "unknown_option": ["train", "--bogus"],
    }[case]
    line = assert_one_line_error(run(*args))
    if "lr" in case:
        assert "lr" in line
    if "nan" in case:
        assert "NaN" in line or "nan" in line.lower()
    if case.startswith(("train", "assign")) and "missing_index" not in case:
        assert not (out / "manifest.json").exists() and not (out / "model.safetensors").exists()


@pytest.mark.parametrize("command", ["train", "inspect", "synth", "assign", "export", "check", "serve"])
def test_every_command_has_help(command):
    result = ok(command, "--help")
    assert result.stdout.startswith(f"Usage: main {command} [OPTIONS]"), result.stdout
