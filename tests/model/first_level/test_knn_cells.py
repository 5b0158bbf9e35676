"""The cell join behind the approximate k-NN graph: close to exact, a function of the data and the seed, safe on
degenerate catalogs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semid.model.data.synthetic import synthetic_catalog
from semid.model.first_level import knn
from semid.model.first_level.knn import cells_knn, exact_knn, knn_graph, recall, unit_rows
from semid.model.first_level.knn_cells import cell_knn, cell_members


@pytest.fixture(scope="module")
def unit() -> np.ndarray:
    x = synthetic_catalog(items=3000, dim=24, categories=6, subcategories=4, exact_duplicates=0, seed=3).embeddings
    return unit_rows(x)


@pytest.fixture(scope="module")
def truth(unit) -> np.ndarray:
    return exact_knn(unit, 10)


def test_the_cell_join_finds_nearly_every_true_neighbour_and_redundant_cells_are_what_buy_it(unit, truth):
    one = cell_knn(unit, 10, seed=0, cell_items=30, membership=1)  # 100 cells, each item in one
    three = cell_knn(unit, 10, seed=0, cell_items=30, membership=3)
    assert three.shape == (3000, 10) and three.dtype == np.int64
    assert not (three == np.arange(3000)[:, None]).any()
    assert all(np.unique(row).shape[0] == 10 for row in three)  # no neighbour twice
    assert recall(three, truth) > 0.95
    assert recall(one, truth) < recall(three, truth) - 0.05  # boundary items need their other cells


def test_above_the_threshold_the_graph_is_the_cell_join(unit, truth):
    graph = knn_graph(unit, 10, exact_max_items=2999, seed=0)  # n just above the threshold
    assert np.array_equal(graph, cells_knn(unit, 10, seed=0))
    assert recall(graph, truth) > 0.99  # 3,000 items: one cell, all pairs
    with pytest.raises(ValueError, match="approximate"):
        knn_graph(unit, 10, exact_max_items=0, approximate="ivf")


def test_the_graph_is_a_function_of_the_data_and_the_seed_on_any_number_of_threads(unit):
    a = cell_knn(unit, 10, seed=5, cell_items=30, workers=1)
    assert np.array_equal(a, cell_knn(unit, 10, seed=5, cell_items=30, workers=1))
    assert np.array_equal(a, cell_knn(unit, 10, seed=5, cell_items=30, workers=2))
    assert np.array_equal(a, cell_knn(unit, 10, seed=5, cell_items=30, workers=3))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert np.array_equal(a, cell_knn(unit, 10, seed=5, cell_items=30))  # the caller's 2 threads as workers
        assert torch.get_num_threads() == 2  # restored after the one-thread products
    finally:
        torch.set_num_threads(threads)
    b = cell_knn(unit, 10, seed=6, cell_items=30)
    assert not np.array_equal(a, b)  # other cells ...
    assert recall(a, b) > 0.9  # ... much the same neighbours


def test_rows_with_fewer_candidates_than_k_are_searched_exactly(unit, monkeypatch):
    x = unit[:600]
    short = cell_knn(x, 10, seed=0, cell_items=4, membership=1)  # cells of ~4 items: most rows see < 10 others
    gaps = (short < 0).any(axis=1)
    assert gaps.any() and (short[gaps] == -1).all()
    monkeypatch.setattr(knn, "cell_knn", lambda u, k, **kw: cell_knn(u, k, cell_items=4, membership=1, seed=0))
    graph = cells_knn(x, 10, seed=0)
    assert np.array_equal(graph[gaps], exact_knn(x, 10, rows=np.flatnonzero(gaps)))
    assert np.array_equal(graph[~gaps], short[~gaps])


def test_duplicates_and_a_catalog_of_one_point_stay_bounded_and_never_return_the_item_itself():
    copies = np.repeat(np.eye(3, dtype=np.float32), 200, axis=0)  # 3 points, 200 copies each
    graph = cell_knn(copies, 5, seed=0, cell_items=10)
    assert not (graph == np.arange(600)[:, None]).any()
    assert (graph // 200 == (np.arange(600) // 200)[:, None]).all()  # only its own copies
    same = np.ones((500, 8), dtype=np.float32)  # one point: every centroid ties, one cell takes all
    graph = cell_knn(same, 5, seed=0, cell_items=10)
    assert (graph >= 0).all() and not (graph == np.arange(500)[:, None]).any()
    near = np.tile(np.arange(3), (500, 1))
    fit = np.zeros((500, 3), dtype=np.float32)
    groups = cell_members(near, fit, 50, cap=120, seed=0, unit=same)
    assert max(rows.shape[0] for rows, _ in groups) <= 120  # the oversized cell is cut into slices
    first = np.concatenate([rows[slots == 0] for rows, slots in groups])
    assert np.array_equal(np.sort(first), np.arange(500))  # every item still in its nearest cell, once


def test_tiny_catalogs_on_the_cell_join():
    x = np.repeat(np.eye(4, dtype=np.float32), 3, axis=0)
    graph = knn_graph(x, 2, exact_max_items=0, seed=0)
    assert (graph // 3 == (np.arange(12) // 3)[:, None]).all() and not (graph == np.arange(12)[:, None]).any()
    assert knn_graph(x[:4], 10, exact_max_items=0).shape == (4, 3)  # k capped at n - 1
    assert knn_graph(x[:1], 10, exact_max_items=0).shape == (1, 0)
