"""Fixtures for crash, concurrency and load tests: a tiny checkpoint and catalogs written to disk, and a real
`semid serve` on loopback for the hostile-request tests (each module names its settings in ``SERVER_ENV``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from semid.model.data.synthetic import synthetic_catalog, write_catalog
from tests.conftest import ROOT
from tests.servers import Server

SEMID = [sys.executable, "-m", "semid.service.cli"]


def run_semid(*args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*SEMID, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kw)


def assign_args(checkpoint: Path, catalog: Path, index: Path, *extra: str) -> list[str]:
    return [
        "assign",
        "--checkpoint",
        str(checkpoint),
        "--catalog",
        str(catalog),
        "--index",
        str(index),
        "--quiet",
        *extra,
    ]


def start_assign(checkpoint: Path, catalog: Path, index: Path, *extra: str, quiet_output: bool = False):
    """`semid assign` as a background process (output captured, or discarded with quiet_output)."""
    out = subprocess.DEVNULL if quiet_output else subprocess.PIPE
    return subprocess.Popen(
        [*SEMID, *assign_args(checkpoint, catalog, index, *extra)], cwd=ROOT, stdout=out, stderr=out, text=True
    )


@pytest.fixture(scope="session")
def catalogs(tmp_path_factory) -> dict[str, Path]:
    """`small` (first 4,000 items of `large`), `large` (40,000 items) and a disjoint `other`."""
    base = tmp_path_factory.mktemp("catalogs")
    large = synthetic_catalog(items=40_000, dim=16, categories=6, subcategories=4, seed=3)
    small = synthetic_catalog(items=4_000, dim=16, categories=6, subcategories=4, seed=3)
    other = synthetic_catalog(items=3_000, dim=16, categories=6, subcategories=4, seed=4)
    other.item_ids = other.item_ids + 1_000_000
    return {
        "large": write_catalog(large, base / "large.parquet"),
        "small": write_catalog(small, base / "small.parquet"),
        "other": write_catalog(other, base / "other.parquet"),
    }


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, catalogs) -> Path:
    """A small RQ-VAE with room for every test item (3 x 64 codes, dedup 64)."""
    from semid.model.config import SemidConfig
    from semid.model.data.catalog import read_catalog
    from semid.model.training.job import train_tokenizer

    cfg = SemidConfig.from_dict(
        {
            "model": {"input_dim": 16, "hidden_dims": [32], "latent_dim": 8, "codebook_size": 64},
            "train": {
                "epochs": 3,
                "batch_size": 512,
                "ae_warmup_epochs": 1,
                "warmup_epochs": 1,
                "beta_warmup_epochs": 1,
                "kmeans_iters": 5,
            },
        }
    )
    out = tmp_path_factory.mktemp("ckpt") / "rqvae64"
    train_tokenizer(read_catalog(catalogs["small"]).embeddings, cfg, out)
    return out


@pytest.fixture(scope="session")
def small_index(tmp_path_factory, checkpoint, catalogs) -> Path:
    """The small catalog assigned by `semid assign` (a subprocess, as users run it); tests copy it before writing."""
    index = tmp_path_factory.mktemp("small_index") / "base"
    done = run_semid(*assign_args(checkpoint, catalogs["small"], index))
    assert done.returncode == 0, done.stderr
    return index


@pytest.fixture(scope="session")
def string_ids_index(tmp_path_factory, checkpoint, catalogs) -> Path:
    """The small catalog under string item ids (``item-<n>``, so the NUL-collision cases are the real ones), its
    title column kept, assigned once; a server gets its own copy (tests register items in it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from semid.service.assign import assign_catalog

    base = tmp_path_factory.mktemp("string_ids")
    table = pq.read_table(catalogs["small"])
    ids = pa.array([f"item-{i}" for i in table.column("item_id").to_pylist()])
    catalog = base / "str_ids.parquet"
    pq.write_table(table.set_column(0, "item_id", ids), catalog)
    index = base / "idx"
    assign_catalog(checkpoint=checkpoint, catalog=catalog, index_dir=index, keep_columns=["title"])
    return index


@pytest.fixture(scope="module")
def server(request, tmp_path_factory, string_ids_index) -> Iterator[Server]:
    """`semid serve` (one worker thread) on a copy of ``string_ids_index``, with the requesting test module's
    ``SERVER_ENV`` settings; ``server.index`` is the copy it serves."""
    base = tmp_path_factory.mktemp("server")
    index = base / "idx"
    shutil.copytree(string_ids_index, index)
    srv = Server(index, base / "server.log", threads=1)
    srv.env.update(request.module.SERVER_ENV)
    srv.index = index
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def client(server) -> Iterator[httpx.Client]:
    """A client of ``server``; after each test the server process is alive and still answers /healthz."""
    with httpx.Client(base_url=server.base, timeout=120.0) as c:
        yield c
    assert server.proc.poll() is None, server.log_tail()
    with httpx.Client(base_url=server.base, timeout=10.0) as c:
        assert c.get("/healthz").status_code == 200
