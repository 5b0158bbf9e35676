"""LETTER-style code shaping (semid.model.training.collab): the PPMI-SVD collaborative embeddings, the two loss terms,
their effect on a catalog whose taste groups differ from its content, the config in the checkpoint, and the
CLI's errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from semid.model.first_level.coliked import ColikedGraph, coliked_partners, read_coliked
from semid.model.training.checkpoint import load_checkpoint
from semid.model.training.collab import CodeShaping, CollabError, alignment_loss, diversity_loss, ppmi_svd
from semid.model.training.job import train_tokenizer
from semid.service.cli import main
from tests.conftest import tiny_config
from tests.model.first_level.test_coliked import first_code_lift, planted_catalog, planted_files, taste_interactions

__all__ = ["planted_files"]  # the fixture, imported for the CLI tests


def test_ppmi_svd_is_deterministic_and_puts_co_liked_items_together():
    groups = np.arange(200) % 5
    users, rows = taste_interactions(400, groups, seed=0, likes=8)
    emb = ppmi_svd(users, rows, 210, 8, seed=1)  # rows 200..209: never liked
    assert emb.shape == (210, 8) and emb.dtype == np.float32
    assert np.array_equal(emb, ppmi_svd(users, rows, 210, 8, seed=1))
    assert not np.abs(emb[200:]).any()
    unit = emb[:200] / np.linalg.norm(emb[:200], axis=1, keepdims=True)
    cos = unit @ unit.T
    same = groups[:, None] == groups[None, :]
    np.fill_diagonal(same, False)
    other = groups[:, None] != groups[None, :]
    assert cos[same].mean() > 0.5 > cos[other].mean() + 0.3, (cos[same].mean(), cos[other].mean())


def test_alignment_loss_prefers_matching_pairs_and_skips_items_without_likes():
    collab = torch.nn.functional.normalize(torch.randn(6, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    known = torch.tensor([True, True, True, True, True, False])
    rows = torch.arange(6)
    matched = alignment_loss(collab.clone(), collab, known, rows, 0.1)
    shuffled = alignment_loss(collab[[1, 2, 3, 4, 0, 5]], collab, known, rows, 0.1)
    assert float(matched) < float(shuffled)
    assert float(alignment_loss(collab, collab, torch.tensor([True] + [False] * 5), rows, 0.1)) == 0.0


def test_diversity_loss_is_low_when_items_spread_and_high_on_one_code():
    books = torch.eye(4).repeat(1, 1, 1) * 3  # one level, 4 codes far apart
    spread = books[0].repeat(8, 1)
    one = books[0][:1].repeat(32, 1)
    codes_spread = torch.arange(4).repeat(8)[:, None]
    codes_one = torch.zeros(32, 1, dtype=torch.long)
    low = float(diversity_loss(spread, codes_spread, books, 0.1))
    high = float(diversity_loss(one, codes_one, books, 0.1))
    assert low < 0.05 and high > 0.9, (low, high)


def _graph(x: np.ndarray, users: np.ndarray, rows: np.ndarray, cfg) -> ColikedGraph:
    partners, scores, _ = coliked_partners(users, rows, x.shape[0], cfg.train)
    liked = np.stack([users, rows], axis=1).astype(np.int64)
    return ColikedGraph(partners=partners, scores=scores, weight=cfg.train.coliked_weight, record={}, liked=liked)


def test_terms_are_absent_when_off(tmp_path):
    x, groups = planted_catalog()
    users, rows = taste_interactions(300, groups, seed=1)
    cfg = tiny_config(epochs=3, coliked_min_users=1)
    assert CodeShaping.build(cfg, x.shape[0], None) is None
    train_tokenizer(x, cfg, tmp_path / "off", coliked=_graph(x, users, rows, cfg))
    history = load_checkpoint(tmp_path / "off").metrics["epochs"]
    assert not any("collab_loss" in r or "diversity_loss" in r for r in history)
    on = tiny_config(epochs=3, coliked_min_users=1, collab_align=1.0, code_diversity=0.5)
    train_tokenizer(x, on, tmp_path / "on", coliked=_graph(x, users, rows, on))
    last = load_checkpoint(tmp_path / "on").metrics["epochs"][-1]
    assert last["collab_loss"] > 0 and 0 < last["diversity_loss"] < 1


def test_alignment_puts_co_interacted_items_under_shared_codes_more_often(tmp_path):
    """Taste groups follow content only loosely (planted_catalog): the aligned run's codes must follow the
    interactions more than the run with the same interactions (co-liked first level) and no alignment."""
    x, groups = planted_catalog()
    users, rows = taste_interactions(300, groups, seed=1)
    fresh_users, fresh_rows = taste_interactions(200, groups, seed=2)  # measured on users not trained on
    lifts = {}
    for name, extra in (("plain", {}), ("aligned", {"collab_align": 1.0})):
        cfg = tiny_config(epochs=12, coliked_min_users=1, **extra)
        train_tokenizer(x, cfg, tmp_path / name, coliked=_graph(x, users, rows, cfg))
        tok = load_checkpoint(tmp_path / name).tokenizer.eval()
        with torch.inference_mode():
            codes = tok.encode(torch.from_numpy(x)).codes.numpy()
        two = (codes[:, 0] * 8 + codes[:, 1])[:, None]  # the first two codes as one
        lifts[name] = (first_code_lift(codes, fresh_users, fresh_rows), first_code_lift(two, fresh_users, fresh_rows))
    assert lifts["aligned"][0] > 1.1 * lifts["plain"][0], lifts
    assert lifts["aligned"][1] > 1.5 * lifts["plain"][1], lifts


def test_read_coliked_keeps_the_likes_for_the_alignment(tmp_path, planted_files):
    catalog, ratings = planted_files
    graph = read_coliked(ratings, np.arange(1, 641), tiny_config(coliked_min_users=1).train)
    assert graph.liked is not None and graph.liked.shape == (1800, 2)  # the like of item 9999 is not in the catalog
    assert graph.liked[:, 1].max() < 640 and graph.liked[:, 0].max() == 299


def test_cli_settings_round_trip_through_the_checkpoint(tmp_path, planted_files):
    catalog, ratings = planted_files
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(tiny_config(epochs=3, coliked_min_users=1).to_dict()))
    out = tmp_path / "ckpt"
    args = ["train", "--catalog", catalog, "--config", cfg, "--out", out, "--quiet", "--interactions", ratings]
    flags = ["--collab-align", "0.7", "--code-diversity", "0.2", "--collab-temperature", "0.2"]
    result = CliRunner().invoke(main, [str(a) for a in [*args, *flags]])
    assert result.exit_code == 0, result.output
    train = load_checkpoint(out).config.train
    assert (train.collab_align, train.code_diversity, train.collab_temperature) == (0.7, 0.2, 0.2)
    shown = json.loads(CliRunner().invoke(main, ["inspect", str(out), "--json"]).stdout)
    assert shown["config"]["train"]["collab_align"] == 0.7


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--collab-align", "-1"], "collab_align: Input should be greater than or equal to 0"),
        (["--code-diversity", "-0.5"], "code_diversity: Input should be greater than or equal to 0"),
        (["--collab-align", "1"], "collaborative alignment needs --interactions"),
        (["--tokenizer", "rqkmeans", "--code-diversity", "1"], "use the rqvae tokenizer"),
    ],
)
def test_cli_bad_settings_exit_2_with_one_line(tmp_path, planted_files, extra, message):
    catalog, _ = planted_files
    args = ["train", "--catalog", str(catalog), "--out", str(tmp_path / "x"), "--quiet", *extra]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "x").exists()


def test_train_tokenizer_refuses_alignment_without_interactions(tmp_path):
    x, _ = planted_catalog()
    with pytest.raises(CollabError, match="needs --interactions"):
        train_tokenizer(x, tiny_config(collab_align=1.0), tmp_path / "a")
