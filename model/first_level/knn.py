"""The k-nearest-neighbour graph of a catalog (cosine similarity): exact when small, a cell join when large.

The exact graph (one FAISS flat search of every item against every item) costs O(n^2 d): a
minute at 50k items, hours at 1M. Above ``exact_max_items`` the graph is approximate: a cell join
(semid.model.first_level.knn_cells): seeded k-means cells of ~2,000 first-choice items, every item a member of
its 3 nearest cells, and inside each cell one exact all-pairs block (float32 matmuls, one BLAS
thread per worker, the cells shared by a pool of threads), each item keeping the best 10 over its
cells. Two items are found exactly when they share a cell.

Why: all of the work is BLAS, so it runs at the machine's matmul speed. On the 1M synthetic catalog
(benchmarks/knn_graph.py, both in one run on 2 threads, knn_graph_1m_cells_vs_hnsw.md) it holds
0.992 of the true 10 nearest in 400 s (load 1.4-7.9; 134 s and the same 0.992 alone at load
0.4-1.8, knn_graph_1m_cells_quiet.md; 2.3e10 products over 500 cells), where the HNSW index it
replaces held 0.853 after 1,729 s (1,298 s of one-thread insertion; load 2-7.6; 0.90-0.96 in
earlier runs); peak RSS 4.8 GB vs 5.2 GB, of which 1.8 GB is the process and the catalog and 1.5 GB
the unit-row copy. On MovieLens (9,742 items) forced approximate it is 4 cells, each item seeing
3/4 of the catalog: every row's neighbour set is the exact one (HNSW: recall 0.991), and the
trained seed-0 first level has the exact graph's figures (neighbour share 0.4621, perplexities,
collisions; knn_graph_movielens_cells.md).

Where it is weaker: its recall depends on how much of the catalog a cell's members cover, and
embeddings less clustered than the synthetic ones need more of it. On MovieLens with cells forced
smaller (cell_items 1000 / 500 / 200 / 100: 9 / 19 / 48 / 97 cells) the recall is 0.992 / 0.949 /
0.900 / 0.839 with 3 memberships (0.983 / 0.949 / 0.898 with 4 at 500 / 200 / 100, a prototype
run), so a 1M catalog of sentence embeddings like MovieLens' (500 cells) may get well below 0.95;
that case has not been measured. One round of neighbours-of-neighbours refinement on top added only
0.02-0.035 there, for a per-row gather that would cost about as much as the join at 1M, so it is
not done.

Tried before and not kept (benchmarks/knn_graph_options.py, knn_graph_options_*.md; load 4-7,
rough times): IVF-Flat with seeded k-means cells and per-query scans: 0.98 at 16 probes of 1,000
cells on 1M synthetic items but ~4,500 s of scanning (FAISS' per-query scans are not BLAS), and
48 probes of 99 cells (half the catalog) for 0.98 on MovieLens. HNSW (32 links, build depth 80,
search depth 64; ``hnsw_knn``, kept for comparison: ``knn_graph(..., approximate="hnsw")``):
0.991 on MovieLens, but at 1M 0.85-0.96 and a one-thread seeded insertion of 540-1,300 s (a
parallel insertion makes the graph depend on thread timing); two HNSW shards built at once: the
same recall in the same time; a cheaper index (16 links, depth 40): 0.41 at 1M.

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
