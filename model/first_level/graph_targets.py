"""Neighbour-aware first-level targets: k-means labels refined on the items' k-NN graph.

A nearest-centroid partition (k-means, or an RQ-VAE's first codebook) cuts many pairs of
near neighbours apart. Here the first-level labels of the training catalog are improved on
the k-nearest-neighbour graph of the input embeddings, as a balanced graph partition:

    gain(item -> code) = #(its k neighbours labelled code) - balance * size(code) / (n / K)

Each sweep visits the items in seeded random order, in chunks, and moves each to the code
with the highest gain. The size term keeps the codes balanced (first-level perplexity), the
vote term keeps neighbours together (neighbour prefix share). The RQ-VAE is then trained to
reproduce the labels (a cross-entropy on its first-level code distances, with soft targets
that mix in the neighbours' labels so the encoder generalises to unseen items), so encoding
stays a pure function of the checkpoint.

Everything is deterministic given the embeddings and the seed, so a resumed run rebuilds the
same targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from semid.model.first_level.knn import EXACT_MAX_ITEMS, knn_graph
from semid.model.kmeans import kmeans, nearest

if TYPE_CHECKING:
    from semid.model.first_level.coliked import ColikedGraph


@dataclass(frozen=True)
class GraphTargets:
    """Targets for the rows in the graph (all rows, or a seeded sample of large catalogs)."""

    rows: torch.Tensor  # long [m]: the training rows in the graph, sorted
    labels: torch.Tensor  # long [m]: refined first-level label of each of them
    neighbours: torch.Tensor  # long [m, k]: positions (in ``rows``) of each one's k nearest neighbours
    position: torch.Tensor  # long [n]: position of every training row in ``rows``, -1 if not in the graph
    start: torch.Tensor | None = None  # long [m]: the k-means labels the refinement started from

    def label_of(self, rows: torch.Tensor) -> torch.Tensor:
        """Label of each training row, -1 for rows outside the graph."""
        pos = self.position[rows]
        return torch.where(pos >= 0, self.labels[pos.clamp_min(0)], pos)

    def soft(self, rows: torch.Tensor, codebook_size: int, mix: float) -> torch.Tensor:
        """Target distribution of training rows in the graph: (1 - mix) on the own label,
        ``mix`` spread over the neighbours' labels."""
        pos = self.position[rows]
        out = torch.zeros(rows.shape[0], codebook_size)
        own_mass = 1.0 - mix if self.neighbours.shape[1] else 1.0
        out[torch.arange(rows.shape[0]), self.labels[pos]] = own_mass
        if mix > 0 and self.neighbours.shape[1]:
            nbr = self.labels[self.neighbours[pos]]
            out.scatter_add_(1, nbr, torch.full(nbr.shape, mix / nbr.shape[1]))
        return out


def refine_labels(
    labels: np.ndarray,
    neighbours: np.ndarray,
    codebook_size: int,
    *,
    balance: float,
    sweeps: int,
    seed: int,
    chunks_per_sweep: int = 64,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Balanced label refinement on the k-NN graph (see the module docstring); ``weights`` [n, k]
    scale each neighbour's vote (default 1)."""
    labels = np.asarray(labels, dtype=np.int64).copy()
    n = labels.shape[0]
    if n == 0 or neighbours.shape[1] == 0:
        return labels
    counts = np.bincount(labels, minlength=codebook_size).astype(np.float64)
    penalty = balance * codebook_size / n
    rng = np.random.default_rng(seed)
    for _ in range(sweeps):
        order = rng.permutation(n)
        for part in np.array_split(order, min(chunks_per_sweep, n)):
            m = part.shape[0]
            rows = np.arange(m)
            flat = rows.repeat(neighbours.shape[1]) * codebook_size + labels[neighbours[part]].ravel()
            w = None if weights is None else weights[part].ravel()
            votes = np.bincount(flat, w, minlength=m * codebook_size).reshape(m, codebook_size).astype(np.float64)
            current = labels[part]
            gain = votes - penalty * counts[None, :]
            gain[rows, current] += penalty  # an item does not count against the code it is in
            best = gain.argmax(axis=1)
            moved = gain[rows, best] > gain[rows, current] + 1e-9
            if moved.any():
                np.subtract.at(counts, current[moved], 1.0)
                np.add.at(counts, best[moved], 1.0)
                labels[part[moved]] = best[moved]
    return labels


def build_targets(
    x: torch.Tensor,
    codebook_size: int,
    *,
    neighbours: int,
    balance: float,
    sweeps: int,
    seed: int,
    kmeans_iters: int,
    kmeans_sample: int,
    max_items: int | None = None,
    exact_max_items: int = EXACT_MAX_ITEMS,
    coliked: ColikedGraph | None = None,
) -> GraphTargets:
    """k-means on the (normalised) inputs, then balanced refinement on their k-NN graph.

    The k-NN graph is exact up to ``exact_max_items`` rows and approximate above (HNSW,
    semid.model.first_level.knn); above ``max_items`` rows it is built on a seeded sample of that many rows
    (the encoder generalises to the others). With ``coliked``, the
    items' co-liked partners vote beside their content neighbours (semid.model.first_level.coliked); the soft
    targets keep the content neighbours only.
    """
    n = x.shape[0]
    rows = torch.arange(n)
    if max_items is not None and n > max_items:
        gen = torch.Generator().manual_seed(seed + 17)
        rows = torch.randperm(n, generator=gen)[:max_items].sort().values
    data = (x.detach() if rows.shape[0] == n else x.detach()[rows]).to(torch.float32)  # no copy of a whole catalog
    centroids = kmeans(data, codebook_size, iters=kmeans_iters, seed=seed, sample=kmeans_sample)
    start = nearest(data, centroids)[0].numpy()
    graph = knn_graph(data.numpy(), neighbours, exact_max_items=exact_max_items, seed=seed)
    votes, weights = (graph, None) if coliked is None else coliked.blend(graph, rows.numpy())
    labels = refine_labels(start, votes, codebook_size, balance=balance, sweeps=sweeps, seed=seed, weights=weights)
    position = torch.full((n,), -1, dtype=torch.long)
    position[rows] = torch.arange(rows.shape[0])
    return GraphTargets(
        rows=rows,
        labels=torch.from_numpy(labels),
        neighbours=torch.from_numpy(graph),
        position=position,
        start=torch.from_numpy(start),
    )
