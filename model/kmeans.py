"""Seeded k-means (k-means++ seeding + Lloyd iterations), a pure function of its inputs."""

from __future__ import annotations

import math

import torch


def squared_distances(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """||x - c||^2 for every row of x against every centroid, as one matmul."""
    x_sq = (x * x).sum(dim=1, keepdim=True)
    c_sq = (centroids * centroids).sum(dim=1)
    return (x_sq - 2.0 * x @ centroids.T + c_sq).clamp_min_(0.0)


def nearest(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 16384) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of and squared distance to the nearest centroid, computed in chunks to bound memory."""
    codes = torch.empty(x.shape[0], dtype=torch.long)
    dists = torch.empty(x.shape[0], dtype=x.dtype)
    for start in range(0, x.shape[0], chunk):
        d = squared_distances(x[start : start + chunk], centroids)
        best, idx = d.min(dim=1)
        codes[start : start + chunk] = idx
        dists[start : start + chunk] = best
    return codes, dists


def kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator, trials: int | None = None) -> torch.Tensor:
    """Greedy k-means++ seeding: at each step draw `trials` candidates with probability proportional
    to D(x)^2 and keep the one that lowers the total squared distance most (2 + log k candidates by
    default), which avoids seeding centres on outliers."""
    n = x.shape[0]
    trials = trials or 2 + int(math.log(k))
    first = int(torch.randint(n, (1,), generator=generator))
    centroids = x.new_empty(k, x.shape[1])
    centroids[0] = x[first]
    closest = squared_distances(x, centroids[:1]).squeeze(1)
    for i in range(1, k):
        total = closest.sum()
        if total <= 0:  # fewer distinct points than k: fill with random points
            idx = int(torch.randint(n, (1,), generator=generator))
            centroids[i] = x[idx]
            continue
        candidates = torch.multinomial(closest / total, trials, replacement=True, generator=generator)
        options = torch.minimum(closest.unsqueeze(0), squared_distances(x[candidates], x).clone())
        best = int(options.sum(dim=1).argmin())
        centroids[i] = x[candidates[best]]
        closest = options[best]
    return centroids


@torch.no_grad()
def kmeans(
    x: torch.Tensor, k: int, *, iters: int = 25, seed: int = 0, sample: int | None = None, restarts: int = 1
) -> torch.Tensor:
    """Fit k centroids to the rows of x; same inputs and seed give the same centroids.

    Empty clusters are re-seeded with the points farthest from their centroid, so every
    centroid ends up owning data when there are at least k distinct points. With `restarts`
    > 1 the fit runs from that many seedings and keeps the one with the lowest total error.
    """
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"kmeans needs a non-empty 2-d tensor, got shape {tuple(x.shape)}")
    x = x.detach().to(torch.float32)
    generator = torch.Generator().manual_seed(seed)
    x = sample_rows(x, sample, generator)
    if x.shape[0] < k:  # too few points: repeat them with a little noise so every code has a centre
        reps = -(-k // x.shape[0])
        x = x.repeat(reps, 1)
        x = x + 1e-4 * torch.randn(x.shape, generator=generator) * x.std().clamp_min(1e-6)
    best, best_error = None, float("inf")
    for _ in range(restarts):
        centroids = _lloyd(x, kmeans_plus_plus(x, k, generator), iters)
        error = float(nearest(x, centroids)[1].sum())
        if error < best_error:
            best, best_error = centroids, error
    return best


def sample_rows(x: torch.Tensor, sample: int | None, generator: torch.Generator) -> torch.Tensor:
    """At most ``sample`` rows of x, a seeded random subset (the first draw of ``generator``); x itself if it
    has no more rows than that."""
    if sample is not None and x.shape[0] > sample:
        return x[torch.randperm(x.shape[0], generator=generator)[:sample]]
    return x


def move_to_means(x: torch.Tensor, codes: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Move every centroid that owns rows of x (by ``codes``) to their mean, in place; returns which did."""
    counts = torch.bincount(codes, minlength=centroids.shape[0])
    sums = torch.zeros_like(centroids).index_add_(0, codes, x)
    filled = counts > 0
    centroids[filled] = sums[filled] / counts[filled].unsqueeze(1).to(x.dtype)
    return filled


def _lloyd(x: torch.Tensor, centroids: torch.Tensor, iters: int) -> torch.Tensor:
    for _ in range(iters):
        codes, dists = nearest(x, centroids)
        filled = move_to_means(x, codes, centroids)
        empty = (~filled).nonzero().squeeze(1)
        if empty.numel():
            far = dists.argsort(descending=True)[: empty.numel()]
            centroids[empty] = x[far]
    return centroids
