"""Tokenizers side by side on one catalog, in one process: semid RQ-VAE and RQ-KMeans, FAISS RQ, and the
PyPI library ``semantic-id`` (its RQ-KMeans and RQ-VAE), all at 3 levels x 256 codes.

    python benchmarks/compare_tokenizers.py --catalog ../shared/data/movielens-small/items.parquet \\
        --interactions ../shared/data/movielens-small/ratings.csv          # name "movielens"
    python benchmarks/compare_tokenizers.py --synthetic 100000             # name "synthetic100k"
    python benchmarks/compare_tokenizers.py --synthetic 20000 --only semid-rqkmeans,faiss-rq --name smoke
    python benchmarks/compare_tokenizers.py --holdout-share 0.2 --only ...   # name "movielens_holdout"

With ``--holdout-share S`` every tokenizer is fitted on the same seeded training part of the catalog
(``semid.service.evaluation.holdout.split_rows``, as ``semid evaluate --holdout-share``), every item is
encoded, and the figures are reported separately for the held-out and the trained items
(``holdout.subset_figures``: neighbours searched in the whole catalog).

``semantic-id`` comes with the optional group: ``pip install -c constraints.txt -e ".[bench]"``; without it
its rows are recorded as not run. Every tokenizer sees the same embeddings; the non-semid ones get them
L2-normalised (semid normalises inside the model, ``model.normalization = "l2"``), so reconstruction
error is measured in the same space for all. The figures are ``semid.service.evaluation.figures``'s, on raw base
codes (no dedup digit). Writes benchmarks/results/compare_<name>.{md,json}.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import MOVIELENS, markdown_table, write_results  # noqa: E402
from semid.model.config import SemidConfig  # noqa: E402
from semid.model.data.catalog import read_catalog  # noqa: E402
from semid.model.data.synthetic import synthetic_catalog  # noqa: E402
from semid.model.training.checkpoint import load_checkpoint  # noqa: E402
from semid.model.training.job import train_tokenizer  # noqa: E402
from semid.model.training.metrics import flat_key, flat_levels  # noqa: E402
from semid.service.evaluation.figures import (  # noqa: E402
    collision_figures,
    level_figures,
    neighbourhood_figures,
    pair_share,
    prefix_fanout,
    reconstruction_figures,
)
from semid.service.evaluation.holdout import split_rows, subset_figures  # noqa: E402
from semid.service.evaluation.interactions import coliked_pairs, liked_items, read_interactions  # noqa: E402

LEVELS, CODEBOOK = 3, 256
SEMID_ENCODE_BATCH = 16384  # semid.service.encoder.CheckpointEncoder's default batch
ENCODE_PASSES = 3

# (column, better): "low" or "high" is better; None: shown, not ranked
COLUMNS: list[tuple[str, str | None]] = [
    ("tokenizer", None),
    ("fit_s", "low"),
    ("encode_items_per_s", "high"),
    ("recon_mse", "low"),
    ("base_collision_rate", "low"),
    ("largest_bucket", "low"),
    *((flat_key("utilisation", level), "high") for level in (1, 2, 3)),
    *((flat_key("perplexity", level), "high") for level in (1, 2, 3)),
    ("nn_share_d1", None),  # not ranked: one big group maximises it; the lift is the ranked form
    ("nn_share_d2", None),  # not ranked: one big group maximises it; the lift is the ranked form
    ("nn_share_d3", None),  # not ranked: one big group maximises it; the lift is the ranked form
    ("nn_lift_d1", "high"),
    ("nn_lift_d2", "high"),
    ("nn_lift_d3", "high"),
    ("recall_at_10", "high"),
    ("coliked_lift_d1", "high"),
    ("coliked_popular_lift_d1", "high"),
]
SEMID_PREFIX = "semid "


@dataclass
class Fitted:
    codes: np.ndarray  # int64 [N, L]
    fit_s: float
    encode_s: float
    reconstruction: np.ndarray | None  # [N, D] in the L2-normalised input space, or None
    settings: dict[str, Any]
    notes: str = ""


# ---------------------------------------------------------------------------------------------- tokenizers


def _timed_encode(encode: Callable[[], Any], passes: int = ENCODE_PASSES) -> tuple[Any, float]:
    """Encode the whole catalog ``passes`` times; the codes and the fastest pass's seconds (the machine is
    shared, so the minimum is the least disturbed figure)."""
    best, out = float("inf"), None
    for _ in range(passes):
        start = time.perf_counter()
        out = encode()
        best = min(best, time.perf_counter() - start)
    return out, best


Runner = Callable[[np.ndarray, np.ndarray, int, np.ndarray], Fitted]  # (raw, x, seed, rows to fit on)


def _semid(tokenizer: str, model: dict[str, Any] | None = None, coliked: Any = None, **train: Any) -> Runner:
    """A semid tokenizer with config overrides; ``coliked(fit rows)`` (optional) returns the co-liked
    partners of those rows to train with (``semid train --interactions``)."""

    def run(raw: np.ndarray, x: np.ndarray, seed: int, fit: np.ndarray) -> Fitted:
        cfg = SemidConfig.from_dict(
            {"model": {"tokenizer": tokenizer, **(model or {})}, "train": {"seed": seed, **train}}
        )
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            partners = coliked(fit) if coliked is not None else None
            train_tokenizer(raw[fit], cfg, tmp, coliked=partners)  # input_dim is taken from the data
            fit_s = time.perf_counter() - start
            tok = load_checkpoint(tmp).tokenizer.eval()

        def encode() -> np.ndarray:
            parts = [
                tok.encode(torch.from_numpy(raw[s : s + SEMID_ENCODE_BATCH])).codes
                for s in range(0, raw.shape[0], SEMID_ENCODE_BATCH)
            ]
            return torch.cat(parts).numpy().astype(np.int64)

        codes, encode_s = _timed_encode(encode)
        with torch.inference_mode():
            recon = torch.cat(
                [
                    tok.decode(torch.from_numpy(codes[s : s + SEMID_ENCODE_BATCH]))
                    for s in range(0, len(codes), SEMID_ENCODE_BATCH)
                ]
            ).numpy()
        m, t = cfg.model, cfg.train
        settings = {
            "config": f"SemidConfig() defaults, overrides {model or {}} {train}"
            if model or train
            else "SemidConfig() defaults",
            "levels": m.levels,
            "codebook_size": m.codebook_size,
        }
        if tokenizer == "rqvae":
            settings.update(latent_dim=m.latent_dim, hidden_dims=list(m.hidden_dims), epochs=t.epochs, seed=t.seed)
        settings["encode_batch"] = SEMID_ENCODE_BATCH
        return Fitted(codes, fit_s, encode_s, recon, settings)

    return run


def _faiss_rq(raw: np.ndarray, x: np.ndarray, seed: int, fit: np.ndarray) -> Fitted:
    start = time.perf_counter()
    rq = faiss.ResidualQuantizer(x.shape[1], LEVELS, 8)
    rq.train(np.ascontiguousarray(x[fit]))
    fit_s = time.perf_counter() - start
    packed, encode_s = _timed_encode(lambda: rq.compute_codes(x))
    codes = packed[:, :LEVELS].astype(np.int64)  # 8-bit codes: one byte per level
    settings = {"call": f"faiss.ResidualQuantizer({x.shape[1]}, {LEVELS}, 8)", "faiss": faiss.__version__}
    return Fitted(codes, fit_s, encode_s, rq.decode(packed), settings, "its own fixed k-means seed")


def _sid_rqkmeans(implementation: str) -> Runner:
    def run(raw: np.ndarray, x: np.ndarray, seed: int, fit: np.ndarray) -> Fitted:
        import joblib  # comes with semantic-id (the `bench` extra), like the library itself
        from semantic_id import RQKMeans

        model = RQKMeans(n_levels=LEVELS, n_clusters=CODEBOOK, implementation=implementation, random_state=seed)
        start = time.perf_counter()
        # KMeansConstrained runs its n_init jobs with joblib (n_jobs=-1), which hands arrays over 1 MB to the
        # workers as read-only memory maps; its Cython centre update needs a writeable buffer ("buffer source
        # array is read-only"), so turn that memory-mapping off (arrays are pickled to the workers instead).
        with joblib.parallel_config(max_nbytes=None):
            model.fit(x[fit])
        fit_s = time.perf_counter() - start
        codes, encode_s = _timed_encode(lambda: model.encode(x))  # batch_size=None: the whole array at once
        settings = {
            "call": f"RQKMeans(n_levels={LEVELS}, n_clusters={CODEBOOK}, implementation={implementation!r}, "
            f"random_state={seed})",
            "n_init": model.n_init or ("3 (constrained default)" if implementation == "constrained" else "10"),
            "max_iter": model.max_iter,
        }
        return Fitted(codes.astype(np.int64), fit_s, encode_s, model.decode(codes), settings)

    return run


def _sid_rqvae(verbose: bool) -> Runner:
    def run(raw: np.ndarray, x: np.ndarray, seed: int, fit: np.ndarray) -> Fitted:
        from semantic_id import RQVAE

        torch.manual_seed(seed)  # the library takes no seed: weights, codebook init and batch order use torch's RNG
        model = RQVAE(in_dim=x.shape[1], num_emb_list=[CODEBOOK] * LEVELS, verbose=10**6 if verbose else False)
        start = time.perf_counter()
        model.fit(x[fit])
        fit_s = time.perf_counter() - start
        codes, encode_s = _timed_encode(lambda: model.encode(x))  # the library's batch: its batch_size (2048)
        settings = {
            "call": f"RQVAE(in_dim={x.shape[1]}, num_emb_list=[{CODEBOOK}]*{LEVELS}"
            + (", verbose=10**6" if verbose else "")
            + f"); torch.manual_seed({seed})",
            "e_dim": model.e_dim,
            "layers": model.layers,
            "epochs": model.epochs,
            "lr": model.lr,
            "batch_size": model.batch_size,
            "kmeans_init": model.kmeans_init,
            "sk_epsilons": model.sk_epsilons,
            "final_train_recon_loss": round(model.history_["recon_loss"][-1], 6),
            "best_monitor_collision_epoch": _best_epoch(model.history_.get("collision_rate", [])),
        }
        notes = (
            "verbose=True only to make fit() keep the epoch with the lowest collision rate on a 2048-item "
            "monitor sample (with verbose=False it keeps the first epoch's weights)"
            if verbose
            else "library defaults: with verbose=False fit() records a collision rate of 0 for every epoch, keeps "
            "the first epoch's weights as the 'best' (strict <) and restores them at the end: these are epoch-1 codes"
        )
        return Fitted(codes.astype(np.int64), fit_s, encode_s, model.decode(codes), settings, notes)

    return run


def _best_epoch(rates: list[float]) -> int | None:
    return int(np.argmin(rates)) + 1 if rates else None


TOKENIZERS: dict[str, tuple[str, Runner]] = {
    "semid-rqvae": ("semid rqvae", _semid("rqvae")),
    "semid-rqvae-plain": (
        "semid rqvae plain (graph_targets false, no anchors)",
        _semid("rqvae", {"first_level_anchors": 0}, graph_targets=False),
    ),
    "semid-rqvae-noanchors": (
        "semid rqvae without first-level anchors (the default before 0.4)",
        _semid("rqvae", {"first_level_anchors": 0}),
    ),
    "semid-rqvae-anchors-k8": (
        "semid rqvae, anchors' vote over 8 neighbours (tried as the default; lost downstream)",
        _semid("rqvae", {"anchor_neighbours": 8}),
    ),
    "semid-rqvae-equal-votes": (
        "semid rqvae, every anchor's vote counting the same (the default before 0.6)",
        _semid("rqvae", {"anchor_rank_scale": 0.0}),
    ),
    "semid-rqkmeans": ("semid rqkmeans", _semid("rqkmeans")),
    "semid-rqkmeans-balanced": (
        "semid rqkmeans, levels 2 and 3 balanced (--kmeans-balance-from 2)",
        _semid("rqkmeans", kmeans_balance_from=2),
    ),
    "faiss-rq": ("faiss ResidualQuantizer 3x8", _faiss_rq),
    "sid-rqkmeans": ("semantic-id RQKMeans", _sid_rqkmeans("kmeans")),
    "sid-rqkmeans-constrained": ("semantic-id RQKMeans constrained", _sid_rqkmeans("constrained")),
    "sid-rqvae": ("semantic-id RQVAE", _sid_rqvae(verbose=False)),
    "sid-rqvae-best": ("semantic-id RQVAE verbose (best-collision epoch)", _sid_rqvae(verbose=True)),
}
VARIANTS = (
    "semid-rqvae-plain",
    "semid-rqvae-noanchors",
    "semid-rqvae-anchors-k8",
    "semid-rqvae-equal-votes",
    "semid-rqkmeans-balanced",
)  # run only when asked for
DEFAULT = [key for key in TOKENIZERS if key not in VARIANTS]


# ---------------------------------------------------------------------------------------------- figures


@dataclass
class ColikedPairs:
    a: np.ndarray
    b: np.ndarray
    rnd: np.ndarray
    popular_a: np.ndarray
    popular_b: np.ndarray
    info: dict[str, Any]


def coliked_setup(path: str, item_ids: np.ndarray, n_items: int, pairs: int, seed: int) -> ColikedPairs:
    """The pairs `semid evaluate` draws (same seeds and rules), with catalog rows for items; drawn once, so every
    tokenizer is scored on the same pairs."""
    table, columns = read_interactions(path)
    order = np.argsort(item_ids, kind="stable")
    sorted_ids = item_ids[order]

    def lookup(items: np.ndarray) -> np.ndarray:
        items = np.asarray(items)
        if items.dtype.kind != sorted_ids.dtype.kind:
            items = items.astype(sorted_ids.dtype) if items.dtype.kind in "iuf" else items
        pos = np.clip(np.searchsorted(sorted_ids, items), 0, len(sorted_ids) - 1)
        return np.where(sorted_ids[pos] == items, order[pos], -1)

    liked = liked_items(table, columns, lookup)
    rng = np.random.default_rng([seed, 3])
    a, b, popular = coliked_pairs(liked, pairs, rng)
    rnd = rng.integers(0, n_items - 1, size=a.shape[0])
    rnd += rnd >= a
    distinct = popular != a
    info = {
        "columns": columns,
        "liked": liked.liked,
        "liked_known": int(liked.rows.shape[0]),
        "unknown_items": liked.unknown_items,
        "users": int(np.unique(liked.users).shape[0]),
        "pairs": int(a.shape[0]),
    }
    return ColikedPairs(a, b, rnd, a[distinct], popular[distinct], info)


def figures(x: np.ndarray, fitted: Fitted, co: ColikedPairs | None, k: int, sample: int, seed: int) -> dict:
    """Every figure of semid.service.evaluation.figures that applies to raw base codes."""
    codes = fitted.codes
    n = codes.shape[0]
    col = collision_figures(codes)
    levels = level_figures(codes, (CODEBOOK,) * LEVELS)
    nb = neighbourhood_figures(x, codes, k=k, sample=sample, seed=seed)
    row: dict[str, Any] = {
        "fit_s": round(fitted.fit_s, 2),
        "encode_items_per_s": round(n / max(fitted.encode_s, 1e-9)),
        "recon_mse": None,
        "base_collision_rate": col["collision_rate"],
        "largest_bucket": col["largest_bucket"],
    }
    if fitted.reconstruction is not None:
        rec = reconstruction_figures(x, fitted.reconstruction.astype(np.float32))
        row["recon_mse"] = round(rec["recon_mse"], 4)
    else:
        rec = None
    row.update(flat_levels(levels, ("utilisation",)))
    row.update(flat_levels(levels, ("perplexity",)))
    for d in range(1, LEVELS + 1):
        row[f"nn_share_d{d}"] = nb[f"nn_share_d{d}"]
    for d in range(1, LEVELS + 1):
        row[f"nn_lift_d{d}"] = nb[f"nn_lift_d{d}"]
    row["recall_at_10" if k == 10 else f"recall_at_{k}"] = nb["prefix_recall_at_k"]
    detail: dict[str, Any] = {
        "collisions": col,
        "levels": levels,
        "fanout": prefix_fanout(codes),
        "neighbours": nb,
        "reconstruction": rec,
    }
    if co is not None and co.a.shape[0]:
        share = pair_share(codes, co.a, co.b)
        random_share = pair_share(codes, co.a, co.rnd)
        popular_share = pair_share(codes, co.popular_a, co.popular_b)
        row["coliked_lift_d1"] = _ratio(share[0], random_share[0])
        row["coliked_popular_lift_d1"] = _ratio(share[0], popular_share[0])
        detail["coliked"] = {
            **{f"share_d{d + 1}": round(s, 5) for d, s in enumerate(share)},
            **{f"random_share_d{d + 1}": round(s, 5) for d, s in enumerate(random_share)},
            **{f"popular_share_d{d + 1}": round(s, 5) for d, s in enumerate(popular_share)},
            **{f"lift_d{d + 1}": _ratio(s, r) for d, (s, r) in enumerate(zip(share, random_share, strict=True))},
        }
    return {"row": row, "detail": detail}


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b > 0 else None


# ---------------------------------------------------------------------------------------------- analysis


def where_semid_loses(rows: list[dict]) -> tuple[list[dict], str]:
    """For each ranked column: the best tokenizer; every column whose best is not a semid tokenizer, with
    the gap between the best semid value and the best value."""
    ran = [r for r in rows if r.get("status") == "ok"]
    best_rows, lines = [], []
    for column, better in COLUMNS:
        if better is None:
            continue
        have = [(r["tokenizer"], r[column]) for r in ran if isinstance(r.get(column), int | float)]
        if len(have) < 2:
            continue
        pick = min if better == "low" else max
        best_value = pick(v for _, v in have)
        winners = [name for name, v in have if v == best_value]
        semid = [(name, v) for name, v in have if name.startswith(SEMID_PREFIX)]
        entry: dict[str, Any] = {"column": column, "better": better, "best": winners, "best_value": best_value}
        if semid:
            s_name, s_value = pick(semid, key=lambda t: t[1])
            entry.update(best_semid=s_name, best_semid_value=s_value)
            entry["semid_best"] = s_value == best_value
            if s_value != best_value:
                gap = s_value - best_value
                rel = gap / abs(best_value) if best_value else None
                entry.update(gap=gap, relative_gap=rel)
                rel_txt = f" ({rel:+.1%})" if rel is not None else ""
                lines.append(
                    f"- **{column}** ({better}er is better): best {', '.join(winners)} = {_num(best_value)}; "
                    f"best semid {s_name} = {_num(s_value)}; gap {_num(gap, signed=True)}{rel_txt}"
                )
        best_rows.append(entry)
    if not any(r["tokenizer"].startswith(SEMID_PREFIX) for r in ran):
        return best_rows, "No semid tokenizer ran."
    return best_rows, "\n".join(lines) if lines else "A semid tokenizer is best (or tied) in every column."


def _num(v: float, signed: bool = False) -> str:
    if isinstance(v, int) or float(v).is_integer():
        return f"{int(v):+d}" if signed else str(int(v))
    return f"{v:+.4g}" if signed else f"{v:.4g}"


def perplexity_lines(rows: list[dict]) -> str:
    """How each tokenizer spreads items over codes, level by level (for reading the table)."""
    out = []
    for r in rows:
        if r.get("status") != "ok":
            continue
        levels = r["_detail"]["levels"]
        fan = r["_detail"]["fanout"]
        per = " / ".join(f"{lv['perplexity']:.0f}" for lv in levels)
        top = " / ".join(f"{lv['sorted_counts'][0]}" for lv in levels)
        dead = " / ".join(f"{lv['dead_codes']}" for lv in levels)
        kids = " / ".join(f"{f['mean_children']:.1f}" for f in fan)
        out.append(f"| {r['tokenizer']} | {per} | {top} | {dead} | {kids} |")
    head = (
        "| tokenizer | perplexity l1/l2/l3 | most-used code's items l1/l2/l3 | dead codes l1/l2/l3 | "
        "mean children per node, depth 0/1/2 |\n|---|---|---|---|---|"
    )
    return head + "\n" + "\n".join(out)


# ---------------------------------------------------------------------------------------------- main


def load_catalog(args: argparse.Namespace) -> tuple[str, np.ndarray, np.ndarray, str]:
    if args.synthetic:
        cat = synthetic_catalog(items=args.synthetic, dim=args.dim, seed=args.seed)
        n = args.synthetic
        default = f"synthetic{n // 1000}k" if n % 1000 == 0 else f"synthetic{n}"
        source = f"semid.model.data.synthetic.synthetic_catalog(items={n}, dim={args.dim})"
        return default, cat.item_ids, cat.embeddings, source
    path = Path(args.catalog)
    if not path.is_file():
        raise SystemExit(f"catalog {path} not found (needs ../shared/data)")
    cat = read_catalog(path)
    default = "movielens" if "movielens" in str(path) else path.stem
    return default, cat.item_ids, cat.embeddings, str(path)


def _rows_json(rows: list[dict]) -> list[dict]:
    """Rows as the JSON records them: the private ``_detail`` under ``detail``."""
    out = []
    for r in rows:
        r = dict(r)
        r["detail"] = r.pop("_detail", None)
        out.append(r)
    return out


def _not_run_and_note(rows: list[dict], skipped: list[str], note: str | None) -> list[str]:
    """The report's "Not run" section (failed or skipped tokenizers) and the run's free-text note."""
    md: list[str] = []
    failed = [r for r in rows if r.get("status") != "ok"]
    if failed or skipped:
        md += ["", "## Not run", ""]
        md += [f"- {r['tokenizer']}: {r['status']}: {r.get('error', '')}" for r in failed]
        if skipped:
            md.append(f"- skipped with --only/--skip: {', '.join(skipped)}.")
    if note:
        md += ["", note]
    return md


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--catalog", default=str(MOVIELENS), help="Parquet/.npy catalog (default: MovieLens small)")
    src.add_argument("--synthetic", type=int, metavar="N", help="use semid's synthetic catalog of N items")
    ap.add_argument("--dim", type=int, default=384, help="dimension of the synthetic catalog")
    ap.add_argument("--interactions", help="ratings CSV/Parquet for the co-liked lift (catalog item ids)")
    ap.add_argument("--only", help=f"comma-separated subset of: {','.join(TOKENIZERS)}")
    ap.add_argument("--skip", help="comma-separated tokenizers to leave out")
    ap.add_argument("--name", help="results name: compare_<name> (default: movielens / synthetic<N/1000>k / stem)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--sample", type=int, default=2000)
    ap.add_argument("--pairs", type=int, default=100_000)
    ap.add_argument("--note", default="", help="text for the markdown, e.g. why tokenizers were skipped")
    ap.add_argument("--holdout-share", type=float, help="fit on a seeded 1-S of the catalog, report held-out items")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    wanted = args.only.split(",") if args.only else list(DEFAULT)
    wanted = [w for w in wanted if w not in (args.skip.split(",") if args.skip else [])]
    unknown = [w for w in wanted if w not in TOKENIZERS]
    if unknown:
        raise SystemExit(f"unknown tokenizer(s) {unknown}; choose from {list(TOKENIZERS)}")
    skipped = [t for t in TOKENIZERS if t not in wanted]

    default_name, item_ids, raw, source = load_catalog(args)
    name = args.name or (default_name + ("_holdout" if args.holdout_share else ""))
    raw = np.ascontiguousarray(raw, dtype=np.float32)
    x = raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)  # the space every figure is taken in
    co = coliked_setup(args.interactions, item_ids, len(raw), args.pairs, args.seed) if args.interactions else None
    if args.holdout_share:
        fit, held = split_rows(len(raw), args.holdout_share, args.seed)
    else:
        fit, held = np.arange(len(raw)), None
    print(f"catalog {source}: {raw.shape[0]} items x {raw.shape[1]}; tokenizers {wanted}", flush=True)

    rows: list[dict] = []
    for key in wanted:
        label, run = TOKENIZERS[key]
        load_before = os.getloadavg()
        print(f"[{label}] fitting (load {load_before[0]:.2f})...", flush=True)
        row: dict[str, Any] = {"tokenizer": label, "key": key}
        try:
            fitted = run(raw, x, args.seed, fit)
            if held is not None:
                out = holdout_figures(x, fitted, fit, held, args.k, args.sample, args.seed)
            else:
                out = figures(x, fitted, co, args.k, args.sample, args.seed)
            row.update(status="ok", **out["row"], settings=fitted.settings, notes=fitted.notes, _detail=out["detail"])
        except ImportError as err:
            row.update(status="not installed", error=f"{type(err).__name__}: {err}")
        except Exception as err:  # record and go on: one failing tokenizer must not lose the others' figures
            row.update(status="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
        row["load_avg_before"] = [round(v, 2) for v in load_before]
        row["load_avg_after"] = [round(v, 2) for v in os.getloadavg()]
        rows.append(row)
        shown = HOLDOUT_COLUMNS[:6] if held is not None else [c for c, _ in COLUMNS[1:6]]
        summary = {c: row.get(c) for c in shown}
        print(f"[{label}] {row['status']} {summary} {row.get('error', '')}", flush=True)
        gc.collect()

    if held is not None:
        write_holdout(name, source, args, raw, rows, skipped, fit, held)
    else:
        write(name, source, args, raw, rows, skipped, co)


# the rows judged against the best of the others ("anchors")
CANDIDATES = ("semid-rqvae", "semid-rqvae-noanchors", "semid-rqvae-anchors-k8", "semid-rqvae-equal-votes")
HOLDOUT_FIGURES = [
    "nn_share_d1",
    "nn_lift_d1",
    "base_collision_rate",
    "collides_with_catalog",
    "largest_bucket",
    "perplexity_l1",
    "perplexity_l2",
    "perplexity_l3",
    "nn_share_d2",
    "recon_mse",
]
HOLDOUT_COLUMNS = [f"heldout_{c}" for c in HOLDOUT_FIGURES] + [f"train_{c}" for c in HOLDOUT_FIGURES[:3]]


def holdout_figures(
    x: np.ndarray, fitted: Fitted, fit: np.ndarray, held: np.ndarray, k: int, sample: int, seed: int
) -> dict:
    """``holdout.subset_figures`` of the held-out and the trained items (plus their reconstruction error)."""
    row: dict[str, Any] = {"fit_s": round(fitted.fit_s, 2)}
    detail: dict[str, Any] = {}
    for name, rows in (("heldout", held), ("train", fit)):
        out = subset_figures(x, fitted.codes, rows, (CODEBOOK,) * LEVELS, k=k, sample=sample, seed=seed)
        if fitted.reconstruction is not None:
            rec = reconstruction_figures(x[rows], fitted.reconstruction[rows].astype(np.float32))
            out["summary"]["recon_mse"] = round(rec["recon_mse"], 4)
        row.update({f"{name}_{key}": value for key, value in out["summary"].items()})
        detail[name] = out
    return {"row": row, "detail": detail}


def write_holdout(name, source, args, raw, rows, skipped, fit, held) -> None:
    ok = [r for r in rows if r.get("status") == "ok"]
    anchors = [r for r in ok if r["key"] not in CANDIDATES]  # every peer, semid's RQ-KMeans and plain RQ-VAE
    best = max(anchors, key=lambda r: r["heldout_nn_share_d1"]) if anchors else None
    md = [
        f"Catalog: `{source}`: {raw.shape[0]} items x {raw.shape[1]} dims. Every tokenizer fitted on the same seeded "
        f"{len(fit)} items (`split_rows(n, {args.holdout_share}, seed={args.seed})`); all items encoded; figures "
        f"of the {len(held)} held-out items (`heldout_*`) and of the trained items (`train_*`), neighbours "
        f"(k={args.k}, up to {args.sample} sampled items per subset) searched in the whole catalog. Levels x codes: "
        f"{LEVELS} x {CODEBOOK}.",
        "",
        markdown_table(ok, ["tokenizer", "fit_s", *HOLDOUT_COLUMNS]),
        "",
        "base_collision_rate, largest_bucket and perplexity are over the subset's own codes; collides_with_catalog: "
        "share of the subset's items whose base code another item of the whole catalog holds.",
    ]
    if best is not None:
        md += [
            "",
            f"Best anchor on held-out neighbour share: {best['tokenizer']} ({best['heldout_nn_share_d1']}); "
            f"1.1x = {round(1.1 * best['heldout_nn_share_d1'], 4)}.",
        ]
        for r in ok:
            if r["key"] in CANDIDATES:
                ratio = r["heldout_nn_share_d1"] / best["heldout_nn_share_d1"]
                md.append(f"- {r['tokenizer']}: {r['heldout_nn_share_d1']} = {ratio:.3f}x the best anchor")
    md += _not_run_and_note(rows, skipped, args.note)
    rows_json = _rows_json(rows)
    data = {
        "catalog": source,
        "items": int(raw.shape[0]),
        "holdout_share": args.holdout_share,
        "train_items": int(len(fit)),
        "heldout_items": int(len(held)),
        "seed": args.seed,
        "k": args.k,
        "sample": args.sample,
        "skipped": skipped,
        "rows": rows_json,
    }
    path = write_results(f"compare_{name}", data, "\n".join(md))
    print("\n".join(md))
    print(f"written to {path}")


def write(name, source, args, raw, rows, skipped, co) -> None:
    columns = [c for c, _ in COLUMNS if c in ("tokenizer",) or any(c in r for r in rows if r.get("status") == "ok")]
    ok = [r for r in rows if r.get("status") == "ok"]
    best, loses = where_semid_loses(rows)
    md = [
        f"Catalog: `{source}`: {raw.shape[0]} items x {raw.shape[1]} dims"
        + (f"; interactions `{args.interactions}` ({co.info['pairs']} co-liked pairs)" if co else "")
        + f". Levels x codes: {LEVELS} x {CODEBOOK}; seed {args.seed}; neighbour figures on {args.sample} sampled "
        f"items, k={args.k}.",
        "",
        f"Load average when the run started: {rows[0]['load_avg_before'] if rows else '-'} "
        f"(2 cores, shared with other work: timings are indicative; per row in the JSON).",
        "",
        markdown_table(ok, columns),
        "",
        "fit_s: fitting (semid: the whole `train_tokenizer` job, checkpoint write included); encode_items_per_s: "
        f"encoding the whole catalog after fit, batched as each library does (fastest of {ENCODE_PASSES} passes); "
        "recon_mse: squared error summed over dims, mean over items, in the L2-normalised input space; "
        "collisions, utilisation, perplexity, neighbour share/lift and recall@k (prefix recall) are "
        "`semid.service.evaluation.figures`'s on raw base codes; "
        "coliked lifts: co-liked pairs sharing code 1 vs random pairs / popularity-matched pairs.",
        "",
        "## How each method spreads items over codes",
        "",
        perplexity_lines(rows),
        "",
        "## Where semid loses",
        "",
        "Computed from the table: every ranked column whose best value is not a semid tokenizer's, with the gap "
        "from the best semid tokenizer. nn_share_d* are shown but not ranked: few, large groups (a collapsed "
        "codebook) raise them for free; nn_lift_d* (share over the share of random pairs) are their ranked form.",
        "",
        loses,
    ]
    md += _not_run_and_note(rows, skipped, args.note)
    notes = [r for r in ok if r.get("notes")]
    if notes:
        md += ["", "## Notes", ""] + [f"- {r['tokenizer']}: {r['notes']}" for r in notes]
        md += ["", "Settings per tokenizer are in the JSON (`rows[].settings`)."]
    rows_json = _rows_json(rows)
    data = {
        "catalog": source,
        "items": int(raw.shape[0]),
        "dim": int(raw.shape[1]),
        "interactions": args.interactions,
        "coliked": co.info if co else None,
        "levels": LEVELS,
        "codebook_size": CODEBOOK,
        "seed": args.seed,
        "k": args.k,
        "sample": args.sample,
        "skipped": skipped,
        "best_per_column": best,
        "rows": rows_json,
    }
    path = write_results(f"compare_{name}", data, "\n".join(md))
    print("\n".join(md))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
