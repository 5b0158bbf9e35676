"""New items on catalogs above the old anchor cap: one trained semid checkpoint, its first-level anchor sets side
by side, and the peers on the same split.

    python benchmarks/new_items_large.py --synthetic 100000 --epochs 20 --checkpoint /tmp/ck_syn100k
    python benchmarks/new_items_large.py --catalog ~/.cache/semid/pypi60k.parquet --epochs 20 --checkpoint ...

The catalog is split as ``semid evaluate --holdout-share`` does (``holdout.split_rows``, default 10 % held
out); semid's RQ-VAE is trained once on the training part (or its checkpoint reused), then every item is
encoded with each anchor set below. The anchors act at encoding time only, so the rows differ in nothing
but the anchors:

* ``none``: no anchors, the first code is the nearest centroid (before: every catalog above 16,384 items);
* ``all``: every trained item an anchor (the rule up to 16,384 items; unbounded memory and vote cost);
* ``shipped``: what ``semid train`` keeps now (``model.job._set_anchors`` with the config's
  ``first_level_anchors``: every item up to the cap, a bounded sample above it, semid.model.first_level.anchors);
* ``random-S``: a seeded uniform sample of S trained items (the sample the old docstring measured on
  MovieLens, for comparison);
* ``projected-P``: every trained item an anchor, the search in P dimensions (``_set_projected``; a probe of a
  cheaper vote over all trained items, not shipped).

``agree_all``: share of the held-out items whose first code equals the ``all`` row's (the cause measurement:
without anchors the encoder's nearest centroid disagrees with the vote of the trained partition).
``encode_items_per_s``: the whole catalog encoded in batches of 1,024 rows (a JSON request's size), one
torch thread, best of 2 passes (``all``: 1). Peers (``compare_tokenizers.py``'s runners: semid RQ-KMeans, FAISS RQ)
are fitted on the same training rows. Writes benchmarks/results/<name>.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import markdown_table, write_results  # noqa: E402
from benchmarks.compare_tokenizers import CODEBOOK, LEVELS, TOKENIZERS  # noqa: E402
from semid.model.config import SemidConfig  # noqa: E402
from semid.model.data.catalog import read_catalog  # noqa: E402
from semid.model.data.synthetic import synthetic_catalog  # noqa: E402
from semid.model.first_level.anchors import representatives  # noqa: E402
from semid.model.training.checkpoint import load_checkpoint  # noqa: E402
from semid.model.training.job import _set_anchors, train_tokenizer  # noqa: E402
from semid.service.evaluation.holdout import split_rows, subset_figures  # noqa: E402

FIGURES = ["nn_share_d1", "nn_lift_d1", "base_collision_rate", "collides_with_catalog", "perplexity_l1"]
BATCH = 1024


def _encode(tok: Any, raw: np.ndarray, passes: int = 2) -> tuple[np.ndarray, float]:
    best, codes = float("inf"), None
    for _ in range(passes):
        start = time.perf_counter()
        codes = torch.cat([tok.encode(torch.from_numpy(raw[s : s + BATCH])).codes for s in range(0, len(raw), BATCH)])
        best = min(best, time.perf_counter() - start)
    return codes.numpy().astype(np.int64), best


def _figures(x: np.ndarray, codes: np.ndarray, fit: np.ndarray, held: np.ndarray, sample: int, seed: int) -> dict:
    row: dict[str, Any] = {}
    for name, rows in (("heldout", held), ("train", fit)):
        out = subset_figures(x, codes, rows, (CODEBOOK,) * LEVELS, k=10, sample=sample, seed=seed)["summary"]
        row.update({f"{name}_{key}": out[key] for key in FIGURES})
    return row


def _set_rows(tok: Any, raw_fit: np.ndarray, rows: np.ndarray, digests: bool) -> None:
    """Anchors = the trained items ``rows`` with their trained first code (as model.job._set_anchors does);
    ``digests``: every trained item keeps its own code (the shipped rule above the cap)."""
    from semid.model.training.job import _first_codes

    x = torch.from_numpy(raw_fit[rows])
    with torch.inference_mode():
        target = tok.normalizer(x)
    trained = torch.from_numpy(raw_fit) if digests else None
    tok.anchors.set(target.clone(), _first_codes(tok, x).clone(), tok.quantizer.codebooks[0], trained=trained)


def _set_representatives(tok: Any, raw_fit: np.ndarray, budget: int, seed: int) -> None:
    from semid.model.training.job import _first_codes

    x = torch.from_numpy(raw_fit)
    with torch.inference_mode():
        target = F.normalize(tok.normalizer(x), dim=1)
    vectors, codes = representatives(target, _first_codes(tok, x), budget, seed=seed)
    tok.anchors.set(vectors, codes, tok.quantizer.codebooks[0], trained=x)


def _set_projected(tok: Any, raw_fit: np.ndarray, dim: int) -> None:
    """Every trained item an anchor, searched in ``dim`` dimensions: inputs and anchors are projected on the
    top right singular vectors of the trained items' normalised inputs (no centring: it keeps dot products
    best) and normalised again; digests keep the trained items' own codes. The probe of a cheaper search over
    all trained items (the vote's cost is anchors x dim), set against the representatives at equal cost."""
    from semid.model.training.job import _first_codes

    x = torch.from_numpy(raw_fit)
    with torch.inference_mode():
        target = F.normalize(tok.normalizer(x), dim=1)
    basis = torch.linalg.svd(target, full_matrices=False).Vh[:dim].T.contiguous()
    tok.anchors.set(F.normalize(target @ basis, dim=1), _first_codes(tok, x), tok.quantizer.codebooks[0], trained=x)
    plain = type(tok.anchors).vote
    inside = [False]  # the vote calls itself once for the rows that are not training items: projected already

    def vote(t: torch.Tensor, codebook: torch.Tensor, raw: torch.Tensor | None = None) -> torch.Tensor:
        if inside[0]:
            return plain(tok.anchors, t, codebook, raw)
        inside[0] = True
        try:
            projected = F.normalize(F.normalize(t.to(torch.float32), dim=1) @ basis, dim=1)
            return plain(tok.anchors, projected, codebook, raw)
        finally:
            inside[0] = False

    tok.anchors.vote = vote


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--catalog", help="Parquet/.npy catalog")
    src.add_argument("--synthetic", type=int, metavar="N", help="semid's synthetic catalog of N items")
    ap.add_argument("--share", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, help="train.epochs override (default: the config's)")
    ap.add_argument("--checkpoint", help="semid checkpoint directory: reused if it holds one, else trained into")
    ap.add_argument("--samples", default="16384", help="comma-separated sizes of the random-S rows ('' : none)")
    ap.add_argument("--protos", default="", help="comma-separated budgets of representatives-M rows ('': none)")
    ap.add_argument("--digests", action="store_true", help="random-S rows keep the trained items' codes too")
    ap.add_argument(
        "--projections", default="", help="comma-separated dims P of projected-P rows ('': none; see _set_projected)"
    )
    ap.add_argument("--cap", type=int, help="first_level_anchors for the shipped row (default: the checkpoint's)")
    ap.add_argument("--peers", default="semid-rqkmeans,faiss-rq")
    ap.add_argument("--sample", type=int, default=2000, help="items per subset for the neighbour figures")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--name", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    if args.synthetic:
        raw = synthetic_catalog(items=args.synthetic, dim=384, seed=args.seed).embeddings
        source = f"model.synthetic.synthetic_catalog(items={args.synthetic}, dim=384, seed={args.seed})"
    else:
        raw, source = read_catalog(args.catalog).embeddings, args.catalog
    raw = np.ascontiguousarray(raw, dtype=np.float32)
    x = raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)
    fit, held = split_rows(len(raw), args.share, args.seed)
    print(f"{source}: {len(raw)} items, {len(fit)} trained, {len(held)} held out", flush=True)

    train = {"seed": args.seed, **({"epochs": args.epochs} if args.epochs else {})}
    cfg = SemidConfig.from_dict({"model": {}, "train": train})
    ck = Path(args.checkpoint) if args.checkpoint else Path(f"/tmp/new_items_large_{args.name}")
    load = [round(v, 2) for v in os.getloadavg()]
    fit_s = None
    if not (ck / "model.safetensors").is_file():
        start = time.perf_counter()
        train_tokenizer(raw[fit], cfg, ck)
        fit_s = round(time.perf_counter() - start, 1)
    checkpoint = load_checkpoint(ck)
    tok, cfg_used = checkpoint.tokenizer.eval(), checkpoint.config
    rows: list[dict[str, Any]] = []
    limit = cfg_used.model.first_level_anchors

    def add(label: str, anchors: int, codes: np.ndarray, encode_s: float, extra: dict | None = None) -> None:
        row = {"row": label, "anchors": anchors, "encode_items_per_s": round(len(raw) / encode_s), **(extra or {})}
        row.update(_figures(x, codes, fit, held, args.sample, args.seed))
        row["load_avg"] = [round(v, 2) for v in os.getloadavg()]
        rows.append(row)
        print(json.dumps(row), flush=True)

    variants: list[tuple[str, Any]] = [("semid rqvae, all", "all"), ("semid rqvae, none", None)]
    variants += [(f"semid rqvae, random-{s}", int(s)) for s in args.samples.split(",") if s]
    variants += [(f"semid rqvae, representatives-{m}", f"protos:{m}") for m in args.protos.split(",") if m]
    variants += [(f"semid rqvae, projected-{p}", f"proj:{p}") for p in args.projections.split(",") if p]
    variants += [("semid rqvae, shipped", "shipped")]
    all_codes = None
    for label, how in variants:
        tok.anchors.__dict__.pop("vote", None)  # a projected row's vote is undone before the next row
        if how is None:
            tok.anchors.set(torch.zeros(0, raw.shape[1]), torch.zeros(0, dtype=torch.long), tok.quantizer.codebooks[0])
        elif how == "all":
            _set_rows(tok, raw[fit], np.arange(len(fit)), False)
        elif how == "shipped":
            _set_anchors(tok, raw[fit], cfg_used.with_overrides("model", first_level_anchors=args.cap or limit))
        elif isinstance(how, str) and how.startswith("proj:"):
            _set_projected(tok, raw[fit], int(how.split(":")[1]))
        elif isinstance(how, str):
            _set_representatives(tok, raw[fit], int(how.split(":")[1]), args.seed)
        else:
            pick = np.sort(np.random.default_rng(args.seed).choice(len(fit), size=min(how, len(fit)), replace=False))
            _set_rows(tok, raw[fit], pick, args.digests)
        codes, encode_s = _encode(tok, raw, passes=1 if how == "all" else 2)  # all: the slow reference, once
        if how == "all":
            all_codes = codes
        agree = None if all_codes is None else round(float((codes[held, 0] == all_codes[held, 0]).mean()), 4)
        add(label, tok.anchors.size, codes, encode_s, {"agree_all": agree})
    for key in [p for p in args.peers.split(",") if p]:
        label, run = TOKENIZERS[key]
        fitted = run(raw, x, args.seed, fit)
        add(label, 0, fitted.codes, fitted.encode_s, {"fit_s": round(fitted.fit_s, 1)})

    peers = [r for r in rows if not r["row"].startswith("semid rqvae")]
    shipped = next(r for r in rows if r["row"] == "semid rqvae, shipped")
    columns = ["row", "anchors", "encode_items_per_s", "agree_all"]
    columns += [f"heldout_{f}" for f in FIGURES] + [f"train_{f}" for f in FIGURES[:4]]
    cap = args.cap or limit
    text = (
        f"Catalog `{source}`: {len(raw)} items x {raw.shape[1]}; "
        f"split `split_rows(n, {args.share}, seed={args.seed})`: "
        f"{len(fit)} trained, {len(held)} held out. semid RQ-VAE: one training (config defaults"
        f"{', epochs ' + str(args.epochs) if args.epochs else ''}; checkpoint `{ck}`"
        f"{', trained in ' + str(fit_s) + ' s' if fit_s else ', reused'}), the anchor sets of its rows applied at "
        f"encoding; shipped: `model.job._set_anchors` with first_level_anchors {cap}. Neighbour figures: k=10, up "
        f"to {args.sample} sampled items per subset, neighbours searched in the whole catalog. Torch threads: "
        f"{args.threads}. Load average at start: {load} (2 cores shared with other runs: speeds are indicative).\n\n"
        + markdown_table(rows, columns)
        + "\n"
    )
    if peers:
        best = max(peers, key=lambda r: r["heldout_nn_share_d1"])
        ratio = shipped["heldout_nn_share_d1"] / best["heldout_nn_share_d1"]
        text += (
            f"\nBest peer on held-out neighbour share: {best['row']} ({best['heldout_nn_share_d1']}); "
            f"semid shipped: {shipped['heldout_nn_share_d1']} = {ratio:.3f}x.\n"
        )
    data = {"catalog": source, "share": args.share, "seed": args.seed, "epochs": args.epochs, "rows": rows}
    write_results(args.name, data, text)
    print(text)


if __name__ == "__main__":
    main()
