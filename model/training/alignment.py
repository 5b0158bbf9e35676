"""Stable retraining: renumber a new tokenizer's codes to agree with an older one's.

A residual quantizer's codes are names: permuting the rows of a codebook (and of every per-code
statistic kept beside it) renames its codes and changes nothing else. The level-l codebook is one
table shared by every prefix, so the renamings that keep the model's function are exactly one
permutation per level; a permutation per (prefix, level) is not one of them.

Each level's permutation is chosen by maximum-weight matching (the Hungarian method) on the items
of a catalog encoded by both tokenizers:

- level 1: the new code c is renamed to the old code o that maximises the number of items coded
  c by the new tokenizer and o by the old one;
- level l >= 2: the weight of (c, o) counts the items coded c / o at level l *among those whose
  renamed first l - 1 codes already equal their old ones* (the agreement summed over every prefix,
  which is what a per-level permutation can maximise); ties are broken by the overlap on all items.

Level-1 agreement after alignment is never below the unaligned figure (the identity is one of the
matchings considered). Deeper levels are optimal given the levels above them; that is a greedy choice
level by level, not a joint optimum over all levels.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from semid.model.tokenizers.rqvae import SemanticTokenizer
from semid.model.training.checkpoint import LoadedCheckpoint, save_checkpoint

# Quantizer state indexed [level, code, ...]: every entry is permuted with the codebook rows.
PER_CODE_STATE = ("codebooks", "ema_count", "ema_sum", "usage", "code_bias")


def max_weight_matching(weights: np.ndarray) -> np.ndarray:
    """``match[r]``: the column given to row ``r`` in a one-to-one assignment of rows to columns
    maximising the summed weight (square ``[K, K]`` weights). Hungarian method with potentials,
    O(K^3), each inner step vectorised over the columns; exact for integer weights below 2^52."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise ValueError(f"weights must be a square matrix, got shape {w.shape}")
    n = w.shape[0]
    cost = (w.max() if n else 0.0) - w  # minimise cost == maximise weight
    inf = np.inf
    u = np.zeros(n + 1)  # row potentials (1-based, 0 is the virtual row)
    v = np.zeros(n + 1)  # column potentials
    owner = np.zeros(n + 1, dtype=np.int64)  # owner[j]: row matched to column j (0: none)
    way = np.zeros(n + 1, dtype=np.int64)
    for row in range(1, n + 1):
        owner[0] = row
        col = 0
        min_slack = np.full(n + 1, inf)
        used = np.zeros(n + 1, dtype=bool)
        while True:  # grow an alternating tree from `row` until it reaches a free column
            used[col] = True
            r = owner[col]
            slack = cost[r - 1] - u[r] - v[1:]
            free = ~used[1:]
            better = free & (slack < min_slack[1:])
            min_slack[1:][better] = slack[better]
            way[1:][better] = col
            candidates = np.where(free, min_slack[1:], inf)
            nxt = int(np.argmin(candidates)) + 1
            delta = candidates[nxt - 1]
            u[owner[used]] += delta
            v[used] -= delta
            min_slack[~used] -= delta
            col = nxt
            if owner[col] == 0:
                break
        while col:  # flip the augmenting path
            prev = way[col]
            owner[col] = owner[prev]
            col = prev
    match = np.empty(n, dtype=np.int64)
    match[owner[1:] - 1] = np.arange(n)
    return match


def agreement(old_codes: np.ndarray, new_codes: np.ndarray) -> list[float]:
    """Share of items whose first d codes agree, for d = 1..L (the last is the full base code)."""
    old, new = np.asarray(old_codes), np.asarray(new_codes)
    if old.shape != new.shape or old.ndim != 2:
        raise ValueError(f"codes must be two [N, L] arrays of one shape, got {old.shape} and {new.shape}")
    if old.shape[0] == 0:
        return [0.0] * old.shape[1]
    same_prefix = np.cumprod(old == new, axis=1).astype(bool)
    return [float(x) for x in same_prefix.mean(axis=0)]


@dataclass(frozen=True)
class Alignment:
    """One permutation per level: the new tokenizer's code ``c`` at level ``l`` becomes ``permutations[l, c]``."""

    permutations: np.ndarray  # int64 [L, K]

    def rename(self, codes: np.ndarray) -> np.ndarray:
        """Codes ``[N, L]`` of the new tokenizer as the aligned one writes them."""
        codes = np.asarray(codes, dtype=np.int64)
        return np.take_along_axis(self.permutations.T, codes, axis=0) if codes.size else codes.copy()

    @property
    def identity(self) -> bool:
        return bool((self.permutations == np.arange(self.permutations.shape[1])).all())


def fit_alignment(old_codes: np.ndarray, new_codes: np.ndarray, codebook_size: int) -> Alignment:
    """The per-level permutations renaming ``new_codes`` to agree most with ``old_codes`` (one row per item
    of a shared catalog, ``[N, L]`` each), level by level as the module docstring says."""
    old, new = np.asarray(old_codes, dtype=np.int64), np.asarray(new_codes, dtype=np.int64)
    if old.shape != new.shape or old.ndim != 2:
        raise ValueError(f"codes must be two [N, L] arrays of one shape, got {old.shape} and {new.shape}")
    k = codebook_size
    if old.size and (min(old.min(), new.min()) < 0 or max(old.max(), new.max()) >= k):
        raise ValueError(f"codes must lie in [0, {k})")
    n_items, levels = old.shape
    agree = np.ones(n_items, dtype=bool)  # renamed prefix so far equals the old one
    perms = np.empty((levels, k), dtype=np.int64)
    for level in range(levels):
        o, c = old[:, level], new[:, level]
        overall = _overlap(c, o, k)
        in_prefix = _overlap(c[agree], o[agree], k)
        perm = max_weight_matching(in_prefix * (n_items + 1) + overall)  # lexicographic: prefix first
        perms[level] = perm
        agree &= perm[c] == o
    return Alignment(permutations=perms)


def _overlap(new: np.ndarray, old: np.ndarray, k: int) -> np.ndarray:
    """``[K, K]`` int64: items with new code ``c`` (row) and old code ``o`` (column)."""
    return np.bincount(new * k + old, minlength=k * k).reshape(k, k)


@torch.no_grad()
def permute_codes(tokenizer: SemanticTokenizer, alignment: Alignment) -> SemanticTokenizer:
    """A copy of ``tokenizer`` whose codes are renamed by ``alignment``: it encodes every input to
    ``alignment.rename`` of the original's codes and decodes renamed codes to the same output."""
    quantizer = tokenizer.quantizer
    levels, k = quantizer.levels, quantizer.codebook_size
    if alignment.permutations.shape != (levels, k):
        raise ValueError(f"alignment has shape {alignment.permutations.shape}; the tokenizer has {(levels, k)}")
    _check_per_code_state(tokenizer)
    out = copy.deepcopy(tokenizer)
    q = out.quantizer
    for level, perm in enumerate(alignment.permutations):
        source = torch.from_numpy(np.argsort(perm))  # aligned code a takes the row of the code renamed to a
        for name in PER_CODE_STATE:
            table = getattr(q, name)
            table.data[level] = table.data[level][source]
    return out


def _check_per_code_state(tokenizer: SemanticTokenizer) -> None:
    """Refuse a quantizer holding per-code state this module does not know how to permute."""
    q = tokenizer.quantizer
    for name, value in q.state_dict().items():
        if name not in PER_CODE_STATE and value.ndim >= 2 and tuple(value.shape[:2]) == (q.levels, q.codebook_size):
            raise ValueError(f"quantizer state {name!r} looks per-code but is not in PER_CODE_STATE")


def write_aligned_checkpoint(
    checkpoint: LoadedCheckpoint, alignment: Alignment, out: str | Path, report: dict[str, Any]
) -> str:
    """Save the renamed tokenizer as a new checkpoint (same config, new weights and fingerprint);
    its metrics keep the original's and record the alignment. Returns the new fingerprint."""
    aligned = permute_codes(checkpoint.tokenizer, alignment)
    metrics = {k: v for k, v in checkpoint.metrics.items() if k != "fingerprint"}
    metrics["alignment"] = {"source_fingerprint": checkpoint.fingerprint, **report}
    return save_checkpoint(out, aligned, checkpoint.config, metrics)
