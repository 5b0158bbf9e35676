"""The k-nearest-neighbour graph of a catalog (cosine similarity): exact when small, a cell join when large.

The exact graph (one FAISS flat search of every item against every item) costs O(n^2 d), so it
does not scale to millions of items. Above ``exact_max_items`` the graph is approximate: a cell join
(semid.model.first_level.knn_cells): seeded k-means cells of ~2,000 first-choice items, every item a member of
its 3 nearest cells, and inside each cell one exact all-pairs block (float32 matmuls, one BLAS
thread per worker, the cells shared by a pool of threads), each item keeping the best 10 over its
cells. Two items are found exactly when they share a cell.

Why: all of the work is BLAS, so it runs at the machine's matmul speed, and its recall is set by how much of
the catalog each cell's members cover, not by an index's build order. Its recall and time against the exact
graph and the HNSW index it replaced are in benchmarks/results/knn_graph_1m_cells_vs_hnsw.md (1M synthetic
items) and knn_graph_movielens_cells.md (MovieLens forced approximate: 4 cells, the exact graph's neighbour
sets) (benchmarks/knn_graph.py).

Where it is weaker: embeddings less clustered than the synthetic ones need cells that cover more of the
catalog, so smaller cells (``cell_items``) lose recall; a 1M catalog of sentence embeddings has not been
measured. A round of neighbours-of-neighbours refinement on top would cost about as much as the join at 1M
for little recall, so it is not done.

Not kept (benchmarks/knn_graph_options.py, results knn_graph_options_*.md): IVF-Flat with per-query scans
(FAISS' scans are not BLAS, so far slower at the same recall) and HNSW (``hnsw_knn``, kept for comparison:
``knn_graph(..., approximate="hnsw")``): lower recall at 1M, a one-thread seeded insertion that dominates
training time, and a parallel insertion would make the graph depend on thread timing.

Determinism: the cells' centroids are fitted on one thread and every cell's products run on one
BLAS thread, each (item, cell) result written once, ties by row index; so the graph is a pure
function of the embeddings and the seed on any number of threads, and a resumed training run
rebuilds the same one. A row that ends with fewer than k candidates (tiny or degenerate
catalogs, cells cut by the size cap) is answered by an exact search instead.
"""

from __future__ import annotations

import logging
import time

import faiss
import numpy as np

from semid.model.first_level.knn_cells import cell_knn

log = logging.getLogger(__name__)

EXACT_MAX_ITEMS = 50_000  # up to this size the graph is exact (the graph every release before this one built)
APPROXIMATE = (
    "cells",
    "hnsw",
)  # above it: the cell join (semid.model.first_level.knn_cells), or the HNSW index of 0.5-0.6
HNSW_LINKS = 32  # M: links per node (64 on the bottom layer)
HNSW_BUILD_DEPTH = 80  # efConstruction
HNSW_SEARCH_DEPTH = 64  # efSearch (raised to k + 1 when k is larger)
_SEARCH_CHUNK = 16384


def knn_graph(
    x: np.ndarray,
    k: int,
    *,
    exact_max_items: int = EXACT_MAX_ITEMS,
    seed: int = 0,
    search_depth: int = HNSW_SEARCH_DEPTH,
    approximate: str = "cells",
) -> np.ndarray:
    """int64 ``[n, min(k, n - 1)]``: each item's k nearest neighbours by cosine similarity, itself excluded.

    Exact for ``n <= exact_max_items``, approximate above: the cell join (see the module docstring),
    or with ``approximate="hnsw"`` the HNSW index searched at ``search_depth`` (kept for comparison)."""
    if approximate not in APPROXIMATE:
        raise ValueError(f"approximate must be one of {APPROXIMATE}, got {approximate!r}")
    unit = unit_rows(x)
    k_eff = min(k, unit.shape[0] - 1)
    if unit.shape[0] <= exact_max_items:
        return exact_knn(unit, k_eff)
    if approximate == "hnsw":
        return hnsw_knn(unit, k_eff, seed=seed, search_depth=search_depth)
    return cells_knn(unit, k_eff, seed=seed)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """float32 C-contiguous copy of ``x`` with rows scaled to unit length (zero rows stay zero)."""
    unit = np.array(x, dtype=np.float32, order="C", copy=True)
    unit /= np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
    return unit


def exact_knn(unit: np.ndarray, k: int, rows: np.ndarray | None = None) -> np.ndarray:
    """Exact k nearest neighbours of unit rows among themselves (one flat inner-product index);
    ``rows``: only those rows' neighbours (default: every row's)."""
    index = faiss.IndexFlatIP(unit.shape[1])
    index.add(unit)
    rows = np.arange(unit.shape[0]) if rows is None else np.asarray(rows, dtype=np.int64)
    out = np.empty((rows.shape[0], k), dtype=np.int64)
    for start in range(0, rows.shape[0], _SEARCH_CHUNK):
        part = rows[start : start + _SEARCH_CHUNK]
        _, found = index.search(unit[part], k + 1)
        out[start : start + part.shape[0]] = drop_self(found, part, k)
    return out


def cells_knn(unit: np.ndarray, k: int, *, seed: int, workers: int | None = None) -> np.ndarray:
    """Approximate k nearest neighbours of unit rows by the cell join; rows it leaves short get an exact search."""
    out = cell_knn(unit, k, seed=seed, workers=workers)
    redo = np.flatnonzero(out[:, 0] < 0) if k else np.empty(0, dtype=np.int64)
    if redo.shape[0]:
        out[redo] = exact_knn(unit, k, rows=redo)
        log.info("k-NN graph: %d rows short of %d candidates searched exactly", redo.shape[0], k)
    return out


def hnsw_knn(unit: np.ndarray, k: int, *, seed: int, search_depth: int = HNSW_SEARCH_DEPTH) -> np.ndarray:
    """Approximate k nearest neighbours of unit rows: every row searched in an HNSW index of all of them."""
    n = unit.shape[0]
    order = np.random.default_rng(seed).permutation(n)  # insertion position -> row
    index = faiss.IndexHNSWFlat(unit.shape[1], HNSW_LINKS, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_BUILD_DEPTH
    threads = faiss.omp_get_max_threads()
    began = time.perf_counter()
    faiss.omp_set_num_threads(1)  # a parallel insertion makes the graph depend on thread timing
    try:
        for start in range(0, n, _SEARCH_CHUNK):  # in chunks: no second copy of the catalog in insertion order
            index.add(unit[order[start : start + _SEARCH_CHUNK]])
    finally:
        faiss.omp_set_num_threads(threads)
    log.info("k-NN graph: %d items inserted in %.1f s into an HNSW index (one thread)", n, time.perf_counter() - began)
    began = time.perf_counter()
    index.hnsw.efSearch = max(search_depth, k + 1)
    out = np.empty((n, k), dtype=np.int64)
    short = []  # rows the search returned fewer than k + 1 hits for
    for start in range(0, n, _SEARCH_CHUNK):
        rows = np.arange(start, min(n, start + _SEARCH_CHUNK))
        _, found = index.search(unit[rows], k + 1)
        full = (found >= 0).all(axis=1)
        out[rows[full]] = drop_self(order[found[full]], rows[full], k)  # insertion positions back to rows
        short.append(rows[~full])
    redo = np.concatenate(short)
    if redo.shape[0]:
        out[redo] = exact_knn(unit, k, rows=redo)
    log.info(
        "k-NN graph: %d items searched in %.1f s (%d threads, %d exact)",
        n,
        time.perf_counter() - began,
        threads,
        redo.shape[0],
    )
    return out


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
