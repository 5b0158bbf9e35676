"""Neighbour-aware first-level targets: the k-NN graph, the balanced refinement, the training hook."""

from __future__ import annotations

import numpy as np
import torch

from semid.model.first_level.graph_targets import GraphTargets, build_targets, knn_graph, refine_labels
from semid.model.tokenizers.quantizer import ResidualQuantizer
from semid.model.training.checkpoint import load_checkpoint
from semid.model.training.job import train_tokenizer
from tests.conftest import tiny_config


def share(labels: np.ndarray, neighbours: np.ndarray) -> float:
    return float((labels[neighbours] == labels[:, None]).mean())


def test_knn_graph_matches_brute_force_and_excludes_the_item():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 8)).astype(np.float32)
    graph = knn_graph(x, 5)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    expected = np.argsort(-sims, axis=1)[:, :5]
    assert graph.shape == (300, 5)
    assert not (graph == np.arange(300)[:, None]).any()
    assert (np.sort(graph, axis=1) == np.sort(expected, axis=1)).mean() > 0.99  # ties aside


def test_knn_graph_with_exact_duplicates_still_drops_the_item_itself():
    x = np.repeat(np.eye(4, dtype=np.float32), 3, axis=0)  # every point has two exact copies
    graph = knn_graph(x, 2)
    assert not (graph == np.arange(12)[:, None]).any()
    assert (graph // 3 == (np.arange(12) // 3)[:, None]).all()  # its two copies


def two_cliques(n: int = 40) -> np.ndarray:
    """Items 0..n/2-1 and n/2..n-1 each link to every other item of their half (k = n/2 - 1)."""
    half = n // 2
    rows = []
    for i in range(n):
        group = range(0, half) if i < half else range(half, n)
        rows.append([j for j in group if j != i])
    return np.array(rows)


def test_refinement_recovers_communities_from_mixed_labels():
    graph = two_cliques()
    start = np.arange(40) % 2  # each clique split over both labels: half the neighbours disagree
    assert share(start, graph) < 0.5
    refined = refine_labels(start, graph, 2, balance=12.0, sweeps=4, seed=0)
    assert share(refined, graph) == 1.0
    assert sorted(np.bincount(refined, minlength=2).tolist()) == [20, 20]


def test_balance_term_stops_everything_collapsing_into_one_code():
    rng = np.random.default_rng(1)
    graph = rng.integers(0, 400, size=(400, 10))  # a random graph: votes alone favour the biggest code
    start = rng.integers(0, 16, size=400)
    greedy = refine_labels(start, graph, 16, balance=0.0, sweeps=6, seed=0)
    balanced = refine_labels(start, graph, 16, balance=3.0, sweeps=6, seed=0)
    assert np.bincount(greedy, minlength=16).max() > 100
    assert np.bincount(balanced, minlength=16).max() <= 60
    again = refine_labels(start, graph, 16, balance=3.0, sweeps=6, seed=0)
    assert np.array_equal(balanced, again)  # seeded: a resumed run rebuilds the same targets


def test_soft_targets_mix_own_and_neighbour_labels():
    targets = GraphTargets(
        rows=torch.arange(4),
        labels=torch.tensor([0, 1, 1, 2]),
        neighbours=torch.tensor([[1, 2], [2, 3], [1, 0], [0, 1]]),
        position=torch.arange(4),
    )
    soft = targets.soft(torch.tensor([0, 3]), 3, 0.5)
    assert torch.allclose(soft.sum(1), torch.ones(2))
    assert torch.allclose(soft[0], torch.tensor([0.5, 0.5, 0.0]))  # own 0; both neighbours are 1
    assert torch.allclose(soft[1], torch.tensor([0.25, 0.25, 0.5]))


def test_build_targets_raise_the_neighbour_share_of_kmeans():
    x = torch.nn.functional.normalize(torch.randn(800, 6, generator=torch.Generator().manual_seed(0)), dim=1)
    targets = build_targets(x, 8, neighbours=5, balance=1.0, sweeps=0, seed=0, kmeans_iters=10, kmeans_sample=10_000)
    refined = build_targets(x, 8, neighbours=5, balance=1.0, sweeps=6, seed=0, kmeans_iters=10, kmeans_sample=10_000)
    graph = refined.neighbours.numpy()
    assert share(refined.labels.numpy(), graph) > share(targets.labels.numpy(), graph)
    assert np.bincount(refined.labels.numpy(), minlength=8).min() > 0


def test_first_level_init_from_labels_uses_their_means():
    z = torch.tensor([[0.0, 0.0], [2.0, 0.0], [10.0, 10.0], [12.0, 10.0]])
    q = ResidualQuantizer(levels=2, codebook_size=2, dim=2)
    q.init_from_data(z, iters=3, seed=0, first_labels=torch.tensor([1, 1, 0, 0]))
    assert torch.allclose(q.codebooks[0], torch.tensor([[11.0, 10.0], [1.0, 0.0]]))


def test_training_with_graph_targets_is_deterministic_and_reproduces_them(tiny_catalog, tmp_path):
    cfg = tiny_config(epochs=12, graph_targets=True, graph_neighbours=5, graph_balance=1.0, graph_min_gain=0.0)
    train_tokenizer(tiny_catalog.embeddings, cfg, tmp_path / "a")
    _, metrics = train_tokenizer(tiny_catalog.embeddings, cfg, tmp_path / "b")
    x = torch.from_numpy(tiny_catalog.embeddings)
    a = load_checkpoint(tmp_path / "a").tokenizer.encode(x).codes
    b = load_checkpoint(tmp_path / "b").tokenizer.encode(x).codes
    assert torch.equal(a, b)
    assert any("graph_loss" in row for row in metrics["epochs"])
    targets = build_targets(
        torch.nn.functional.normalize(x, dim=1),
        8,
        neighbours=5,
        balance=1.0,
        sweeps=8,
        seed=0,
        kmeans_iters=5,
        kmeans_sample=65536,
    )
    assert (a[:, 0] == targets.labels).float().mean() > 0.8  # the encoder learned the targets


def test_large_catalogs_build_the_graph_on_a_sample():
    x = torch.nn.functional.normalize(torch.randn(500, 6, generator=torch.Generator().manual_seed(1)), dim=1)
    targets = build_targets(
        x, 8, neighbours=5, balance=1.0, sweeps=2, seed=0, kmeans_iters=5, kmeans_sample=10_000, max_items=200
    )
    assert targets.rows.shape == (200,) and targets.neighbours.shape == (200, 5)
    assert int(targets.neighbours.max()) < 200  # positions inside the sample
    inside = targets.position >= 0
    assert int(inside.sum()) == 200 and torch.equal(targets.rows, inside.nonzero().squeeze(1))
    labels = targets.label_of(torch.arange(500))
    assert bool((labels[~inside] == -1).all()) and bool((labels[inside] >= 0).all())


def test_training_with_a_sampled_graph_runs_and_uses_every_code(tiny_catalog, tmp_path):
    cfg = tiny_config(
        graph_targets=True, graph_neighbours=5, graph_balance=1.0, graph_max_items=300, graph_min_gain=0.0
    )
    _, metrics = train_tokenizer(tiny_catalog.embeddings, cfg, tmp_path / "ck")
    assert metrics["final"]["util_l1"] == 1.0
