"""How well do a tokenizer's IDs hold for items it never saw? semid configs side by side on one split.

    python benchmarks/holdout_quality.py [--catalog PATH] [--share 0.2] [--configs JSON ...]

For each config (JSON overrides of the defaults, as in tune_defaults.py) the tokenizer is trained
on the same seeded training part of the catalog (``semid.service.evaluation.holdout.split_rows``,
as ``semid evaluate --holdout-share``), then every item is encoded. The figures of the held-out and
of the trained items are ``holdout.subset_figures``' (neighbours searched in the whole catalog).
Peers (FAISS RQ, RQ-KMeans, semantic-id) on the same split: ``compare_tokenizers.py --holdout-share``.
Writes benchmarks/results/<name>.{md,json} (default ``holdout``) with the machine and the command.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import MOVIELENS, markdown_table, write_results  # noqa: E402
from semid.model.config import SemidConfig  # noqa: E402
from semid.model.data.catalog import read_catalog  # noqa: E402
from semid.model.training.checkpoint import load_checkpoint  # noqa: E402
from semid.model.training.job import train_tokenizer  # noqa: E402
from semid.service.evaluation.holdout import split_rows, subset_figures  # noqa: E402

DEFAULT_CONFIGS = ['{"train": {"graph_targets": false}}', "{}"]
FIGURES = ["nn_share_d1", "nn_lift_d1", "base_collision_rate", "collides_with_catalog", "perplexity_l1"]
FIGURES += ["perplexity_l2", "perplexity_l3", "nn_share_d2"]


def run(spec: str, emb: np.ndarray, fit: np.ndarray, held: np.ndarray, seed: int) -> dict:
    overrides = json.loads(spec)
    cfg = SemidConfig.from_dict({"model": overrides.get("model", {}), "train": overrides.get("train", {})})
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        train_tokenizer(emb[fit], cfg, tmp)
        fit_s = time.perf_counter() - start
        tok = load_checkpoint(tmp).tokenizer.eval()
        start = time.perf_counter()
        codes = tok.encode(torch.from_numpy(emb)).codes.numpy()
        encode_s = time.perf_counter() - start
    sizes = (cfg.model.codebook_size,) * cfg.model.levels
    row = {"config": spec, "fit_s": round(fit_s, 1), "encode_items_per_s": round(emb.shape[0] / encode_s)}
    for name, rows in (("heldout", held), ("train", fit)):
        figures = subset_figures(emb, codes, rows, sizes, sample=len(emb), seed=seed)["summary"]
        row.update({f"{name}_{key}": figures[key] for key in FIGURES})
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--catalog", default=str(MOVIELENS))
    ap.add_argument("--configs", nargs="*", default=DEFAULT_CONFIGS)
    ap.add_argument("--share", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--name", default="holdout")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not Path(args.catalog).is_file():
        raise SystemExit(f"catalog {args.catalog} not found (needs ../shared/data)")
    emb = np.ascontiguousarray(read_catalog(args.catalog).embeddings, dtype=np.float32)
    fit, held = split_rows(emb.shape[0], args.share, args.seed)
    rows = []
    for spec in args.configs:
        rows.append(run(spec, emb, fit, held, args.seed))
        print(json.dumps(rows[-1]), flush=True)
    text = (
        f"Catalog `{args.catalog}` ({emb.shape[0]} items): each config trained on the same seeded "
        f"{fit.shape[0]} items (`split_rows(n, {args.share}, seed={args.seed})`), then all items encoded. "
        f"Figures of the {held.shape[0]} held-out items (`heldout_*`) and of the trained items (`train_*`); "
        "nn_share_d1 = share of an item's 10 nearest neighbours (cosine, whole catalog) with its first code; "
        "collisions and perplexity over the subset's own codes; collides_with_catalog = share of the subset's "
        "items whose base code another catalog item holds.\n\n"
    )
    columns = ["config", "fit_s", "encode_items_per_s"]
    columns += [f"heldout_{f}" for f in FIGURES] + [f"train_{f}" for f in FIGURES[:5]]
    data = {"catalog": args.catalog, "share": args.share, "seed": args.seed, "rows": rows}
    write_results(args.name, data, text + markdown_table(rows, columns))


if __name__ == "__main__":
    main()
