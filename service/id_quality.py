"""Quality figures of a set of semantic IDs, measured against the embeddings they came from.

The same definitions as the reference scorer the targets are stated in: base-code collision
rate, per-level utilisation and perplexity, and neighbour prefix share (for a seeded sample of
items, the share of their k nearest embedding neighbours, cosine and exact, that share the
first d codes) with its lift over random pairs.
"""

from __future__ import annotations

import faiss
import numpy as np

from model.metrics import base_collision_rate, largest_bucket, level_health


def nearest_neighbours(embeddings: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact cosine k nearest neighbours of the query rows (excluding the row itself)."""
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    _, nn = index.search(x[queries], k + 1)
    out = np.empty((len(queries), k), dtype=np.int64)
    for row, (q, found) in enumerate(zip(queries, nn, strict=True)):
        others = found[found != q][:k]
        out[row, : len(others)] = others
        out[row, len(others) :] = found[-1]
    return out


def sample_neighbours(
    embeddings: np.ndarray, n: int, *, k: int = 10, sample: int = 2000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query rows, their k nearest neighbours, as many random rows), drawn as the reference scorer draws them."""
    rng = np.random.default_rng(seed)
    queries = rng.choice(n, size=min(sample, n), replace=False)
    nn = nearest_neighbours(embeddings, queries, min(k, n - 1))
    return queries, nn, rng.integers(0, n, size=nn.shape)


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
    queries, nn, rnd = sample_neighbours(embeddings, codes.shape[0], k=k, sample=sample, seed=seed)
    return prefix_shares(codes, queries, nn, rnd)


def id_quality(embeddings: np.ndarray, codes: np.ndarray, codebook_size: int, **kw: int) -> dict[str, float]:
    """Collisions, per-level utilisation/perplexity and neighbour share of base codes [N, L]."""
    out: dict[str, float] = {"items": int(codes.shape[0])}
    out["base_collision_rate"] = round(base_collision_rate(codes), 5)
    out["largest_bucket"] = largest_bucket(codes)
    for level in range(codes.shape[1]):
        h = level_health(codes[:, level], codebook_size)
        out[f"util_l{level + 1}"] = round(h["utilisation"], 4)
        out[f"perplexity_l{level + 1}"] = round(h["perplexity"], 1)
    out.update(neighbour_share(embeddings, codes, **kw))
    return out
