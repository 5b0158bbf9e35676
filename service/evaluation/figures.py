"""Quality figures of assigned semantic IDs, computed from plain arrays (no files).

Every function takes codes as int arrays ``[N, L]`` (a base code, or the first L positions of
the full ID, which is what a generative model emits) and returns JSON-ready dicts. The
definitions match ``semid.model.training.metrics`` and the reference scorer: collision rate is
``1 - distinct codes / items``; neighbour share at depth d is the share of an item's k nearest
embedding neighbours (exact cosine) that share its first d codes, and its lift is that share
over the same share for random pairs.
"""

from __future__ import annotations

import numpy as np

from semid.model.training.metrics import base_collision_rate, level_health
from semid.service.evaluation.code_health import other_neighbours, prefix_shares, sample_neighbours


def bucket_sizes(codes: np.ndarray) -> np.ndarray:
    """Items per distinct code tuple (one count per bucket, unordered)."""
    if codes.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    _, counts = np.unique(codes, axis=0, return_counts=True)
    return counts.astype(np.int64)


def collision_figures(codes: np.ndarray) -> dict[str, object]:
    """Collision rate, distinct codes, largest bucket and the bucket-size histogram of ``codes`` [N, L]."""
    sizes = bucket_sizes(codes)
    hist = np.bincount(sizes) if sizes.size else np.zeros(1, dtype=np.int64)
    return {
        "collision_rate": round(base_collision_rate(codes), 5),
        "distinct": int(sizes.shape[0]),
        "largest_bucket": int(sizes.max()) if sizes.size else 0,
        "colliding_items": int(sizes[sizes > 1].sum()),
        # {bucket size: number of buckets of that size}
        "bucket_size_histogram": {str(s): int(c) for s, c in enumerate(hist) if c},
    }


def level_figures(codes: np.ndarray, codebook_sizes: tuple[int, ...]) -> list[dict[str, object]]:
    """Per level, JSON-ready: utilisation, perplexity, entropy, dead codes, the most perplexity can be
    (``max_perplexity``) and the code counts sorted high to low. The figures are ``level_health``'s,
    rounded by ``LevelHealth.to_json`` (perplexity to 1 place, as the reference scorer)."""
    return [{**lv.to_json(), "sorted_counts": lv.sorted_counts()} for lv in level_health(codes, codebook_sizes)]


def prefix_fanout(codes: np.ndarray) -> list[dict[str, object]]:
    """Children per node of the prefix tree at each depth 0..L-1 (depth 0 is the root).

    A node is a prefix of length d that some item has; its children are the distinct codes that
    follow it. ``histogram`` maps a child count to the number of nodes with it.
    """
    out = []
    for depth in range(codes.shape[1]):
        children = np.unique(codes[:, : depth + 1], axis=0)
        if depth == 0:
            per_node = np.array([children.shape[0]], dtype=np.int64)
        else:
            _, per_node = np.unique(children[:, :depth], axis=0, return_counts=True)
        hist = np.bincount(per_node)
        out.append(
            {
                "depth": depth,
                "nodes": int(per_node.shape[0]),
                "mean_children": round(float(per_node.mean()), 3),
                "median_children": float(np.median(per_node)),
                "max_children": int(per_node.max()),
                "histogram": {str(c): int(n) for c, n in enumerate(hist) if n},
            }
        )
    return out


def shared_prefix_length(codes: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """[len(queries), N] number of leading codes each item shares with each query row."""
    same = codes[None, :, :] == codes[queries][:, None, :]
    return np.cumprod(same, axis=2, dtype=np.int8).sum(axis=2, dtype=np.int16)


def neighbourhood_figures(
    embeddings: np.ndarray, codes: np.ndarray, *, k: int = 10, sample: int = 2000, seed: int = 0
) -> dict[str, float]:
    """Neighbour share / lift by depth (``nn_share_d{d}``, ``nn_lift_d{d}``, ``random_share_d{d}``) and
    ``prefix_recall_at_k``: for each sampled item, rank all other items by the length of the prefix
    they share with it (ties in random, seeded order) and count how many of its true k nearest
    neighbours are in the top k; ``prefix_recall_random`` is what a random ranking gets (k / (N-1)).

    The shares are ``semid.service.evaluation.code_health.neighbour_share``'s (one neighbour search serves both), with
    the sample, the neighbours (first hit dropped) and the random pairs taken as the reference scorer
    takes them, so on the same item order (``semid export``'s) the figures equal its figures exactly.
    """
    n = codes.shape[0]
    if n < 2:
        raise ValueError(f"neighbourhood figures need at least 2 items, got {n}")
    k = min(k, n - 1)
    queries, found, rnd = sample_neighbours(embeddings, n, k=k, sample=sample, seed=seed)
    out = prefix_shares(codes, queries, found[:, 1:], rnd)  # the scorer's neighbours: first hit dropped
    nn = other_neighbours(found, queries, k)  # recall is of the item's true neighbours: never itself
    tie_rng = np.random.default_rng([seed, 1])
    chunk = max(1, (1 << 22) // n)
    hits = 0
    for s in range(0, queries.shape[0], chunk):
        q = queries[s : s + chunk]
        score = shared_prefix_length(codes, q).astype(np.float64)
        score += tie_rng.random(score.shape)  # random order within equal prefix lengths
        score[np.arange(q.shape[0]), q] = -1.0  # never rank the query itself
        top = np.argpartition(-score, k - 1, axis=1)[:, :k]
        hits += sum(np.isin(nn[s + i], top[i]).sum() for i in range(q.shape[0]))
    out["prefix_recall_at_k"] = round(hits / (queries.shape[0] * k), 4)
    out["prefix_recall_random"] = round(k / (n - 1), 6)
    out["k"] = k
    out["sampled_items"] = int(queries.shape[0])
    return out


def pair_share(codes: np.ndarray, left: np.ndarray, right: np.ndarray) -> list[float]:
    """For rows ``left[i]``, ``right[i]``: share of pairs sharing the first d codes, d = 1..L."""
    if left.shape[0] == 0:
        return [0.0] * codes.shape[1]
    a, b = codes[left], codes[right]
    return [float((a[:, :d] == b[:, :d]).all(axis=1).mean()) for d in range(1, codes.shape[1] + 1)]


def reconstruction_figures(target: np.ndarray, reconstruction: np.ndarray) -> dict[str, float]:
    """``recon_mse``: squared error summed over dimensions, averaged over items (the training
    definition, comparable with the checkpoint's curves); ``recon_mse_per_dim``: plain mean; and
    ``recon_relative``: the error over the mean squared norm of the target."""
    err = ((reconstruction - target) ** 2).sum(axis=1)
    energy = float((target**2).sum(axis=1).mean())
    return {
        "recon_mse": round(float(err.mean()), 6),
        "recon_mse_per_dim": round(float(err.mean() / target.shape[1]), 8),
        "recon_relative": round(float(err.mean()) / max(energy, 1e-12), 5),
    }
