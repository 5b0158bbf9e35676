"""`semid evaluate`: measure an index's IDs against the catalog they came from; write metrics.json + report.html.

Items are taken in semantic-ID order (the order `semid export` writes), so the seeded samples are
the reference scorer's on an export of the same index. Figures on "emitted" codes use the first L
positions of each full ID (what a generative model emits); "base" figures use the tokenizer's own
codes. They differ only for items that needed the fallback.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from semid.model.data.catalog import Catalog, CatalogError, read_catalog
from semid.model.data.files import write_text_atomically
from semid.model.training.checkpoint import LoadedCheckpoint, load_checkpoint
from semid.model.training.metrics import flat_levels, levels_from_flat
from semid.service.evaluation.figures import (
    collision_figures,
    level_figures,
    neighbourhood_figures,
    pair_share,
    prefix_fanout,
    reconstruction_figures,
)
from semid.service.evaluation.interactions import InteractionsError, coliked_pairs, liked_items, read_interactions
from semid.service.evaluation.verdicts import verdicts
from semid.service.ids.hashing import embedding_hash
from semid.service.index.handle import SemanticIdIndex

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.html"
TRAINING_KEYS = ("loss", "recon_mse", "base_collision_rate")


class CatalogMismatchError(CatalogError):
    """The catalog is not the one the index was built from (missing items, wrong dimension)."""


@dataclass(frozen=True, kw_only=True)
class EvaluationOptions:
    sample: int = 2000
    k: int = 10
    seed: int = 0
    pairs: int = 100_000
    min_rating: float = 4.0
    id_column: str = "item_id"
    embedding_column: str = "embedding"
    ids_path: str | None = None  # item ids of a .npy catalog
    user_column: str | None = None
    item_column: str | None = None
    rating_column: str | None = None

    def __post_init__(self) -> None:
        for name, low in (("sample", 1), ("k", 1), ("pairs", 1)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} is {getattr(self, name)}; expected an int >= {low}")


def evaluate_index(
    index_dir: str | Path,
    catalog_path: str | Path,
    *,
    interactions: str | Path | None = None,
    options: EvaluationOptions | None = None,
) -> dict[str, Any]:
    """Every figure of the evaluation, as one JSON-ready dict (keys: docs/configuration.md)."""
    opts = options or EvaluationOptions()
    catalog_path = Path(catalog_path)
    if not catalog_path.is_file():
        raise CatalogError(f"catalog file {catalog_path} does not exist")
    if interactions is not None and not Path(interactions).is_file():
        raise InteractionsError(f"interactions file {interactions} does not exist")
    index = SemanticIdIndex.open(index_dir, read_only=True)  # a directory or s3://...: evaluation only reads
    state = index.state
    n, levels = state.size, index.layout.levels
    if n < 2:
        raise ValueError(f"index {index_dir} has {n} items; evaluation needs at least 2")
    checkpoint = load_checkpoint(index.checkpoint_dir) if index.checkpoint_dir is not None else None
    catalog = read_catalog(
        catalog_path, id_column=opts.id_column, embedding_column=opts.embedding_column, ids_path=opts.ids_path
    )
    if checkpoint is not None and catalog.dim != checkpoint.config.model.input_dim:
        raise CatalogMismatchError(
            f"catalog {catalog_path} has embeddings of dimension {catalog.dim}; the index's checkpoint "
            f"expects {checkpoint.config.model.input_dim}"
        )
    order = state.order  # semantic-ID order, as `semid export` writes
    cat_rows, match = _match_catalog(index, catalog, catalog_path)
    emb = catalog.embeddings[cat_rows[order]]
    changed = int((embedding_hash(emb) != state.embedding_hashes[order]).sum())
    match["embedding_changed"] = changed
    if changed:
        log.warning("%d items' catalog embeddings differ from those their IDs were assigned from", changed)
    sids = state.semantic_ids[order]
    emitted, base = sids[:, :levels], state.base_codes[order]
    fallback = state.fallback[order]
    sizes = index.layout.codebook_sizes

    metrics: dict[str, Any] = {
        "index": str(index_dir),
        "catalog": str(catalog_path),
        "interactions": str(interactions) if interactions is not None else None,
        "checkpoint_fingerprint": index.fingerprint,
        "tokenizer": checkpoint.config.model.tokenizer if checkpoint is not None else None,
        "layout": index.layout.to_dict(),
        "options": asdict(opts),
        "catalog_match": match,
        "items": n,
        "unique_full_ids": round(float(np.unique(state.sorted_packed).shape[0] / n), 6),
        "fallback": {
            "items": int(fallback.sum()),
            "examples": [_plain(x) for x in state.item_ids[order][fallback][:10].tolist()],
        },
        "collisions": {"base": collision_figures(base), "emitted": collision_figures(emitted)},
        "levels": {"emitted": level_figures(emitted, sizes), "base": level_figures(base, sizes)},
        "dedup_digit": _dedup_figures(sids[:, levels], index.layout.dedup_size),
        "fanout": prefix_fanout(emitted),
    }
    log.info("neighbourhood figures on %d sampled items, k=%d", min(opts.sample, n), opts.k)
    metrics["neighbours"] = neighbourhood_figures(emb, emitted, k=opts.k, sample=opts.sample, seed=opts.seed)
    metrics["reconstruction"] = _reconstruction(checkpoint, emb, base, emitted, opts) if checkpoint else None
    metrics["coliked"] = _coliked(index, interactions, emitted, order, opts) if interactions is not None else None
    metrics["training"] = _training_rows(checkpoint)
    metrics["summary"] = _summary(metrics, levels)
    metrics["verdicts"] = verdicts(metrics["summary"], metrics["levels"]["emitted"])
    return metrics


def run_evaluation(
    index_dir: str | Path,
    catalog_path: str | Path,
    out_dir: str | Path,
    *,
    interactions: str | Path | None = None,
    options: EvaluationOptions | None = None,
) -> dict[str, Any]:
    """Evaluate and write ``metrics.json`` and ``report.html`` into ``out_dir``; returns the metrics."""
    from semid.service.evaluation.report import render_report

    metrics = evaluate_index(index_dir, catalog_path, interactions=interactions, options=options)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_text(out / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
    _write_text(out / REPORT_FILE, render_report(metrics))
    return metrics


# --- pieces --------------------------------------------------------------------------


def _match_catalog(index: SemanticIdIndex, catalog: Catalog, path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Catalog row of every active index row (-1 for retired rows); refuses a catalog that lacks indexed items."""
    n = index.item_count
    state = index.state
    index_rows = index.snapshot.lookup_items(catalog.item_ids)
    known = index_rows >= 0
    cat_rows = np.full(state.rows, -1, dtype=np.int64)
    cat_rows[index_rows[known]] = np.flatnonzero(known)
    missing = np.flatnonzero((cat_rows < 0) & state.active)
    if missing.size:
        examples = ", ".join(str(_plain(x)) for x in state.item_ids[missing[:5]].tolist())
        raise CatalogMismatchError(
            f"catalog {path} lacks {missing.size} of the index's {n} items (e.g. {examples}); "
            "evaluate needs the embeddings of every indexed item: pass the catalog the index was built from"
        )
    return cat_rows, {"catalog_items": len(catalog), "catalog_items_not_in_index": int((~known).sum())}


def _dedup_figures(digits: np.ndarray, dedup_size: int) -> dict[str, Any]:
    hist = np.bincount(digits, minlength=1)
    return {
        "dedup_size": int(dedup_size),
        "max_digit": int(digits.max()),
        "items_with_digit_above_0": int((digits > 0).sum()),
        "histogram": {str(d): int(c) for d, c in enumerate(hist) if c},
    }


def _reconstruction(
    checkpoint: LoadedCheckpoint, emb: np.ndarray, base: np.ndarray, emitted: np.ndarray, opts: EvaluationOptions
) -> dict[str, Any]:
    """Reconstruction error of the sampled items from their base codes (and from their emitted codes)."""
    rng = np.random.default_rng([opts.seed, 2])
    rows = np.sort(rng.choice(emb.shape[0], size=min(opts.sample, emb.shape[0]), replace=False))
    tok = checkpoint.tokenizer.eval()
    with torch.inference_mode():
        target = tok.normalizer(torch.from_numpy(np.ascontiguousarray(emb[rows]))).numpy()
        from_base = tok.decode(torch.from_numpy(base[rows])).numpy()
        from_emitted = tok.decode(torch.from_numpy(emitted[rows])).numpy()
    out: dict[str, Any] = {"sampled_items": int(rows.shape[0])}
    out.update(reconstruction_figures(target, from_base))
    out["recon_mse_emitted"] = reconstruction_figures(target, from_emitted)["recon_mse"]
    return out


def _coliked(
    index: SemanticIdIndex, path: str | Path, emitted: np.ndarray, order: np.ndarray, opts: EvaluationOptions
) -> dict[str, Any]:
    """Share of co-liked pairs sharing the first d codes vs random and popularity-matched pairs."""
    table, columns = read_interactions(
        path, user_column=opts.user_column, item_column=opts.item_column, rating_column=opts.rating_column
    )
    position = np.empty_like(order)
    position[order] = np.arange(order.shape[0])  # index row -> row of `emitted`

    def lookup(items: np.ndarray) -> np.ndarray:
        rows = index.snapshot.lookup_items(items)
        return np.where(rows >= 0, position[np.maximum(rows, 0)], -1)

    liked = liked_items(table, columns, lookup, min_rating=opts.min_rating)
    rng = np.random.default_rng([opts.seed, 3])
    a, b, popular = coliked_pairs(liked, opts.pairs, rng)
    rnd = rng.integers(0, emitted.shape[0] - 1, size=a.shape[0])
    rnd += rnd >= a  # a random *other* item: an item paired with itself would share every code
    distinct = popular != a
    share = pair_share(emitted, a, b)
    random_share = pair_share(emitted, a, rnd)
    popular_share = pair_share(emitted, a[distinct], popular[distinct])
    out: dict[str, Any] = {
        "columns": columns,
        "min_rating": opts.min_rating,
        "interactions": liked.interactions,
        "liked": liked.liked,
        "liked_known": int(liked.rows.shape[0]),
        "unknown_interactions": liked.unknown_interactions,
        "unknown_items": liked.unknown_items,
        "unknown_examples": liked.unknown_examples,
        "users": int(np.unique(liked.users).shape[0]),
        "pairs": int(a.shape[0]),
    }
    if liked.unknown_items:
        log.warning(
            "%d liked items (%d interactions) are not in the index; ignored",
            liked.unknown_items,
            liked.unknown_interactions,
        )
    for d in range(1, emitted.shape[1] + 1):
        out[f"share_d{d}"] = round(share[d - 1], 5)
        out[f"random_share_d{d}"] = round(random_share[d - 1], 5)
        out[f"popular_share_d{d}"] = round(popular_share[d - 1], 5)
        out[f"lift_d{d}"] = _ratio(share[d - 1], random_share[d - 1])
        out[f"popular_lift_d{d}"] = _ratio(share[d - 1], popular_share[d - 1])
        # how many pairs the shares rest on: a lift from a handful of pairs is noise
        out[f"sharing_pairs_d{d}"] = int(round(share[d - 1] * a.shape[0]))
        out[f"random_sharing_pairs_d{d}"] = int(round(random_share[d - 1] * a.shape[0]))
    return out


def _training_rows(checkpoint: LoadedCheckpoint | None) -> list[dict[str, Any]]:
    """The checkpoint's per-epoch curves (loss, recon_mse, per-level health), where present."""
    if checkpoint is None:
        return []
    rows = checkpoint.metrics.get("epochs") or []
    out = []
    for row in rows if isinstance(rows, list) else []:
        if not isinstance(row, dict):
            continue
        keep = {k: v for k, v in row.items() if k in TRAINING_KEYS}
        keep.update(flat_levels(levels_from_flat(row)))  # the per-level figures, under their own keys
        keep["epoch"] = row.get("epoch", len(out) + 1)
        out.append(keep)
    return out


def _summary(m: dict[str, Any], levels: int) -> dict[str, Any]:
    """Flat headline figures; names follow the reference scorer's where they mean the same."""
    base, emitted = m["collisions"]["base"], m["collisions"]["emitted"]
    s: dict[str, Any] = {
        "items": m["items"],
        "unique_full_ids": m["unique_full_ids"],
        "base_collision_rate": base["collision_rate"],
        "largest_bucket": base["largest_bucket"],
        "prefix_collision_rate": emitted["collision_rate"],
        "prefix_largest_bucket": emitted["largest_bucket"],
        "fallback_items": m["fallback"]["items"],
    }
    s.update(flat_levels(m["levels"]["emitted"], ("utilisation", "perplexity", "max_perplexity", "dead_codes")))
    nb = m["neighbours"]
    for d in range(1, levels + 1):
        s[f"nn_share_d{d}"] = nb[f"nn_share_d{d}"]
        s[f"nn_lift_d{d}"] = nb[f"nn_lift_d{d}"]
    s["prefix_recall_at_k"] = nb["prefix_recall_at_k"]
    s["prefix_recall_random"] = nb["prefix_recall_random"]
    s["recon_mse"] = m["reconstruction"]["recon_mse"] if m["reconstruction"] else None
    co = m["coliked"]
    if co is not None and co["pairs"]:
        s["coliked_share_d1"] = co["share_d1"]
        s["coliked_random_share_d1"] = co["random_share_d1"]
        s["coliked_lift_d1"] = co["lift_d1"]
    return s


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b > 0 else None


def _plain(value: object) -> object:
    return value.item() if isinstance(value, np.generic) else value


def _write_text(path: Path, text: str) -> None:
    write_text_atomically(path, text)
