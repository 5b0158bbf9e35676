"""First-level anchors: a k-NN vote over the trained items' first codes, stored in the checkpoint.

The neighbour-aware first level (graph targets) is learned on the training catalog; an item the
tokenizer never saw gets the code whose centroid is nearest its latent, which cuts about as many
neighbour pairs apart as a plain RQ-VAE does. The anchors carry the training partition over to new
items directly: every training item (catalogs of at most ``first_level_anchors`` items; see
:func:`anchor_rows` for why a sample is not kept) is kept as (unit-length normalised input, first code)
pairs (a larger catalog keeps at most ``REPRESENTATIVES`` per-code k-means centres instead, so memory and the
vote's cost stay bounded, plus an 8-byte digest of each training item so that those items keep the code they
were trained to rather than being voted on: :func:`representatives`, :func:`digests`), and an input's
first code is the majority code of its k nearest anchors (cosine, exact; large batches find them
through a bf16 pre-filter with a proven error bound, semid.model.first_level.anchor_search, and get the codes of the
float32 search of every anchor),
each vote weighted by ``1 / anchors of its code ** balance`` (a plain majority pulls new items into the
largest codes; the trade of share for balance is in benchmarks/results/tuning.md) and by
``1 / (1 + r / rank_scale)`` for the r-th nearest (:func:`rank_weights`).
An input equal to an anchor (cosine >= ``EXACT``: a training item) keeps that anchor's code, so the
training items encode as without anchors. Where no code wins at least ``min_share`` of the
(weighted) vote the learned quantizer's nearest code is kept.
The remaining levels quantize the residual w.r.t. the chosen first code.

Encoding stays a pure function of the checkpoint: the anchors are buffers of the state dict
(float16 vectors, int64 codes), ties go to the lowest code, and there is no randomness.

An anchor's code is kept by name *and* by vector (``centroids``: the first codebook when the anchors
were set); a vote goes to the current code whose vector is that code's. Renaming codes by permuting
the codebook rows (``semid align``) therefore renames the anchors' votes with them.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from semid.model.first_level.anchor_search import Bf16Prefilter

EXACT = 0.9999  # cosine at which an input is taken to be the anchor itself (vectors are float16)
SEARCH_CHUNK = 4096  # query rows per similarity matmul (bounds memory: chunk x anchors floats)
TOPK_GROUP = 16  # columns per group in top_k: one max per group, then a top-k over k groups' columns
REPRESENTATIVES = 8192  # anchors kept above first_level_anchors (at most that many): bounds the vote's cost
# (half a catalog at the default limit's; 4,096 before: benchmarks/results/new_items_large.md)
TOPK_MIN_ROWS = 16  # below this many rows top_k calls topk (its extra steps cost more than they save)


class FirstLevelAnchors(nn.Module):
    def __init__(
        self, dim: int, *, neighbours: int, min_share: float = 0.0, balance: float = 0.0, rank_scale: float = 0.0
    ):
        super().__init__()
        self.neighbours = neighbours
        self.min_share = min_share
        self.balance = balance
        self.rank_scale = rank_scale
        self.register_buffer("vectors", torch.zeros(0, dim, dtype=torch.float16))
        self.register_buffer("codes", torch.zeros(0, dtype=torch.long))
        self.register_buffer("centroids", torch.zeros(0, 0))
        self._unit_t: torch.Tensor | None = None  # float32 [dim, anchors] copy of vectors, made on first use
        self._prefilter: Bf16Prefilter | None = (
            None  # its bf16 search (semid.model.first_level.anchor_search), made with it
        )
        self._cache: tuple | None = None  # (key, codes, weights) of the last codebook voted with
        # sorted int64 digests (:func:`digests`) of the training items when the anchors are representatives
        # (a catalog above ``first_level_anchors``); in the state dict only when non-empty, so checkpoints
        # of smaller catalogs keep their bytes
        self.trained = torch.zeros(0, dtype=torch.long)

    @property
    def size(self) -> int:
        return int(self.codes.shape[0])

    @torch.no_grad()
    def set(
        self,
        vectors: torch.Tensor,
        codes: torch.Tensor,
        codebook: torch.Tensor,
        trained: torch.Tensor | None = None,
    ) -> None:
        """Keep these (normalised input, first code) pairs; vectors are scaled to unit length; ``codebook`` is
        the first level's [K, d], the vectors the codes name. ``trained``: the raw inputs of the training items
        when the anchors are not those items (representatives): an input equal to one of them keeps the
        learned quantizer's code, as it would as an anchor (only their digests are kept: 8 bytes an item)."""
        self.vectors = F.normalize(vectors.to(torch.float32), dim=1).to(torch.float16).contiguous()
        self.codes = codes.to(torch.long).contiguous()
        self.centroids = codebook.detach().to(torch.float32).clone()
        self.trained = torch.zeros(0, dtype=torch.long) if trained is None else torch.unique(digests(trained))
        self._unit_t = None
        self._cache = None

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.trained.numel():
            destination[prefix + "trained"] = self.trained

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # the number of anchors is not in the config: take the shapes from the stored tensors
        for name in ("vectors", "codes", "centroids"):
            stored = state_dict.get(prefix + name)
            if stored is not None:
                setattr(self, name, torch.empty_like(stored))
        stored = state_dict.pop(prefix + "trained", None)  # absent: every anchor is a training item (or none)
        self.trained = torch.zeros(0, dtype=torch.long) if stored is None else stored.to(torch.long).clone()
        self._unit_t = None
        self._cache = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def is_trained(self, raw: torch.Tensor) -> torch.Tensor:
        """bool [N]: rows whose raw input is a training item's (digest match; all False without digests)."""
        if not self.trained.numel():
            return torch.zeros(raw.shape[0], dtype=torch.bool)
        d = digests(raw)
        at = torch.searchsorted(self.trained, d).clamp_max(self.trained.numel() - 1)
        return self.trained[at] == d

    @torch.no_grad()
    def vote(self, target: torch.Tensor, codebook: torch.Tensor, raw: torch.Tensor | None = None) -> torch.Tensor:
        """long [N]: the majority first code of each row's k nearest anchors, -1 where the vote is weak or
        (given ``raw``, the rows before normalisation) the row is a training item kept only as a digest.
        ``codebook``: the first level's current [K, d] (its row order names the codes)."""
        n = target.shape[0]
        if self.size == 0:
            return torch.full((n,), -1, dtype=torch.long)
        if raw is not None and self.trained.numel():
            known = self.is_trained(raw)
            out = torch.full((n,), -1, dtype=torch.long)
            new = (~known).nonzero().flatten()
            if new.numel():
                out[new] = self.vote(target[new], codebook)
            return out
        codebook_size = codebook.shape[0]
        codes, weight = self._votes_for(codebook)
        if self._unit_t is None:  # [dim, anchors], contiguous for the matmul (the codes are the same either way)
            unit_t = self.vectors.to(torch.float32).T.contiguous()
            self._prefilter = Bf16Prefilter(unit_t, top_k)  # before _unit_t: a concurrent vote sees both or neither
            self._unit_t = unit_t
        k = min(self.neighbours, self.size)
        ordered = self.rank_scale > 0 or self.min_share > 0  # rank weights, or a sum of w in rank order
        ranks = rank_weights(k, self.rank_scale)
        out = torch.empty(n, dtype=torch.long)
        for s in range(0, n, SEARCH_CHUNK):
            q = F.normalize(target[s : s + SEARCH_CHUNK].to(torch.float32), dim=1)
            sims, idx = self._prefilter.nearest(  # type: ignore[union-attr]
                q, k, labels=codes, ordered=ordered, firm_above=EXACT
            )  # the float32 search's answer; large batches may find it through the bf16 pre-filter
            near = codes[idx]
            w = weight[near] * ranks
            votes = torch.zeros(q.shape[0], codebook_size).scatter_add_(1, near, w)
            top, code = votes.max(dim=1)  # ties: the lowest code
            code = torch.where(top >= self.min_share * w.sum(dim=1), code, -1)
            out[s : s + q.shape[0]] = torch.where(sims[:, 0] >= EXACT, near[:, 0], code)
        return out

    def _votes_for(self, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(each anchor's current code, the vote weight of each code) for this codebook, cached per codebook
        tensor and version (a small request must not pay a [K, K] distance matrix per call)."""
        key = (codebook.data_ptr(), codebook._version, tuple(codebook.shape), self.codes.data_ptr(), self.balance)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1], self._cache[2]
        # stored code -> the current code with the same vector (the identity unless the rows were permuted)
        rename = torch.cdist(self.centroids, codebook.detach().to(torch.float32)).argmin(dim=1)
        codes = rename[self.codes]
        weight = torch.bincount(codes, minlength=codebook.shape[0]).to(torch.float32).clamp_min(1.0) ** -self.balance
        self._cache = (key, codes, weight)
        return codes, weight


_DIGEST_SEED = 0x5E3D_1D0C  # fixed: the digests are part of the checkpoint's meaning


def digests(raw: torch.Tensor) -> torch.Tensor:
    """int64 [N]: a 64-bit digest of each row's float32 bits (sum of the bits times fixed odd 64-bit
    multipliers, wrapping): equal rows, equal digests; distinct rows collide with probability ~2^-60."""
    bits = np.ascontiguousarray(raw.detach().to(torch.float32).numpy()).view(np.uint32).astype(np.uint64)
    mult = _multipliers(bits.shape[1])
    with np.errstate(over="ignore"):
        h = (bits * mult).sum(axis=1, dtype=np.uint64)
        h ^= h >> np.uint64(29)
    return torch.from_numpy(h.view(np.int64).copy())


@functools.lru_cache(maxsize=8)
def _multipliers(dim: int) -> np.ndarray:
    rng = np.random.default_rng(_DIGEST_SEED)
    return rng.integers(0, 2**63, size=dim, dtype=np.uint64) * np.uint64(2) + np.uint64(1)


def rank_weights(k: int, scale: float) -> torch.Tensor:
    """float32 [k]: the vote of the r-th nearest anchor (r = 0 .. k-1) counts ``1 / (1 + r / scale)``; 0: all 1.

    A gentle fall-off by rank, not by similarity: weighting by similarity (``exp((s - s_max) / t)``) *lowered*
    the held-out neighbour share, since the very nearest anchor is the noisiest single vote, while a fall-off by
    rank raised it (the figures: benchmarks/results/anchor_vote.md)."""
    if scale <= 0:
        return torch.ones(k)
    return 1.0 / (1.0 + torch.arange(k, dtype=torch.float32) / scale)


def top_k(sims: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``sims.topk(k, dim=1)`` (values and columns, best first), bit for bit, without a top-k over every column.

    The first ``g * TOPK_GROUP`` columns are dealt into g groups (group j: columns j, j + g, j + 2g, ...); a
    row's k best values lie in the k groups with the largest maxima (a group holding one of them has a maximum
    at least the k-th value, and at most k groups do). So: one max per group (a vectorised pass), a top-k over
    the g maxima, and a top-k over those k groups' columns plus the few after the last group. Where the best
    k + 1 candidates are all different and the k-th beats every group left out, that top k is unique, hence
    the one ``topk`` returns; rows with a tie (duplicate anchors) or a NaN are handed to ``topk`` itself, so
    they get its tie order too."""
    n, m = sims.shape
    groups = m // TOPK_GROUP
    if n < TOPK_MIN_ROWS or groups <= 2 * k:  # few rows: topk is quicker than the extra steps; few groups
        return sims.topk(k, dim=1)
    dealt = groups * TOPK_GROUP
    maxima = sims[:, :dealt].reshape(n, TOPK_GROUP, groups).amax(dim=1)  # [n, groups]; NaN stays NaN
    top_groups, chosen = maxima.topk(k + 1, dim=1)
    columns = (chosen[:, None, :k] + groups * torch.arange(TOPK_GROUP)[None, :, None]).reshape(n, -1)
    columns = torch.cat([columns, torch.arange(dealt, m).expand(n, -1)], dim=1)
    top, at = sims.gather(1, columns).topk(k + 1, dim=1)
    best, idx = top[:, :k], columns.gather(1, at[:, :k])
    unsure = (
        (top[:, :-1] <= top[:, 1:]).any(dim=1)  # a tie among the best k + 1 candidates
        | (top[:, k - 1] <= top_groups[:, k])  # a group left out may hold the k-th value's equal
        | maxima.isnan().any(dim=1)
        | sims[:, dealt:].isnan().any(dim=1)
    )
    redo = unsure.nonzero().flatten()
    if redo.numel():  # topk's own answer, tie order included
        best[redo], idx[redo] = sims[redo].topk(k, dim=1)
    return best, idx


def anchor_rows(n: int, limit: int) -> np.ndarray:
    """Rows of the training items kept as anchors: every one of them when there are at most ``limit``, else none
    (a larger catalog keeps :func:`representatives` instead).

    The vote helps only when the anchors are the whole training catalog: a seeded sample of it lowers the
    held-out neighbour share and also the *trained* items' (those outside the sample are voted on too); a
    small sample does worse than no anchors (the MovieLens figures: docs/configuration.md, first-level anchors)."""
    return np.arange(n) if 0 < n <= limit else np.zeros(0, dtype=np.int64)


@torch.no_grad()
def representatives(
    unit: torch.Tensor, codes: torch.Tensor, budget: int, *, seed: int = 0, iters: int = 10
) -> tuple[torch.Tensor, torch.Tensor]:
    """(vectors [M, d], codes [M]), M <= ``budget``: each first code's training items summarised by k-means
    centres, the code's share of the budget in proportion to its items (at least one each).

    For a training catalog above ``first_level_anchors``: a sample of items votes worse than the items
    themselves (:func:`anchor_rows`), since a sparse sample's k nearest reach across the code's border; the
    centres of a code's sub-clusters cover all of its items with few vectors, each inside the code's region.
    ``unit``: the items' unit-length normalised inputs; ``codes``: their first codes. Seeded: the same
    inputs give the same set."""
    n = unit.shape[0]
    present, counts = torch.unique(codes, return_counts=True)
    share = counts.to(torch.float64) * budget / n
    quota = share.floor().clamp_min(1).to(torch.long)
    left = budget - int(quota.sum())
    if left > 0:  # the largest remainders get the rest (ties: the lower code)
        order = torch.argsort(share - share.floor(), descending=True, stable=True)[:left]
        quota[order] += 1
    quota = torch.minimum(quota, counts)
    vectors, labels = [], []
    for code, m in zip(present.tolist(), quota.tolist(), strict=True):
        members = unit[codes == code]
        centres = members if m >= members.shape[0] else _centres(members, m, iters, seed + code)
        vectors.append(F.normalize(centres, dim=1))
        labels.append(torch.full((centres.shape[0],), code, dtype=torch.long))
    return torch.cat(vectors), torch.cat(labels)


def _centres(x: torch.Tensor, m: int, iters: int, seed: int) -> torch.Tensor:
    """Spherical k-means of the rows of x into m centres, seeded with m distinct rows (k-means++ seeding costs
    more than it gives for a summary of one code's items); an emptied centre keeps its last position."""
    generator = torch.Generator().manual_seed(seed)
    centres = x[torch.randperm(x.shape[0], generator=generator)[:m]].clone()
    for _ in range(iters):
        assign = (x @ centres.T).argmax(dim=1)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        filled = torch.bincount(assign, minlength=m) > 0
        centres[filled] = F.normalize(sums[filled], dim=1)
    return centres
