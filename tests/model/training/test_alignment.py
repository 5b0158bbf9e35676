"""Renaming a tokenizer's codes (semid.model.training.alignment): optimal matching, exact renaming, a new checkpoint."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from semid.model.training.alignment import (
    Alignment,
    agreement,
    fit_alignment,
    max_weight_matching,
    permute_codes,
    write_aligned_checkpoint,
)
from semid.model.training.checkpoint import load_checkpoint
from semid.model.training.job import train_tokenizer
from tests.conftest import tiny_config


def test_matching_reaches_the_brute_force_optimum(rng):
    for _ in range(200):
        n = int(rng.integers(1, 7))
        w = rng.integers(0, int(rng.integers(1, 30)), size=(n, n))
        match = max_weight_matching(w)
        assert sorted(match.tolist()) == list(range(n))  # one-to-one
        best = max(sum(w[i, p[i]] for i in range(n)) for p in itertools.permutations(range(n)))
        assert w[np.arange(n), match].sum() == best


def test_matching_rejects_a_non_square_matrix():
    with pytest.raises(ValueError, match="square"):
        max_weight_matching(np.zeros((2, 3)))


def test_agreement_counts_shared_prefixes():
    old = np.array([[1, 2, 3], [1, 2, 0], [1, 0, 3], [0, 2, 3]])
    new = np.array([[1, 2, 3], [1, 2, 3], [1, 2, 3], [1, 2, 3]])
    assert agreement(old, new) == [0.75, 0.5, 0.25]


def test_codes_renamed_by_hidden_permutations_are_recovered_exactly(rng):
    k, levels = 8, 3
    old = rng.integers(0, k, size=(500, levels))
    hidden = np.stack([rng.permutation(k) for _ in range(levels)])
    new = np.take_along_axis(hidden.T, old, axis=0)  # new[i, l] = hidden[l, old[i, l]]
    assert agreement(old, new)[0] < 0.5
    alignment = fit_alignment(old, new, k)
    assert (alignment.rename(new) == old).all()
    assert agreement(old, alignment.rename(new)) == [1.0, 1.0, 1.0]


def test_codes_aligned_to_themselves_stay_as_they_are(rng):
    codes = rng.integers(0, 8, size=(300, 3))
    alignment = fit_alignment(codes, codes, 8)
    assert alignment.identity and (alignment.rename(codes) == codes).all()


def test_deeper_levels_are_matched_within_agreeing_prefixes():
    """Level 2's weight counts only items whose level-1 code already agrees: here the items with
    a disagreeing level 1 (the last five) would pull new level-2 code 0 onto old code 1."""
    old = np.array([[0, 0]] * 3 + [[1, 2]] * 4 + [[1, 1]] * 5)
    new = np.array([[0, 0]] * 3 + [[1, 2]] * 4 + [[0, 0]] * 5)
    alignment = fit_alignment(old, new, 3)
    assert alignment.permutations[0].tolist() == [0, 1, 2]  # 3 + 4 items beat the 5 of new 0 -> old 1
    assert alignment.permutations[1].tolist() == [0, 1, 2]  # over all items: [1, 0, 2] (5 + 4 > 3 + 4)
    assert agreement(old, alignment.rename(new)) == [7 / 12, 7 / 12]


def test_codes_out_of_range_are_refused():
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        fit_alignment(np.array([[0, 4]]), np.array([[0, 1]]), 4)


@pytest.fixture(scope="module", params=["rqvae", "rqkmeans", "rqkmeans-balanced"])
def two_seeds(request, tmp_path_factory, tiny_catalog):
    """(old, new) checkpoints of one tokenizer kind trained with seeds 0 and 1 (balanced: levels 2 and 3
    balanced, whose per-code offsets are renamed with the codes)."""
    out = tmp_path_factory.mktemp(f"align-{request.param}")
    kind, _, balanced = request.param.partition("-")
    extra = {"kmeans_balance_from": 2} if balanced else {}
    for seed in (0, 1):
        train_tokenizer(tiny_catalog.embeddings, tiny_config(kind, seed=seed, **extra), out / f"seed{seed}")
    return load_checkpoint(out / "seed0"), load_checkpoint(out / "seed1"), out


def _encode(checkpoint, x, alternatives=1):
    return checkpoint.tokenizer.encode(torch.from_numpy(x), alternatives=alternatives)


def test_aligned_checkpoint_encodes_to_exactly_the_renamed_codes(two_seeds, tiny_catalog):
    old, new, out = two_seeds
    x = tiny_catalog.embeddings
    old_codes, new_codes = _encode(old, x).codes.numpy(), _encode(new, x).codes.numpy()
    alignment = fit_alignment(old_codes, new_codes, new.config.model.codebook_size)
    assert not alignment.identity  # two seeds name their codes differently
    fingerprint = write_aligned_checkpoint(new, alignment, out / "aligned", {"note": "test"})
    aligned = load_checkpoint(out / "aligned")  # verifies the new fingerprint
    assert aligned.fingerprint == fingerprint != new.fingerprint
    assert aligned.config == new.config
    assert aligned.metrics["alignment"]["source_fingerprint"] == new.fingerprint
    assert aligned.metrics["final"] == new.metrics["final"]
    before, after = _encode(new, x, alternatives=4), _encode(aligned, x, alternatives=4)
    renamed = alignment.rename(before.codes.numpy())
    assert (after.codes.numpy() == renamed).all()  # every item, every level
    last = alignment.permutations[-1]
    assert (after.alternatives.numpy() == last[before.alternatives.numpy()]).all()
    assert torch.equal(after.distances, before.distances)
    # decoding the renamed codes gives what the unaligned model gives for its own codes
    assert torch.allclose(aligned.tokenizer.decode(torch.from_numpy(renamed)), new.tokenizer.decode(before.codes))
    # agreement with the old codes never drops, and rises at level 1
    unaligned, realigned = agreement(old_codes, new_codes), agreement(old_codes, renamed)
    assert all(a >= b for a, b in zip(realigned, unaligned, strict=True))
    assert realigned[0] > unaligned[0]


def test_permuting_leaves_the_source_tokenizer_untouched(two_seeds, tiny_catalog):
    _, new, _ = two_seeds
    k, levels = new.config.model.codebook_size, new.config.model.levels
    shifted = Alignment(permutations=np.tile((np.arange(k) + 1) % k, (levels, 1)))  # code c is now called c + 1
    books = new.tokenizer.quantizer.codebooks.detach().clone()
    renamed = permute_codes(new.tokenizer, shifted)
    assert torch.equal(new.tokenizer.quantizer.codebooks, books)
    assert torch.equal(renamed.quantizer.codebooks[:, 1], books[:, 0])  # code 0 is now called 1
    assert torch.equal(renamed.quantizer.ema_sum[:, 1], new.tokenizer.quantizer.ema_sum[:, 0])


def test_unknown_per_code_state_is_refused(two_seeds):
    _, new, _ = two_seeds
    q = new.tokenizer.quantizer
    k, levels = q.codebook_size, q.levels
    alignment = Alignment(permutations=np.tile(np.arange(k), (levels, 1)))
    tokenizer = permute_codes(new.tokenizer, alignment)  # a copy to add a buffer to
    tokenizer.quantizer.register_buffer("per_code_bias", torch.zeros(levels, k))
    with pytest.raises(ValueError, match="per_code_bias"):
        permute_codes(tokenizer, alignment)


@pytest.mark.slow
def test_movielens_rqkmeans_seeds_align_exactly_and_agree_more(movielens, tmp_path):
    """Two seeds of a quick RQ-KMeans on the real catalog: the aligned checkpoint renames codes exactly and
    keeps far more level-1 codes (the RQ-VAE figures are in benchmarks/results/migration_agreement.md)."""
    from semid.model.config import SemidConfig
    from semid.model.data.catalog import read_catalog

    x = read_catalog(movielens).embeddings
    loaded = []
    for seed in (0, 1):
        cfg = {"model": {"tokenizer": "rqkmeans"}, "train": {"kmeans_iters": 10, "kmeans_restarts": 1, "seed": seed}}
        train_tokenizer(x, SemidConfig.from_dict(cfg), tmp_path / f"seed{seed}")
        loaded.append(load_checkpoint(tmp_path / f"seed{seed}"))
    old_codes, new_codes = (_encode(ck, x).codes.numpy() for ck in loaded)
    alignment = fit_alignment(old_codes, new_codes, 256)
    write_aligned_checkpoint(loaded[1], alignment, tmp_path / "aligned", {})
    aligned_codes = _encode(load_checkpoint(tmp_path / "aligned"), x).codes.numpy()
    assert (aligned_codes == alignment.rename(new_codes)).all()
    before, after = agreement(old_codes, new_codes), agreement(old_codes, aligned_codes)
    assert after[0] > 10 * max(before[0], 0.01)
    assert all(a >= b for a, b in zip(after, before, strict=True))
