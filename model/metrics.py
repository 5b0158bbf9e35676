"""Codebook-health figures computed from codes: utilisation, perplexity, dead codes, collisions."""

from __future__ import annotations

import numpy as np


def level_health(codes: np.ndarray, codebook_size: int) -> dict[str, float]:
    """For one level's codes [N]: share of codes used, perplexity (exp of entropy), dead codes."""
    counts = np.bincount(codes, minlength=codebook_size).astype(np.float64)
    used = int((counts > 0).sum())
    p = counts[counts > 0] / counts.sum()
    entropy = float(-(p * np.log(p)).sum())
    return {
        "utilisation": used / codebook_size,
        "perplexity": float(np.exp(entropy)),
        "entropy": entropy,
        "dead_codes": codebook_size - used,
    }


def base_collision_rate(codes: np.ndarray) -> float:
    """Share of items whose full base code is not unique: 1 - distinct codes / items."""
    if codes.shape[0] == 0:
        return 0.0
    distinct = np.unique(codes, axis=0).shape[0]
    return 1.0 - distinct / codes.shape[0]


def largest_bucket(codes: np.ndarray) -> int:
    if codes.shape[0] == 0:
        return 0
    _, counts = np.unique(codes, axis=0, return_counts=True)
    return int(counts.max())


def codebook_health(codes: np.ndarray, codebook_size: int) -> dict[str, float]:
    """Flat dict of per-level health (`util_l1`, `perplexity_l1`, ...) plus collision figures."""
    out: dict[str, float] = {}
    for level in range(codes.shape[1]):
        h = level_health(codes[:, level], codebook_size)
        out[f"util_l{level + 1}"] = round(h["utilisation"], 4)
        out[f"perplexity_l{level + 1}"] = round(h["perplexity"], 2)
        out[f"dead_codes_l{level + 1}"] = int(h["dead_codes"])
    out["base_collision_rate"] = round(base_collision_rate(codes), 5)
    out["largest_bucket"] = largest_bucket(codes)
    return out
