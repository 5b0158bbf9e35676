"""The anchors' fast search against the plain one: ``top_k`` is ``topk`` bit for bit, and the vote gives the
codes of the plain search (one matmul, ``topk`` over every anchor) on a synthetic catalog and on MovieLens."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from semid.model.data.synthetic import synthetic_catalog
from semid.model.first_level.anchors import EXACT, FirstLevelAnchors, top_k


def plain_vote(anchors: FirstLevelAnchors, target: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """The vote as first written: sims to every anchor, ``topk``, weighted majority (the slow, obvious one)."""
    codes, weight = anchors._votes_for(codebook)
    k = min(anchors.neighbours, anchors.size)
    q = F.normalize(target.to(torch.float32), dim=1)
    sims, idx = (q @ anchors.vectors.to(torch.float32).T).topk(k, dim=1)
    near = codes[idx]
    w = weight[near]
    votes = torch.zeros(q.shape[0], codebook.shape[0]).scatter_add_(1, near, w)
    top, code = votes.max(dim=1)
    code = torch.where(top >= anchors.min_share * w.sum(dim=1), code, -1)
    return torch.where(sims[:, 0] >= EXACT, near[:, 0], code)


def assert_same_as_topk(sims: torch.Tensor, k: int) -> None:
    values, columns = top_k(sims, k)
    expected = sims.topk(k, dim=1)
    assert torch.equal(columns, expected.indices)
    assert torch.equal(values.nan_to_num(7.0), expected.values.nan_to_num(7.0))


@pytest.mark.parametrize(
    "shape", [(1, 100), (5, 9742), (20, 9742), (64, 1000), (300, 5000), (7, 50), (3, 10), (0, 500)]
)
@pytest.mark.parametrize("k", [1, 3, 10])
def test_top_k_is_topk_bit_for_bit(shape, k):
    if shape[1] < k:
        return
    g = torch.Generator().manual_seed(shape[0] * 7 + k)
    sims = torch.randn(*shape, generator=g)
    assert_same_as_topk(sims, k)
    assert_same_as_topk((sims * 4).round() / 4, k)  # many ties
    twins = sims.clone()
    half = twins[:, 1::2].shape[1]
    twins[:, 1::2] = twins[:, ::2][:, :half]  # every value twice: duplicate anchors
    assert_same_as_topk(twins, k)


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_top_k_matches_topk_on_nan_inf_and_constant_rows(where):
    g = torch.Generator().manual_seed(1)
    sims = torch.randn(20, 2001, generator=g)  # >= TOPK_MIN_ROWS: the grouped search
    col = {"first": 0, "middle": 1000, "last": 2000}[where]
    sims[0, col] = float("nan")
    sims[1, col] = float("inf")
    sims[2, :] = 0.0  # a zero query: every similarity equal
    sims[3, :] = float("-inf")
    sims[4, col] = -float("inf")
    assert_same_as_topk(sims, 10)


def _anchors_for(x: np.ndarray, codes: np.ndarray, codebook_size: int, **kw) -> tuple[FirstLevelAnchors, torch.Tensor]:
    codebook = torch.randn(codebook_size, 8, generator=torch.Generator().manual_seed(3))
    anchors = FirstLevelAnchors(x.shape[1], neighbours=kw.pop("neighbours", 10), **kw)
    anchors.set(torch.from_numpy(x), torch.from_numpy(codes), codebook)
    return anchors, codebook


def _queries(x: np.ndarray, held_out: np.ndarray, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    noisy = x[:500] + 0.05 * rng.standard_normal((500, x.shape[1])).astype(np.float32)
    return torch.from_numpy(np.concatenate([held_out, noisy, x[:300]]).astype(np.float32))  # x[:300]: exact hits


def _assert_votes_like_the_plain_search(anchors, codebook, queries):
    expected = plain_vote(anchors, queries, codebook)
    for batch in (1, 7, 1000, queries.shape[0]):
        got = torch.cat([anchors.vote(queries[s : s + batch], codebook) for s in range(0, queries.shape[0], batch)])
        assert torch.equal(got, expected), batch


@pytest.mark.parametrize("kw", [{}, {"balance": 0.5}, {"balance": 0.5, "min_share": 0.4}, {"neighbours": 3}])
def test_vote_gives_the_plain_searchs_codes_on_a_synthetic_catalog(kw):
    cat = synthetic_catalog(items=3000, dim=32, seed=4).embeddings
    anchors_x, held_out = cat[:2500], cat[2500:]
    codes = np.argmax(anchors_x @ np.random.default_rng(5).standard_normal((32, 64)), axis=1)
    anchors, codebook = _anchors_for(anchors_x, codes, 64, **kw)
    _assert_votes_like_the_plain_search(anchors, codebook, _queries(anchors_x, held_out, seed=6))


def test_vote_gives_the_plain_searchs_codes_on_movielens(movielens):
    column = pq.read_table(movielens, columns=["embedding"]).column("embedding")
    x = np.stack(column.to_numpy(zero_copy_only=False)).astype(np.float32)
    n_anchors = int(0.8 * len(x))
    anchors_x, held_out = x[:n_anchors], x[n_anchors:]
    codes = np.argmax(anchors_x @ np.random.default_rng(7).standard_normal((x.shape[1], 256)), axis=1)
    anchors, codebook = _anchors_for(anchors_x, codes, 256, balance=0.5)
    _assert_votes_like_the_plain_search(anchors, codebook, _queries(anchors_x, held_out, seed=8))
