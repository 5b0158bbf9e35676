"""Shared fixtures: tiny seeded catalogs and checkpoints, and the path to the shared data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from semid.model.config import SemidConfig
from semid.model.synthetic import synthetic_catalog, write_catalog

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
    from semid.model.job import train_tokenizer

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
