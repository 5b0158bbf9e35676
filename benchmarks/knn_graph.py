"""The first-level k-NN graph: approximate (HNSW, semid.model.knn) vs exact, on MovieLens and at 1M items.

    python benchmarks/knn_graph.py                        # MovieLens (if present) + 1M synthetic items
    python benchmarks/knn_graph.py --items 50000 --seeds 0 --no-train   # a quick smoke run

MovieLens (../shared/data, skipped when absent): the whole catalog (9,742 items, below the exact
threshold) is trained with the defaults twice per seed, once as is (exact graph) and once with
``train.graph_exact_items = 0`` (the approximate graph forced), and every item is encoded. Figures:
neighbour prefix share (2,000 sampled items, exact 10 nearest), per-level perplexity, base collision
rate (``semid.service.evaluation.code_health.id_quality``); two seeds show the noise. Also the graph
itself: recall of the approximate graph against the exact one (at the default search depth and at
--depths), and the neighbour share (on the exact graph) of the refined targets built on either graph,
for each seed. Where the checkpoint's training may switch graph targets off for a catalog
(``train.graph_min_gain``), it is set to 0 so both runs use them.

Synthetic (--items, default 1M x 384, semid.model.synthetic): the time of each step of
``graph_targets.build_targets`` with the defaults (k-means start labels, the approximate k-NN graph,
8 refinement sweeps) and the graph's recall on 2,000 sampled items against an exact search.

One torch / FAISS thread (the HNSW build is single-threaded anyway, semid.model.knn). The machine is
shared: the load average is recorded; timings are noisy.
Writes benchmarks/results/knn_graph.{md,json} (or under SEMID_BENCH_RESULTS).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import MOVIELENS, markdown_table, write_results  # noqa: E402
from semid.model.catalog import read_catalog  # noqa: E402
from semid.model.checkpoint import load_checkpoint  # noqa: E402
from semid.model.config import SemidConfig, TrainConfig  # noqa: E402
from semid.model.graph_targets import build_targets, refine_labels  # noqa: E402
from semid.model.job import train_tokenizer  # noqa: E402
from semid.model.kmeans import kmeans, nearest  # noqa: E402
from semid.model.knn import drop_self, exact_knn, knn_graph, recall, unit_rows  # noqa: E402
from semid.model.synthetic import synthetic_catalog  # noqa: E402
from semid.service.evaluation.code_health import id_quality  # noqa: E402

QUALITY = ["nn_share_d1", "nn_share_d2", "nn_share_d3", "perplexity_l1", "perplexity_l2", "perplexity_l3"]
QUALITY += ["base_collision_rate"]
QUERIES = 2000


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def movielens_rows(seeds: list[int], depths: list[int], train: bool) -> tuple[list[dict], dict]:
    emb = read_catalog(MOVIELENS).embeddings
    unit = unit_rows(emb)
    exact = exact_knn(unit, 10)
    start = time.perf_counter()
    approx = knn_graph(unit, 10, exact_max_items=0, seed=0)
    approx_s = time.perf_counter() - start
    sweep = {}
    for depth in depths:
        found = knn_graph(unit, 10, exact_max_items=0, seed=0, search_depth=depth)
        sweep[f"recall_at_10_depth_{depth}"] = round(recall(found, exact), 4)
    t = TrainConfig()
    x = torch.from_numpy(unit)
    targets = {}
    for seed in seeds:
        for name, threshold in (("exact", t.graph_exact_items), ("approximate", 0)):
            labels = build_targets(
                x, 256, neighbours=t.graph_neighbours, balance=t.graph_balance, sweeps=t.graph_sweeps, seed=seed,
                kmeans_iters=min(t.kmeans_iters, 10), kmeans_sample=t.kmeans_sample, exact_max_items=threshold,
            ).labels.numpy()  # fmt: skip
            targets[f"targets_nn_share_{name}_seed{seed}"] = round(float((labels[exact] == labels[:, None]).mean()), 4)
    graph = {"items": len(emb), "recall_at_10": round(recall(approx, exact), 4), "approx_graph_s": round(approx_s, 1)}
    graph["load"] = load_average()
    graph.update({**sweep, **targets})
    extra = {"graph_min_gain": 0.0} if "graph_min_gain" in TrainConfig.model_fields else {}
    rows = []
    for seed in seeds if train else []:
        for name, threshold in (("exact", None), ("approximate", 0)):
            train = {"seed": seed, **extra, **({} if threshold is None else {"graph_exact_items": threshold})}
            cfg = SemidConfig.from_dict({"train": train})
            with tempfile.TemporaryDirectory() as tmp:
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


def synthetic_run(items: int) -> dict:
    t = TrainConfig()
    start = time.perf_counter()
    unit = unit_rows(synthetic_catalog(items=items, seed=0).embeddings)
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
    ap.add_argument("--name", default="knn_graph")
    args = ap.parse_args()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    data: dict = {}
    parts = []
    if MOVIELENS.is_file() and not args.skip_movielens:
        rows, graph = movielens_rows(args.seeds, args.depths, not args.no_train)
        data["movielens"] = {"runs": rows, "graph": graph}
        parts += [
            "## MovieLens: exact graph vs the approximate one forced (train.graph_exact_items = 0)",
            markdown_table([graph], list(graph)),
        ]
        parts += [markdown_table(rows, list(rows[0]))] if rows else []
    else:
        parts.append(f"MovieLens not run ({MOVIELENS} absent or --skip-movielens).")
    if args.items:
        run = synthetic_run(args.items)
        data["synthetic"] = {"run": run}
        parts += [f"## Graph build at {args.items:,} synthetic items x 384 (defaults, 1 thread)"]
        parts.append(markdown_table([run], list(run)))
    parts.append(
        "recall_at_10: share of the exact 10 nearest neighbours (cosine) the graph holds (HNSW search depth 64; "
        "recall_at_10_depth_*: other depths). targets_nn_share_*: share of the exact 10 nearest neighbours whose "
        "refined first-level target equals the item's, targets built on the exact or the approximate graph. "
        "graph_nn_share_*: share of graph neighbours with the same first-level label, k-means start vs refined. "
        "The machine (2 cores) is shared with other engineers' runs (load averages recorded); timings are noisy."
    )
    path = write_results(args.name, data, "\n\n".join(parts))
    print(path.read_text())  # noqa: T201


if __name__ == "__main__":
    main()
