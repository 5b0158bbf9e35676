import json

import pytest
import torch

from semid.model.training.checkpoint import CheckpointError, load_checkpoint


def test_save_load_round_trip_gives_identical_codes(tiny_checkpoint, tiny_catalog):
    x = torch.from_numpy(tiny_catalog.embeddings)
    a = load_checkpoint(tiny_checkpoint)
    b = load_checkpoint(tiny_checkpoint)
    assert torch.equal(a.tokenizer.encode(x).codes, b.tokenizer.encode(x).codes)
    assert a.fingerprint == b.fingerprint == (tiny_checkpoint / "fingerprint").read_text().strip()


def test_checkpoint_is_self_describing(tiny_checkpoint):
    cfg = json.loads((tiny_checkpoint / "config.json").read_text())
    assert cfg["model"]["input_dim"] == 16 and cfg["model"]["codebook_size"] == 8
    assert cfg["train"]["seed"] == 0 and "torch" in cfg["versions"]
    assert not any(p.suffix in (".pt", ".pkl", ".bin") for p in tiny_checkpoint.iterdir())


def test_decode_reconstructs_better_than_the_mean(tiny_checkpoint, tiny_catalog):
    tok = load_checkpoint(tiny_checkpoint).tokenizer
    x = torch.from_numpy(tiny_catalog.embeddings)
    target = tok.normalizer(x)
    recon = tok.decode(tok.encode(x).codes)
    assert ((recon - target) ** 2).sum(1).mean() < ((target - target.mean(0)) ** 2).sum(1).mean()


@pytest.mark.parametrize("damage", ["missing_weights", "corrupt_weights", "foreign_config", "bad_json", "edited"])
def test_damaged_checkpoints_are_refused(tiny_checkpoint, tmp_path, damage):
    import shutil

    ck = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, ck)
    if damage == "missing_weights":
        (ck / "model.safetensors").unlink()
    elif damage == "corrupt_weights":
        (ck / "model.safetensors").write_bytes(b"\x00" * 100)
        (ck / "fingerprint").unlink()
    elif damage == "foreign_config":
        (ck / "config.json").write_text(json.dumps({"kind": "something-else"}))
    elif damage == "bad_json":
        (ck / "config.json").write_text("{not json")
    elif damage == "edited":
        cfg = json.loads((ck / "config.json").read_text())
        cfg["train"]["seed"] = 99
        (ck / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError):
        load_checkpoint(ck)


def test_missing_checkpoint_dir_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
