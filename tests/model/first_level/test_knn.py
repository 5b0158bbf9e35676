"""The k-NN graph: exact below the threshold, checked against brute force; the HNSW index of 0.5-0.6, kept for
comparison (the cell join is in test_knn_cells.py)."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from semid.model.data.synthetic import synthetic_catalog
from semid.model.first_level.graph_targets import build_targets
from semid.model.first_level.knn import exact_knn, hnsw_knn, knn_graph, recall, unit_rows


def brute_force(x: np.ndarray, k: int) -> np.ndarray:
    unit = unit_rows(x)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    return np.argsort(-sims, axis=1)[:, :k]


@pytest.fixture(scope="module")
def clustered() -> np.ndarray:
    return synthetic_catalog(items=3000, dim=24, categories=6, subcategories=4, exact_duplicates=0, seed=3).embeddings


def test_below_the_threshold_the_graph_is_the_exact_one(clustered):
    x = clustered[:500]
    assert np.array_equal(knn_graph(x, 5, exact_max_items=500), exact_knn(unit_rows(x), 5))
    assert recall(exact_knn(unit_rows(x), 5), brute_force(x, 5)) > 0.99  # ties aside


def test_above_the_threshold_the_graph_is_hnsw_close_and_never_the_item_itself(clustered):
    graph = knn_graph(clustered, 10, exact_max_items=1000, seed=0, approximate="hnsw")
    truth = brute_force(clustered, 10)
    assert graph.shape == (3000, 10) and graph.dtype == np.int64
    assert not (graph == np.arange(3000)[:, None]).any()
    assert np.array_equal(graph, hnsw_knn(unit_rows(clustered), 10, seed=0))  # the approximate path ran
    assert recall(graph, truth) > 0.95
    shallow = recall(knn_graph(clustered, 10, exact_max_items=0, seed=0, search_depth=1, approximate="hnsw"), truth)
    assert shallow < recall(graph, truth)  # the search depth is what buys the recall


def test_the_hnsw_graph_is_a_function_of_the_data_and_the_seed_whatever_the_threads(clustered):
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(2)
    try:
        a = knn_graph(clustered, 10, exact_max_items=0, seed=5, approximate="hnsw")
        assert np.array_equal(a, knn_graph(clustered, 10, exact_max_items=0, seed=5, approximate="hnsw"))
        assert faiss.omp_get_max_threads() == 2  # the one-thread build restores the caller's setting
        faiss.omp_set_num_threads(1)
        assert np.array_equal(
            a, knn_graph(clustered, 10, exact_max_items=0, seed=5, approximate="hnsw")
        )  # one thread, same graph
    finally:
        faiss.omp_set_num_threads(threads)
    b = knn_graph(clustered, 10, exact_max_items=0, seed=6, approximate="hnsw")
    assert recall(a, b) > 0.9  # another insertion order, much the same neighbours


def test_rows_the_hnsw_search_comes_back_short_for_get_an_exact_search(clustered, monkeypatch):
    unit = unit_rows(clustered[:600])
    real = faiss.IndexHNSWFlat

    class ShortIndex:  # an HNSW index whose search misses the last hit of every third query
        def __init__(self, *args):
            self.inner = real(*args)
            self.hnsw = self.inner.hnsw

        def add(self, x):
            self.inner.add(x)

        def search(self, x, k):
            dist, found = self.inner.search(x, k)
            found[::3, -1] = -1
            return dist, found

    monkeypatch.setattr(faiss, "IndexHNSWFlat", ShortIndex)
    graph = hnsw_knn(unit, 5, seed=0)
    exact = exact_knn(unit, 5)
    assert np.array_equal(graph[::3], exact[::3])
    assert not (graph == np.arange(600)[:, None]).any()


def test_exact_knn_of_some_rows_is_those_rows_of_the_whole_graph(clustered):
    unit = unit_rows(clustered[:500])
    rows = np.array([3, 7, 499, 0])
    assert np.array_equal(exact_knn(unit, 5, rows=rows), exact_knn(unit, 5)[rows])


def test_tiny_catalogs_and_exact_duplicates_on_hnsw():
    x = np.repeat(np.eye(4, dtype=np.float32), 3, axis=0)  # every point has two exact copies
    graph = knn_graph(x, 2, exact_max_items=0, seed=0, approximate="hnsw")
    assert not (graph == np.arange(12)[:, None]).any()
    assert (graph // 3 == (np.arange(12) // 3)[:, None]).all()  # its two copies
    assert knn_graph(x[:4], 10, exact_max_items=0, approximate="hnsw").shape == (4, 3)  # k capped at n - 1


def test_build_targets_on_the_approximate_graph_keep_the_neighbour_share(clustered):
    import torch

    x = torch.nn.functional.normalize(torch.from_numpy(clustered), dim=1)
    common = dict(neighbours=10, balance=1.0, sweeps=4, seed=0, kmeans_iters=5, kmeans_sample=65536)
    exact = build_targets(x, 16, **common)
    approx = build_targets(x, 16, exact_max_items=100, **common)
    truth = exact.neighbours.numpy()

    def share(labels: torch.Tensor) -> float:
        lab = labels.numpy()
        return float((lab[truth] == lab[:, None]).mean())

    assert abs(share(approx.labels) - share(exact.labels)) < 0.05  # measured on the exact graph for both
