"""ID quality on a real catalog, side by side in one run: semid RQ-VAE, semid RQ-KMeans, FAISS RQ.

    python benchmarks/quality.py [--catalog ../shared/data/movielens-small/items.parquet]

Writes benchmarks/results/quality.{md,json}.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import MOVIELENS, markdown_table, write_results  # noqa: E402
from semid.model.config import SemidConfig  # noqa: E402
from semid.model.data.catalog import read_catalog  # noqa: E402
from semid.model.training.job import train_tokenizer  # noqa: E402
from semid.model.training.metrics import flat_key  # noqa: E402
from semid.service.evaluation.code_health import id_quality  # noqa: E402

COLUMNS = [
    "tokenizer",
    "fit_s",
    "recon_mse",
    "base_collision_rate",
    "largest_bucket",
    *(flat_key("utilisation", level) for level in (1, 2, 3)),
    *(flat_key("perplexity", level) for level in (1, 2, 3)),
    "nn_share_d1",
    "nn_share_d2",
    "nn_share_d3",
    "nn_lift_d1",
]


def semid_row(name: str, emb: np.ndarray, tokenizer: str, overrides: dict) -> dict:
    cfg = SemidConfig.from_dict(
        {"model": {"tokenizer": tokenizer, **overrides.get("model", {})}, "train": overrides.get("train", {})}
    )
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        _, metrics = train_tokenizer(emb, cfg, tmp)
        fit_s = time.perf_counter() - start
        from semid.model.training.checkpoint import load_checkpoint

        tok = load_checkpoint(tmp).tokenizer
        codes = tok.encode(torch.from_numpy(emb)).codes.numpy()
    row = {"tokenizer": name, "fit_s": round(fit_s, 1), "recon_mse": round(metrics["final"]["recon_mse"], 4)}
    row.update(id_quality(emb, codes, cfg.model.codebook_size))
    return row


def faiss_rq_row(emb: np.ndarray) -> dict:
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    start = time.perf_counter()
    rq = faiss.ResidualQuantizer(x.shape[1], 3, 8)
    rq.train(x)
    fit_s = time.perf_counter() - start
    packed = rq.compute_codes(x)
    codes = np.stack([packed[:, i] for i in range(3)], axis=1).astype(np.int64)
    recon = rq.decode(packed)
    row = {
        "tokenizer": "faiss ResidualQuantizer 3x8",
        "fit_s": round(fit_s, 1),
        "recon_mse": round(float(((recon - x) ** 2).sum(1).mean()), 4),
    }
    row.update(id_quality(x, codes, 256))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--catalog", default=str(MOVIELENS))
    args = ap.parse_args()
    if not Path(args.catalog).is_file():
        raise SystemExit(f"catalog {args.catalog} not found (needs ../shared/data)")
    emb = read_catalog(args.catalog).embeddings
    rows = [
        semid_row("semid rqvae (defaults)", emb, "rqvae", {}),
        semid_row("semid rqkmeans (defaults)", emb, "rqkmeans", {}),
        faiss_rq_row(emb),
    ]
    md = markdown_table(rows, COLUMNS)
    path = write_results("quality", {"catalog": args.catalog, "rows": rows}, md)
    print(md)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
