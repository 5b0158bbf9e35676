"""The epoch budget in samples: large catalogs train on a seeded sample per epoch, small ones as before."""

from __future__ import annotations

import torch

from semid.model.config import TrainConfig
from semid.model.tokenizers.rqvae import build_tokenizer
from semid.model.training.checkpoint import load_checkpoint
from semid.model.training.job import train_tokenizer
from semid.model.training.train import epoch_items, fit_rqvae
from tests.conftest import tiny_config


def test_epoch_items_caps_only_catalogs_above_the_budget():
    assert epoch_items(600, 0) == 600
    assert epoch_items(600, 600) == 600
    assert epoch_items(600, 100_000) == 600
    assert epoch_items(1_000_000, 100_000) == 100_000


def test_the_default_budget_leaves_movielens_and_100k_catalogs_whole():
    assert epoch_items(9_742, TrainConfig().epoch_samples) == 9_742
    assert epoch_items(100_000, TrainConfig().epoch_samples) == 100_000


def test_a_budget_at_or_above_the_catalog_trains_the_same_weights(tiny_catalog, tmp_path):
    train_tokenizer(tiny_catalog.embeddings, tiny_config(epoch_samples=0), tmp_path / "off")
    train_tokenizer(tiny_catalog.embeddings, tiny_config(epoch_samples=600), tmp_path / "equal")
    off = load_checkpoint(tmp_path / "off").tokenizer.state_dict()
    equal = load_checkpoint(tmp_path / "equal").tokenizer.state_dict()
    assert off.keys() == equal.keys()
    assert all(torch.equal(off[k], equal[k]) for k in off)


def steps_taken(cfg, embeddings) -> list[int]:
    tokenizer = build_tokenizer(cfg.model, cfg.train)
    steps: list[int] = []

    def record(epoch, tok, optimizer, history):
        steps.append(max(int(s["step"]) for s in optimizer.state.values()))

    fit_rqvae(tokenizer, embeddings, cfg, on_epoch=record)
    return steps


def test_a_budget_below_the_catalog_shortens_every_epoch(tiny_catalog):
    full = steps_taken(tiny_config(epochs=3, epoch_samples=0, graph_targets=False), tiny_catalog.embeddings)
    capped = steps_taken(tiny_config(epochs=3, epoch_samples=128, graph_targets=False), tiny_catalog.embeddings)
    assert full == [10, 20, 30]  # ceil(600 / 64) steps per epoch
    assert capped == [2, 4, 6]  # 128 items per epoch


def test_a_capped_run_is_reproducible_and_sees_fresh_items_each_epoch(tiny_catalog, tmp_path):
    cfg = tiny_config(epochs=4, epoch_samples=200)
    _, metrics = train_tokenizer(tiny_catalog.embeddings, cfg, tmp_path / "a")
    train_tokenizer(tiny_catalog.embeddings, cfg, tmp_path / "b")
    x = torch.from_numpy(tiny_catalog.embeddings)
    a = load_checkpoint(tmp_path / "a").tokenizer.encode(x).codes
    b = load_checkpoint(tmp_path / "b").tokenizer.encode(x).codes
    assert torch.equal(a, b)
    assert metrics["final"]["util_l1"] > 0.5  # still a working tokenizer on the whole catalog


def test_per_epoch_work_is_bounded_by_the_budget_not_the_catalog(tiny_catalog, monkeypatch):
    """What runs after each epoch (health figures, dead-code resets) sees a fixed sample, so a 1M-item
    epoch costs what a 100k one does (benchmarks/results/train_scale.md)."""
    import semid.model.training.train as train
    from semid.model.tokenizers.quantizer import ResidualQuantizer

    evaluated: list[int] = []
    reset: list[int] = []
    real_evaluate, real_reset = train.evaluate, ResidualQuantizer.reset_dead_codes

    def evaluate(tokenizer, x, codebook_size, **kw):
        evaluated.append(x.shape[0])
        return real_evaluate(tokenizer, x, codebook_size, **kw)

    def reset_dead_codes(self, residuals, **kw):
        reset.append(max(r.shape[0] for r in residuals))
        return real_reset(self, residuals, **kw)

    monkeypatch.setattr(train, "evaluate", evaluate)
    monkeypatch.setattr(ResidualQuantizer, "reset_dead_codes", reset_dead_codes)
    cfg = tiny_config(epochs=4, epoch_samples=128, eval_sample=100, graph_targets=False)
    fit_rqvae(build_tokenizer(cfg.model, cfg.train), tiny_catalog.embeddings, cfg)
    assert evaluated == [100, 100, 100]  # every quantized epoch, on the seeded sample only
    assert reset and max(reset) <= 4 * 64  # the residuals of the last 4 batches at most
