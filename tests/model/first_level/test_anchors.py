"""First-level anchors: the vote, its storage in the checkpoint, and old checkpoints encoding as before."""

from __future__ import annotations

import json
import shutil

import numpy as np
import torch

from semid.model.first_level.anchors import FirstLevelAnchors, anchor_rows, digests, rank_weights
from semid.model.training.checkpoint import CONFIG_FILE, FINGERPRINT_FILE, WEIGHTS_FILE, fingerprint_of, load_checkpoint
from semid.model.training.job import train_tokenizer
from tests.conftest import tiny_config

ANCHOR_FIELDS = ("first_level_anchors", "anchor_neighbours", "anchor_balance", "anchor_rank_scale", "anchor_min_share")


def _anchors(k: int = 3, min_share: float = 0.0) -> tuple[FirstLevelAnchors, torch.Tensor]:
    # anchors on the 4 axes of R^4 (two per axis, slightly apart): axis i holds code i
    vectors = torch.eye(4).repeat_interleave(2, dim=0) + 0.01 * torch.arange(8).unsqueeze(1)
    codes = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    codebook = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    anchors = FirstLevelAnchors(4, neighbours=k, min_share=min_share)
    anchors.set(vectors, codes, codebook)
    return anchors, codebook


def test_vote_takes_the_majority_of_the_nearest_anchors():
    anchors, codebook = _anchors(k=3)
    queries = torch.tensor([[5.0, 0.1, 0, 0], [0, 0, 0, 2.0], [0, 1.0, 0.9, 0]])
    votes = anchors.vote(queries, codebook)
    assert votes[0] == 0 and votes[1] == 3
    assert votes[2] == 1  # two of its three nearest anchors hold code 1


def test_weak_votes_fall_back_to_minus_one():
    anchors, codebook = _anchors(k=4, min_share=0.75)
    queries = torch.tensor([[1.0, 0.3, 0, 0], [1.0, 1.0, 0, 0]])
    votes = anchors.vote(queries, codebook)
    assert votes.tolist() == [-1, -1]  # 2 of 4 votes each for codes 0 and 1: below 75 %
    anchors.min_share = 0.5
    assert anchors.vote(queries, codebook).tolist() == [0, 0]  # ties go to the lowest code


def test_votes_follow_a_permutation_of_the_codebook_rows():
    anchors, codebook = _anchors(k=2)
    queries = torch.tensor([[1.0, 0, 0, 0], [0, 0, 1.0, 0]])
    perm = torch.tensor([2, 0, 3, 1])  # new row j holds old code perm[j]
    renamed = anchors.vote(queries, codebook[perm])
    old = anchors.vote(queries, codebook)
    assert [int(perm[c]) for c in renamed] == old.tolist()


def test_balance_discounts_votes_for_crowded_codes():
    vectors = torch.tensor([[1.0, 0.0], [1.0, 0.05], [1.0, 0.1], [1.0, -0.2], [0.0, 1.0], [0.1, 1.0], [0.2, 1.0]])
    codes = torch.tensor([0, 0, 1, 1, 0, 0, 0])  # code 0 has 5 anchors, code 1 has 2
    anchors = FirstLevelAnchors(2, neighbours=4)
    anchors.set(vectors, codes, torch.eye(2))
    query = torch.tensor([[1.0, 0.02]])  # nearest four: codes 0, 0, 1, 1 (a tie) -> lowest code
    assert anchors.vote(query, torch.eye(2)).tolist() == [0]
    anchors.balance = 1.0  # 2 x 1/5 for code 0 vs 2 x 1/2 for code 1
    assert anchors.vote(query, torch.eye(2)).tolist() == [1]


def test_rank_weights_fall_off_gently_and_zero_means_equal_votes():
    assert rank_weights(4, 0.0).tolist() == [1.0, 1.0, 1.0, 1.0]
    w = rank_weights(10, 8.0)
    assert torch.allclose(w, 1.0 / (1.0 + torch.arange(10) / 8.0))
    assert bool((w[1:] < w[:-1]).all()) and 0.47 < float(w[-1]) < 0.48


def test_rank_weights_let_the_nearest_anchors_outvote_a_farther_majority():
    # nearest two anchors hold code 1, the next three code 0: equal votes 3 vs 2 for code 0
    vectors = torch.tensor([[1.0, 0.0], [1.0, 0.05], [1.0, 0.3], [1.0, 0.35], [1.0, 0.4]])
    anchors = FirstLevelAnchors(2, neighbours=5)
    anchors.set(vectors, torch.tensor([1, 1, 0, 0, 0]), torch.eye(2))
    query = torch.tensor([[1.0, 0.02]])
    assert anchors.vote(query, torch.eye(2)).tolist() == [0]
    anchors.rank_scale = 1.0  # code 1: 1 + 1/2 = 1.5; code 0: 1/3 + 1/4 + 1/5 = 0.78
    assert anchors.vote(query, torch.eye(2)).tolist() == [1]
    anchors.rank_scale = 8.0  # code 1: 1 + 0.89 = 1.89; code 0: 0.8 + 0.73 + 0.67 = 2.2
    assert anchors.vote(query, torch.eye(2)).tolist() == [0]


def test_checkpoint_written_before_rank_weights_keeps_equal_votes(tmp_path, tiny_catalog):
    """A config.json without anchor_rank_scale (written by 0.5 and older) votes as it did then: equal votes."""
    x = tiny_catalog.embeddings
    cfg = tiny_config().with_overrides("model", first_level_anchors=16384, anchor_rank_scale=1.0)
    train_tokenizer(x[:400], cfg, tmp_path / "new")
    new = load_checkpoint(tmp_path / "new").tokenizer
    assert new.anchors is not None and new.anchors.rank_scale == 1.0
    old = tmp_path / "old"
    shutil.copytree(tmp_path / "new", old)
    raw = json.loads((old / CONFIG_FILE).read_text())
    raw["model"].pop("anchor_rank_scale")
    (old / CONFIG_FILE).write_text(json.dumps(raw))
    (old / FINGERPRINT_FILE).write_text(fingerprint_of(raw, old / WEIGHTS_FILE) + "\n")
    loaded = load_checkpoint(old)
    assert loaded.config.model.anchor_rank_scale == 0.0 and loaded.tokenizer.anchors.rank_scale == 0.0
    held = torch.from_numpy(x[400:])
    weighted = new.encode(held).codes
    new.anchors.rank_scale = 0.0
    assert torch.equal(loaded.tokenizer.encode(held).codes, new.encode(held).codes)
    assert not torch.equal(weighted, new.encode(held).codes)  # the setting matters on these items


def test_an_input_equal_to_an_anchor_keeps_its_code():
    vectors = torch.tensor([[1.0, 0.0], [1.0, 0.05], [1.0, 0.1]])
    anchors = FirstLevelAnchors(2, neighbours=3)
    anchors.set(vectors, torch.tensor([1, 0, 0]), torch.eye(2))
    assert anchors.vote(torch.tensor([[2.0, 0.0], [1.0, 0.06]]), torch.eye(2)).tolist() == [1, 0]


def test_empty_anchors_decide_nothing():
    anchors = FirstLevelAnchors(4, neighbours=3)
    assert anchors.vote(torch.ones(5, 4), torch.zeros(4, 3)).tolist() == [-1] * 5


def test_anchors_are_every_training_item_or_none():
    assert np.array_equal(anchor_rows(10, 20), np.arange(10))
    assert np.array_equal(anchor_rows(20, 20), np.arange(20))
    assert anchor_rows(21, 20).shape == (0,)  # a sample votes worse than the nearest centroid: none
    assert anchor_rows(10, 0).shape == (0,)


def test_a_catalog_larger_than_the_limit_keeps_bounded_representatives_and_votes_for_new_items(tmp_path, tiny_catalog):
    x = tiny_catalog.embeddings
    train, new = x[:500], x[500:]
    cfg = tiny_config().with_overrides("model", first_level_anchors=64)
    train_tokenizer(train, cfg, tmp_path / "big")
    tok = load_checkpoint(tmp_path / "big").tokenizer
    assert tok.anchors is not None and 0 < tok.anchors.size <= 64  # bounded, not every training item
    distinct = torch.unique(digests(torch.from_numpy(train))).numel()  # the catalog holds exact duplicates
    assert tok.anchors.trained.shape == (distinct,) and distinct > 450  # 8 bytes per training item, no vectors
    with torch.inference_mode():
        nearest_train = tok.quantizer.encode(tok.latent(torch.from_numpy(train)))[0]
        target = tok.normalizer(torch.from_numpy(new))
        nearest_new = tok.quantizer.encode(tok.encoder(target))[0]
    # the training items keep the codes they were trained to (the vote would move some of them)
    assert torch.equal(tok.encode(torch.from_numpy(train)).codes, nearest_train)
    # a new item gets the vote of its nearest representatives, which moves some first codes
    codes = tok.encode(torch.from_numpy(new)).codes
    fresh = ~tok.anchors.is_trained(torch.from_numpy(new))  # the catalog's exact duplicates are trained items
    assert int(fresh.sum()) >= 90
    assert torch.equal(codes[fresh, 0], tok.anchors.vote(target, tok.quantizer.codebooks[0])[fresh])
    assert bool((codes[:, 0] != nearest_new[:, 0]).any())
    assert torch.equal(codes[:, 1:], _rest_of_levels(tok, target, codes[:, 0]))
    # a near copy of a training item (not equal to it) takes the code of the representatives around it
    near = torch.from_numpy(train[:50]) * 1.0001 + 1e-4
    assert not bool(tok.anchors.is_trained(near).any())
    with torch.inference_mode():
        vote = tok.anchors.vote(tok.normalizer(near), tok.quantizer.codebooks[0])
    assert float((vote == nearest_train[:50, 0]).float().mean()) >= 0.8


def test_digests_recognise_exactly_the_training_rows():
    x = torch.randn(300, 16)
    d = digests(x)
    assert d.dtype == torch.long and torch.unique(d).numel() == 300
    assert torch.equal(digests(x.flip(0)), d.flip(0))  # a pure function of each row
    anchors = FirstLevelAnchors(16, neighbours=3)
    anchors.set(x[:4], torch.tensor([0, 1, 0, 1]), torch.eye(2, 16), trained=x[:200])
    probe = torch.cat([x[150:160], x[250:260], x[150:160] + 1e-6])
    assert anchors.is_trained(probe).tolist() == [True] * 10 + [False] * 20
    state = anchors.state_dict()
    assert torch.equal(state["trained"], torch.unique(d[:200]))
    again = FirstLevelAnchors(16, neighbours=3)
    again.load_state_dict(state, strict=True)
    assert torch.equal(again.trained, anchors.trained)


def test_anchors_of_a_small_catalog_store_no_digests():
    anchors, _ = _anchors()
    assert "trained" not in anchors.state_dict()  # checkpoints of catalogs up to the limit keep their bytes
    again = FirstLevelAnchors(4, neighbours=3)
    again.load_state_dict(anchors.state_dict(), strict=True)
    assert again.trained.numel() == 0


def test_representatives_are_bounded_and_give_every_code_its_share():
    from semid.model.first_level.anchors import representatives

    g = torch.Generator().manual_seed(0)
    unit = torch.nn.functional.normalize(torch.randn(5000, 8, generator=g), dim=1)
    codes = torch.cat([torch.zeros(4000), torch.ones(900), torch.full((100,), 2)]).long()
    vectors, labels = representatives(unit, codes, 100)
    assert vectors.shape == (100, 8) and labels.shape == (100,)
    assert torch.bincount(labels).tolist() == [80, 18, 2]  # in proportion to the codes' items
    assert torch.allclose(vectors.norm(dim=1), torch.ones(100))
    again = representatives(unit, codes, 100)
    assert torch.equal(again[0], vectors) and torch.equal(again[1], labels)  # seeded
    few, _ = representatives(unit[:10], codes[:10], 100)
    assert few.shape[0] == 10  # never more centres than items


def test_anchors_are_on_by_default_for_a_small_catalog(tmp_path, tiny_catalog):
    x = tiny_catalog.embeddings
    train_tokenizer(x, tiny_config(), tmp_path / "default")
    tok = load_checkpoint(tmp_path / "default").tokenizer
    assert tok.anchors is not None and tok.anchors.size == x.shape[0]


def test_checkpoint_stores_the_anchors_and_encodes_new_items_by_their_vote(tmp_path, tiny_catalog):
    x = tiny_catalog.embeddings
    train, new = x[:400], x[400:]
    cfg = tiny_config().with_overrides("model", first_level_anchors=16384, anchor_balance=0.0, anchor_rank_scale=0.0)
    train_tokenizer(train, cfg, tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt")
    tok = loaded.tokenizer
    assert loaded.config.model.first_level_anchors > 0 and tok.anchors is not None
    assert tok.anchors.size == 400 and tok.anchors.vectors.dtype == torch.float16
    codes = tok.encode(torch.from_numpy(new)).codes
    with torch.inference_mode():
        target = tok.normalizer(torch.from_numpy(new))
        nearest = tok.quantizer.encode(tok.encoder(target))[0]
        # the vote by hand: majority of the k nearest anchors' codes
        sims = torch.nn.functional.normalize(target, dim=1) @ tok.anchors.vectors.float().T
        idx = sims.topk(tok.anchors.neighbours, dim=1).indices
        expected = torch.mode(tok.anchors.codes[idx], dim=1).values
    agree = (codes[:, 0] == expected).float().mean()
    assert agree > 0.95  # torch.mode breaks ties differently from the vote; ties are rare
    # the other levels quantize the residual w.r.t. the chosen first code
    assert torch.equal(
        codes[:, 1:],
        _rest_of_levels(tok, target, codes[:, 0]),
    )
    assert bool((codes[:, 0] != nearest[:, 0]).any())  # the vote changed some first codes
    again = load_checkpoint(tmp_path / "ckpt").tokenizer.encode(torch.from_numpy(new)).codes
    assert torch.equal(codes, again)  # a pure function of the checkpoint


def _rest_of_levels(tok, target, first):
    with torch.inference_mode():
        z = tok.encoder(target)
        return tok.quantizer.encode(z, first_codes=first)[0][:, 1:]


def test_off_means_no_anchors_in_the_checkpoint(tmp_path, tiny_catalog):
    cfg = tiny_config().with_overrides("model", first_level_anchors=0)
    train_tokenizer(tiny_catalog.embeddings, cfg, tmp_path / "off")
    tok = load_checkpoint(tmp_path / "off").tokenizer
    assert tok.anchors is None
    x = torch.from_numpy(tiny_catalog.embeddings)
    with torch.inference_mode():
        nearest = tok.quantizer.encode(tok.latent(x))[0]
    assert torch.equal(tok.encode(x).codes, nearest)


def test_checkpoint_written_before_anchors_loads_and_encodes_exactly_as_before(tmp_path, tiny_catalog):
    """A config.json without the anchor fields (every checkpoint written before them) means: no anchors."""
    cfg = tiny_config().with_overrides("model", first_level_anchors=0)
    train_tokenizer(tiny_catalog.embeddings, cfg, tmp_path / "new")
    x = torch.from_numpy(tiny_catalog.embeddings)
    before = load_checkpoint(tmp_path / "new").tokenizer.encode(x, alternatives=4)
    old = tmp_path / "old"
    shutil.copytree(tmp_path / "new", old)
    raw = json.loads((old / CONFIG_FILE).read_text())
    for name in ANCHOR_FIELDS:
        raw["model"].pop(name)
    (old / CONFIG_FILE).write_text(json.dumps(raw))
    (old / FINGERPRINT_FILE).write_text(fingerprint_of(raw, old / WEIGHTS_FILE) + "\n")
    loaded = load_checkpoint(old)  # verifies the fingerprint of the config as written
    assert loaded.tokenizer.anchors is None and loaded.config.model.first_level_anchors == 0
    after = loaded.tokenizer.encode(x, alternatives=4)
    assert torch.equal(after.codes, before.codes)
    assert torch.equal(after.alternatives, before.alternatives)
    assert torch.equal(after.distances, before.distances)
