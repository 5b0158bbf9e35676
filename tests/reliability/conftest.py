"""Fixtures for crash, concurrency and load tests: a tiny checkpoint and catalogs written to disk."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from semid.model.data.synthetic import synthetic_catalog, write_catalog
from tests.conftest import ROOT

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
