"""How should the anchors vote? The first-level anchors' k, balance and rank scale on held-out items, per catalog
and split.

    python benchmarks/anchor_vote.py --run CATALOG SPLIT CHECKPOINT_DIR [--run ...] [--votes 10:0.5:0 10:0.5:8 ...]

A vote is ``k:balance[:rank_scale]`` (``model.anchor_neighbours``, ``anchor_balance``, ``anchor_rank_scale``;
rank scale 0 when left out: equal votes).

The anchors' settings act at encoding time only (training never reads them), so one default training
on the seeded 80 % of the catalog (``holdout.split_rows(n, 0.2, split)``, training seed = split) is
encoded with each vote in turn. Each ``--run`` names a catalog, a split seed and a directory that keeps
that training: an existing checkpoint there is reused (the table says so) and must have been trained on
the same split. Figures of the held-out and
the trained items as ``compare_tokenizers.py --holdout-share`` takes them (``holdout.subset_figures``:
neighbours searched in the whole catalog, up to 2000 items per subset).
Writes benchmarks/results/<name>.{md,json} (default ``anchor_vote``) with the machine and the command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
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

FIGURES = ("nn_share_d1", "base_collision_rate", "perplexity_l1")
SHARE = 0.2


def vote(text: str) -> tuple[int, float]:
    k, _, rest = text.partition(":")
    balance, _, rank_scale = rest.partition(":")
    return int(k), float(balance or 0.5), float(rank_scale or 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--run", nargs=3, action="append", metavar=("CATALOG", "SPLIT", "CHECKPOINT"), help="catalog, split, checkpoint"
    )
    ap.add_argument(
        "--votes", nargs="+", type=vote, default=[(10, 0.5, 0.0), (10, 0.5, 8.0)], help="k:balance[:rank_scale]"
    )
    ap.add_argument("--name", default="anchor_vote")
    args = ap.parse_args()
    torch.set_num_threads(1)
    runs = args.run or [[str(MOVIELENS), "0", "/tmp/semid-anchor-vote/movielens-0"]]
    rows, notes = [], []
    for catalog, split, checkpoint in runs:
        run_rows, note = run(catalog, int(split), Path(checkpoint), args.votes)
        rows += run_rows
        notes.append(note)
    columns = [
        "catalog",
        "split",
        "k",
        "balance",
        "rank_scale",
        *[f"heldout_{f}" for f in FIGURES],
        *[f"train_{f}" for f in FIGURES],
    ]
    md = [
        "Per catalog and split: one default training on the seeded 80 % (`split_rows(n, 0.2, seed=split)`, training "
        "seed = split); every item encoded with each vote (the anchors' k, balance and rank scale act at encoding "
        "time only). "
        "Figures of the held-out and the trained items: neighbours k=10 searched in the whole catalog, up to 2000 "
        "items per subset (as `compare_tokenizers.py --holdout-share`).",
        "",
        markdown_table(rows, columns),
        "",
        *[f"- {n}" for n in notes],
    ]
    write_results(args.name, {"runs": runs, "rows": rows, "notes": notes}, "\n".join(md))


def _decision(metrics: dict) -> str:
    d = metrics.get("graph_targets") or {}
    keys = ("reason", "kmeans_agreement", "graph_agreement", "trained_agreement", "plain_agreement")
    return ", ".join(f"{k} {d[k]}" for k in keys if d.get(k) is not None) or "not recorded"


def _label(catalog: str) -> str:
    path = Path(catalog)
    return path.parent.name if path.stem == "items" else path.stem


def run(catalog: str, split: int, ckpt: Path, votes: list[tuple[int, float, float]]) -> tuple[list[dict], str]:
    raw = np.ascontiguousarray(read_catalog(catalog).embeddings, dtype=np.float32)
    x = raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)
    fit, held = split_rows(len(raw), SHARE, split)
    reused = (ckpt / "config.json").is_file()
    fit_s = None
    if not reused:
        cfg = SemidConfig.from_dict({"train": {"seed": split, "threads": 1}})
        start = time.perf_counter()
        train_tokenizer(raw[fit], cfg, ckpt)
        fit_s = round(time.perf_counter() - start, 1)
    loaded = load_checkpoint(str(ckpt))
    tok, trained = loaded.tokenizer.eval(), loaded.metrics.get("items")
    if trained != len(fit):
        raise SystemExit(f"{ckpt} was trained on {trained} items, the split has {len(fit)}: another split?")
    anchors = tok.anchors
    if anchors is None or anchors.size == 0:
        raise SystemExit(f"{ckpt} keeps no first-level anchors (catalog above first_level_anchors?)")
    sizes = (loaded.config.model.codebook_size,) * loaded.config.model.levels
    rows = []
    for k, balance, rank_scale in votes:
        anchors.neighbours, anchors.balance, anchors.rank_scale = k, balance, rank_scale
        with torch.inference_mode():
            codes = torch.cat([tok.encode(torch.from_numpy(raw[s : s + 4096])).codes for s in range(0, len(raw), 4096)])
        row: dict = {"catalog": _label(catalog), "split": split, "k": k, "balance": balance, "rank_scale": rank_scale}
        for name, subset in (("heldout", held), ("train", fit)):
            summary = subset_figures(x, codes.numpy(), subset, sizes, k=10, sample=2000, seed=split)["summary"]
            row.update({f"{name}_{f}": summary[f] for f in FIGURES})
        rows.append(row)
        print(json.dumps(row), flush=True)
    how = f"checkpoint reused from `{ckpt}`" if reused else f"fitted in {fit_s} s"
    load = [round(v, 2) for v in os.getloadavg()]
    note = (
        f"`{catalog}` split {split}: {len(raw)} items, {len(fit)} trained ({how}), {anchors.size} anchors, "
        f"{len(held)} held out; load average after: {load}; graph targets: {_decision(loaded.metrics)}"
    )
    return rows, note


if __name__ == "__main__":
    main()
