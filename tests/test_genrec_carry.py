"""Carrying saved rows over to a run with another --min-epochs (benchmarks/genrec_carry.py): the replay of a saved
validation curve agrees with the training loop itself, and a carried row is the row the run would have trained."""

from __future__ import annotations

import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch

from benchmarks import generative_retrieval as gr
from benchmarks import genrec_carry as carry
from benchmarks.genrec_model import Budget, train
from semid.model.data.synthetic import synthetic_catalog, write_catalog


def _train_on_scores(scores: list[float], budget: Budget) -> dict:
    model = torch.nn.Linear(2, 1)
    it = iter(scores)
    return train(
        model,
        8,
        lambda idx: model(torch.ones(len(idx), 2)).pow(2).mean(),
        budget,
        lambda: next(it),
        log=lambda *_: None,
    )


@pytest.mark.parametrize("seed", range(6))
def test_the_replay_says_same_exactly_when_training_with_the_new_min_epochs_stops_the_same_way(seed):
    rng = np.random.default_rng(seed)
    agreed = {True: 0, False: 0}
    for _ in range(40):
        epochs = int(rng.integers(3, 10))
        patience = int(rng.integers(1, 4))
        scores = list(rng.integers(0, 8, size=epochs) / 1000)  # Recall@10 over 1,000 users: multiples of 1e-3
        old_min, new_min = (int(v) for v in rng.integers(0, epochs + 2, size=2))
        base = Budget(epochs=epochs, batch_size=4, patience=patience, min_epochs=old_min)
        saved = _train_on_scores(scores, base)
        rerun = _train_on_scores(scores, replace(base, min_epochs=new_min))
        same = (rerun["epochs_run"], rerun["stopped"], rerun["best_epoch"]) == (
            saved["epochs_run"],
            saved["stopped"],
            saved["best_epoch"],
        )
        assert carry.replays_the_same(saved, patience=patience, min_epochs=new_min) == same
        agreed[same] += 1
    assert agreed[True] and agreed[False]  # both answers were exercised


def test_a_row_stopped_before_the_new_min_epochs_is_not_carried_but_one_stopped_after_is():
    early = {"valid_recall10_curve": [[1, 0.05], [2, 0.04], [3, 0.04], [4, 0.03]], "epochs_run": 4}
    assert not carry.replays_the_same({**early, "stopped": "patience"}, patience=3, min_epochs=8)
    assert carry.replays_the_same({**early, "stopped": "patience"}, patience=3, min_epochs=4)
    # the time cap stopped it: patience never would have, so a larger min-epochs changes nothing
    rising = {"valid_recall10_curve": [[1, 0.01], [2, 0.02], [3, 0.03]], "epochs_run": 3, "stopped": "budget"}
    assert carry.replays_the_same(rising, patience=2, min_epochs=8)
    # a smaller min-epochs than the row's own would have stopped it sooner
    held = {"valid_recall10_curve": [[1, 0.05], [2, 0.04], [3, 0.04], [4, 0.06]], "epochs_run": 4}
    assert not carry.replays_the_same({**held, "stopped": "max_epochs"}, patience=2, min_epochs=0)
    assert not carry.replays_the_same({"epochs_run": 3, "stopped": "max_epochs"}, patience=2, min_epochs=0)


def test_only_a_row_differing_in_min_epochs_alone_and_scored_on_a_counted_sample_is_considered():
    signature = {"catalog": "c", "users": 9, "budget": {"epochs": 16, "patience": 3, "min_epochs": 8}}
    signature["settings"] = {"val_users": 1000}
    saved = {**signature, "budget": {"epochs": 16, "patience": 3}}
    assert carry.differs_only_in_min_epochs(saved, signature)
    assert not carry.differs_only_in_min_epochs({**saved, "budget": {"epochs": 30, "patience": 3}}, signature)
    assert not carry.differs_only_in_min_epochs({**saved, "users": 8}, signature)
    assert carry.exact_curve(signature)
    assert not carry.exact_curve({**signature, "settings": {"val_users": None}})  # every user: rounding may tie


def test_carried_rows_are_the_rows_the_run_trains_and_the_report_names_them(tmp_path):
    cat = synthetic_catalog(items=200, dim=16, seed=0)
    write_catalog(cat, tmp_path / "items.parquet")
    rng = np.random.default_rng(3)
    ids = np.asarray(cat.item_ids)
    lines = [f"{u},{i},1.0,{t}" for u in range(1, 31) for t, i in enumerate(rng.choice(ids, 10, replace=False))]
    (tmp_path / "inter.csv").write_text("userId,movieId,rating,timestamp\n" + "\n".join(lines) + "\n")
    argv = ["--catalog", str(tmp_path / "items.parquet"), "--interactions", str(tmp_path / "inter.csv")]
    argv += ["--out", str(tmp_path / "out"), "--generator", "tiger", "--tiny", "--threads", "1"]
    argv += ["--tokenizers", "random", "--no-item-baseline", "--epochs", "5", "--seeds", "0,1,2"]
    gr.main([*argv, "--rows-dir", str(tmp_path / "plain"), "--name", "plain"])
    fresh = gr.main([*argv, "--rows-dir", str(tmp_path / "fresh"), "--name", "fresh", "--min-epochs", "4"])
    carried = gr.main(
        [*argv, "--rows-dir", str(tmp_path / "carried"), "--name", "carried", "--min-epochs", "4"]
        + ["--carry-from", str(tmp_path / "plain")]
    )
    runs = carried["rows"]["random"]
    patience = carried["data"]["budget"]["patience"]  # --tiny's own
    took = [r for r in runs if r.get("carried_from")]
    for seed, run in enumerate(runs):
        plain = pickle.loads((tmp_path / "plain" / f"random.seed{seed}.pkl").read_bytes())["run"]
        # carried exactly when the replay says patience did not stop it before epoch 4
        assert bool(run.get("carried_from")) == carry.replays_the_same(plain["train"], patience=patience, min_epochs=4)
        # either way the row is the one training with --min-epochs 4 gives
        np.testing.assert_array_equal(run["test"]["lists"], fresh["rows"]["random"][seed]["test"]["lists"])
        assert run["train"]["epochs_run"] == fresh["rows"]["random"][seed]["train"]["epochs_run"]
    assert 0 < len(took) < len(runs)  # some rows carried, some trained again (these seeds stop at epochs 3 and 4)
    md = (tmp_path / "out" / "carried.md").read_text()
    assert "Carried over from the same run with --min-epochs 0" in md
    assert carried["data"]["carried"]["random"]["seeds"] == [r["seed"] for r in took]
    with pytest.raises(SystemExit, match="--carry-from"):
        gr.main([*argv, "--rows-dir", str(tmp_path / "x"), "--carry-from", str(tmp_path / "nowhere")])
