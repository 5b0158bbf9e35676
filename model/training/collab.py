"""LETTER-style code shaping: collaborative alignment and code diversity in the RQ-VAE's training loss.

LETTER (Wang et al., CIKM 2024) adds two terms to an RQ-VAE tokenizer's loss so that its IDs serve a
generative recommender better:

- **collaborative alignment** (``collab_align``): an in-batch contrastive (InfoNCE) loss pulling each item's
  quantized latent toward its own collaborative embedding and away from the other items' ones, so items that
  the same users interact with get nearby latents, hence shared codes;
- **code diversity** (``code_diversity``): a term spreading items over the codes. LETTER clusters the code
  embeddings and contrasts them; here it is the simpler, direct form: at every level, one minus the entropy
  of the batch's mean soft assignment over the codes divided by log K (0 when the batch uses every code
  evenly). The soft assignment is the softmax of minus the code distances scaled by their batch mean times
  ``graph_temperature``, as in the graph-target loss.

The collaborative embeddings are computed here, from the likes `semid train --interactions` already reads
(semid.model.first_level.coliked), with no pretrained model: the truncated SVD of the item-item PPMI matrix (positive
pointwise mutual information of two items being liked by one user), ``U * sqrt(S)`` at the rank of the
quantized latent. Why this and not item2vec: skip-gram with negative sampling implicitly factorises a shifted
PMI matrix (Levy and Goldberg, NeurIPS 2014), so PPMI + SVD gives the same kind of vectors in closed form,
without a training loop or its hyperparameters, sparse (seconds on a 20k-item catalog) and deterministic
(ARPACK from a start vector drawn from the seed, signs fixed). Items without likes have no embedding and are
left out of the alignment; the encoder still maps an embedding to codes with no interaction input.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import sparse
from scipy.sparse.linalg import svds

from semid.model.config import SemidConfig
from semid.model.kmeans import squared_distances

log = logging.getLogger(__name__)


class CollabError(ValueError):
    """Collaborative alignment was asked for without what it needs (interactions, the rqvae tokenizer)."""


def ppmi_svd(users: np.ndarray, rows: np.ndarray, n_items: int, dim: int, seed: int) -> np.ndarray:
    """[n_items, dim] float32 collaborative embeddings from liked (user index, catalog row) pairs: the truncated
    SVD of the item-item PPMI matrix, ``U * sqrt(S)``, largest singular values first. Rows of items without a
    co-liked partner are zero; columns beyond the matrix's rank are zero. Deterministic for a seed."""
    out = np.zeros((n_items, dim), dtype=np.float32)
    users, rows = np.asarray(users, dtype=np.int64), np.asarray(rows, dtype=np.int64)
    if rows.shape[0] == 0:
        return out
    liked = sparse.csr_matrix(
        (np.ones(rows.shape[0], dtype=np.float64), (users, rows)), shape=(int(users.max()) + 1, n_items)
    )
    liked.data[:] = 1.0  # one like per (user, item), however often the file repeats it
    co = (liked.T @ liked).tocsr()
    co.setdiag(0.0)
    co.eliminate_zeros()
    if co.nnz == 0:
        return out
    total, margin = float(co.sum()), np.asarray(co.sum(axis=1)).ravel()
    pairs = co.tocoo()
    pmi = np.log(pairs.data * total / (margin[pairs.row] * margin[pairs.col]))
    keep = pmi > 0
    ppmi = sparse.csr_matrix((pmi[keep], (pairs.row[keep], pairs.col[keep])), shape=(n_items, n_items))
    rank = min(dim, n_items - 1)
    if ppmi.nnz == 0 or rank < 1:
        return out
    start = np.random.default_rng([seed, 23]).standard_normal(n_items)
    if rank < n_items - 1:
        u, s, _ = svds(ppmi, k=rank, v0=start)
    else:  # ARPACK needs k < n - 1: a tiny catalog takes the dense SVD
        u, s, _ = np.linalg.svd(ppmi.toarray())
        u, s = u[:, :rank], s[:rank]
    order = np.argsort(-s, kind="stable")
    u, s = u[:, order], np.clip(s[order], 0.0, None)
    signs = np.sign(u[np.abs(u).argmax(axis=0), np.arange(u.shape[1])])  # each column's largest entry positive
    emb = u * np.where(signs == 0, 1.0, signs) * np.sqrt(s)
    out[:, : emb.shape[1]] = emb
    return out


@dataclass(frozen=True)
class CodeShaping:
    """The extra loss terms of one run and what they need (built once per run by :meth:`build`)."""

    align: float
    diversity: float
    temperature: float  # of the alignment's cosine similarities
    distance_temperature: float  # of the diversity term's code distances
    collab: torch.Tensor | None  # [n, dim] L2-normalised collaborative embeddings (zero rows: no likes)
    known: torch.Tensor | None  # bool [n]: items with a collaborative embedding

    @classmethod
    def build(cls, cfg: SemidConfig, n_items: int, liked: np.ndarray | None) -> CodeShaping | None:
        """None when both weights are 0. ``liked``: int64 [m, 2] (user index, training row) of the likes
        read from ``--interactions`` (semid.model.first_level.coliked), None without interactions."""
        t = cfg.train
        check_options(cfg, interactions=liked is not None)
        if t.collab_align == 0 and t.code_diversity == 0:
            return None
        collab = known = None
        if t.collab_align > 0:
            assert liked is not None  # check_options
            emb = ppmi_svd(liked[:, 0], liked[:, 1], n_items, cfg.model.code_dim, t.seed)
            known = torch.from_numpy(np.abs(emb).sum(axis=1) > 0)
            collab = F.normalize(torch.from_numpy(emb), dim=1)
            log.info("collaborative embeddings: %d of %d items, rank %d", int(known.sum()), n_items, emb.shape[1])
        return cls(t.collab_align, t.code_diversity, t.collab_temperature, t.graph_temperature, collab, known)

    def losses(
        self, quantized: torch.Tensor, latent: torch.Tensor, codes: torch.Tensor, codebooks: torch.Tensor, rows
    ) -> dict[str, tuple[float, torch.Tensor]]:
        """``{name: (weight, loss)}`` of the batch ``rows`` (training rows) whose quantized latent (straight-
        through), encoder output and codes the quantizer returned."""
        out: dict[str, tuple[float, torch.Tensor]] = {}
        if self.collab is not None and self.known is not None and self.align > 0:
            out["collab_loss"] = (
                self.align,
                alignment_loss(quantized, self.collab, self.known, rows, self.temperature),
            )
        if self.diversity > 0:
            out["diversity_loss"] = (
                self.diversity,
                diversity_loss(latent, codes, codebooks, self.distance_temperature),
            )
        return out


def check_options(cfg: SemidConfig, *, interactions: bool) -> None:
    """One-line errors for settings the run cannot honour."""
    t = cfg.train
    if (t.collab_align > 0 or t.code_diversity > 0) and cfg.model.tokenizer != "rqvae":
        raise CollabError("collab_align and code_diversity shape an RQ-VAE's training: use the rqvae tokenizer")
    if t.collab_align > 0 and not interactions:
        raise CollabError(
            f"collab_align is {t.collab_align}: collaborative alignment needs --interactions (a user-item file)"
        )


def alignment_loss(
    quantized: torch.Tensor, collab: torch.Tensor, known: torch.Tensor, rows: torch.Tensor, temperature: float
) -> torch.Tensor:
    """In-batch InfoNCE: each row's quantized latent against every batch row's collaborative embedding (cosine
    / temperature), its own as the positive. Rows without an embedding are left out (0 with fewer than 2)."""
    keep = known[rows]
    if int(keep.sum()) < 2:
        return quantized.new_zeros(())
    a = F.normalize(quantized[keep], dim=1)
    b = collab[rows[keep]]
    logits = a @ b.T / temperature
    return F.cross_entropy(logits, torch.arange(logits.shape[0]))


def diversity_loss(latent: torch.Tensor, codes: torch.Tensor, codebooks: torch.Tensor, temperature: float):
    """Mean over levels of 1 - H(batch-mean soft assignment) / log K: 0 when the batch spreads evenly over
    the K codes, 1 when it sits on one. Codebooks are not moved by it (EMA or their own loss move them)."""
    levels, size = codebooks.shape[0], codebooks.shape[1]
    residual, total = latent, latent.new_zeros(())
    for level in range(levels):
        book = codebooks[level].detach()
        d = squared_distances(residual, book)
        scale = d.mean().detach().clamp_min(1e-8) * temperature
        mean = F.softmax(-d / scale, dim=1).mean(dim=0)
        entropy = -(mean * torch.log(mean.clamp_min(1e-12))).sum()
        total = total + 1.0 - entropy / math.log(size)
        residual = residual - book[codes[:, level]]
    return total / levels
