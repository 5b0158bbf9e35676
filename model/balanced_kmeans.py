"""Balanced k-means: every code takes about the same share of the points.

Plain residual k-means concentrates its deeper levels: residuals are spread in every direction, and
a centroid near the origin is the nearest one for most of them, so a second or third level can use a
few dozen of its codes for most items and leave the rest to a handful each. Those levels then tell
few items apart, and more items share all their codes.

Here each Lloyd step assigns points by ``argmin_k ||x - c_k||^2 + bias_k`` instead of the plain
nearest centroid. ``bias`` is the column potential of an entropy-regularised optimal transport of the
points onto the codes with equal mass per code (Sinkhorn iterations in the log domain): the offsets
that make the biased nearest-centroid rule give every code about n / K points. The fitted ``bias`` is
kept beside the centroids, so encoding any item later (a catalog item or a new one) applies the same
rule as the fit did.
"""

from __future__ import annotations

import math

import torch

from semid.model.kmeans import kmeans, move_to_means, sample_rows, squared_distances

# entropy temperature as a share of the mean squared distance: small enough that the plan is nearly hard
TEMPERATURE = 0.02
FIRST_SINKHORN_ITERS = 100  # from a zero potential
WARM_SINKHORN_ITERS = 20  # from the previous Lloyd step's potential


def sinkhorn_bias(d: torch.Tensor, iters: int, g: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Offsets ``bias`` [K] with which ``argmin(d + bias)`` spreads the rows of ``d`` [n, K] (squared
    distances) evenly over the K columns, and the dual potential ``g`` to warm-start the next call."""
    n, k = d.shape
    eps = TEMPERATURE * float(d.mean().clamp_min(1e-12))
    log_kernel = d / -eps
    g = torch.zeros(k, dtype=d.dtype) if g is None else g
    log_rows, log_cols = -math.log(n), -math.log(k)
    for _ in range(iters):
        f = log_rows - torch.logsumexp(log_kernel + g.unsqueeze(0), dim=1)
        g = log_cols - torch.logsumexp(log_kernel + f.unsqueeze(1), dim=0)
    return -eps * g, g


def balanced_codes(x: torch.Tensor, centroids: torch.Tensor, bias: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
    """``argmin_k ||x - c_k||^2 + bias_k`` for every row of x, in chunks to bound memory."""
    codes = torch.empty(x.shape[0], dtype=torch.long)
    for start in range(0, x.shape[0], chunk):
        codes[start : start + chunk] = (squared_distances(x[start : start + chunk], centroids) + bias).argmin(dim=1)
    return codes


@torch.no_grad()
def balanced_kmeans(
    x: torch.Tensor, k: int, *, iters: int = 25, seed: int = 0, sample: int | None = None, restarts: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Centroids [k, d] and offsets [k] (see the module docstring): plain seeded k-means first, then
    ``iters`` Lloyd steps with balanced assignments. Same inputs and seed give the same result."""
    x = x.detach().to(torch.float32)
    centroids = kmeans(x, k, iters=iters, seed=seed, sample=sample, restarts=restarts)
    x = sample_rows(x, sample, torch.Generator().manual_seed(seed))  # the rows kmeans fitted on
    if x.shape[0] < k:  # fewer points than codes: nothing to balance
        return centroids, torch.zeros(k)
    bias, g = sinkhorn_bias(squared_distances(x, centroids), FIRST_SINKHORN_ITERS)
    for _ in range(iters):
        move_to_means(x, balanced_codes(x, centroids, bias), centroids)
        bias, g = sinkhorn_bias(squared_distances(x, centroids), WARM_SINKHORN_ITERS, g)
    return centroids, bias
