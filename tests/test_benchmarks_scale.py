"""The scale benchmarks' measuring functions on tiny inputs (the scripts themselves run for minutes)."""

from __future__ import annotations

from benchmarks.knn_graph import synthetic_run


def test_knn_graph_benchmark_times_each_step_and_measures_the_approximate_graph():
    run = synthetic_run(3000)
    assert run["items"] == 3000
    for key in ("kmeans_start_s", "knn_graph_s", "refine_sweeps_s"):
        assert run[key] >= 0
    assert run["graph_build_s"] >= run["knn_graph_s"]
    assert 0.9 <= run["recall_at_10"] <= 1.0  # the HNSW graph on a small clustered catalog
    assert 0 < run["graph_nn_share_start"] <= 1 and 0 < run["graph_nn_share_refined"] <= 1
