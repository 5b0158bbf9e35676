"""`semid evaluate --holdout-share`: the seeded split, figures on the right subsets, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from semid.model.training.checkpoint import load_checkpoint
from semid.service.cli import main
from semid.service.evaluation.holdout import split_rows, subset_figures
from tests.conftest import tiny_config


def test_split_is_seeded_disjoint_and_complete():
    train, held = split_rows(1000, 0.2, seed=3)
    assert held.shape[0] == 200 and train.shape[0] == 800
    assert np.intersect1d(train, held).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, held])), np.arange(1000))
    again_train, again_held = split_rows(1000, 0.2, seed=3)
    assert np.array_equal(held, again_held) and np.array_equal(train, again_train)
    _, other = split_rows(1000, 0.2, seed=4)
    assert not np.array_equal(held, other)
    assert np.all(np.diff(held) > 0) and np.all(np.diff(train) > 0)


@pytest.mark.parametrize(("n", "share", "held"), [(3, 0.01, 1), (3, 0.99, 1), (10, 0.5, 5)])
def test_split_keeps_both_sides_non_empty(n, share, held):
    train, h = split_rows(n, share, seed=0)
    assert h.shape[0] == held and train.shape[0] == n - held


@pytest.mark.parametrize(("n", "share"), [(2, 0.5), (10, 0.0), (10, 1.0)])
def test_split_refuses_bad_arguments(n, share):
    with pytest.raises(ValueError):
        split_rows(n, share, seed=0)


def test_subset_figures_are_taken_on_the_subset():
    # two well-separated clusters of 20 items; cluster A is coded consistently, cluster B's items all differ
    rng = np.random.default_rng(0)
    centres = np.eye(8, dtype=np.float32)[:2] * 10
    emb = np.concatenate([centres[0] + rng.normal(size=(20, 8)), centres[1] + rng.normal(size=(20, 8))])
    emb = emb.astype(np.float32)
    codes = np.zeros((40, 2), dtype=np.int64)
    codes[:20] = [[0, 0]] * 20  # A: one bucket
    codes[20:, 0] = np.arange(1, 21)  # B: every item its own first code
    a, b = np.arange(20), np.arange(20, 40)
    fa = subset_figures(emb, codes, a, (32, 32), k=5, sample=100)
    fb = subset_figures(emb, codes, b, (32, 32), k=5, sample=100)
    assert fa["summary"]["items"] == 20 and fa["neighbours"]["sampled_items"] == 20
    assert fa["summary"]["nn_share_d1"] == 1.0 and fb["summary"]["nn_share_d1"] == 0.0
    assert fa["summary"]["base_collision_rate"] == pytest.approx(1 - 1 / 20, abs=1e-5)
    assert fb["summary"]["base_collision_rate"] == 0.0
    assert fa["summary"]["collides_with_catalog"] == 1.0 and fb["summary"]["collides_with_catalog"] == 0.0
    assert fa["levels"][0]["perplexity"] == 1.0 and fb["levels"][0]["perplexity"] == pytest.approx(20.0, abs=0.1)


def test_subset_neighbours_come_from_the_whole_catalog():
    # a subset of one item per pair: its nearest item is its twin outside the subset, which shares its code
    emb = np.repeat(np.eye(10, dtype=np.float32), 2, axis=0) + np.random.default_rng(1).normal(0, 0.01, (20, 10))
    codes = np.repeat(np.arange(10), 2)[:, None]
    figures = subset_figures(emb.astype(np.float32), codes, np.arange(0, 20, 2), (16,), k=1, sample=10)
    assert figures["summary"]["nn_share_d1"] == 1.0
    assert figures["summary"]["collides_with_catalog"] == 1.0  # its twin holds the same code
    assert figures["summary"]["base_collision_rate"] == 0.0  # but no two items of the subset do


def test_cli_holdout_trains_on_the_rest_and_reports_both_subsets(tmp_path, tiny_catalog, tiny_catalog_file):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(tiny_config().to_dict()))
    out = tmp_path / "holdout"
    args = ["evaluate", "--catalog", str(tiny_catalog_file), "--holdout-share", "0.25", "--seed", "2"]
    result = CliRunner().invoke(main, [*args, "--config", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "heldout" in result.output and "train" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    n = len(tiny_catalog)
    train, held = split_rows(n, 0.25, seed=2)
    assert metrics["holdout"]["heldout_items"] == held.shape[0] == 150
    assert metrics["train"]["summary"]["items"] == train.shape[0]
    assert metrics["heldout"]["summary"]["items"] == held.shape[0]
    checkpoint = load_checkpoint(out / "checkpoint")
    assert checkpoint.metrics["items"] == train.shape[0]  # trained on the training part only
    assert metrics["checkpoint_fingerprint"] == checkpoint.fingerprint
    for name in ("train", "heldout"):
        s = metrics[name]["summary"]
        assert 0.0 <= s["nn_share_d1"] <= 1.0 and s["perplexity_l1"] >= 1.0 and s["recon_mse"] >= 0.0


def test_cli_holdout_needs_exactly_one_mode(tmp_path, tiny_catalog_file):
    runner = CliRunner()
    neither = runner.invoke(main, ["evaluate", "--catalog", str(tiny_catalog_file), "--out", str(tmp_path / "o")])
    assert neither.exit_code != 0 and "--index or --holdout-share" in neither.output
    both = runner.invoke(
        main,
        ["evaluate", "--catalog", str(tiny_catalog_file), "--index", str(tmp_path), "--holdout-share", "0.1"],
    )
    assert both.exit_code != 0 and "--index or --holdout-share" in both.output
    bad = runner.invoke(main, ["evaluate", "--catalog", str(tiny_catalog_file), "--holdout-share", "1.5"])
    assert bad.exit_code != 0
