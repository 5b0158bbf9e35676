"""Input normalisation, part of the model and saved with it."""

from __future__ import annotations

import torch
from torch import nn


class InputNormalizer(nn.Module):
    """`l2`: unit-length rows; `standardize`: per-dimension z-score fitted on data; `none`: identity."""

    def __init__(self, *, mode: str, dim: int):
        super().__init__()
        self.mode = mode
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> None:
        if self.mode == "standardize":
            self.mean.copy_(x.mean(dim=0))
            self.std.copy_(x.std(dim=0).clamp_min(1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "l2":
            return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        if self.mode == "standardize":
            return (x - self.mean) / self.std
        return x
