"""The catalog decides whether the first level uses graph targets (semid.model.first_level.adaptive)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semid.model.data.synthetic import synthetic_catalog
from semid.model.first_level.adaptive import GraphDecision, decide_graph_targets, judge_trained, neighbour_agreement
from semid.model.first_level.graph_targets import build_targets
from semid.model.training.checkpoint import RESUME_STATE, load_checkpoint
from semid.model.training.job import train_tokenizer
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
        "trained_agreement": None,
        "plain_agreement": None,
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


def _train(x: np.ndarray, out, *, model: dict | None = None, **train):
    cfg = tiny_config(**{"epochs": 4, "graph_neighbours": 10, **train})
    cfg = cfg.with_overrides("model", input_dim=32, codebook_size=16, **(model or {}))
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


def test_kept_when_the_trained_codes_beat_a_plain_run(tmp_path):
    # A latent wide enough to learn the labels: below k-means' agreement (unsure), well above the plain run's.
    metrics, _ = _train(catalog(DIFFUSE), tmp_path / "auto", epochs=8, model={"latent_dim": 16, "hidden_dims": [64]})
    decision = metrics["graph_targets"]
    assert decision["use"] is True and decision["reason"] == "beats plain"
    assert decision["trained_agreement"] - decision["plain_agreement"] >= decision["min_gain"]
    assert any("graph_loss" in row for row in metrics["epochs"])


def test_the_trained_codes_must_hold_the_gain():
    start = np.array([0, 0, 1, 1])
    refined = np.array([0, 0, 0, 1])
    neighbours = np.array([[1], [2], [0], [2]])  # k-means keeps 2 of 4 pairs, refined labels 3 of 4
    chosen = decide_graph_targets(start, refined, neighbours, min_gain=0.25)
    kept = judge_trained(chosen, refined, neighbours)
    assert kept.use and kept.reason == "gain" and kept.trained_agreement == 0.75 and kept.plain_agreement is None
    trained = np.array([0, 1, 1, 1])  # keeps 2 of 4 pairs: no better than k-means, so a plain run is needed
    unsure = judge_trained(chosen, trained, neighbours)
    assert unsure.reason == "unsure" and unsure.trained_agreement == 0.5
    lost = judge_trained(chosen, trained, neighbours, plain=start)  # a plain run that keeps 2 of 4 too
    assert not lost.use and lost.reason == "not learned" and lost.plain_agreement == 0.5
    beats = judge_trained(chosen, trained, neighbours, plain=np.array([0, 1, 2, 3]))  # plain keeps none
    assert beats.use and beats.reason == "beats plain" and beats.plain_agreement == 0.0
    assert lost.kmeans_agreement == chosen.kmeans_agreement and lost.graph_agreement == chosen.graph_agreement
    assert GraphDecision.from_record(lost.record()) == lost
    # targets the user asked for stay, whatever the training kept
    forced = judge_trained(decide_graph_targets(start, refined, neighbours, min_gain=0.0), start, neighbours)
    assert forced.use and forced.reason == "always" and forced.trained_agreement == 0.5


def test_not_learned_keeps_the_plain_run_exactly(tmp_path):
    # The tiny latent cannot hold the refined labels: the trained codes keep no more than a plain run's.
    x = catalog(DIFFUSE)
    metrics, codes = _train(x, tmp_path / "auto")
    plain_metrics, plain_codes = _train(x, tmp_path / "plain", graph_targets=False)
    decision = metrics["graph_targets"]
    assert decision["use"] is False and decision["reason"] == "not learned"
    assert decision["gain"] >= decision["min_gain"]  # chosen before training, dropped after
    assert decision["trained_agreement"] - decision["plain_agreement"] < decision["min_gain"]
    assert torch.equal(codes, plain_codes)
    assert metrics["final"] == plain_metrics["final"]
    assert not any("graph_loss" in row for row in metrics["epochs"])
    assert not (tmp_path / "auto" / RESUME_STATE).exists()


class GraphSpy:
    """Records the row count and threshold of every k-NN graph build_targets asks for."""

    def __init__(self, monkeypatch):
        import semid.model.first_level.graph_targets as graph_targets

        self.calls: list[tuple[int, int]] = []
        real = graph_targets.knn_graph

        def spy(x, k, *, exact_max_items, seed):
            self.calls.append((x.shape[0], exact_max_items))
            return real(x, k, exact_max_items=exact_max_items, seed=seed)

        monkeypatch.setattr(graph_targets, "knn_graph", spy)


def test_a_catalog_within_the_exact_threshold_is_measured_on_its_whole_graph(tmp_path, monkeypatch):
    spy = GraphSpy(monkeypatch)
    metrics, _ = _train(catalog(CLUSTERED), tmp_path / "auto", graph_exact_items=1500)
    assert spy.calls == [(1500, 1500)]  # one exact graph of every item, no sample first
    assert "decided_on_sample" not in metrics["graph_targets"] and metrics["graph_targets"]["items"] == 1500


def test_above_the_threshold_off_is_decided_on_a_sample_and_the_full_graph_is_not_built(tmp_path, monkeypatch):
    x = catalog(CLUSTERED)
    spy = GraphSpy(monkeypatch)
    metrics, codes = _train(x, tmp_path / "auto", graph_exact_items=500)
    assert spy.calls == [(500, 500)]  # the exact graph of the sample only
    decision = metrics["graph_targets"]
    assert decision["use"] is False and decision["reason"] == "small gain"
    assert decision["decided_on_sample"] == 500 and decision["items"] == 500
    again, again_codes = _train(x, tmp_path / "again", graph_exact_items=500)
    assert again["graph_targets"] == decision and torch.equal(again_codes, codes)  # data + seed decide
    plain, plain_codes = _train(x, tmp_path / "plain", graph_targets=False)
    assert torch.equal(codes, plain_codes) and metrics["final"] == plain["final"]


def test_above_the_threshold_on_builds_the_full_approximate_graph_and_judges_on_the_sample(tmp_path, monkeypatch):
    x = catalog(DIFFUSE)
    spy = GraphSpy(monkeypatch)
    model = {"latent_dim": 16, "hidden_dims": [64]}
    # min_gain 0.015: on the full graph (the cell join: one cell, so exact, at 1,500 items) the tiny encoder's
    # trained agreement beats the plain run's by 0.02, short of the default 0.03
    metrics, _ = _train(x, tmp_path / "auto", epochs=8, model=model, graph_exact_items=500, graph_min_gain=0.015)
    assert spy.calls[:2] == [(500, 500), (1500, 500)]  # the sample's exact graph, then the full approximate one
    decision = metrics["graph_targets"]
    assert decision["decided_on_sample"] == 500 and decision["items"] == 500
    assert decision["gain"] >= decision["min_gain"] and decision["trained_agreement"] is not None
    assert decision["use"] is True and any("graph_loss" in row for row in metrics["epochs"])


def test_targets_asked_for_skip_the_sample(tmp_path, monkeypatch):
    spy = GraphSpy(monkeypatch)
    metrics, _ = _train(catalog(CLUSTERED), tmp_path / "auto", graph_exact_items=500, graph_min_gain=0.0)
    assert spy.calls == [(1500, 500)]
    assert metrics["graph_targets"]["reason"] == "always" and "decided_on_sample" not in metrics["graph_targets"]


def test_a_resumed_run_takes_the_same_sampled_decision_and_weights(tmp_path, monkeypatch):
    from semid.model.training import job

    x = catalog(DIFFUSE)
    cfg = tiny_config(epochs=6, graph_neighbours=10, graph_exact_items=500, graph_min_gain=0.05)
    cfg = cfg.with_overrides("model", input_dim=32, codebook_size=16, latent_dim=16, hidden_dims=[64])
    full_fp, full = train_tokenizer(x, cfg, tmp_path / "full")
    real_save = job.save_resume_state

    def save_then_stop(out, tok, opt, epoch, hist, config):
        real_save(out, tok, opt, epoch, hist, config)
        if epoch == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(job, "save_resume_state", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train_tokenizer(x, cfg, tmp_path / "cut")
    monkeypatch.setattr(job, "save_resume_state", real_save)
    resumed_fp, resumed = train_tokenizer(x, cfg, tmp_path / "cut", resume=True)
    assert full["graph_targets"]["decided_on_sample"] == 500
    assert resumed["graph_targets"] == full["graph_targets"] and resumed_fp == full_fp
