"""Options for a faster approximate k-NN graph (issue 12): time and recall@10 at 1M synthetic items and on MovieLens.

    python benchmarks/knn_graph_options.py --items 1000000 --options ivf hnsw16 --name knn_graph_options_1m
    python benchmarks/knn_graph_options.py --items 0 --name knn_graph_options_movielens   # MovieLens only

Every option builds an index over the whole catalog (unit rows, inner product), then searches every row's
k + 1 nearest. The build is timed in full; the search is timed on a seeded sample of --search-sample rows
and scaled to the catalog (``search_s_est``: queries are independent, so the full search costs that many
times as much; ``graph_s_est`` = build + estimated search). Recall@10 against an exact search of 2,000
sampled rows (the whole catalog on MovieLens).

- ``hnsw``: semid.model.first_level.knn as shipped (M 32, efConstruction 80, one-thread seeded insertion), at each
  --depths.
- ``hnsw16``: M 16, efConstruction 40 (a cheaper build), at each --depths.
- ``hnsw2``: two HNSW shards (halves of a seeded permutation) built at the same time on two Python threads,
  each inserting on one OpenMP thread (so each is a function of its rows and order); every row is searched
  in both and the hits merged: a build that uses two cores and stays deterministic.
- ``ivf``: IVF-Flat: seeded k-means (semid.model.kmeans, one thread) of sqrt(n) * --cell-factor cells on a
  sample, every row's nearest cells computed on one thread, rows scanned exactly in their --probes nearest
  cells (per-query independent: deterministic on any thread count).

Searches use --threads FAISS threads. The machine (2 cores) is shared: the load average is recorded
per option; timings are noisy. Writes benchmarks/results/<name>.{md,json} (or under SEMID_BENCH_RESULTS).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import numpy as np
import torch
from faiss.contrib.ivf_tools import add_preassigned, search_preassigned

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import MOVIELENS, markdown_table, write_results  # noqa: E402
from semid.model.data.catalog import read_catalog  # noqa: E402
from semid.model.data.synthetic import synthetic_catalog  # noqa: E402
from semid.model.first_level.knn import HNSW_BUILD_DEPTH, HNSW_LINKS, drop_self, exact_knn, recall, unit_rows  # noqa: E402
from semid.model.kmeans import kmeans  # noqa: E402

K = 10
QUERIES = 2000
CHUNK = 16384


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def hnsw_index(unit: np.ndarray, rows: np.ndarray, links: int, depth: int) -> faiss.Index:
    """HNSW over ``unit[rows]`` inserted in that order on one OpenMP thread (set in the calling thread)."""
    faiss.omp_set_num_threads(1)
    index = faiss.IndexHNSWFlat(unit.shape[1], links, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = depth
    for start in range(0, rows.shape[0], CHUNK):
        index.add(unit[rows[start : start + CHUNK]])
    return index


def search_shards(shards, unit, queries, ef, threads):
    """Top K + 1 of ``queries`` over every (index, rows) shard, merged by score (then row)."""
    faiss.omp_set_num_threads(threads)
    scores, hits = [], []
    for index, rows in shards:
        index.hnsw.efSearch = ef
        s, f = index.search(unit[queries], K + 1)
        scores.append(np.where(f >= 0, s, -np.inf))
        hits.append(np.where(f >= 0, rows[np.maximum(f, 0)], -1))
    s, h = np.concatenate(scores, axis=1), np.concatenate(hits, axis=1)
    order = np.argsort(-s, axis=1, kind="stable")[:, : K + 1]  # ties: the first shard's hit first
    return np.take_along_axis(h, order, axis=1)


def hnsw_option(unit, queries, sample, *, links, depth, depths, shards, threads):
    n = unit.shape[0]
    order = np.random.default_rng(0).permutation(n)
    parts = np.array_split(order, shards)
    began = time.perf_counter()
    with ThreadPoolExecutor(shards) as pool:
        built = list(pool.map(lambda rows: (hnsw_index(unit, rows, links, depth), rows), parts))
    build_s = time.perf_counter() - began
    out = {"build_s": round(build_s, 1)}
    for ef in depths:
        found = search_shards(built, unit, queries, ef, threads)
        out[f"recall_ef{ef}"] = round(recall(drop_self(found, queries, K), TRUTH), 4)
        began = time.perf_counter()
        search_shards(built, unit, sample, ef, threads)
        out[f"search_s_est_ef{ef}"] = round((time.perf_counter() - began) * n / sample.shape[0], 1)
    return out


def ivf_option(unit, queries, sample, *, cell_factor, probes, threads):
    n = unit.shape[0]
    cells = max(1, round(cell_factor * np.sqrt(n)))
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # the centroids and the assignment on one thread: a function of the data and seed
    began = time.perf_counter()
    try:
        centroids = kmeans(torch.from_numpy(unit), cells, iters=10, seed=0, sample=65536)
        near = np.empty((n, max(probes)), dtype=np.int64)
        for start in range(0, n, CHUNK):
            scores = torch.from_numpy(unit[start : start + CHUNK]) @ centroids.T
            near[start : start + CHUNK] = torch.topk(scores, max(probes), dim=1).indices.numpy()
    finally:
        torch.set_num_threads(old)
    quantizer = faiss.IndexFlatIP(unit.shape[1])
    quantizer.add(np.ascontiguousarray(centroids.numpy()))
    index = faiss.IndexIVFFlat(quantizer, unit.shape[1], cells, faiss.METRIC_INNER_PRODUCT)
    index.is_trained = True
    add_preassigned(index, unit, np.ascontiguousarray(near[:, 0]))
    build_s = time.perf_counter() - began
    sizes = np.bincount(near[:, 0], minlength=cells)
    out = {"cells": cells, "largest_cell": int(sizes.max()), "build_s": round(build_s, 1)}
    faiss.omp_set_num_threads(threads)

    def search(rows, p):
        index.nprobe = p
        _, found = search_preassigned(index, unit[rows], K + 1, np.ascontiguousarray(near[rows, :p]))
        return found

    for p in probes:
        out[f"recall_p{p}"] = round(recall(drop_self(search(queries, p), queries, K), TRUTH), 4)
        began = time.perf_counter()
        search(sample, p)
        out[f"search_s_est_p{p}"] = round((time.perf_counter() - began) * n / sample.shape[0], 1)
    return out


TRUTH: np.ndarray


def main() -> None:
    global TRUTH
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--items", type=int, default=1_000_000, help="synthetic items (0: MovieLens)")
    ap.add_argument("--cache", type=Path, help="a .npy of the synthetic catalog's unit rows (written if absent)")
    ap.add_argument("--options", nargs="+", default=["ivf", "hnsw16", "hnsw2", "hnsw"])
    ap.add_argument("--depths", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--probes", type=int, nargs="+", default=[4, 8, 16, 32, 48, 64])
    ap.add_argument("--cell-factor", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--search-sample", type=int, default=20000)
    ap.add_argument("--name", default="knn_graph_options")
    args = ap.parse_args()
    if args.items:
        if args.cache and args.cache.is_file():
            unit = np.load(args.cache)
        else:
            unit = unit_rows(synthetic_catalog(items=args.items, seed=0).embeddings)
            if args.cache:
                np.save(args.cache, unit)
        catalog = f"synthetic {args.items:,} x 384"
        rng = np.random.default_rng(1)
        queries = np.sort(rng.choice(unit.shape[0], size=min(QUERIES, unit.shape[0]), replace=False))
        flat = faiss.IndexFlatIP(unit.shape[1])
        flat.add(unit)
        TRUTH = drop_self(flat.search(unit[queries], K + 1)[1], queries, K)
        del flat
    else:
        unit = unit_rows(read_catalog(MOVIELENS).embeddings)
        catalog = f"MovieLens {unit.shape[0]:,} x {unit.shape[1]}"
        queries = np.arange(unit.shape[0])
        TRUTH = exact_knn(unit, K)
    n = unit.shape[0]
    sample = np.sort(np.random.default_rng(2).choice(n, size=min(args.search_sample, n), replace=False))
    rows = []
    for option in args.options:
        load_before = load_average()
        if option == "ivf":
            run = ivf_option(unit, queries, sample, cell_factor=args.cell_factor, probes=args.probes,
                             threads=args.threads)  # fmt: skip
        else:
            links, depth, shards = {"hnsw": (HNSW_LINKS, HNSW_BUILD_DEPTH, 1), "hnsw16": (16, 40, 1),
                                    "hnsw2": (HNSW_LINKS, HNSW_BUILD_DEPTH, 2)}[option]  # fmt: skip
            run = hnsw_option(unit, queries, sample, links=links, depth=depth, depths=args.depths, shards=shards,
                              threads=args.threads)  # fmt: skip
        rows.append({"option": option, "items": n, **run, "load_before": load_before, "load_after": load_average()})
        print(rows[-1], flush=True)  # noqa: T201
    columns = list(dict.fromkeys(key for row in rows for key in row))
    text = "\n\n".join(
        [
            f"## {catalog}, {args.threads} search threads",
            markdown_table(rows, columns),
            "build_s: the whole index, timed. search_s_est_*: the search of a seeded sample of "
            f"{sample.shape[0]:,} rows scaled to all {n:,} (the graph's search phase); recall_*: share of the exact "
            "10 nearest (cosine) found, at HNSW search depth ef* or IVF probes p*. The machine (2 cores) is shared "
            "with other engineers' runs (load averages recorded): timings are noisy.",
        ]
    )
    path = write_results(args.name, {"catalog": catalog, "runs": rows}, text)
    print(path.read_text())  # noqa: T201


if __name__ == "__main__":
    main()
