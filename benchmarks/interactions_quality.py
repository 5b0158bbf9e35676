"""Co-liked signal before/after, in one run: `semid train` with and without ``--interactions``.

    python benchmarks/interactions_quality.py                      # MovieLens small, name "interactions_quality"
    python benchmarks/interactions_quality.py --weights 0.5,1,2 --no-holdout --name interactions_weights
    python benchmarks/interactions_quality.py --seed-noise --jobs 3   # the recorded run: fits in 3 processes

The co-liked lift is never measured on the pairs the tokenizer was trained on: a seeded share of the
users (``--user-share``, default 0.2) is held out; the tokenizer is trained with the other users'
ratings only, and the lift (`semid evaluate`'s definition: pairs of items liked (rating >= 4) by one
user sharing code 1, over random pairs; drawn by ``compare_tokenizers.coliked_setup``) is measured on
the held-out users' pairs. The lift on the training users' pairs is shown too, labelled "seen".

Part 1 trains on every item: the plain default, the default with the training users' interactions
(one row per ``--weights`` value of ``train.coliked_weight``), and semantic-id's RQKMeans (the best
peer on the co-liked lift) on the same pairs. Content figures are on all items; "no partners" is the
neighbour share of items that got no co-liked partner (so only content votes).
Part 2 (``--holdout-share``, default 0.2) trains on a seeded share of the items
(`semid evaluate --holdout-share`'s split) with and without interactions and reports the held-out
items' figures: new items must still get good codes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import MOVIELENS, markdown_table, write_results  # noqa: E402
from benchmarks.compare_tokenizers import (  # noqa: E402
    CODEBOOK,
    LEVELS,
    ColikedPairs,
    Fitted,
    _sid_rqkmeans,
    coliked_setup,
    figures,
    holdout_figures,
)
from semid.model.config import SemidConfig  # noqa: E402
from semid.model.data.catalog import read_catalog  # noqa: E402
from semid.model.first_level.coliked import read_coliked  # noqa: E402
from semid.model.training.checkpoint import load_checkpoint  # noqa: E402
from semid.model.training.job import train_tokenizer  # noqa: E402
from semid.service.evaluation.figures import pair_share  # noqa: E402
from semid.service.evaluation.holdout import split_rows, subset_figures  # noqa: E402
from semid.service.evaluation.interactions import read_interactions  # noqa: E402

RATINGS = MOVIELENS.parent / "ratings.csv"
ENCODE_BATCH = 16384


def split_users(path: str, share: float, seed: int, out_dir: Path) -> tuple[Path, Path, dict[str, Any]]:
    """(training users' file, held-out users' file, counts): a seeded share of the users held out."""
    table, columns = read_interactions(path)
    source = pq.read_table(path) if path.endswith((".parquet", ".pq")) else pa.csv.read_csv(path)
    users = np.unique(table.column("user").to_numpy(zero_copy_only=False))
    held = users[np.random.default_rng([seed, 15]).permutation(users.shape[0])[: round(share * users.shape[0])]]
    is_held = pc.is_in(source.column(columns["user"]), pa.array(held))
    train_path, held_path = out_dir / "train_users.parquet", out_dir / "heldout_users.parquet"
    pq.write_table(source.filter(pc.invert(is_held)), train_path)
    pq.write_table(source.filter(is_held), held_path)
    counts = {"users": int(users.shape[0]), "heldout_users": int(held.shape[0]), "rows": source.num_rows}
    counts["heldout_rows"] = int(pc.sum(is_held).as_py())
    return train_path, held_path, counts


def fit_semid(raw: np.ndarray, fit: np.ndarray, cfg: SemidConfig, coliked=None) -> tuple[Fitted, dict | None]:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        train_tokenizer(raw[fit], cfg, tmp, coliked=coliked)
        fit_s = time.perf_counter() - start
        ck = load_checkpoint(tmp)
    tok = ck.tokenizer.eval()
    with torch.inference_mode():
        x = torch.from_numpy(raw)
        codes = torch.cat([tok.encode(x[s : s + ENCODE_BATCH]).codes for s in range(0, len(raw), ENCODE_BATCH)])
    settings = {"train": {k: v for k, v in cfg.train.model_dump().items() if k.startswith(("coliked", "epochs"))}}
    return Fitted(codes.numpy().astype(np.int64), fit_s, 0.0, None, settings), ck.metrics.get("interactions")


def lift(codes: np.ndarray, co: ColikedPairs, mask: np.ndarray | None = None) -> float | None:
    a, b, rnd = (co.a, co.b, co.rnd) if mask is None else (co.a[mask], co.b[mask], co.rnd[mask])
    if a.shape[0] == 0:
        return None
    share, random_share = pair_share(codes, a, b)[0], pair_share(codes, a, rnd)[0]
    return round(share / random_share, 2) if random_share > 0 else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", default=str(MOVIELENS))
    ap.add_argument("--interactions", default=str(RATINGS))
    ap.add_argument("--user-share", type=float, default=0.2, help="users held out for measuring the lift")
    ap.add_argument("--holdout-share", type=float, default=0.2, help="items held out in part 2")
    ap.add_argument("--no-holdout", action="store_true", help="skip part 2")
    ap.add_argument("--no-peer", action="store_true", help="skip semantic-id RQKMeans")
    ap.add_argument("--no-default", action="store_true", help="skip the defaults row of part 1 (tuning runs)")
    ap.add_argument("--seed-noise", action="store_true", help="part 1: the defaults again with train.seed + 1")
    ap.add_argument("--weights", help="comma-separated train.coliked_weight values (default: the config default)")
    ap.add_argument("--jobs", type=int, default=1, help="semid fits run at once (separate processes)")
    ap.add_argument("--partners", type=int, help="train.coliked_partners (default: the config default)")
    ap.add_argument("--epochs", type=int, help="override train.epochs (smoke runs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pairs", type=int, default=100_000)
    ap.add_argument("--sample", type=int, default=2000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--name", default="interactions_quality")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_start = [round(v, 2) for v in os.getloadavg()]
    cat = read_catalog(args.catalog)
    raw = np.ascontiguousarray(cat.embeddings, dtype=np.float32)
    x = raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)
    n = raw.shape[0]
    train_cfg: dict[str, Any] = {"seed": args.seed, "threads": args.threads}
    if args.epochs:
        train_cfg["epochs"] = args.epochs
    if args.partners:
        train_cfg["coliked_partners"] = args.partners
    base = SemidConfig.from_dict({"train": train_cfg})
    weights = [float(w) for w in args.weights.split(",")] if args.weights else [base.train.coliked_weight]
    rows: list[dict[str, Any]] = []
    held_rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        train_path, held_path, user_counts = split_users(args.interactions, args.user_share, args.seed, Path(tmp))
        measure = coliked_setup(str(held_path), cat.item_ids, n, args.pairs, args.seed)
        seen = coliked_setup(str(train_path), cat.item_ids, n, args.pairs, args.seed)
        all_rows = np.arange(n)
        graph = read_coliked(train_path, cat.item_ids, base.train)
        lonely = np.flatnonzero(graph.partners[:, 0] < 0)

        def part1(label: str, fitted: Fitted, record: dict | None) -> None:
            out = figures(x, fitted, measure, args.k, args.sample, args.seed)["row"]
            lonely_fig = subset_figures(x, fitted.codes, lonely, (CODEBOOK,) * LEVELS, k=args.k, sample=args.sample)
            row = {"run": label, **out, "coliked_lift_d1_seen": lift(fitted.codes, seen)}
            row["nn_share_d1_no_partners"] = lonely_fig["summary"]["nn_share_d1"]
            row["settings"], row["interactions"] = fitted.settings, record
            rows.append(row)
            print({k: row.get(k) for k in SHOWN}, flush=True)

        fit, held = split_rows(n, args.holdout_share, args.seed)
        jobs: list[tuple[int, str, np.ndarray, SemidConfig, Any]] = []  # (part, label, rows to fit, config, graph)
        if not args.no_default:
            jobs.append((1, "semid rqvae (defaults)", all_rows, base, None))
        if args.seed_noise:  # how much the content figures move with the training seed alone
            other = base.with_overrides("train", seed=args.seed + 1)
            jobs.append((1, f"semid rqvae (defaults, train seed {args.seed + 1})", all_rows, other, None))
        for w in weights:
            cfg = base.with_overrides("train", coliked_weight=w)
            coliked = read_coliked(train_path, cat.item_ids, cfg.train)  # as `semid train --interactions` does
            jobs.append((1, f"semid rqvae + interactions (weight {w:g})", all_rows, cfg, coliked))
        if not args.no_holdout:
            jobs.append((2, "semid rqvae (defaults)", fit, base, None))
            cfg = base.with_overrides("train", coliked_weight=weights[0])
            sub_graph = read_coliked(train_path, cat.item_ids[fit], cfg.train)  # held-out items are unknown
            jobs.append((2, f"semid rqvae + interactions (weight {weights[0]:g})", fit, cfg, sub_graph))
        print(f"{n} items; interactions {user_counts}; {len(jobs)} semid fits, {args.jobs} at a time", flush=True)
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:  # each fit single-threaded, in its own process
            futures = [pool.submit(fit_semid, raw, job[2], job[3], job[4]) for job in jobs]
            peer = None
            if not args.no_peer:  # meanwhile, in this process
                try:
                    peer = _sid_rqkmeans("kmeans")(raw, x, args.seed, all_rows)
                except ImportError as err:
                    print(f"semantic-id not installed: {err}", flush=True)
            results = [f.result() for f in futures]
        for (part, label, _, _, _), (fitted, record) in zip(jobs, results, strict=True):
            if part == 1:
                part1(label, fitted, record)
        if peer is not None:
            part1("semantic-id RQKMeans", peer, None)
        touches_held = np.isin(measure.a, held) | np.isin(measure.b, held)
        for (part, label, _, _, _), (fitted, record) in zip(jobs, results, strict=True):
            if part != 2:
                continue
            out = holdout_figures(x, fitted, fit, held, args.k, args.sample, args.seed)["row"]
            row = {"run": label, **out, "coliked_lift_d1": lift(fitted.codes, measure)}
            row["coliked_lift_d1_heldout_pairs"] = lift(fitted.codes, measure, touches_held)
            row["interactions"] = record
            held_rows.append(row)
            print({k: row.get(k) for k in HELD_SHOWN}, flush=True)
    write(args, raw, rows, held_rows, user_counts, measure, seen, lonely, load_start)


SHOWN = [
    "run",
    "fit_s",
    "base_collision_rate",
    "perplexity_l1",
    "perplexity_l2",
    "perplexity_l3",
    "nn_share_d1",
    "nn_lift_d1",
    "nn_share_d1_no_partners",
    "recall_at_10",
    "coliked_lift_d1",
    "coliked_popular_lift_d1",
    "coliked_lift_d1_seen",
]
HELD_SHOWN = [
    "run",
    "fit_s",
    "heldout_nn_share_d1",
    "heldout_base_collision_rate",
    "heldout_perplexity_l1",
    "train_nn_share_d1",
    "train_base_collision_rate",
    "coliked_lift_d1",
    "coliked_lift_d1_heldout_pairs",
]


def write(args, raw, rows, held_rows, user_counts, measure, seen, lonely, load_start) -> None:
    md = [
        f"Catalog `{args.catalog}`: {raw.shape[0]} items x {raw.shape[1]}; interactions `{args.interactions}`. "
        f"Seed {args.seed}; {args.user_share:.0%} of the users ({user_counts['heldout_users']} of "
        f"{user_counts['users']}, {user_counts['heldout_rows']} of {user_counts['rows']} ratings) held out: "
        f"tokenizers are trained with the other users' ratings only, and `coliked_lift_d1` is measured on "
        f"{measure.info['pairs']} pairs of the held-out users (`coliked_lift_d1_seen`: on "
        f"{seen.info['pairs']} pairs of the training users, i.e. on pairs the tokenizer was trained on).",
        "",
        f"Load average at the start: {load_start}, at the end: {[round(v, 2) for v in os.getloadavg()]} (2 cores "
        f"shared with other engineers' runs: fit times are noisy). {args.jobs} fit(s) at a time, each with "
        f"{args.threads} torch thread(s).",
        "",
        "## Part 1: every item trained",
        "",
        markdown_table(rows, SHOWN),
        "",
        f"nn_share_d1_no_partners: neighbour share of the {lonely.shape[0]} items without a co-liked partner "
        "(their first codes come from content votes alone). Other figures as in `compare_tokenizers.py` "
        "(`semid.service.evaluation.figures` on raw base codes, all items).",
    ]
    if held_rows:
        md += [
            "",
            f"## Part 2: {args.holdout_share:.0%} of the items held out (`semid evaluate --holdout-share` split)",
            "",
            markdown_table(held_rows, HELD_SHOWN),
            "",
            "heldout_*: figures of the items the tokenizer never saw (neighbours searched in the whole catalog); "
            "coliked_lift_d1_heldout_pairs: held-out users' pairs with at least one held-out item.",
        ]
    data = {
        "catalog": args.catalog,
        "interactions": args.interactions,
        "user_split": user_counts,
        "measure_pairs": measure.info,
        "seen_pairs": seen.info,
        "items_without_partners": int(lonely.shape[0]),
        "load_avg_start": load_start,
        "part1": rows,
        "part2": held_rows,
    }
    path = write_results(args.name, data, "\n".join(md))
    print("\n".join(md))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
