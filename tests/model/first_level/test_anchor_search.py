"""The anchors' bf16 pre-filter: its error bound holds, it gives the plain float32 search's codes, it is really
used on clustered data, and the rows it cannot settle (flat similarities, duplicate anchors, k >= C) fall back."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from semid.model.data.synthetic import synthetic_catalog
from semid.model.first_level import anchor_search
from semid.model.first_level.anchor_search import Bf16Prefilter, half_spacing
from semid.model.first_level.anchors import EXACT, FirstLevelAnchors, top_k
from tests.model.first_level.test_anchors_top_k import plain_vote


def float32_vote(anchors: FirstLevelAnchors, queries: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """The vote with the float32 search of every row (the pre-filter off): the reference, rank weights included."""
    saved = Bf16Prefilter.enabled
    Bf16Prefilter.enabled = False
    try:
        return anchors.vote(queries, codebook)
    finally:
        Bf16Prefilter.enabled = saved


@pytest.fixture(autouse=True)
def prefilter_on(monkeypatch):
    """On everywhere (a CPU without bf16 instructions emulates them: slower, same answers), for batches of
    any size (the small ones here would otherwise take the float32 search)."""
    monkeypatch.setattr(Bf16Prefilter, "enabled", True)
    monkeypatch.setattr(Bf16Prefilter, "policy", "always")  # not the quicker of the two as timed
    monkeypatch.setattr(anchor_search, "MIN_ROWS", 2)


def _anchors(x: np.ndarray, codes: np.ndarray, codebook_size: int, **kw) -> tuple[FirstLevelAnchors, torch.Tensor]:
    codebook = torch.randn(codebook_size, 8, generator=torch.Generator().manual_seed(3))
    anchors = FirstLevelAnchors(x.shape[1], neighbours=kw.pop("neighbours", 10), **kw)
    anchors.set(torch.from_numpy(x), torch.from_numpy(codes), codebook)
    return anchors, codebook


def _codes(x: np.ndarray, size: int, seed: int) -> np.ndarray:
    return np.argmax(x @ np.random.default_rng(seed).standard_normal((x.shape[1], size)), axis=1)


def _decided_share(anchors: FirstLevelAnchors, queries: torch.Tensor, codebook: torch.Tensor) -> float:
    """Vote once with fresh counters; the share of rows the pre-filter settled."""
    anchors.vote(queries[:1], codebook)  # builds the pre-filter (1 row: below MIN_ROWS)
    pf = anchors._prefilter
    assert pf is not None
    pf.rows_decided = pf.rows_unsure = 0
    anchors.vote(queries, codebook)
    assert pf.rows_decided + pf.rows_unsure == queries.shape[0]
    return pf.rows_decided / queries.shape[0]


def test_bf16_sims_stay_within_the_bound():
    g = torch.Generator().manual_seed(0)
    anchors = F.normalize(torch.randn(3000, 96, generator=g), dim=1).to(torch.float16)
    centres = anchors[:50].to(torch.float32)
    q = F.normalize(torch.cat([torch.randn(200, 96, generator=g), centres + 0.1 * torch.randn(50, 96, generator=g)]))
    unit_t = anchors.to(torch.float32).T.contiguous()
    pf = Bf16Prefilter(unit_t, top_k)
    b = (q.to(torch.bfloat16) @ pf.unit_t_bf16[:, : pf.anchors]).to(torch.float32)
    f = (q.double() @ unit_t.double()).float()  # (nearly) the exact real sims
    e = pf.row_bound(q)[:, None]
    assert (f <= b + half_spacing(b) + e).all() and (f >= b - half_spacing(b) - e).all()
    assert (f - b).abs().max() > 0.1 * (half_spacing(b) + e).min()  # the check is not vacuous


def test_half_spacing_is_half_the_gap_to_the_next_bfloat16():
    b = torch.tensor([0.3, 0.5, 0.75, 0.999, 1.0, -0.6, 3.0]).to(torch.bfloat16)
    above = (b.view(torch.int16) + 1).view(torch.bfloat16)  # the next magnitude up (same sign)
    gap = (above.to(torch.float32) - b.to(torch.float32)).abs()
    assert torch.equal(half_spacing(b.to(torch.float32)), gap / 2)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"balance": 0.5},
        {"balance": 0.5, "min_share": 0.4},
        {"neighbours": 3},
        {"balance": 0.5, "rank_scale": 8.0},  # rank weights: the order of the k nearest counts too
        {"balance": 0.5, "rank_scale": 8.0, "min_share": 0.4},
    ],
)
def test_prefiltered_vote_gives_the_plain_codes_on_a_clustered_catalog_and_is_used(kw):
    cat = synthetic_catalog(items=3500, dim=64, seed=4).embeddings
    anchors_x, held_out = cat[:3000], cat[3000:]
    rng = np.random.default_rng(6)
    noisy = anchors_x[:400] + 0.05 * rng.standard_normal((400, 64)).astype(np.float32)
    queries = torch.from_numpy(np.concatenate([held_out, noisy, anchors_x[:300]]))  # anchors_x[:300]: exact hits
    anchors, codebook = _anchors(anchors_x, _codes(anchors_x, 64, seed=5), 64, **kw)
    expected = float32_vote(anchors, queries, codebook)
    if not kw.get("rank_scale"):
        assert torch.equal(expected, plain_vote(anchors, queries, codebook))
    for batch in (7, 100, queries.shape[0]):
        got = torch.cat([anchors.vote(queries[s : s + batch], codebook) for s in range(0, len(queries), batch)])
        assert torch.equal(got, expected), batch
    assert _decided_share(anchors, queries, codebook) > 0.5  # the pre-filter settles most rows: it is used


def test_prefiltered_vote_gives_the_plain_codes_on_movielens(movielens):
    column = pq.read_table(movielens, columns=["embedding"]).column("embedding")
    x = np.stack(column.to_numpy(zero_copy_only=False)).astype(np.float32)
    n_anchors = int(0.8 * len(x))
    anchors_x, held_out = x[:n_anchors], x[n_anchors:]
    noisy = anchors_x[:500] + 0.05 * np.random.default_rng(8).standard_normal((500, x.shape[1])).astype(np.float32)
    queries = torch.from_numpy(np.concatenate([held_out, noisy, anchors_x[:300]]))
    for rank_scale in (0.0, 8.0):
        anchors, codebook = _anchors(anchors_x, _codes(anchors_x, 256, seed=7), 256, balance=0.5, rank_scale=rank_scale)
        assert torch.equal(anchors.vote(queries, codebook), float32_vote(anchors, queries, codebook))
        assert _decided_share(anchors, queries, codebook) > 0.8


def test_random_vectors_against_random_anchors_agree():
    """Random rows are no worst case: the best sims of a random row sit in the tail, spread wide enough
    for the bound (384 dims: ~95 % decided). Whatever it decides must match."""
    g = torch.Generator().manual_seed(1)
    x = F.normalize(torch.randn(2000, 384, generator=g), dim=1).numpy()
    anchors, codebook = _anchors(x, _codes(x, 32, seed=2), 32)
    queries = torch.randn(300, 384, generator=g)
    assert torch.equal(anchors.vote(queries, codebook), float32_vote(anchors, queries, codebook))
    assert _decided_share(anchors, queries, codebook) > 0.5


def test_flat_similarity_rows_fall_back_and_agree():
    g = torch.Generator().manual_seed(2)
    centre = torch.randn(1, 64, generator=g)
    x = F.normalize(centre + 1e-3 * torch.randn(2000, 64, generator=g), dim=1).numpy()  # sims within ~1e-3
    anchors, codebook = _anchors(x, _codes(x, 32, seed=3), 32)
    queries = centre + 0.5 * torch.randn(200, 64, generator=g)
    assert torch.equal(anchors.vote(queries, codebook), float32_vote(anchors, queries, codebook))
    assert _decided_share(anchors, queries, codebook) == 0.0


@pytest.mark.parametrize("rank_scale", [0.0, 8.0])
def test_duplicate_anchors_fall_back_and_agree(rank_scale):
    cat = synthetic_catalog(items=1200, dim=64, seed=2).embeddings
    x = np.repeat(cat, 2, axis=0)  # every anchor twice, with different codes: ties at every boundary
    codes = np.arange(len(x)) % 16
    anchors, codebook = _anchors(x, codes, 16, neighbours=3, rank_scale=rank_scale)  # odd k: twins at the boundary
    queries = torch.from_numpy(cat[:400] + 0.05 * np.random.default_rng(3).standard_normal((400, 64)).astype("f4"))
    assert torch.equal(anchors.vote(queries, codebook), float32_vote(anchors, queries, codebook))
    assert _decided_share(anchors, queries, codebook) == 0.0


def test_k_at_least_the_candidates_falls_back_and_agrees():
    cat = synthetic_catalog(items=2500, dim=64, seed=3).embeddings
    anchors, codebook = _anchors(cat, _codes(cat, 32, seed=4), 32, neighbours=anchor_search.CANDIDATES)
    queries = torch.from_numpy(cat[:300] + 0.05 * np.random.default_rng(5).standard_normal((300, 64)).astype("f4"))
    assert torch.equal(anchors.vote(queries, codebook), float32_vote(anchors, queries, codebook))
    assert _decided_share(anchors, queries, codebook) == 0.0


def test_nan_and_zero_rows_are_left_to_the_plain_search():
    cat = synthetic_catalog(items=2500, dim=64, seed=3).embeddings
    unit_t = torch.from_numpy(cat).to(torch.float16).to(torch.float32).T.contiguous()
    pf = Bf16Prefilter(unit_t, top_k)
    q = F.normalize(torch.from_numpy(cat[:40].copy()), dim=1)
    q[3] = float("nan")
    q[5] = 0.0
    _, _, unsure = pf.search(q, 10, firm_above=EXACT)
    assert {3, 5} <= set(unsure.tolist())


def test_small_batches_take_the_float32_search(monkeypatch):
    monkeypatch.setattr(anchor_search, "MIN_ROWS", 256)
    cat = synthetic_catalog(items=2500, dim=64, seed=3).embeddings
    anchors, codebook = _anchors(cat, _codes(cat, 32, seed=4), 32)
    queries = torch.from_numpy(cat[:255] + 0.05 * np.random.default_rng(5).standard_normal((255, 64)).astype("f4"))
    assert _decided_share(anchors, queries, codebook) == 0.0
    assert _decided_share(anchors, torch.cat([queries, queries[:1]]), codebook) > 0.5


def test_probe_sets_delta_and_the_bound_mode_agrees_too():
    cat = synthetic_catalog(items=3000, dim=64, seed=4).embeddings
    anchors, codebook = _anchors(cat[:2500], _codes(cat[:2500], 64, seed=5), 64, balance=0.5, rank_scale=8.0)
    queries = torch.from_numpy(cat[2500:])
    anchors.vote(queries, codebook)
    pf = anchors._prefilter
    assert pf is not None and pf.bound_delta > 0
    assert pf.delta == (0.0 if pf.same_bits else pf.bound_delta)
    pf.delta = pf.bound_delta  # as on a machine whose recompute does not give the big matmul's bits
    assert torch.equal(anchors.vote(queries, codebook), float32_vote(anchors, queries, codebook))


def test_timed_policy_uses_each_search_then_the_quicker(monkeypatch):
    monkeypatch.setattr(Bf16Prefilter, "policy", "timed")
    cat = synthetic_catalog(items=3000, dim=64, seed=4).embeddings
    anchors, codebook = _anchors(cat[:2500], _codes(cat[:2500], 64, seed=5), 64, balance=0.5, rank_scale=8.0)
    queries = torch.from_numpy(cat[2500:])
    expected = float32_vote(anchors, queries, codebook)
    decided = []
    for _ in range(4):
        assert torch.equal(anchors.vote(queries, codebook), expected)
        decided.append(anchors._prefilter.rows_decided)
    pf = anchors._prefilter
    assert decided[0] == 0 and decided[1] > 0  # the plain search first, then the pre-filter, each timed
    assert pf.cost["plain"] is not None and pf.cost["prefilter"] is not None
    pf.cost = {"plain": 1.0, "prefilter": 2.0}  # as if the pre-filter were slower here
    pf.calls = 1
    anchors.vote(queries, codebook)
    assert pf.rows_decided == decided[-1]  # not used
    pf.cost = {"plain": 2.0, "prefilter": 1.0}
    anchors.vote(queries, codebook)
    assert pf.rows_decided > decided[-1]


def test_concurrent_first_votes_never_see_half_built_anchors(monkeypatch):
    """The server votes from several threads; one building the search must not expose it half made."""
    import threading
    import time

    built = Bf16Prefilter.__init__

    def slow_init(self, *args, **kwargs):
        built(self, *args, **kwargs)
        time.sleep(0.3)  # widen the window between the first thread's build and its assignment

    monkeypatch.setattr(Bf16Prefilter, "__init__", slow_init)
    cat = synthetic_catalog(items=600, dim=16, seed=1).embeddings
    anchors, codebook = _anchors(cat, _codes(cat, 8, seed=2), 8)
    queries = torch.from_numpy(cat[:4])
    errors: list[BaseException] = []

    def vote() -> None:
        try:
            anchors.vote(queries, codebook)
        except BaseException as err:  # noqa: BLE001 - any failure in the thread fails the test
            errors.append(err)

    first = threading.Thread(target=vote)
    first.start()
    time.sleep(0.1)
    second = threading.Thread(target=vote)
    second.start()
    first.join()
    second.join()
    assert errors == []
