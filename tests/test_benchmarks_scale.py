"""The scale benchmarks' measuring functions on tiny inputs (the scripts themselves run for minutes)."""

from __future__ import annotations

import numpy as np

from benchmarks.knn_graph import exact_rows, method_run, synthetic_run, synthetic_unit
from semid.model.first_level.knn import exact_knn


def test_knn_graph_benchmark_times_each_step_and_measures_the_approximate_graph():
    run = synthetic_run(3000)
    assert run["items"] == 3000
    for key in ("kmeans_start_s", "knn_graph_s", "refine_sweeps_s"):
        assert run[key] >= 0
    assert run["graph_build_s"] >= run["knn_graph_s"]
    assert 0.9 <= run["recall_at_10"] <= 1.0  # the cell join on a small clustered catalog
    assert 0 < run["graph_nn_share_start"] <= 1 and 0 < run["graph_nn_share_refined"] <= 1


def test_knn_graph_benchmark_runs_each_method_on_the_cached_catalog_with_its_phases_recall_and_memory(tmp_path):
    cache = tmp_path / "unit.npy"
    unit = synthetic_unit(1200, cache)
    assert cache.is_file() and np.array_equal(np.load(cache), unit)
    queries = np.array([0, 5, 700, 1199])
    truth = exact_rows(unit, queries, 10)
    assert np.array_equal(np.sort(truth, axis=1), np.sort(exact_knn(unit, 10)[queries], axis=1))
    for method in ("cells", "hnsw"):
        run = method_run(str(cache), method, 1, queries, truth)
        assert run["method"] == method and run["items"] == 1200
        assert run["build_s"] >= 0 and run["search_s"] >= 0 and run["graph_s"] >= run["search_s"]
        assert 0.9 <= run["recall_at_10"] <= 1.0
        assert run["peak_rss_gb"] >= run["catalog_rss_gb"] > 0
