"""The k-nearest-neighbour graph of a catalog (cosine similarity): exact when small, IVF cells when large.

The exact graph (one FAISS flat search of every item against every item) costs O(n^2 d): a
minute at 50k items, hours at 1M. Above ``exact_max_items`` the graph is approximate, built the
way an IVF index searches, but batched per cell so that the distance work is one matrix product
per cell (BLAS speed) rather than a per-query scan of inverted lists (FAISS's ``IndexIVFFlat``
scanned its lists at about 2.4 GFLOP/s on one thread here, a matrix product ran at about 46;
``benchmarks/knn_graph.py --faiss-ivf`` times both):

1. seeded spherical k-means on a sample gives ``sqrt(n)`` cell centroids, and every
   item goes to its nearest one;
2. each cell is searched exactly (one matrix product and a top-k in torch) against the members of
   the ``probes`` cells whose centroids are nearest to its own (itself included).

An item whose true neighbours sit in a cell that its cell does not probe loses them, so the graph
is approximate. How much depends on the catalog (benchmarks/results/knn_graph*.md, recall of the
true 10 nearest neighbours with 6 probes): 0.96 on 1M clustered synthetic items, but only 0.69 on
MovieLens' sentence embeddings (0.82 with 16 probes, 0.91 with 32), where forcing this path lowered
the trained first level's neighbour share from 0.46 to 0.39. Catalogs up to ``EXACT_MAX_ITEMS`` keep
the exact graph. The cost is O(n * probes * sqrt(n) * d).

Everything is a pure function of the embeddings and the seed (seeded k-means, exact searches in a
fixed order), so a resumed training run rebuilds the same graph.
"""

from __future__ import annotations

import math

import faiss
import numpy as np
import torch

from semid.model.kmeans import nearest

EXACT_MAX_ITEMS = 50_000  # up to this size the graph is exact (the graph every release before this one built)
PROBES = 6  # cells each cell is searched against (its own included)
_CELL_SAMPLE = 32  # k-means sample per cell centroid
_CELL_ITERS = 8  # Lloyd iterations of the cell centroids (a partition for search, not a tokenizer)
_QUERY_CHUNK = 4096  # queries per exact search, bounds the [queries, candidates] similarity block
_SEARCH_CHUNK = 16384


def knn_graph(
    x: np.ndarray, k: int, *, exact_max_items: int = EXACT_MAX_ITEMS, seed: int = 0, probes: int = PROBES
) -> np.ndarray:
    """int64 ``[n, min(k, n - 1)]``: each item's k nearest neighbours by cosine similarity, itself excluded.

    Exact for ``n <= exact_max_items``, approximate (IVF cells, see the module docstring) above."""
    unit = unit_rows(x)
    k_eff = min(k, unit.shape[0] - 1)
    if unit.shape[0] <= exact_max_items:
        return exact_knn(unit, k_eff)
    return clustered_knn(unit, k_eff, seed=seed, probes=probes)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """float32 C-contiguous copy of ``x`` with rows scaled to unit length (zero rows stay zero)."""
    unit = np.array(x, dtype=np.float32, order="C", copy=True)
    unit /= np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
    return unit


def exact_knn(unit: np.ndarray, k: int) -> np.ndarray:
    """Exact k nearest neighbours of unit rows among themselves (one flat inner-product index)."""
    index = faiss.IndexFlatIP(unit.shape[1])
    index.add(unit)
    out = np.empty((unit.shape[0], k), dtype=np.int64)
    for start in range(0, unit.shape[0], _SEARCH_CHUNK):
        _, found = index.search(unit[start : start + _SEARCH_CHUNK], k + 1)
        rows = np.arange(start, start + found.shape[0])
        out[start : start + found.shape[0]] = drop_self(found, rows, k)
    return out


def clustered_knn(unit: np.ndarray, k: int, *, seed: int, probes: int = PROBES, cells: int | None = None) -> np.ndarray:
    """Approximate k nearest neighbours of unit rows: each IVF cell searched against its nearest cells."""
    n = unit.shape[0]
    cells = cells or max(1, round(math.sqrt(n)))
    data = torch.from_numpy(unit)
    centroids = cell_centroids(data, cells, seed=seed)
    cell_of = nearest(data, centroids)[0].numpy()
    order = np.argsort(cell_of, kind="stable")
    bounds = np.searchsorted(cell_of[order], np.arange(cells + 1))
    probed = _probed_cells(centroids.numpy(), min(probes, cells))
    out = np.empty((n, k), dtype=np.int64)
    for cell in range(cells):
        members = order[bounds[cell] : bounds[cell + 1]]
        if members.shape[0] == 0:
            continue
        candidates = np.concatenate([order[bounds[c] : bounds[c + 1]] for c in probed[cell]])
        if candidates.shape[0] < k + 1:  # tiny cells around a tiny catalog: search everything
            candidates = np.arange(n)
        base = torch.from_numpy(unit[candidates])
        for start in range(0, members.shape[0], _QUERY_CHUNK):
            rows = members[start : start + _QUERY_CHUNK]
            found = (torch.from_numpy(unit[rows]) @ base.T).topk(k + 1, dim=1).indices.numpy()
            out[rows] = drop_self(candidates[found], rows, k)
    return out


def cell_centroids(data: torch.Tensor, cells: int, *, seed: int) -> torch.Tensor:
    """Spherical k-means for the search partition: Lloyd iterations from seeded random rows.

    A partition only has to keep neighbours together, not to be a good codebook, so the
    k-means++ seeding of semid.model.kmeans (which costs more than the whole search at 1M items)
    is skipped."""
    gen = torch.Generator().manual_seed(seed)
    sample = data[torch.randperm(data.shape[0], generator=gen)[: _CELL_SAMPLE * cells]]
    centroids = sample[:cells].clone()
    for _ in range(_CELL_ITERS):
        codes = nearest(sample, centroids)[0]
        sums = torch.zeros_like(centroids).index_add_(0, codes, sample)
        filled = torch.bincount(codes, minlength=cells) > 0  # an empty cell keeps its centroid
        centroids[filled] = torch.nn.functional.normalize(sums[filled], dim=1)
    return centroids


def recall(approx: np.ndarray, exact: np.ndarray) -> float:
    """Share of the exact neighbours that the approximate graph found (rows aligned, order ignored)."""
    hits = sum(np.intersect1d(a, e).shape[0] for a, e in zip(approx, exact, strict=True))
    return hits / max(1, exact.size)


def drop_self(found: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Each row's hits without the row itself (or without the last hit when the item is not
    among them, e.g. exact duplicates ranked first)."""
    is_self = found == rows[:, None]
    keep = ~is_self
    no_self = ~is_self.any(axis=1)
    keep[no_self, -1] = False
    return found[keep].reshape(found.shape[0], k)


def _probed_cells(centroids: np.ndarray, probes: int) -> np.ndarray:
    """int64 ``[cells, probes]``: each cell's nearest cells by centroid distance, itself first."""
    _, near = faiss.knn(centroids, centroids, probes, faiss.METRIC_L2)
    own = np.arange(centroids.shape[0])
    missing = ~(near == own[:, None]).any(axis=1)  # duplicate centroids can tie ahead of the cell itself
    near[missing, -1] = own[missing]
    return near
