import numpy as np
import torch

from semid.model.training.checkpoint import load_checkpoint
from semid.model.training.job import train_tokenizer
from semid.model.training.train import lr_factor
from tests.conftest import tiny_config


def test_rqvae_loss_decreases_on_a_structured_catalog(tiny_catalog, tmp_path):
    _, metrics = train_tokenizer(tiny_catalog.embeddings, tiny_config(epochs=12), tmp_path / "ck")
    quantized = [r for r in metrics["epochs"] if r["quantized"]]
    assert quantized[-1]["recon_mse"] < quantized[0]["recon_mse"]
    assert quantized[-1]["loss"] < quantized[0]["loss"]


def test_metrics_report_codebook_health_every_epoch(tiny_catalog, tmp_path):
    _, metrics = train_tokenizer(tiny_catalog.embeddings, tiny_config(), tmp_path / "ck")
    for row in metrics["epochs"]:
        if row["quantized"]:
            for key in ("recon_mse", "commit_loss", "util_l1", "perplexity_l3", "dead_codes_l2", "base_collision_rate"):
                assert key in row
            assert 0 < row["util_l1"] <= 1
            assert 1 <= row["perplexity_l1"] <= 8
    saved = (tmp_path / "ck" / "metrics.json").read_text()
    assert "perplexity_l1" in saved


def test_same_seed_and_data_give_identical_codes(tiny_catalog, tmp_path):
    x = torch.from_numpy(tiny_catalog.embeddings)
    fp_a, _ = train_tokenizer(tiny_catalog.embeddings, tiny_config(), tmp_path / "a")
    fp_b, _ = train_tokenizer(tiny_catalog.embeddings, tiny_config(), tmp_path / "b")
    codes_a = load_checkpoint(tmp_path / "a").tokenizer.encode(x).codes
    codes_b = load_checkpoint(tmp_path / "b").tokenizer.encode(x).codes
    assert torch.equal(codes_a, codes_b)
    assert fp_a == fp_b


def test_another_seed_gives_other_codes(tiny_catalog, tmp_path):
    x = torch.from_numpy(tiny_catalog.embeddings)
    train_tokenizer(tiny_catalog.embeddings, tiny_config(), tmp_path / "a")
    train_tokenizer(tiny_catalog.embeddings, tiny_config(seed=7), tmp_path / "b")
    a = load_checkpoint(tmp_path / "a").tokenizer.encode(x).codes
    b = load_checkpoint(tmp_path / "b").tokenizer.encode(x).codes
    assert not torch.equal(a, b)


def test_codebook_loss_variant_and_rqkmeans_train_and_use_their_codebooks(tiny_catalog, tmp_path):
    for name, cfg in {"no_ema": tiny_config(ema=False), "rqkmeans": tiny_config("rqkmeans")}.items():
        _, metrics = train_tokenizer(tiny_catalog.embeddings, cfg, tmp_path / name)
        assert metrics["final"]["util_l1"] >= 0.75, name
    ck = load_checkpoint(tmp_path / "rqkmeans")
    assert ck.config.model.tokenizer == "rqkmeans"
    assert ck.tokenizer.quantizer.codebooks.shape == (3, 8, 16)  # quantizes the input itself


def test_resume_continues_an_interrupted_run_to_the_same_result(tiny_catalog, tmp_path):
    from semid.model.training import job
    from semid.model.training.checkpoint import RESUME_STATE

    cfg = tiny_config(epochs=8)
    train_tokenizer(tiny_catalog.embeddings, cfg, tmp_path / "full")

    class Interrupt(Exception):
        pass

    real_save = job.save_resume_state

    def save_then_stop(out, tok, opt, epoch, hist, config):
        real_save(out, tok, opt, epoch, hist, config)
        if epoch == 4:
            raise Interrupt

    job.save_resume_state = save_then_stop
    try:
        try:
            train_tokenizer(tiny_catalog.embeddings, cfg, tmp_path / "cut")
        except Interrupt:
            pass
    finally:
        job.save_resume_state = real_save
    assert (tmp_path / "cut" / RESUME_STATE).is_file()
    assert not (tmp_path / "cut" / "model.safetensors").exists()
    _, metrics = train_tokenizer(tiny_catalog.embeddings, cfg, tmp_path / "cut", resume=True)
    assert [r["epoch"] for r in metrics["epochs"]] == list(range(1, 9))
    x = torch.from_numpy(tiny_catalog.embeddings)
    full = load_checkpoint(tmp_path / "full").tokenizer.encode(x).codes
    resumed = load_checkpoint(tmp_path / "cut").tokenizer.encode(x).codes
    assert torch.equal(full, resumed)
    assert not (tmp_path / "cut" / RESUME_STATE).exists()


def test_lr_schedule_warms_up_then_decays():
    values = [lr_factor(s, 100, 10, "cosine") for s in range(100)]
    assert values[0] < values[9] <= 1.0
    assert values[99] < 0.1
    assert np.all(np.diff(values[10:]) <= 1e-12)
