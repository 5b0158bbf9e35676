"""The first-level k-NN graph: approximate (the cell join, or HNSW as before; semid.model.first_level.knn) vs exact.

    python benchmarks/knn_graph.py                        # MovieLens (if present) + 1M synthetic items
    python benchmarks/knn_graph.py --items 50000 --seeds 0 --no-train   # a quick smoke run
    python benchmarks/knn_graph.py --skip-movielens --no-targets --cache /tmp/syn1m.npy   # cells vs HNSW at 1M

MovieLens (../shared/data, skipped when absent): the whole catalog (9,742 items, below the exact
threshold) is trained with the defaults per seed, once as is (exact graph) and once per --train-methods
with ``train.graph_exact_items = 0`` (that approximate graph forced), and every item is encoded. Figures:
neighbour prefix share (2,000 sampled items, exact 10 nearest), per-level perplexity, base collision
rate (``semid.service.evaluation.code_health.id_quality``); two seeds show the noise. Also the graph
itself: recall of each --methods graph against the exact one (and of HNSW at --depths, of the cell
join with cells of --cell-items first-choice items: smaller cells, as a larger catalog of such
embeddings would get), and the neighbour share (on the exact graph) of the refined targets built on
each graph, for each seed. Where the checkpoint's training may switch graph targets off for a catalog
(``train.graph_min_gain``), it is set to 0 so all runs use them.

Synthetic (--items, default 1M x 384, semid.model.data.synthetic(items, seed=0), the catalog of the earlier
knn_graph_1m and knn_graph_options_1m runs): each of --methods builds the whole graph in a fresh process
(--threads torch / FAISS threads: the cell join's workers; HNSW inserts on one thread whatever the setting
and searches on all), timed per phase (cells: centroids + assignment = build, per-cell products + merge =
search; HNSW: insertion = build, search), with its recall@10 on 2,000 seeded rows against an exact search and
the process's peak RSS (the catalog included). Unless --no-targets, also the time of each step of
``graph_targets.build_targets`` with the defaults (k-means start labels, the graph, 8 refinement sweeps), on
one thread.

The machine is shared: the load average is recorded; timings are noisy.
Writes benchmarks/results/knn_graph.{md,json} (or under SEMID_BENCH_RESULTS).
"""

from __future__ import annotations

import argparse
import functools
import logging
import multiprocessing
import os
import re
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from unittest import mock

import faiss
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import MOVIELENS, markdown_table, write_results  # noqa: E402
from semid.model.config import SemidConfig, TrainConfig  # noqa: E402
from semid.model.data.catalog import read_catalog  # noqa: E402
from semid.model.data.synthetic import synthetic_catalog  # noqa: E402
from semid.model.first_level import graph_targets  # noqa: E402
from semid.model.first_level.graph_targets import build_targets, refine_labels  # noqa: E402
from semid.model.first_level.knn import APPROXIMATE, drop_self, exact_knn, knn_graph, recall, unit_rows  # noqa: E402
from semid.model.first_level.knn_cells import cell_knn  # noqa: E402
from semid.model.kmeans import kmeans, nearest  # noqa: E402
from semid.model.training.checkpoint import load_checkpoint  # noqa: E402
from semid.model.training.job import train_tokenizer  # noqa: E402
from semid.service.evaluation.code_health import id_quality  # noqa: E402

QUALITY = ["nn_share_d1", "nn_share_d2", "nn_share_d3", "perplexity_l1", "perplexity_l2", "perplexity_l3"]
QUALITY += ["base_collision_rate"]
QUERIES = 2000
PHASES = {  # the log lines of semid.model.first_level.knn / knn_cells: (build, search) seconds
    "hnsw": (re.compile(r"inserted in ([0-9.]+) s"), re.compile(r"searched in ([0-9.]+) s")),
    "cells": (re.compile(r"items assigned in ([0-9.]+) s"), re.compile(r"items joined in ([0-9.]+) s")),
}


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def forced(method: str | None):
    """Training's graph: as configured (None) or the given approximate method (with graph_exact_items = 0)."""
    if method is None:
        return mock.patch.object(graph_targets, "knn_graph", knn_graph)
    return mock.patch.object(graph_targets, "knn_graph", functools.partial(knn_graph, approximate=method))


def movielens_rows(
    seeds: list[int],
    depths: list[int],
    train: bool,
    methods: list[str],
    train_methods: list[str],
    cell_items: list[int],
) -> tuple[list[dict], dict]:
    emb = read_catalog(MOVIELENS).embeddings
    unit = unit_rows(emb)
    exact = exact_knn(unit, 10)
    graph = {"items": len(emb)}
    for method in methods:
        start = time.perf_counter()
        approx = knn_graph(unit, 10, exact_max_items=0, seed=0, approximate=method)
        graph[f"{method}_s"] = round(time.perf_counter() - start, 1)
        graph[f"{method}_recall_at_10"] = round(recall(approx, exact), 4)
        graph[f"{method}_same_as_exact"] = bool(np.array_equal(np.sort(approx, axis=1), np.sort(exact, axis=1)))
    for depth in depths if "hnsw" in methods else []:
        found = knn_graph(unit, 10, exact_max_items=0, seed=0, search_depth=depth, approximate="hnsw")
        graph[f"hnsw_recall_at_10_depth_{depth}"] = round(recall(found, exact), 4)
    for items in cell_items if "cells" in methods else []:
        found = cell_knn(unit, 10, seed=0, cell_items=items)
        graph[f"cells_recall_at_10_cell_items_{items}"] = round(recall(found, exact), 4)
    t = TrainConfig()
    x = torch.from_numpy(unit)
    for seed in seeds:
        for name, threshold in (("exact", t.graph_exact_items), *((m, 0) for m in methods)):
            with forced(None if name == "exact" else name):
                labels = build_targets(
                    x, 256, neighbours=t.graph_neighbours, balance=t.graph_balance, sweeps=t.graph_sweeps, seed=seed,
                    kmeans_iters=min(t.kmeans_iters, 10), kmeans_sample=t.kmeans_sample, exact_max_items=threshold,
                ).labels.numpy()  # fmt: skip
            graph[f"targets_nn_share_{name}_seed{seed}"] = round(float((labels[exact] == labels[:, None]).mean()), 4)
    graph["load"] = load_average()
    extra = {"graph_min_gain": 0.0} if "graph_min_gain" in TrainConfig.model_fields else {}
    rows = []
    for seed in seeds if train else []:
        for name, threshold in (("exact", None), *((m, 0) for m in train_methods)):
            train = {"seed": seed, **extra, **({} if threshold is None else {"graph_exact_items": threshold})}
            cfg = SemidConfig.from_dict({"train": train})
            with tempfile.TemporaryDirectory() as tmp, forced(None if name == "exact" else name):
                start = time.perf_counter()
                _, metrics = train_tokenizer(emb, cfg, tmp)
                fit_s = time.perf_counter() - start
                tok = load_checkpoint(tmp).tokenizer.eval()
                with torch.inference_mode():
                    codes = tok.encode(torch.from_numpy(emb)).codes.numpy()
            used = metrics.get("graph_targets")
            quality = id_quality(emb, codes, cfg.model.codebook_size)
            row = {"seed": seed, "graph": name, "fit_s": round(fit_s, 1), **{k: quality[k] for k in QUALITY}}
            row["load"] = load_average()
            if isinstance(used, dict) and "use" in used:
                row["graph_targets_used"] = used["use"]
            rows.append(row)
    return rows, graph


def synthetic_unit(items: int, cache: Path | None = None) -> np.ndarray:
    """The unit rows of semid.model.data.synthetic's catalog of ``items`` (seed 0), read from / written to ``cache``."""
    if cache is not None and cache.is_file():
        unit = np.load(cache)
        if unit.shape[0] == items:
            return unit
    unit = unit_rows(synthetic_catalog(items=items, seed=0).embeddings)
    if cache is not None:
        np.save(cache, unit)
    return unit


def exact_rows(unit: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """The exact k nearest of ``unit[rows]`` among all rows, by float32 matmuls over blocks of the catalog."""
    q = torch.from_numpy(unit[rows])
    best_s = torch.full((rows.shape[0], 0), -torch.inf)
    best_i = torch.empty((rows.shape[0], 0), dtype=torch.long)
    for start in range(0, unit.shape[0], 65536):
        sims = q @ torch.from_numpy(unit[start : start + 65536]).T
        top = torch.topk(sims, min(k + 1, sims.shape[1]), dim=1)
        both_s, both_i = torch.cat([best_s, top.values], 1), torch.cat([best_i, top.indices + start], 1)
        keep = torch.topk(both_s, min(k + 1, both_s.shape[1]), dim=1).indices
        best_s, best_i = both_s.gather(1, keep), both_i.gather(1, keep)
    return drop_self(best_i.numpy(), rows, k)


def peak_rss_gb() -> float:
    """This process's peak resident set (VmHWM: unlike ru_maxrss, not inherited from the parent across exec)."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM")) / 1e6


def method_run(cache: str, method: str, threads: int, queries: np.ndarray, truth: np.ndarray) -> dict:
    """One method's whole graph of the cached catalog, in this (fresh) process: phases, recall, peak RSS."""
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    unit = np.load(cache)
    rss_catalog = peak_rss_gb()
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("semid.model")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    load_before = load_average()
    start = time.perf_counter()
    graph = knn_graph(unit, 10, exact_max_items=0, seed=0, approximate=method)
    total = time.perf_counter() - start
    text = "\n".join(lines)
    build, search = (sum(float(v) for v in pattern.search(text).groups()) for pattern in PHASES[method])
    return {
        "method": method,
        "items": unit.shape[0],
        "threads": threads,
        "build_s": round(build, 1),
        "search_s": round(search, 1),
        "graph_s": round(total, 1),
        "recall_at_10": round(recall(graph[queries], truth), 4),
        "peak_rss_gb": round(peak_rss_gb(), 2),
        "catalog_rss_gb": round(rss_catalog, 2),
        "load_before": load_before,
        "load_after": load_average(),
    }


def methods_rows(items: int, methods: list[str], threads: int, cache: Path | None) -> list[dict]:
    """Every method on the same catalog, each in a fresh process (its own peak RSS), recall on 2,000 seeded rows."""
    with tempfile.TemporaryDirectory() as tmp:
        path = cache or Path(tmp) / "unit.npy"
        unit = synthetic_unit(items, path)
        queries = np.sort(np.random.default_rng(1).choice(items, size=min(QUERIES, items), replace=False))
        truth = exact_rows(unit, queries, 10)
        del unit
        rows = []
        for method in methods:
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                rows.append(pool.submit(method_run, str(path), method, threads, queries, truth).result())
            print(rows[-1], flush=True)  # noqa: T201
    return rows


def synthetic_run(items: int, cache: Path | None = None) -> dict:
    t = TrainConfig()
    start = time.perf_counter()
    unit = synthetic_unit(items, cache)
    setup_s = time.perf_counter() - start
    x = torch.from_numpy(unit)
    load_before = load_average()
    start = time.perf_counter()
    centroids = kmeans(x, 256, iters=min(t.kmeans_iters, 10), seed=t.seed, sample=t.kmeans_sample)
    labels = nearest(x, centroids)[0].numpy()
    kmeans_s = time.perf_counter() - start
    start = time.perf_counter()
    graph = knn_graph(unit, t.graph_neighbours, exact_max_items=0, seed=t.seed)
    knn_s = time.perf_counter() - start
    start = time.perf_counter()
    refined = refine_labels(labels, graph, 256, balance=t.graph_balance, sweeps=t.graph_sweeps, seed=t.seed)
    refine_s = time.perf_counter() - start
    load_after = load_average()
    queries = np.sort(np.random.default_rng(1).choice(items, size=min(QUERIES, items), replace=False))
    index = faiss.IndexFlatIP(unit.shape[1])
    index.add(unit)
    _, found = index.search(unit[queries], t.graph_neighbours + 1)
    truth = drop_self(found, queries, t.graph_neighbours)
    share = lambda lab: round(float((lab[graph] == lab[:, None]).mean()), 4)  # noqa: E731
    run = {
        "items": items,
        "setup_s": round(setup_s, 1),
        "kmeans_start_s": round(kmeans_s, 1),
        "knn_graph_s": round(knn_s, 1),
        "refine_sweeps_s": round(refine_s, 1),
        "graph_build_s": round(kmeans_s + knn_s + refine_s, 1),
        "recall_at_10": round(recall(graph[queries], truth), 4),
        "graph_nn_share_start": share(labels),
        "graph_nn_share_refined": share(refined),
        "load_before": load_before,
        "load_after": load_after,
    }
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="MovieLens: targets and trainings")
    ap.add_argument("--no-train", action="store_true", help="MovieLens: the graph and the targets only")
    ap.add_argument("--depths", type=int, nargs="*", default=[16, 32, 128], help="MovieLens: recall at other depths")
    ap.add_argument("--skip-movielens", action="store_true")
    ap.add_argument("--methods", nargs="+", choices=APPROXIMATE, default=list(APPROXIMATE), help="approximate graphs")
    ap.add_argument("--train-methods", nargs="*", choices=APPROXIMATE, default=["cells"], help="MovieLens trainings")
    ap.add_argument("--cell-items", type=int, nargs="*", default=[500, 200, 100], help="MovieLens: smaller cells")
    ap.add_argument("--threads", type=int, default=2, help="synthetic: threads of each method's graph")
    ap.add_argument("--cache", type=Path, help="synthetic: a .npy of the catalog's unit rows (written if absent)")
    ap.add_argument("--no-targets", action="store_true", help="synthetic: the graphs only, not build_targets' steps")
    ap.add_argument("--name", default="knn_graph")
    args = ap.parse_args()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    data: dict = {}
    parts = []
    if MOVIELENS.is_file() and not args.skip_movielens:
        rows, graph = movielens_rows(
            args.seeds, args.depths, not args.no_train, args.methods, args.train_methods, args.cell_items
        )
        data["movielens"] = {"runs": rows, "graph": graph}
        parts += [
            "## MovieLens: exact graph vs the approximate one forced (train.graph_exact_items = 0)",
            markdown_table([graph], list(graph)),
        ]
        parts += [markdown_table(rows, list(rows[0]))] if rows else []
    else:
        parts.append(f"MovieLens not run ({MOVIELENS} absent or --skip-movielens).")
    if args.items:
        runs = methods_rows(args.items, args.methods, args.threads, args.cache)
        data["synthetic_methods"] = runs
        parts += [f"## The approximate graphs of {args.items:,} synthetic items x 384, {args.threads} threads"]
        parts.append(markdown_table(runs, list(runs[0])))
    if args.items and not args.no_targets:
        run = synthetic_run(args.items, args.cache)
        data["synthetic"] = {"run": run}
        parts += [f"## Graph targets at {args.items:,} synthetic items x 384 (defaults, 1 thread)"]
        parts.append(markdown_table([run], list(run)))
    parts.append(
        "recall_at_10: share of the exact 10 nearest neighbours (cosine) the graph holds (HNSW at search depth 64, "
        "*_depth_*: other depths; cells_*_cell_items_*: the cell join with smaller cells; *_same_as_exact: every "
        "row's neighbour set is the exact one). build_s / search_s: cells = centroids and assignment / per-cell "
        "products and merge; hnsw = one-thread insertion / search. peak_rss_gb: the method's process, catalog "
        "(catalog_rss_gb) included. targets_nn_share_*: share of the exact 10 nearest neighbours whose "
        "refined first-level target equals the item's, targets built on the exact or the approximate graph. "
        "graph_nn_share_*: share of graph neighbours with the same first-level label, k-means start vs refined. "
        "The machine (2 cores) is shared with other engineers' runs (load averages recorded); timings are noisy."
    )
    path = write_results(args.name, data, "\n\n".join(parts))
    print(path.read_text())  # noqa: T201


if __name__ == "__main__":
    main()
