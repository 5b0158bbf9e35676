"""The catalog decides whether the first level uses graph targets (semid.model.adaptive)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semid.model.adaptive import decide_graph_targets, neighbour_agreement
from semid.model.checkpoint import load_checkpoint
from semid.model.graph_targets import build_targets
from semid.model.job import train_tokenizer
from semid.model.synthetic import synthetic_catalog
from tests.conftest import tiny_config

# One diffuse blob: k-means cuts it into cells that split many neighbour pairs; the graph moves the
# borders (like the text catalogs). Many tight clusters: k-means already keeps neighbours together.
DIFFUSE = {"categories": 1, "subcategories": 1}
CLUSTERED = {"categories": 8, "subcategories": 8}


def catalog(structure: dict[str, int]) -> np.ndarray:
    return synthetic_catalog(items=1500, dim=32, seed=0, **structure).embeddings


def measure(x: np.ndarray, min_gain: float = 0.03):
    targets = build_targets(
        torch.from_numpy(x), 16, neighbours=10, balance=1.9, sweeps=8, seed=0, kmeans_iters=10, kmeans_sample=65536
    )
    return decide_graph_targets(
        targets.start.numpy(), targets.labels.numpy(), targets.neighbours.numpy(), min_gain=min_gain
    )


def test_neighbour_agreement_counts_pairs_with_one_label():
    labels = np.array([0, 0, 1, 1])
    neighbours = np.array([[1, 2], [0, 2], [3, 0], [2, 1]])
    assert neighbour_agreement(labels, neighbours) == pytest.approx(4 / 8)
    assert neighbour_agreement(labels, np.empty((4, 0), dtype=np.int64)) == 1.0


def test_the_threshold_decides_and_the_record_holds_the_measurement():
    start = np.array([0, 0, 1, 1])
    refined = np.array([0, 0, 0, 1])
    neighbours = np.array([[1], [2], [0], [2]])  # k-means keeps 2 of 4 pairs, the refinement 3 of 4
    on = decide_graph_targets(start, refined, neighbours, min_gain=0.25)
    off = decide_graph_targets(start, refined, neighbours, min_gain=0.3)
    assert on.use and on.reason == "gain" and on.gain == pytest.approx(0.25)
    assert not off.use and off.reason == "small gain"
    assert off.record() == {
        "use": False,
        "reason": "small gain",
        "kmeans_agreement": 0.5,
        "graph_agreement": 0.75,
        "min_gain": 0.3,
        "items": 4,
        "gain": 0.25,
    }
    assert decide_graph_targets(start, start, neighbours, min_gain=0.0).reason == "always"
    forced = decide_graph_targets(start, start, neighbours, min_gain=0.3, interactions=True)
    assert forced.use and forced.reason == "interactions"


def test_on_for_a_diffuse_catalog_off_for_tight_clusters_and_deterministic():
    diffuse = measure(catalog(DIFFUSE))
    clustered = measure(catalog(CLUSTERED))
    assert diffuse.use and diffuse.gain >= 0.03
    assert not clustered.use and clustered.kmeans_agreement > 0.9
    assert measure(catalog(CLUSTERED)) == clustered  # same embeddings and seed, same decision
    assert measure(catalog(CLUSTERED), min_gain=0.0).use  # graph_min_gain 0 keeps the previous default


def _train(x: np.ndarray, out, **train):
    cfg = tiny_config(epochs=4, graph_neighbours=10, **train).with_overrides("model", input_dim=32, codebook_size=16)
    _, metrics = train_tokenizer(x, cfg, out)
    codes = load_checkpoint(out).tokenizer.encode(torch.from_numpy(x)).codes
    return metrics, codes


def test_off_trains_exactly_as_without_graph_targets_and_the_checkpoint_records_why(tmp_path):
    x = catalog(CLUSTERED)
    metrics, codes = _train(x, tmp_path / "auto")  # graph targets on, graph_min_gain at its default
    plain_metrics, plain_codes = _train(x, tmp_path / "plain", graph_targets=False)
    decision = metrics["graph_targets"]
    assert decision["use"] is False and decision["reason"] == "small gain" and decision["items"] == len(x)
    assert torch.equal(codes, plain_codes)
    assert metrics["final"] == plain_metrics["final"]
    assert not any("graph_loss" in row for row in metrics["epochs"])
    assert plain_metrics["graph_targets"] is None  # nothing measured when graph targets are off


def test_on_trains_with_the_graph_loss(tmp_path):
    metrics, _ = _train(catalog(DIFFUSE), tmp_path / "auto")
    assert metrics["graph_targets"]["use"] is True
    assert any("graph_loss" in row for row in metrics["epochs"])
