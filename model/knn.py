"""The k-nearest-neighbour graph of a catalog (cosine similarity): exact when small, HNSW when large.

The exact graph (one FAISS flat search of every item against every item) costs O(n^2 d): a
minute at 50k items, hours at 1M. Above ``exact_max_items`` the graph is approximate: every item
is searched in a FAISS HNSW index (``IndexHNSWFlat``, inner product on unit rows) built over the
whole catalog, at O(n log n) cost.

Why HNSW and not IVF cells (each cell searched exactly against its nearest cells, the previous
approximate path): IVF recall depends on how clustered the catalog is. With 6 probed cells of
sqrt(n) it held 0.96 of the true 10 nearest neighbours on 1M clustered synthetic items but 0.69 on
MovieLens' sentence embeddings (0.91 at 32 probes), and forcing it there lowered the refined
targets' neighbour share from 0.463 to 0.405. HNSW forced on MovieLens holds 0.991 of them, and the
targets' neighbour share is 0.4618 vs 0.4634 on the exact graph; the trained first level's share
is 0.4576 / 0.4545 vs 0.4621 / 0.4550 for seeds 0 / 1, a smaller gap than the seeds' own
(benchmarks/results/knn_graph_movielens_*.md).

Where it is weaker: on the synthetic catalog recall falls with size, 0.99 at 100k items but 0.90 at
1M, and the one-thread build of 1M items took 4,409 s on the shared machine (load 10-15; a one-off
run of these settings, not yet repeated with benchmarks/knn_graph.py). A likely reason is the
catalog's isotropic noise around tight centres (an item's 10 nearest are barely nearer than its
100th). The graph targets of such catalogs are switched off by semid.model.adaptive, and since that
decision is measured first on the exact graph of a seeded sample of ``exact_max_items`` rows
(semid.model.train), this graph is built only for catalogs whose targets will be used: the 1M
synthetic training no longer builds it (1,080 s of its 1,441 s before; 431 s in all now,
benchmarks/results/train_scale_1m_sampled_decision.md).

Faster builds measured and not kept (benchmarks/knn_graph_options.py, knn_graph_options_*.md; load
4-7 on the 2 shared cores, so the times are rough). IVF-Flat with seeded k-means cells (one-thread
centroids and assignment, per-query scans that stay deterministic on any thread count) holds 0.94 of
the 10 nearest at 8 probes of 1,000 cells and 0.98 at 16 on 1M synthetic items, but the cells are
uneven (the largest holds 8,007 items) and its scan at 16 probes was estimated at 4,514 s on one
thread, 4x the two-shard HNSW search below in the same run; on MovieLens it needs 48 probes of 99
cells (half the catalog) for 0.98 (0.915 at 16). Two HNSW shards built at once on two threads (each
on one OpenMP thread, so still a function of the data and the seed; every row searched in both) keep
MovieLens' recall (0.992) but at 1M hold 0.90 at depth 64 (0.94 at 128), as one index does; their
build took 544 s at load ~5 (one index: 542 s on one thread, in another run). A cheaper index (16
links, build depth 40: 404 s) holds only 0.41 at depth 64 at 1M. None met the bar (recall >= 0.95 at
1M and >= 0.98 on MovieLens in a few minutes), so the graph stays one HNSW index; since the decision
is taken on a sample first, it is built only for catalogs whose targets are used.

Settings: 32 links per node (``HNSW_LINKS``), a build search depth of 80 (``HNSW_BUILD_DEPTH``,
efConstruction) and a query depth of 64 (``HNSW_SEARCH_DEPTH``, efSearch; MovieLens recall 0.969
at 16, 0.983 at 32, 0.995 at 128).

Determinism: items are inserted in a seeded random order on one thread (FAISS inserts in parallel
otherwise, and then the graph depends on thread timing); queries are independent and run on every
thread. So the graph is a pure function of the embeddings and the seed, and a resumed training run
rebuilds the same one. A query that comes back with fewer than k hits (possible in tiny or
degenerate catalogs) is answered by an exact search instead.
"""

from __future__ import annotations

import logging
import time

import faiss
import numpy as np

log = logging.getLogger(__name__)

EXACT_MAX_ITEMS = 50_000  # up to this size the graph is exact (the graph every release before this one built)
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
) -> np.ndarray:
    """int64 ``[n, min(k, n - 1)]``: each item's k nearest neighbours by cosine similarity, itself excluded.

    Exact for ``n <= exact_max_items``, approximate (HNSW, see the module docstring) above."""
    unit = unit_rows(x)
    k_eff = min(k, unit.shape[0] - 1)
    if unit.shape[0] <= exact_max_items:
        return exact_knn(unit, k_eff)
    return hnsw_knn(unit, k_eff, seed=seed, search_depth=search_depth)


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
