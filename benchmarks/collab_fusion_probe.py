"""How strongly to fuse collaborative embeddings into residual k-means (the ``semid-rqkmeans-collab`` row of
``benchmarks/generative_retrieval.py``), judged on training and validation pairs only, before any generator runs.

    python benchmarks/collab_fusion_probe.py --catalog ../shared/data/amazon-scientific/items.parquet \\
        --interactions ../shared/data/amazon-scientific/interactions.csv

The same split as the downstream benchmark (leave-one-out; the tokenizer's likes are the interactions without
each user's validation and test items). For each weight of the collaborative part (0: plain semid RQ-KMeans,
``semid-rqkmeans``), with seed 0: the base collision rate of the 3 codes, and the share of consecutive item
pairs whose two items share their first code (and their first two codes), over the training sequences
(pairs the collaborative embeddings were built from) and over each user's last training item -> validation
item (a pair they were not). Test items are not read. Writes OUT/collab_fusion_probe.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import benchmarks.generative_retrieval as gr  # noqa: E402
from benchmarks.common import markdown_table, write_results  # noqa: E402
from benchmarks.genrec_data import Split, leave_one_out, read_histories, split_users  # noqa: E402
from semid.model.data.catalog import read_catalog  # noqa: E402

WEIGHTS = (0.0, 0.3, 0.5, 1.0)
COLUMNS = ["weight", "row", "base_collision_rate"]
COLUMNS += ["train_same_c1", "train_same_c1c2", "valid_same_c1", "valid_same_c1c2"]


def pair_shares(sids: np.ndarray, pairs: np.ndarray) -> tuple[float, float]:
    """(share of pairs whose items share the first code, ... the first two codes)."""
    first = sids[pairs[:, 0], 0] == sids[pairs[:, 1], 0]
    two = (sids[pairs[:, 0], :2] == sids[pairs[:, 1], :2]).all(axis=1)
    return round(float(first.mean()), 4), round(float(two.mean()), 4)


def pairs_of(split: Split) -> tuple[np.ndarray, np.ndarray]:
    """(consecutive training pairs, last training item -> validation item pairs) as catalog rows."""
    train = [np.stack([seq[:-1], seq[1:]], axis=1) for seq in split.train if seq.shape[0] > 1]
    users = [u for u, seq in enumerate(split.train) if seq.shape[0]]
    valid = np.array([[split.train[u][-1], split.valid_target[u]] for u in users], dtype=np.int64)
    return np.concatenate(train), valid


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--interactions", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--name", default="collab_fusion_probe")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cat = read_catalog(args.catalog)
    item_ids = np.asarray(cat.item_ids)
    raw = np.ascontiguousarray(cat.embeddings, dtype=np.float32)
    x = raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)
    hist = read_histories(args.interactions, item_ids)
    split = leave_one_out(hist)
    hist_users = split_users(hist)
    train_pairs, valid_pairs = pairs_of(split)
    load_start = [round(v, 2) for v in os.getloadavg()]
    rows = []
    with tempfile.TemporaryDirectory(prefix="semid-probe-") as tmp:
        likes = gr.training_interactions(args.interactions, item_ids, hist_users, split, Path(tmp))
        for weight in WEIGHTS:
            name = "semid-rqkmeans" if weight == 0 else gr.COLLAB_KMEANS_ROW
            sids, info = gr.fit_ids(name, raw, x, item_ids, 0, likes=likes, collab_weight=weight)
            tc1, tc2 = pair_shares(sids, train_pairs)
            vc1, vc2 = pair_shares(sids, valid_pairs)
            row = {"weight": weight, "row": name, "base_collision_rate": info["base_collision_rate"]}
            row.update(train_same_c1=tc1, train_same_c1c2=tc2, valid_same_c1=vc1, valid_same_c1c2=vc2)
            print(row, flush=True)
            rows.append(row)
    load_end = [round(v, 2) for v in os.getloadavg()]
    md = [
        f"Catalog `{args.catalog}` ({len(raw)} items); interactions `{args.interactions}`; {len(split.train)} users, "
        f"{len(train_pairs)} training pairs, {len(valid_pairs)} validation pairs. Seed 0. The row shipped in "
        f"`generative_retrieval.py` uses weight {gr.COLLAB_WEIGHT}. "
        f"Load average {load_start} at start, {load_end} at end.",
        "",
        markdown_table(rows, COLUMNS),
    ]
    data = {"catalog": args.catalog, "interactions": args.interactions, "rows": rows}
    data["shipped_weight"] = gr.COLLAB_WEIGHT
    print(write_results(args.name, data, "\n".join(md)))
    return data


if __name__ == "__main__":
    main()
