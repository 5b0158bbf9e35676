import torch

from semid.model.kmeans import kmeans, nearest


def _blobs(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    return torch.cat([c + 0.1 * torch.randn(50, 2, generator=g) for c in centres])


def test_kmeans_is_deterministic_for_a_seed():
    x = _blobs()
    a = kmeans(x, 4, iters=10, seed=3)
    b = kmeans(x, 4, iters=10, seed=3)
    assert torch.equal(a, b)


def test_kmeans_finds_well_separated_blobs():
    x = _blobs()
    centroids = kmeans(x, 4, iters=20, seed=0)
    codes, _ = nearest(x, centroids)
    # every blob of 50 points maps to one centroid, and the four blobs to four different ones
    per_blob = [set(codes[i * 50 : (i + 1) * 50].tolist()) for i in range(4)]
    assert all(len(s) == 1 for s in per_blob)
    assert len(set().union(*per_blob)) == 4


def test_kmeans_gives_every_centroid_data_when_possible():
    x = torch.randn(300, 3, generator=torch.Generator().manual_seed(1))
    centroids = kmeans(x, 32, iters=15, seed=0)
    codes, _ = nearest(x, centroids)
    assert torch.bincount(codes, minlength=32).min() > 0


def test_kmeans_with_fewer_points_than_clusters_still_returns_k_centroids():
    x = torch.randn(3, 4)
    assert kmeans(x, 8, iters=3, seed=0).shape == (8, 4)


def _error(x, centroids) -> float:
    return float(nearest(x, centroids)[1].sum())


def test_restarts_keep_the_lowest_error_fit():
    x = torch.randn(600, 4, generator=torch.Generator().manual_seed(5))
    single = kmeans(x, 24, iters=5, seed=1)
    best = kmeans(x, 24, iters=5, seed=1, restarts=4)
    assert _error(x, best) <= _error(x, single)  # the first restart is the single run
    assert torch.equal(best, kmeans(x, 24, iters=5, seed=1, restarts=4))
