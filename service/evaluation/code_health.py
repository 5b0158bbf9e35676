"""Quality figures of a set of semantic IDs, measured against the embeddings they came from.

The same definitions as the reference scorer the targets are stated in: base-code collision
rate, per-level utilisation and perplexity, and neighbour prefix share (for a seeded sample of
items, the share of their k nearest embedding neighbours, cosine and exact, that share the
first d codes) with its lift over random pairs.
"""

from __future__ import annotations

import faiss
import numpy as np

from semid.model.training.metrics import base_collision_rate, flat_levels, largest_bucket, level_health


def search_neighbours(embeddings: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """[len(queries), k + 1]: the k + 1 rows nearest each query row (exact cosine), best first.

    The first hit is normally the query itself; for an item with exact duplicates it may be one of them.
    """
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    _, found = index.search(x[queries], k + 1)
    return found.astype(np.int64, copy=False)


def nearest_neighbours(embeddings: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """The k nearest neighbours of the query rows as the reference scorer takes them: the first hit dropped.

    For an item with exact duplicates the dropped hit may be a duplicate, and the item itself then stays
    in its own list (sharing every code with itself); the scorer counts it so, and so do we.
    """
    return search_neighbours(embeddings, queries, k)[:, 1:]


def other_neighbours(found: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """From ``search_neighbours``' rows: each query's k nearest rows other than itself."""
    out = np.empty((found.shape[0], k), dtype=np.int64)
    for row, (q, hits) in enumerate(zip(queries, found, strict=True)):
        others = hits[hits != q][:k]
        out[row, : len(others)] = others
        out[row, len(others) :] = hits[-1]
    return out


def sample_neighbours(
    embeddings: np.ndarray, n: int, *, k: int = 10, sample: int = 2000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query rows, their k + 1 nearest rows from ``search_neighbours``, k random rows per query), drawn
    as the reference scorer draws them. ``found[:, 1:]`` are the scorer's neighbours."""
    rng = np.random.default_rng(seed)
    queries = rng.choice(n, size=min(sample, n), replace=False)
    k = min(k, n - 1)
    found = search_neighbours(embeddings, queries, k)
    return queries, found, rng.integers(0, n, size=(queries.shape[0], k))


def prefix_shares(codes: np.ndarray, queries: np.ndarray, nn: np.ndarray, rnd: np.ndarray) -> dict[str, float]:
    """For each depth d: share of neighbours (and of random rows) sharing the query's first d codes, and the lift."""
    out: dict[str, float] = {}
    for d in range(1, codes.shape[1] + 1):
        same_nn = (codes[nn][:, :, :d] == codes[queries][:, None, :d]).all(-1).mean()
        same_rnd = (codes[rnd][:, :, :d] == codes[queries][:, None, :d]).all(-1).mean()
        out[f"nn_share_d{d}"] = round(float(same_nn), 4)
        out[f"nn_lift_d{d}"] = round(float(same_nn / max(same_rnd, 1e-9)), 1)
        out[f"random_share_d{d}"] = round(float(same_rnd), 5)
    return out


def neighbour_share(
    embeddings: np.ndarray, codes: np.ndarray, *, k: int = 10, sample: int = 2000, seed: int = 0
) -> dict[str, float]:
    """nn_share_d{d}, nn_lift_d{d} (and random_share_d{d}) for every depth d of `codes` [N, L]."""
    queries, found, rnd = sample_neighbours(embeddings, codes.shape[0], k=k, sample=sample, seed=seed)
    return prefix_shares(codes, queries, found[:, 1:], rnd)


def id_quality(embeddings: np.ndarray, codes: np.ndarray, codebook_size: int, **kw: int) -> dict[str, float]:
    """Collisions, per-level utilisation/perplexity and neighbour share of base codes [N, L], as the
    reference scorer's flat keys (``util_l1``, ``perplexity_l1``, ...; levels by ``level_health``)."""
    out: dict[str, float] = {"items": int(codes.shape[0])}
    out["base_collision_rate"] = round(base_collision_rate(codes), 5)
    out["largest_bucket"] = largest_bucket(codes)
    out.update(flat_levels(level_health(codes, codebook_size), ("utilisation", "perplexity")))
    out.update(neighbour_share(embeddings, codes, **kw))
    return out
