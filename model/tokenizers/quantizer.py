"""Residual quantizer: L codebooks, each quantizing what the previous levels left over."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from semid.model.balanced_kmeans import balanced_kmeans
from semid.model.kmeans import kmeans, squared_distances


@dataclass
class QuantizedResult:
    codes: torch.Tensor  # long [N, L]
    quantized: torch.Tensor  # [N, D], straight-through in training
    codebook_loss: torch.Tensor  # scalar: sum over levels of ||sg(r) - e||^2
    commit_loss: torch.Tensor  # scalar: sum over levels of ||r - sg(e)||^2
    distances: torch.Tensor  # [N, L] squared distance of each level's residual to its code
    residuals: list[torch.Tensor]  # the input of every level (detached), for dead-code reset


class ResidualQuantizer(nn.Module):
    """Codebooks, EMA statistics and usage counters all live in the state dict."""

    def __init__(self, *, levels: int, codebook_size: int, dim: int, ema: bool = False, ema_decay: float = 0.99):
        super().__init__()
        self.levels = levels
        self.codebook_size = codebook_size
        self.dim = dim
        self.ema = ema
        self.ema_decay = ema_decay
        self.codebooks = nn.Parameter(torch.randn(levels, codebook_size, dim) * 0.01, requires_grad=not ema)
        self.register_buffer("ema_count", torch.ones(levels, codebook_size))
        self.register_buffer("ema_sum", self.codebooks.detach().clone())
        self.register_buffer("usage", torch.zeros(levels, codebook_size))
        # per-code offsets added to the squared distances before the nearest code is taken (balanced levels)
        self.register_buffer("code_bias", torch.zeros(levels, codebook_size))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def init_from_data(
        self,
        z: torch.Tensor,
        *,
        iters: int,
        seed: int,
        sample: int | None = None,
        restarts: int = 1,
        first_labels: torch.Tensor | None = None,
        balance_from: int = 0,
    ) -> None:
        """Seeded k-means on each level's residuals, level by level.

        With ``balance_from`` > 0, the levels from that one on (1: the first) are fitted by balanced
        k-means instead, and their offsets are kept in ``code_bias`` (semid.model.balanced_kmeans).

        With ``first_labels`` (long [N], one per row of z) the first codebook is instead the mean
        of each label's rows (a label without rows gets a seeded random row), and the residuals
        passed on are taken from those labels.
        """
        residual = z.detach().to(torch.float32)
        self.code_bias.zero_()
        for level in range(self.levels):
            if level == 0 and first_labels is not None:
                centroids = _label_means(residual, first_labels, self.codebook_size, seed)
                self.codebooks.data[level] = centroids
                codes = first_labels
            elif balance_from and level + 1 >= balance_from:
                centroids, bias = balanced_kmeans(
                    residual, self.codebook_size, iters=iters, seed=seed + level, sample=sample, restarts=restarts
                )
                self.codebooks.data[level] = centroids
                self.code_bias[level] = bias
                codes = self._nearest_codes(residual, level)
            else:
                centroids = kmeans(
                    residual, self.codebook_size, iters=iters, seed=seed + level, sample=sample, restarts=restarts
                )
                self.codebooks.data[level] = centroids
                codes = self._nearest_codes(residual, level)
            residual = residual - centroids[codes]
        self.ema_sum.copy_(self.codebooks.detach())
        self.ema_count.fill_(1.0)
        self.initialized.fill_(True)

    def _nearest_codes(self, residual: torch.Tensor, level: int) -> torch.Tensor:
        return self._offset(squared_distances(residual, self.codebooks[level].detach()), level).argmin(dim=1)

    def _offset(self, d: torch.Tensor, level: int) -> torch.Tensor:
        """``d`` plus the level's offsets where it has any (a balanced level); ``d`` itself elsewhere."""
        bias = self.code_bias[level]
        return d + bias if bool(bias.any()) else d

    def forward(self, z: torch.Tensor, first_codes: torch.Tensor | None = None) -> QuantizedResult:
        """Quantize level by level; in training, ``first_codes`` (long [N], -1 = none) forces the
        first level's codes (graph targets) instead of the nearest ones."""
        residual = z
        quantized = torch.zeros_like(z)
        codebook_loss = z.new_zeros(())
        commit_loss = z.new_zeros(())
        codes, dists, inputs = [], [], []
        for level in range(self.levels):
            book = self.codebooks[level]
            d = squared_distances(residual.detach(), book.detach())
            scores = self._offset(d, level)
            best, idx = scores.min(dim=1)
            forced = level == 0 and first_codes is not None and self.training
            if forced:
                idx = torch.where(first_codes >= 0, first_codes, idx)  # -1: no target, keep the nearest
            if forced or scores is not d:  # the chosen code's own distance, not the smallest score
                best = d.gather(1, idx.unsqueeze(1)).squeeze(1)
            chosen = book[idx]
            if self.training:
                inputs.append(residual.detach())
                self.usage[level] += torch.bincount(idx, minlength=self.codebook_size).to(self.usage.dtype)
                if self.ema:
                    self._ema_update(level, residual.detach(), idx)
                    chosen = self.codebooks[level][idx].detach()
                else:
                    codebook_loss = codebook_loss + F.mse_loss(chosen, residual.detach())
                commit_loss = commit_loss + F.mse_loss(residual, chosen.detach())
            quantized = quantized + chosen
            residual = residual - chosen.detach()
            codes.append(idx)
            dists.append(best)
        # Straight-through: forward uses the codes, backward copies the gradient to z.
        st = z + (quantized - z).detach() if self.training else quantized
        return QuantizedResult(
            codes=torch.stack(codes, dim=1),
            quantized=st,
            codebook_loss=codebook_loss,
            commit_loss=commit_loss,
            distances=torch.stack(dists, dim=1),
            residuals=inputs,
        )

    @torch.no_grad()
    def _ema_update(self, level: int, residual: torch.Tensor, idx: torch.Tensor) -> None:
        decay = self.ema_decay
        counts = torch.bincount(idx, minlength=self.codebook_size).to(residual.dtype)
        sums = torch.zeros(self.codebook_size, self.dim, dtype=residual.dtype).index_add_(0, idx, residual)
        self.ema_count[level].mul_(decay).add_(counts, alpha=1 - decay)
        self.ema_sum[level].mul_(decay).add_(sums, alpha=1 - decay)
        n = self.ema_count[level].sum()
        eps = 1e-5
        smoothed = (self.ema_count[level] + eps) / (n + self.codebook_size * eps) * n  # Laplace smoothing
        self.codebooks.data[level] = self.ema_sum[level] / smoothed.unsqueeze(1)

    @torch.no_grad()
    def reset_dead_codes(
        self, residuals: list[torch.Tensor], *, threshold: float, generator: torch.Generator
    ) -> list[int]:
        """Re-seed codes used fewer than `threshold` times since the last reset.

        New centres are drawn from the level's recent residuals with probability proportional to
        their quantization error, so they land where the codebook is doing worst (crowded codes).
        Returns the number of codes reset per level and clears the usage counters.
        """
        reset = []
        for level, residual in enumerate(residuals):
            dead = (self.usage[level] < threshold).nonzero().squeeze(1)
            reset.append(int(dead.numel()))
            if dead.numel() == 0 or residual.shape[0] == 0:
                continue
            err = squared_distances(residual, self.codebooks[level].detach()).min(dim=1).values
            weights = err.clamp_min(1e-12)
            replace = dead.numel() > residual.shape[0]
            picks = torch.multinomial(weights / weights.sum(), dead.numel(), replacement=replace, generator=generator)
            self.codebooks.data[level, dead] = residual[picks]
            self.ema_sum[level, dead] = residual[picks]
            self.ema_count[level, dead] = 1.0
        self.usage.zero_()
        return reset

    @torch.no_grad()
    def encode(
        self, z: torch.Tensor, *, alternatives: int = 1, first_codes: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Codes [N, L], per-level distances [N, L], and the last level's `alternatives` nearest codes.

        ``first_codes`` (long [N], -1 = none) fixes the first level's codes where set (first-level anchors)."""
        residual = z
        codes, dists = [], []
        alt = None
        for level in range(self.levels):
            d = squared_distances(residual, self.codebooks[level])
            scores = self._offset(d, level)
            if level == self.levels - 1 and alternatives > 1:
                k = min(alternatives, self.codebook_size)
                best_k, alt = scores.topk(k, dim=1, largest=False)
                best, idx = best_k[:, 0], alt[:, 0]
            else:
                best, idx = scores.min(dim=1)
            forced = level == 0 and first_codes is not None
            if forced:
                idx = torch.where(first_codes >= 0, first_codes, idx)
            if forced or scores is not d:  # the chosen code's own distance, not the smallest score
                best = d.gather(1, idx.unsqueeze(1)).squeeze(1)
            codes.append(idx)
            dists.append(best)
            residual = residual - self.codebooks[level][idx]
        codes_t = torch.stack(codes, dim=1)
        if alt is None:
            alt = codes_t[:, -1:]
        return codes_t, torch.stack(dists, dim=1), alt

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Sum of the chosen code vectors: the quantized latent."""
        out = torch.zeros(codes.shape[0], self.dim, dtype=self.codebooks.dtype)
        for level in range(codes.shape[1]):
            out = out + self.codebooks[level][codes[:, level]]
        return out


def _label_means(x: torch.Tensor, labels: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    counts = torch.bincount(labels, minlength=k).to(x.dtype)
    sums = torch.zeros(k, x.shape[1], dtype=x.dtype).index_add_(0, labels, x)
    centroids = sums / counts.clamp_min(1.0).unsqueeze(1)
    empty = (counts == 0).nonzero().squeeze(1)
    if empty.numel():
        picks = torch.randint(x.shape[0], (empty.numel(),), generator=torch.Generator().manual_seed(seed))
        centroids[empty] = x[picks]
    return centroids
