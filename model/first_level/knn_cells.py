"""The approximate k-NN graph as a cell join: exact all-pairs blocks (float32 matmuls) inside overlapping k-means cells.

Seeded k-means splits the catalog into about ``n / CELL_ITEMS`` cells; every item joins its
``CELL_MEMBERSHIP`` nearest cells (so an item near a boundary sees both sides), and inside each cell
every member is compared with every other member by one matrix product, row block by row block,
keeping each row's k + 1 best. An item's neighbours are the best k over its cells, duplicates merged.
Two items are found as neighbours exactly when they share a cell, so the recall is the share of
true neighbour pairs that share one (see semid.model.first_level.knn for the figures and the alternatives).

Cost: the sum over cells of size^2 * d multiply-adds, about membership^2 * n * CELL_ITEMS * d (at
1M items x 384: 500 cells of ~6,000 members, ~20k candidates per item). All of it is BLAS, so it
runs at the machine's matmul speed rather than at a per-query scan's. A cell larger than
``CELL_CAP_FACTOR * membership * CELL_ITEMS`` (a skewed or degenerate catalog) keeps its nearest
members only, and a cell whose first-choice members alone exceed that is cut into slices along a
seeded random direction, so neither time nor memory can blow up; rows left with fewer than k
candidates come back as -1 for the caller to search exactly.

Determinism: the centroids are fitted on one thread (semid.model.kmeans, seeded), and every cell's
product runs on one BLAS thread in a pool of ``workers`` Python threads: a cell's result does not
depend on which worker computes it or on how many there are, and each (item, cell) pair is written by
exactly one cell. Ties are broken by row index. So the graph is a pure function of the rows and the
seed, on any number of threads.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from semid.model.kmeans import kmeans

log = logging.getLogger(__name__)

CELL_ITEMS = 2000  # first-choice items per cell on average: n // CELL_ITEMS cells
CELL_MEMBERSHIP = 3  # every item joins its nearest 3 cells
CELL_CAP_FACTOR = 4  # a cell keeps at most 4x its average membership
CENTROID_SAMPLE = 32  # k-means fitted on up to 32 sampled rows per cell
KMEANS_ITERS = 10
_ROW_BLOCK = 1024  # rows of a cell per matrix product: memory ~ block x cell size floats per worker
_CHUNK = 16384


def cell_knn(
    unit: np.ndarray,
    k: int,
    *,
    seed: int = 0,
    workers: int | None = None,
    cell_items: int = CELL_ITEMS,
    membership: int = CELL_MEMBERSHIP,
) -> np.ndarray:
    """int64 ``[n, k]``: each unit row's approximate k nearest (inner product), itself excluded;
    rows that found fewer than k candidates are all -1 (the caller searches them exactly).

    ``workers``: Python threads sharing the cells, each on one BLAS thread (default: torch's thread
    count); the result is the same for any value."""
    n = unit.shape[0]
    workers = max(1, workers or torch.get_num_threads())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # every product on one BLAS thread: results independent of the worker count
    try:
        with ThreadPoolExecutor(workers) as pool:
            began = time.perf_counter()
            cells = max(1, n // max(1, cell_items))
            membership = max(1, min(membership, cells))
            centroids = cell_centroids(unit, cells, seed)
            near, fit = nearest_cells(unit, centroids, membership, pool)
            groups = cell_members(near, fit, cells, cap=CELL_CAP_FACTOR * membership * max(1, cell_items), seed=seed,
                                  unit=unit)  # fmt: skip
            assigned_s = time.perf_counter() - began
            began = time.perf_counter()
            ids = np.full((n, membership, k + 1), -1, dtype=np.int32 if n < 2**31 else np.int64)
            scores = np.full((n, membership, k + 1), -np.inf, dtype=np.float32)
            list(pool.map(lambda group: join_cell(unit, group, k, ids, scores), groups))
            joined_s = time.perf_counter() - began
            began = time.perf_counter()
            out = np.empty((n, k), dtype=np.int64)
            list(pool.map(lambda s: merge_rows(ids, scores, out, s, k), range(0, n, _CHUNK)))
    finally:
        torch.set_num_threads(threads)
    sizes = np.array([g[0].shape[0] for g in groups], dtype=np.int64)
    log.info(
        "k-NN graph: %d items assigned in %.1f s to %d cells (%d members each on average, largest %d)",
        n, assigned_s, len(groups), int(sizes.mean()), int(sizes.max()),
    )  # fmt: skip
    log.info(
        "k-NN graph: %d items joined in %.1f s (%.2g products, merge %.1f s, %d workers)",
        n, joined_s + time.perf_counter() - began, float((sizes.astype(float) ** 2).sum()),
        time.perf_counter() - began, workers,
    )  # fmt: skip
    return out


def cell_centroids(unit: np.ndarray, cells: int, seed: int) -> torch.Tensor:
    """Seeded k-means centroids of a sample of the rows (one thread: a function of the rows and the seed)."""
    x = torch.from_numpy(unit)
    if cells == 1:
        return x.mean(dim=0, keepdim=True)
    return kmeans(x, cells, iters=KMEANS_ITERS, seed=seed, sample=CENTROID_SAMPLE * cells)


def nearest_cells(
    unit: np.ndarray, centroids: torch.Tensor, membership: int, pool: ThreadPoolExecutor
) -> tuple[np.ndarray, np.ndarray]:
    """Every row's ``membership`` nearest centroids (squared distance, nearest first) and its score
    for each (x . c - |c|^2 / 2: higher is nearer)."""
    n = unit.shape[0]
    near = np.empty((n, membership), dtype=np.int64)
    fit = np.empty((n, membership), dtype=np.float32)
    half_sq = 0.5 * (centroids * centroids).sum(dim=1)

    def assign(start: int) -> None:
        scores = torch.from_numpy(unit[start : start + _CHUNK]) @ centroids.T - half_sq
        best = torch.topk(scores, membership, dim=1)
        near[start : start + _CHUNK] = best.indices.numpy()
        fit[start : start + _CHUNK] = best.values.numpy()

    list(pool.map(assign, range(0, n, _CHUNK)))
    return near, fit


def cell_members(
    near: np.ndarray, fit: np.ndarray, cells: int, *, cap: int, seed: int, unit: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per cell: (member rows, the membership slot of each: 0 for an item's nearest cell), sorted by row.

    A cell over ``cap`` keeps its first-choice members and the nearest others up to the cap; one whose
    first-choice members alone exceed it becomes slices of them along a seeded random direction."""
    n, membership = near.shape
    flat_cell = near.ravel()
    order = np.lexsort((-fit.ravel(), np.tile(np.arange(membership), n), flat_cell))  # cell, slot, nearest first
    bounds = np.searchsorted(flat_cell[order], np.arange(cells + 1))
    direction = np.random.default_rng(seed).standard_normal(unit.shape[1]).astype(np.float32)
    groups = []
    for c in range(cells):
        entries = order[bounds[c] : bounds[c + 1]]
        if entries.shape[0] == 0:
            continue
        rows, slots = entries // membership, entries % membership
        first = rows[slots == 0]
        if first.shape[0] > cap:
            along = np.argsort(unit[first] @ direction, kind="stable")
            for part in np.array_split(first[along], -(-first.shape[0] // cap)):
                part = np.sort(part)
                groups.append((part, np.zeros(part.shape[0], dtype=np.int64)))
            continue
        rows, slots = rows[:cap], slots[:cap]
        keep = np.argsort(rows, kind="stable")
        groups.append((rows[keep], slots[keep]))
    return groups


def join_cell(
    unit: np.ndarray, group: tuple[np.ndarray, np.ndarray], k: int, ids: np.ndarray, scores: np.ndarray
) -> None:
    """Every member's k + 1 best among the cell's members (itself included), written to its slot."""
    rows, slots = group
    block = torch.from_numpy(unit[rows])
    take = min(k + 1, rows.shape[0])
    for start in range(0, rows.shape[0], _ROW_BLOCK):
        sims = block[start : start + _ROW_BLOCK] @ block.T
        best = torch.topk(sims, take, dim=1)
        part = slice(start, start + sims.shape[0])
        ids[rows[part], slots[part], :take] = rows[best.indices.numpy()]
        scores[rows[part], slots[part], :take] = best.values.numpy()


def merge_rows(ids: np.ndarray, scores: np.ndarray, out: np.ndarray, start: int, k: int) -> None:
    """Rows ``start:start + _CHUNK`` of ``out``: the best k distinct candidates over the row's cells,
    itself excluded, ties by row index; -1 for rows with fewer than k."""
    found = ids[start : start + _CHUNK].reshape(-1, ids.shape[1] * ids.shape[2]).astype(np.int64)
    score = scores[start : start + _CHUNK].reshape(found.shape).copy()
    rows = np.arange(start, start + found.shape[0])
    score[(found == rows[:, None]) | (found < 0)] = -np.inf
    by_id = np.lexsort((-score, found), axis=1)  # each id's best score first
    found = np.take_along_axis(found, by_id, axis=1)
    score = np.take_along_axis(score, by_id, axis=1)
    score[:, 1:][found[:, 1:] == found[:, :-1]] = -np.inf  # later copies of the same id
    best = np.lexsort((found, -score), axis=1)[:, :k]  # by score, then by row index
    picked = np.take_along_axis(found, best, axis=1)
    short = ~np.isfinite(np.take_along_axis(score, best, axis=1)).all(axis=1)
    picked[short] = -1
    out[start : start + found.shape[0]] = picked
