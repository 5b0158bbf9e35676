import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from semid.model.balanced_kmeans import balanced_codes, balanced_kmeans
from semid.model.config import SemidConfig
from semid.model.kmeans import kmeans, nearest
from semid.model.training.checkpoint import CONFIG_FILE, FINGERPRINT_FILE, WEIGHTS_FILE, fingerprint_of, load_checkpoint
from semid.model.training.job import train_tokenizer
from tests.conftest import tiny_config


def _hub_points(n: int = 800, dim: int = 32, seed: int = 0) -> torch.Tensor:
    """Points spread in every direction with lengths from small to large: like residuals, where the
    centroid nearest the origin is the nearest one for most points."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g) * (0.2 + torch.rand(n, 1, generator=g)) ** 2


def _perplexity(codes: np.ndarray) -> float:
    p = np.bincount(codes) / len(codes)
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def test_balanced_assignments_spread_points_where_plain_kmeans_piles_them_up():
    x, k = _hub_points(), 16
    plain = torch.bincount(nearest(x, kmeans(x, k, iters=10, seed=0))[0], minlength=k)
    centroids, bias = balanced_kmeans(x, k, iters=10, seed=0)
    balanced = torch.bincount(balanced_codes(x, centroids, bias), minlength=k)
    share = len(x) / k
    assert int(plain.max()) > 5 * share  # one code takes most of the points
    assert int(balanced.min()) > 0.5 * share and int(balanced.max()) < 2 * share


def test_balanced_kmeans_is_deterministic_for_a_seed():
    x = _hub_points(seed=3)
    a, b = balanced_kmeans(x, 8, iters=5, seed=1), balanced_kmeans(x, 8, iters=5, seed=1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_fewer_points_than_codes_get_no_offsets():
    centroids, bias = balanced_kmeans(_hub_points(n=5, dim=4), 8, iters=3, seed=0)
    assert centroids.shape == (8, 4) and torch.equal(bias, torch.zeros(8))


@pytest.fixture(scope="module")
def plain_and_balanced(tmp_path_factory, tiny_catalog):
    out = tmp_path_factory.mktemp("balanced")
    train_tokenizer(tiny_catalog.embeddings, tiny_config("rqkmeans"), out / "plain")
    train_tokenizer(tiny_catalog.embeddings, tiny_config("rqkmeans", kmeans_balance_from=2), out / "balanced")
    return out / "plain", out / "balanced"


def _codes(path, x) -> np.ndarray:
    return load_checkpoint(path).tokenizer.encode(torch.from_numpy(x)).codes.numpy()


def test_levels_from_the_balanced_one_on_are_spread_and_the_levels_above_unchanged(plain_and_balanced, tiny_catalog):
    plain_dir, balanced_dir = plain_and_balanced
    x = tiny_catalog.embeddings
    plain, balanced = _codes(plain_dir, x), _codes(balanced_dir, x)
    assert (plain[:, 0] == balanced[:, 0]).all()  # level 1 is plain k-means in both
    for level in (1, 2):
        assert _perplexity(balanced[:, level]) > _perplexity(plain[:, level])
    assert len(np.unique(balanced, axis=0)) >= len(np.unique(plain, axis=0))  # no more shared code tuples
    bias = load_checkpoint(balanced_dir).tokenizer.quantizer.code_bias
    assert torch.equal(bias[0], torch.zeros_like(bias[0])) and bool(bias[1:].any())
    assert not bool(load_checkpoint(plain_dir).tokenizer.quantizer.code_bias.any())


@torch.inference_mode()
def test_encoding_applies_the_offsets_the_fit_found(plain_and_balanced, tiny_catalog):
    _, balanced_dir = plain_and_balanced
    tokenizer = load_checkpoint(balanced_dir).tokenizer
    q = tokenizer.quantizer
    z = tokenizer.encoder(tokenizer.normalizer(torch.from_numpy(tiny_catalog.embeddings)))
    encoded = tokenizer.encode(torch.from_numpy(tiny_catalog.embeddings), alternatives=3)
    residual = z - q.codebooks[0][encoded.codes[:, 0]]
    second = balanced_codes(residual, q.codebooks[1].detach(), q.code_bias[1])
    assert torch.equal(encoded.codes[:, 1], second)
    # the reported distance is the chosen code's own, not its offset score
    d = ((residual - q.codebooks[1][second]) ** 2).sum(dim=1)
    assert torch.allclose(encoded.distances[:, 1], d, atol=1e-4)
    assert torch.equal(encoded.alternatives[:, 0], encoded.codes[:, -1])


def test_a_checkpoint_written_before_offsets_existed_still_loads(plain_and_balanced, tiny_catalog, tmp_path):
    plain_dir, _ = plain_and_balanced
    old = tmp_path / "old"
    old.mkdir()
    for name in (CONFIG_FILE, "metrics.json"):
        (old / name).write_bytes((plain_dir / name).read_bytes())
    state = {k: v for k, v in load_file(str(plain_dir / WEIGHTS_FILE)).items() if k != "quantizer.code_bias"}
    save_file(state, str(old / WEIGHTS_FILE))
    (old / FINGERPRINT_FILE).write_text(fingerprint_of(json.loads((old / CONFIG_FILE).read_text()), old / WEIGHTS_FILE))
    assert (_codes(old, tiny_catalog.embeddings) == _codes(plain_dir, tiny_catalog.embeddings)).all()


@pytest.mark.parametrize(
    ("model", "train", "message"),
    [
        ({"tokenizer": "rqvae"}, {"kmeans_balance_from": 2}, "need --tokenizer rqkmeans"),
        ({"tokenizer": "rqkmeans", "levels": 3}, {"kmeans_balance_from": 4}, r"expected a level in \[0, 3\]"),
    ],
)
def test_balanced_levels_the_tokenizer_cannot_have_are_refused(model, train, message):
    with pytest.raises(ValueError, match=message):
        SemidConfig.from_dict({"model": model, "train": train})


def test_a_config_edited_after_it_was_built_is_checked_again_before_training(tiny_catalog, tmp_path):
    cfg = tiny_config("rqvae")
    cfg.train.kmeans_balance_from = 2  # each field is valid alone; together with the RQ-VAE it is not
    with pytest.raises(ValueError, match="need --tokenizer rqkmeans"):
        train_tokenizer(tiny_catalog.embeddings, cfg, tmp_path / "out")
