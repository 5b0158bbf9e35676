"""README's "On your own catalog" block runs as written on a catalog that is not MovieLens, and the quickstart's
closing line names a command that works from where it was run."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT


def _own_catalog_block() -> list[str]:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- own-catalog -->\s*```bash\n(.*?)```\s*<!-- /own-catalog -->", text, re.S)
    assert match, "README.md has no block marked <!-- own-catalog --> ... <!-- /own-catalog -->"
    return [line.split("  #")[0].strip() for line in match.group(1).splitlines() if line and not line.startswith("#")]


def test_block_covers_the_whole_path():
    lines = _own_catalog_block()
    assert all(line.startswith(".venv/bin/semid ") for line in lines), lines
    verbs = [line.split()[1] for line in lines]
    assert {"train", "inspect", "assign", "evaluate", "export", "serve"} <= set(verbs)
    export = next(line for line in lines if line.split()[1] == "export")
    assert "--vocab" in export and "--trie" in export and "--special-tokens" in export
    assert "genres" not in " ".join(lines)  # a MovieLens column most catalogs lack


@pytest.mark.slow
def test_block_runs_on_a_catalog_that_is_not_movielens(tmp_path):
    rng = np.random.default_rng(3)
    n, dim = 1200, 24  # a books-like catalog: ids, titles and authors, no genres
    centres = rng.normal(size=(30, dim))
    emb = (centres[rng.integers(0, 30, n)] + 0.3 * rng.normal(size=(n, dim))).astype(np.float32)
    table = pa.table(
        {
            "item_id": np.arange(1000, 1000 + n),
            "title": [f"book {i}" for i in range(n)],
            "authors": [f"author {i % 97}" for i in range(n)],
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), dim),
        }
    )
    pq.write_table(table, tmp_path / "items.parquet")
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "semid").symlink_to(os.path.join(os.path.dirname(sys.executable), "semid"))
    env = {**os.environ, "SEMID_THREADS": "1"}
    for line in _own_catalog_block():
        if line.split()[1] == "serve":
            line += " --help"  # a server runs until stopped: check that its flags parse
        elif line.split()[1] == "train":
            line += " --epochs 6"  # the block's defaults, shortened for a test
        done = subprocess.run(["bash", "-c", line], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, f"{line}\n{done.stderr[-1500:]}"
    for name in ("semantic_ids.parquet", "vocab.json", "trie.npz", "evaluation/metrics.json", "ckpt-km/config.json"):
        assert (tmp_path / name).is_file(), name
    assert pq.read_table(tmp_path / "semantic_ids.parquet").num_rows == n


def test_quickstart_says_how_to_run_semid_again(tmp_path):
    code = (
        "import sys; from semid.service.cli import main; "
        f"sys.argv = [{str(tmp_path / '.venv/bin/semid')!r}, 'quickstart', '--items', '300', '--dim', '8', "
        f"'--epochs', '6', '--out', {str(tmp_path / 'qs')!r}]; main()"
    )
    env = {**os.environ, "SEMID_THREADS": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-1500:]
    assert "done. Serve it with: .venv/bin/semid serve --index" in done.stdout
