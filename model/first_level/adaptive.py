"""Whether a catalog's first level should use graph targets, decided from the catalog itself.

Graph targets (semid.model.first_level.graph_targets) buy one thing, neighbours that share a first code, and
cost the same everywhere: the latent spends capacity on reproducing the labels, so reconstruction
and the lower levels get worse. Whether the purchase is worth it depends on the catalog, and the
graph build already holds the measurement that says so: the share of each item's k nearest
neighbours that carry its first-level label, under the k-means labels the refinement starts from
and under the refined labels.

- On text-embedding catalogs neighbourhoods are diffuse: k-means cuts many neighbour pairs apart, the
  refinement wins a clear share of agreement and the trained tokenizer keeps it, with fewer collisions.
- On catalogs of many tight, well-separated clusters (the synthetic catalogs) k-means already keeps most
  neighbours together; the refinement barely moves that, and the trained tokenizer loses on collisions
  and on the lower levels.

So the targets are used when the refinement raises the agreement by at least
``TrainConfig.graph_min_gain`` (an absolute share; 0 uses them always). The figures behind the
threshold, per catalog, are in benchmarks/results/adaptive_defaults.md. The decision is a pure function
of the labels and the graph, which are deterministic given the embeddings and the seed, so a resumed
run takes the same decision.

Above ``graph_exact_items`` the full graph is approximate and the costliest step of training
(semid.model.first_level.knn), and on clustered catalogs the answer is "not used" after paying for it
(benchmarks/results/train_scale_1m_sampled_decision.md). So a larger catalog is measured first on the
exact graph of a seeded sample of ``graph_exact_items`` rows (the graph the catalogs of that size use
anyway; semid.model.training.train), and the full graph is built only when the targets will be used. The
record says so (``decided_on_sample``: the sample's size, ``items`` is the same); :func:`judge_trained`
then measures the trained codes on that sample's graph too, so every agreement in the record is taken
on one graph. Targets the user asked for ("always", "interactions") need no measurement before the
build: they are built on the full graph directly.

The gain measures the labels, not whether the encoder can learn them: on a catalog of a few large
isotropic blobs the labels gain the most of all, yet a tokenizer trained on them keeps almost none of
it and collides more than the plain one. So a run that used the targets is judged once more after
training (:func:`judge_trained`): if the trained first codes do not beat k-means' agreement by
``graph_min_gain`` on the same graph, the job also trains without targets (semid.model.training.job) and
keeps the targets only if they beat that plain run by ``graph_min_gain``; otherwise the checkpoint is
the plain run's. The second training is paid only where the first one is in doubt.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np


@dataclass(frozen=True)
class GraphDecision:
    """What the catalog's measurement decided, as recorded in the checkpoint's metrics."""

    use: bool
    reason: (
        str  # "gain", "small gain", "beats plain", "not learned", "unsure" (judge_trained), "always", "interactions"
    )
    kmeans_agreement: float  # share of k-NN pairs with one label under k-means
    graph_agreement: float  # the same under the refined labels
    min_gain: float
    items: int  # items in the graph the shares are measured on
    trained_agreement: float | None = None  # the same under the trained first codes (judge_trained)
    plain_agreement: float | None = None  # ... and under a run's without targets, when one was needed
    decided_on_sample: int | None = None  # set when measured on the exact graph of a sample of a larger graph

    @property
    def gain(self) -> float:
        return self.graph_agreement - self.kmeans_agreement

    def record(self) -> dict[str, Any]:
        """The fields (``decided_on_sample`` only when set: the records of catalogs that need no sample
        stay as they were) and the gain."""
        record = asdict(self)
        if self.decided_on_sample is None:
            del record["decided_on_sample"]
        return {**record, "gain": round(self.gain, 5)}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> GraphDecision:
        return cls(**{k: v for k, v in record.items() if k != "gain"})


def neighbour_agreement(labels: np.ndarray, neighbours: np.ndarray) -> float:
    """Share of (item, one of its k neighbours) pairs with the same label; ``neighbours`` is [n, k]
    of row positions. 1.0 for a graph without edges (nothing is cut apart)."""
    labels = np.asarray(labels)
    neighbours = np.asarray(neighbours)
    if neighbours.size == 0:
        return 1.0
    return float((labels[neighbours] == labels[:, None]).mean())


def decide_graph_targets(
    start: np.ndarray,
    refined: np.ndarray,
    neighbours: np.ndarray,
    *,
    min_gain: float,
    interactions: bool = False,
) -> GraphDecision:
    """Use graph targets when the refinement raises the neighbour agreement of k-means' labels
    ``start`` to ``refined`` by at least ``min_gain``. With ``interactions`` (co-liked partners
    blended into the graph, which the user asked for) they are always used; the shares are still
    measured on the content graph ``neighbours``."""
    before = round(neighbour_agreement(start, neighbours), 5)
    after = round(neighbour_agreement(refined, neighbours), 5)
    if interactions:
        use, reason = True, "interactions"
    elif min_gain <= 0:
        use, reason = True, "always"
    else:
        use = after - before >= min_gain
        reason = "gain" if use else "small gain"
    return GraphDecision(
        use=use,
        reason=reason,
        kmeans_agreement=before,
        graph_agreement=after,
        min_gain=min_gain,
        items=int(np.asarray(start).shape[0]),
    )


def judge_trained(
    decision: GraphDecision, trained: np.ndarray, neighbours: np.ndarray, plain: np.ndarray | None = None
) -> GraphDecision:
    """The decision after a training that used the targets. ``trained``: the trained tokenizer's first codes
    of the graph's items (nearest centroid); ``plain``: the same from a run without targets, if one was made.

    Targets chosen for their gain ("gain") stay if the trained codes beat k-means' agreement by ``min_gain``.
    Short of that it is unsure, not lost: a trained partition is not k-means' (a plain RQ-VAE
    keeps fewer neighbours together than k-means does), so the caller trains without targets and asks again with
    ``plain``: the targets stay ("beats plain") only if they beat that run by ``min_gain``, else
    "not learned" (``use`` False: keep the plain run). Targets the user asked for ("always",
    "interactions") stay whatever the training kept; the agreement is recorded all the same."""
    agreement = round(neighbour_agreement(trained, neighbours), 5)
    decision = replace(decision, trained_agreement=agreement)
    if decision.reason != "gain" or agreement - decision.kmeans_agreement >= decision.min_gain:
        return decision
    if plain is None:
        return replace(decision, reason="unsure")
    plain_agreement = round(neighbour_agreement(plain, neighbours), 5)
    kept = agreement - plain_agreement >= decision.min_gain
    return replace(decision, use=kept, reason="beats plain" if kept else "not learned", plain_agreement=plain_agreement)
