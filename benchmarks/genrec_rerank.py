"""Decode-time popularity correction for the generative-retrieval benchmark (``--pop-correction``).

A generator's top candidates for a user (the beam's items with their log-probabilities, or the item-id model's
top items with theirs) are re-ranked by ``log p(item) - alpha * log(1 + count)``, ``count`` being the item's
number of occurrences in the training sequences. ``alpha`` is chosen per trained model on the validation users
early stopping scores (``ALPHAS``, the best validation Recall@10; ties: the smaller alpha), then applied to
every part. The correction re-orders the candidates only, so a row and its corrected row come from the same
trained model and differ by this step alone: a paired comparison of the lever.
"""

from __future__ import annotations

import numpy as np

from benchmarks.genrec_metrics import recall_at

ALPHAS = tuple(round(0.05 * i, 2) for i in range(21))  # 0 (no correction) .. 1 (divide by the count)
SUFFIX = " +pop-correction"
# the unconstrained beam search's figures: the correction re-ranks the constrained candidates only
UNCONSTRAINED = ("free_lists", "invalid_rate_unconstrained", "invalid_top1_unconstrained")


def rerank(items: np.ndarray, scores: np.ndarray, log_count: np.ndarray, alpha: float, top: int) -> np.ndarray:
    """Top ``top`` of each user's candidates ``items [U, C]`` (-1: none) by ``scores - alpha * log_count``;
    -1 pads a user with fewer than ``top`` candidates (every user, with fewer than ``top`` columns).
    The sort is stable: alpha 0 keeps the given order."""
    live = items >= 0
    adjusted = np.where(live, scores - alpha * log_count[np.maximum(items, 0)], -np.inf)
    order = np.argsort(-adjusted, axis=1, kind="stable")[:, :top]
    picked = np.where(np.take_along_axis(live, order, axis=1), np.take_along_axis(items, order, axis=1), -1)
    return np.pad(picked, ((0, 0), (0, top - picked.shape[1])), constant_values=-1)


def choose_alpha(tune: dict, log_count: np.ndarray, top: int) -> tuple[float, list[list[float]]]:
    """The alpha of ``ALPHAS`` with the best Recall@10 on ``tune`` (the validation users' candidates and
    targets), and the curve [[alpha, recall], ...] it was chosen from."""
    curve = [
        [a, round(recall_at(rerank(tune["items"], tune["scores"], log_count, a, top), tune["target"]), 4)]
        for a in ALPHAS
    ]
    best = max(curve, key=lambda c: (c[1], -c[0]))
    return best[0], curve


def corrected_run(run: dict, log_count: np.ndarray, top: int) -> dict | None:
    """The run with every part's lists re-ranked by the alpha chosen on its ``tune`` candidates; None for a
    run decoded before candidates were kept (or one that did not finish)."""
    tune = run.get("tune")
    if run.get("status") != "ok" or tune is None:
        return None
    alpha, curve = choose_alpha(tune, log_count, top)
    out = {k: v for k, v in run.items() if k != "tune"}
    out["pop_correction"] = {"alpha": alpha, "valid_recall10_by_alpha": curve}
    for part, decoded in run.items():
        if isinstance(decoded, dict) and "candidates" in decoded:
            cand = decoded["candidates"]
            kept = {k: v for k, v in decoded.items() if k not in UNCONSTRAINED}
            out[part] = {**kept, "lists": rerank(cand["items"], cand["scores"], log_count, alpha, top)}
    return out


def with_corrected_rows(rows: dict[str, list[dict]], log_count: np.ndarray, top: int) -> dict[str, list[dict]]:
    """``rows`` with a ``<label> +pop-correction`` row right after every row whose runs all kept their
    candidates."""
    out: dict[str, list[dict]] = {}
    for label, runs in rows.items():
        out[label] = runs
        fixed = [corrected_run(r, log_count, top) for r in runs]
        if runs and all(f is not None for f in fixed):
            out[label + SUFFIX] = fixed
    return out


def log_counts(counts: np.ndarray) -> np.ndarray:
    return np.log1p(np.asarray(counts, dtype=np.float64))
