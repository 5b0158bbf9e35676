"""Shared fixtures: tiny seeded catalogs and checkpoints, and the path to the shared data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from semid.model.config import SemidConfig
from semid.model.data.catalog import Catalog
from semid.model.data.synthetic import synthetic_catalog, write_catalog

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
MOVIELENS = SHARED_DATA / "movielens-small" / "items.parquet"


def tiny_config(tokenizer: str = "rqvae", **train) -> SemidConfig:
    model = {
        "tokenizer": tokenizer,
        "input_dim": 16,
        "hidden_dims": [32],
        "latent_dim": 8,
        "levels": 3,
        "codebook_size": 8,
    }
    train_cfg = {
        "epochs": 8,
        "batch_size": 64,
        "lr": 5e-3,
        "kmeans_iters": 5,
        "ae_warmup_epochs": 1,
        "warmup_epochs": 1,
        "beta_warmup_epochs": 1,
        **train,
    }
    return SemidConfig.from_dict({"model": model, "train": train_cfg})


@pytest.fixture(scope="session")
def tiny_catalog():
    return synthetic_catalog(items=600, dim=16, categories=4, subcategories=3, seed=1)


@pytest.fixture(scope="session")
def tiny_catalog_file(tmp_path_factory, tiny_catalog) -> Path:
    return write_catalog(tiny_catalog, tmp_path_factory.mktemp("catalog") / "tiny.parquet")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_catalog) -> Path:
    from semid.model.training.job import train_tokenizer

    out = tmp_path_factory.mktemp("ckpt") / "rqvae"
    train_tokenizer(tiny_catalog.embeddings, tiny_config(), out)
    return out


@pytest.fixture
def movielens() -> Path:
    if not MOVIELENS.is_file():
        pytest.skip(f"shared MovieLens data not found at {MOVIELENS} (only present beside the repo in CI)")
    return MOVIELENS


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def colliding_catalog() -> Catalog:
    """600 items in 4 tight categories plus 3 groups of 20 exact duplicates, shuffled: big buckets (the dedup
    digit runs out) and so fallback items, for the assignment engines' equality tests."""
    cat = synthetic_catalog(items=600, dim=16, categories=4, subcategories=3, exact_duplicates=20, seed=1)
    dups = np.repeat(cat.embeddings[:3], 20, axis=0)
    ids = np.concatenate([cat.item_ids, np.arange(10_000, 10_060)])
    embeddings = np.concatenate([cat.embeddings, dups]).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(ids))
    return Catalog(item_ids=ids[order], embeddings=embeddings[order])


def cli_export(index: Path, out: Path) -> bytes:
    """`semid export` of an index, its bytes (the engines' tests compare them)."""
    from click.testing import CliRunner

    from semid.service.cli import main

    result = CliRunner().invoke(main, ["export", "--index", str(index), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out.read_bytes()


def assert_same_run(local: dict, other: dict) -> None:
    """Two `semid assign --json` summaries agree on everything but the time taken and the segment's name."""
    drop = ("seconds", "segment")
    assert {k: v for k, v in other.items() if k not in drop} == {k: v for k, v in local.items() if k not in drop}
