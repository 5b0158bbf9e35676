"""Does the generative-retrieval benchmark run at the issue's scale (20k items, 30k users) on 2 cores?

    python benchmarks/genrec_scale.py --items 20000 --users 30000 --budget-minutes 5

Writes a synthetic catalog and implicit-feedback interactions of that size (a user walks among clustered items:
mostly within its current cluster, sometimes jumping; every interaction a positive, order given by a
``position`` column, no rating), then runs ``generative_retrieval.py`` on them end to end, every user, with the
given tokenizers and the item-id baseline, each model's training capped at ``--budget-minutes`` CPU-min (the
run shows the loop finishes at full size and what each part costs; a real row trains to early stopping). It
records this process's CPU and wall time per stage and its peak RSS, and extrapolates what one ID row costs
at the benchmark's 45 CPU-min budget: ID fitting + 45 min of training + decoding every test user (constrained
and unconstrained). Writes ``benchmarks/results/genrec_scale.{json,md}`` (``--name``).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import benchmarks.common as common  # noqa: E402
from benchmarks import generative_retrieval as gr  # noqa: E402
from benchmarks.genrec_metrics import recall_at  # noqa: E402

ROW_BUDGET_MIN = 45  # the benchmark's full-size budget per model (docs/downstream.md)


def synthetic_catalog(items: int, dim: int, clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(item cluster [items], unit embeddings [items, dim]): items scattered around ``clusters`` centres."""
    rng = np.random.default_rng([seed, 1])
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    cluster = rng.integers(0, clusters, size=items)
    x = centres[cluster] + 0.6 * rng.standard_normal((items, dim)).astype(np.float32)
    return cluster, x / np.linalg.norm(x, axis=1, keepdims=True)


def synthetic_sequences(cluster: np.ndarray, users: int, mean_length: float, seed: int) -> tuple[np.ndarray, ...]:
    """(user, item, position) columns: each user's walk of at least 3 distinct items (3 + a geometric number
    more, ``mean_length`` on average); the next item is from the current cluster with probability 0.8, else
    from a random one."""
    rng = np.random.default_rng([seed, 2])
    members = [np.flatnonzero(cluster == c) for c in range(int(cluster.max()) + 1)]
    members = [m for m in members if m.size]
    lengths = 3 + rng.geometric(1.0 / max(mean_length - 2.0, 1.0), size=users) - 1
    user_col, item_col, pos_col = [], [], []
    for u, n in enumerate(lengths):
        at = int(rng.integers(0, len(members)))
        seen: set[int] = set()
        while len(seen) < n:
            if rng.random() >= 0.8:
                at = int(rng.integers(0, len(members)))
            item = int(rng.choice(members[at]))
            if item in seen:
                continue
            seen.add(item)
            user_col.append(u)
            item_col.append(item)
            pos_col.append(len(seen))
    return np.asarray(user_col), np.asarray(item_col), np.asarray(pos_col)


def write_data(root: Path, items: int, users: int, dim: int, clusters: int, mean_length: float, seed: int) -> dict:
    cluster, x = synthetic_catalog(items, dim, clusters, seed)
    ids = np.array([f"item{i}" for i in range(items)])
    pq.write_table(
        pa.table({"item_id": ids, "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), dim)}),
        root / "items.parquet",
    )
    user, item, position = synthetic_sequences(cluster, users, mean_length, seed)
    pq.write_table(
        pa.table({"user_id": [f"u{u}" for u in user], "item_id": ids[item], "position": position}),
        root / "interactions.parquet",
    )
    return {"items": items, "users": users, "interactions": int(user.shape[0]), "dim": dim, "clusters": clusters}


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=20000)
    ap.add_argument("--users", type=int, default=30000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--clusters", type=int, default=400)
    ap.add_argument("--mean-length", type=float, default=8.0, help="mean interactions per user (at least 3)")
    ap.add_argument("--tokenizers", default="semid-rqkmeans", help="ID rows to run (generative_retrieval names)")
    ap.add_argument("--budget-minutes", type=float, default=5.0, help="CPU-min of training per model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tiny", action="store_true", help="pass --tiny to the benchmark (tests)")
    ap.add_argument("--out", default=None, help="results directory (default benchmarks/results)")
    ap.add_argument("--name", default="genrec_scale")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse(argv)
    if args.out:  # common.RESULTS is read when common is imported: set it, not the environment
        common.RESULTS = Path(args.out)
    scratch = Path(tempfile.mkdtemp(prefix="semid-genrec-scale-"))
    c0, w0 = _cpu(), time.perf_counter()
    data = write_data(scratch, args.items, args.users, args.dim, args.clusters, args.mean_length, args.seed)
    data["write_data_s"] = round(time.perf_counter() - w0, 1)
    argv = ["--catalog", str(scratch / "items.parquet"), "--interactions", str(scratch / "interactions.parquet")]
    argv += ["--time-col", "position", "--generator", "tiger", "--batch-size", "64", "--lr", "2e-3"]
    argv += ["--seeds", str(args.seed), "--budget-minutes", str(args.budget_minutes), "--threads", str(args.threads)]
    argv += ["--tokenizers", args.tokenizers, "--out", str(scratch / "out"), "--name", "run"]
    argv += ["--tiny", "--max-users", str(args.users)] if args.tiny else []  # tiny alone keeps 40 users
    c1, w1 = _cpu(), time.perf_counter()
    result = gr.main(argv)
    bench_cpu, bench_wall = _cpu() - c1, time.perf_counter() - w1
    split = result["split"]
    rows = []
    for name, runs in result["rows"].items():
        run = runs[0]
        if run.get("status") != "ok" or "train" not in run:
            if name != gr.POPULARITY:
                rows.append({"row": name, "status": run.get("status"), "error": run.get("error", "")})
            continue
        t = run["train"]
        test = run["test"]
        row = {
            "row": name,
            "status": "ok",
            "epochs_run": t["epochs_run"],
            "stopped": t["stopped"],
            "train_wall_s": t["train_s"],
            "row_wall_s": run.get("wall_s"),
            "steps_per_epoch": t["steps"] // max(t["epochs_run"], 1),
            "decode_ms_per_user": test.get("decode_ms_per_user"),
            "recall@10": round(recall_at(test["lists"], split.test_target), 4),
        }
        if name != gr.ITEM_BASELINE:
            fit_s = (run.get("ids") or {}).get("fit_s")
            row["fit_s"] = fit_s
            # the whole row at the full budget: fit + 45 CPU-min of training + the same decode of every test user
            # (the decode is timed in this run: the row's wall time less its training and fit)
            decode_s = max(0.0, (run.get("wall_s") or 0.0) - t["train_s"] - (fit_s or 0.0))
            row["decode_all_users_s"] = round(decode_s, 1)
            row["row_at_45_min_estimate_min"] = round(ROW_BUDGET_MIN + (decode_s + (fit_s or 0.0)) / 60, 1)
        rows.append(row)
    data.update(
        {
            "users_in_split": len(split.train),
            "training_examples": result["data"]["training_targets"],
            "budget_minutes": args.budget_minutes,
            "tokenizers": args.tokenizers,
            "benchmark_cpu_s": round(bench_cpu, 1),
            "benchmark_wall_s": round(bench_wall, 1),
            "total_cpu_s": round(_cpu() - c0, 1),
            "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "load_avg_start": result["data"]["load_avg_start"],
            "load_avg_end": result["data"]["load_avg_end"],
            "rows": rows,
        }
    )
    path = common.write_results(args.name, data, markdown(data))
    print(path.read_text())
    return data


def markdown(data: dict) -> str:
    cols = ["row", "status", "epochs_run", "stopped", "steps_per_epoch", "train_wall_s", "fit_s"]
    cols += ["decode_all_users_s", "decode_ms_per_user", "row_wall_s", "row_at_45_min_estimate_min", "recall@10"]
    return "\n".join(
        [
            f"Synthetic data: {data['items']} items ({data['dim']}-d, {data['clusters']} clusters), {data['users']} "
            f"users, {data['interactions']} implicit interactions ordered by a position column (no rating); "
            f"{data['users_in_split']} users in the leave-one-out split, {data['training_examples']} training "
            f"examples. Writing the data took {data['write_data_s']} s.",
            "",
            f"`generative_retrieval.py` end to end (TIGER generator, batch 64, every user, one seed), each model's "
            f"training capped at {data['budget_minutes']} CPU-min: {data['benchmark_wall_s']} s wall, "
            f"{data['benchmark_cpu_s']} s CPU (this process); peak RSS {data['max_rss_mb']} MB; load average "
            f"{data['load_avg_start']} at start, {data['load_avg_end']} at end.",
            "",
            common.markdown_table(data["rows"], cols),
            "",
            "train/fit/decode seconds are wall seconds of this process (on a shared machine they include waiting "
            "for a core; the training cap counts CPU seconds). decode_all_users_s: the row's wall time less its "
            "training and ID fitting, i.e. decoding every test user constrained and unconstrained (and the "
            "validation split when asked). row_at_45_min_estimate_min: ID fitting + the benchmark's 45 CPU-min "
            "training budget + that decode, the cost of one full row at this size when a core is free. Recall@10 "
            "of a budget-capped model on synthetic walks says only that the loop scores what it decodes.",
        ]
    )


if __name__ == "__main__":
    main()
