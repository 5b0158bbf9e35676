"""`semid evaluate --holdout-share S`: how good are the IDs of items the tokenizer never saw?

A seeded share of the catalog is held out, a tokenizer is trained on the rest (the `semid train`
defaults, or a config), every item is encoded, and every figure is reported separately for the
training items and the held-out ones. Neighbours are always searched in the whole catalog: a
held-out item's neighbour share asks whether it lands with its nearest items, trained or not.

The split and the per-subset figures are plain functions so the benchmarks
(`benchmarks/compare_tokenizers.py --holdout-share`) score every tokenizer on the same split.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from semid.model.config import SemidConfig
from semid.model.data.catalog import CatalogError, read_catalog
from semid.model.data.files import write_text_atomically
from semid.model.training.checkpoint import load_checkpoint
from semid.model.training.job import train_tokenizer
from semid.model.training.metrics import flat_levels
from semid.service.evaluation.code_health import prefix_shares, search_neighbours
from semid.service.evaluation.figures import collision_figures, level_figures, reconstruction_figures

log = logging.getLogger(__name__)

SUBSETS = ("train", "heldout")
CHECKPOINT_DIR = "checkpoint"


def split_rows(n: int, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, held-out rows), sorted and disjoint, covering 0..n-1; ``round(share * n)`` rows
    are held out (at least 1, and at least 2 stay for training). Depends only on (n, share, seed)."""
    if not 0.0 < share < 1.0:
        raise ValueError(f"holdout share is {share}; expected a value in (0, 1)")
    if n < 3:
        raise ValueError(f"a held-out split needs at least 3 items, got {n}")
    held = min(max(1, round(share * n)), n - 2)
    perm = np.random.default_rng([seed, 14]).permutation(n)
    return np.sort(perm[held:]), np.sort(perm[:held])


def subset_figures(
    embeddings: np.ndarray,
    codes: np.ndarray,
    rows: np.ndarray,
    codebook_sizes: tuple[int, ...],
    *,
    k: int = 10,
    sample: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """The figures of the items ``rows`` of a whole catalog's codes [N, L].

    Collisions and level figures are over the subset's codes alone (the scorer's definitions);
    ``collides_with_catalog`` is the share of the subset's items whose base code any other item of the
    whole catalog also holds. Neighbour shares: for up to ``sample`` seeded items of the subset, the
    share of their k nearest items in the whole catalog (cosine, themselves excluded) sharing the first
    d codes; random pairs are drawn from the whole catalog too.
    """
    rows = np.asarray(rows, dtype=np.int64)
    n = codes.shape[0]
    if rows.shape[0] == 0:
        raise ValueError("subset figures need at least one item")
    k = min(k, n - 1)
    sub = codes[rows]
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    shared = counts[inverse.reshape(-1)][rows] > 1
    rng = np.random.default_rng([seed, 4])
    queries = np.sort(rng.choice(rows, size=min(sample, rows.shape[0]), replace=False))
    found = search_neighbours(embeddings, queries, k + 1)
    nn = np.stack([hits[hits != q][:k] for q, hits in zip(queries, found, strict=True)])
    rnd = rng.integers(0, n - 1, size=(queries.shape[0], k))
    rnd += rnd >= queries[:, None]  # random *other* items
    collisions = collision_figures(sub)
    levels = level_figures(sub, codebook_sizes)
    shares = prefix_shares(codes, queries, nn, rnd)
    summary: dict[str, Any] = {
        "items": int(rows.shape[0]),
        "base_collision_rate": collisions["collision_rate"],
        "collides_with_catalog": round(float(shared.mean()), 5),
        "largest_bucket": collisions["largest_bucket"],
    }
    summary.update(flat_levels(levels, ("utilisation", "perplexity", "dead_codes")))
    summary.update({key: value for key, value in shares.items() if not key.startswith("random_")})
    return {
        "summary": summary,
        "collisions": collisions,
        "levels": levels,
        "neighbours": {**shares, "k": k, "sampled_items": int(queries.shape[0])},
    }


def evaluate_holdout(
    catalog_path: str | Path,
    out_dir: str | Path,
    *,
    share: float,
    seed: int = 0,
    config: SemidConfig | None = None,
    k: int = 10,
    sample: int = 2000,
    id_column: str = "item_id",
    embedding_column: str = "embedding",
    ids_path: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Split, train on the training part into ``out_dir/checkpoint``, encode every item, and write
    ``out_dir/metrics.json`` with the figures of each subset; returns the metrics."""
    catalog_path, out = Path(catalog_path), Path(out_dir)
    if not catalog_path.is_file():
        raise CatalogError(f"catalog file {catalog_path} does not exist")
    catalog = read_catalog(catalog_path, id_column=id_column, embedding_column=embedding_column, ids_path=ids_path)
    emb = np.ascontiguousarray(catalog.embeddings, dtype=np.float32)
    train_rows, held_rows = split_rows(emb.shape[0], share, seed)
    cfg = config or SemidConfig()
    log.info("holdout: training on %d items, holding out %d", train_rows.shape[0], held_rows.shape[0])
    start = time.perf_counter()
    fingerprint, _ = train_tokenizer(emb[train_rows], cfg, out / CHECKPOINT_DIR, progress=progress)
    fit_s = time.perf_counter() - start
    checkpoint = load_checkpoint(out / CHECKPOINT_DIR)
    tok = checkpoint.tokenizer.eval()
    with torch.inference_mode():
        x = torch.from_numpy(emb)
        codes = torch.cat([tok.encode(x[s : s + 16384]).codes for s in range(0, emb.shape[0], 16384)]).numpy()
        target = tok.normalizer(x).numpy()
        recon = torch.cat([tok.decode(torch.from_numpy(codes[s : s + 16384])) for s in range(0, len(codes), 16384)])
    sizes = (checkpoint.config.model.codebook_size,) * checkpoint.config.model.levels
    metrics: dict[str, Any] = {
        "catalog": str(catalog_path),
        "holdout": {
            "share": share,
            "seed": seed,
            "train_items": int(train_rows.shape[0]),
            "heldout_items": int(held_rows.shape[0]),
        },
        "checkpoint": str(out / CHECKPOINT_DIR),
        "checkpoint_fingerprint": fingerprint,
        "config": checkpoint.config.to_dict(),
        "fit_seconds": round(fit_s, 2),
        "options": {"k": k, "sample": sample, "seed": seed},
        "all": {"collisions": collision_figures(codes)},
    }
    for name, rows in zip(SUBSETS, (train_rows, held_rows), strict=True):
        figures = subset_figures(emb, codes, rows, sizes, k=k, sample=sample, seed=seed)
        rec = reconstruction_figures(target[rows], recon.numpy()[rows])
        figures["reconstruction"] = rec
        figures["summary"]["recon_mse"] = round(rec["recon_mse"], 4)
        metrics[name] = figures
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomically(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics
