"""How well do a tokenizer's IDs hold for items it never saw? Train on 80 % of a catalog, encode all.

    python benchmarks/holdout_quality.py [--catalog PATH] [--configs JSON ...]

For each config (JSON overrides of the defaults, as in tune_defaults.py) the tokenizer is
trained on a seeded 80 % of the catalog, then every item is encoded. Reported separately for
the training items and the held-out ones: the share of each item's 10 nearest neighbours
(cosine, whole catalog) that share its first code, and the first-level perplexity of their
codes. Writes benchmarks/results/holdout.{md,json} with the machine and the command.
"""

from __future__ import annotations

import argparse
import json
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
from semid.model.config import SemidConfig  # noqa: E402
from semid.model.job import train_tokenizer  # noqa: E402
from semid.model.metrics import level_health  # noqa: E402

DEFAULT_CONFIGS = ['{"train": {"graph_targets": false}}', '{"train": {"graph_targets": true}}']


def neighbours(x: np.ndarray, k: int = 10) -> np.ndarray:
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(unit.shape[1])
    index.add(unit)
    return index.search(unit, k + 1)[1][:, 1:]


def run(spec: str, emb: np.ndarray, train_rows: np.ndarray, nn: np.ndarray) -> dict:
    overrides = json.loads(spec)
    cfg = SemidConfig.from_dict({"model": overrides.get("model", {}), "train": overrides.get("train", {})})
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        train_tokenizer(emb[train_rows], cfg, tmp)
        fit_s = time.perf_counter() - start
        codes = load_checkpoint(tmp).tokenizer.encode(torch.from_numpy(emb)).codes.numpy()
    first = codes[:, 0]
    held = np.ones(emb.shape[0], dtype=bool)
    held[train_rows] = False
    row = {"config": spec, "fit_s": round(fit_s, 1)}
    for name, mask in (("train", ~held), ("heldout", held)):
        row[f"share_d1_{name}"] = round(float((first[nn[mask]] == first[mask, None]).mean()), 4)
        first_level = level_health(codes[mask, :1], cfg.model.codebook_size)[0]
        row[f"perplexity_l1_{name}"] = first_level.to_json()["perplexity"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--catalog", default=str(MOVIELENS))
    ap.add_argument("--configs", nargs="*", default=DEFAULT_CONFIGS)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not Path(args.catalog).is_file():
        raise SystemExit(f"catalog {args.catalog} not found (needs ../shared/data)")
    emb = read_catalog(args.catalog).embeddings
    rng = np.random.default_rng(args.seed)
    train_rows = np.sort(rng.permutation(emb.shape[0])[: int(0.8 * emb.shape[0])])
    nn = neighbours(emb)
    rows = []
    for spec in args.configs:
        rows.append(run(spec, emb, train_rows, nn))
        print(json.dumps(rows[-1]), flush=True)
    text = (
        f"Catalog `{args.catalog}` ({emb.shape[0]} items): each tokenizer trained on a seeded 80 % "
        f"({train_rows.shape[0]} items), then all items encoded. share_d1 = share of an item's 10 nearest "
        "neighbours (cosine, whole catalog) with its first code; perplexity of the first code over the group.\n\n"
    )
    columns = ["config", "fit_s", "share_d1_train", "share_d1_heldout", "perplexity_l1_train", "perplexity_l1_heldout"]
    write_results("holdout", {"catalog": args.catalog, "rows": rows}, text + markdown_table(rows, columns))


if __name__ == "__main__":
    main()
