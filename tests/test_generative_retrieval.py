"""The generative-retrieval benchmark's loop end to end on a tiny synthetic catalog (not its scores), and its
parts: histories in time order, leave-one-out, training windows, unique IDs, constrained beam search, metrics."""

from __future__ import annotations

import json
import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch

from benchmarks import generative_retrieval as gr
from benchmarks import genrec_metrics as metrics
from benchmarks import genrec_report as report
from benchmarks import genrec_rerank
from benchmarks.genrec_data import (
    IdItems,
    example_users,
    leave_one_out,
    next_item_examples,
    popularity,
    read_histories,
    split_users,
    training_windows,
    unique_ids,
    user_buckets,
)
from benchmarks.genrec_model import Budget, SemanticGenerator, TigerGenerator, beam_search, train
from semid.model.data.synthetic import synthetic_catalog, write_catalog
from semid.service.generation.trie import SemanticIdTrie

ITEMS, USERS, PER_USER = 300, 30, 12


def _ratings_csv(path, item_ids: np.ndarray, seed: int = 0) -> None:
    """MovieLens-shaped ratings: rows shuffled (time order is only in the timestamp), one unknown item, one
    repeated (user, item)."""
    rng = np.random.default_rng(seed)
    lines = []
    for user in range(1, USERS + 1):
        items = rng.choice(item_ids, size=PER_USER, replace=False)
        times = 1000 * user + rng.permutation(PER_USER)
        lines += [f"{user},{item},{rng.integers(1, 6)}.0,{t}" for item, t in zip(items, times, strict=True)]
    lines.append("1,999999,5.0,1")  # not in the catalog
    lines.append(f"2,{item_ids[0]},3.0,999999")  # maybe a repeat: kept once, at its first time
    rng.shuffle(lines)
    path.write_text("userId,movieId,rating,timestamp\n" + "\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("genrec")
    cat = synthetic_catalog(items=ITEMS, dim=16, seed=0)
    write_catalog(cat, root / "items.parquet")
    _ratings_csv(root / "ratings.csv", np.asarray(cat.item_ids))
    return root, np.asarray(cat.item_ids)


@pytest.fixture(scope="module")
def tiny_run(tiny_data):
    root, _ = tiny_data
    out = root / "out"
    argv = ["--catalog", str(root / "items.parquet"), "--interactions", str(root / "ratings.csv")]
    argv += ["--out", str(out), "--tokenizers", "faiss-rq,random", "--tiny", "--threads", "1"]
    return gr.main(argv), out


def test_histories_are_in_time_order_without_unknown_items_or_repeats(tiny_data):
    root, item_ids = tiny_data
    hist = read_histories(root / "ratings.csv", item_ids)
    assert hist.users == USERS
    assert hist.info["not_in_catalog"] == 1 and hist.info["columns"]["time"] == "timestamp"
    table = np.loadtxt(root / "ratings.csv", delimiter=",", skiprows=1)
    labels = sorted(str(u) for u in range(1, USERS + 1))  # users are numbered in the order of their labels
    for user, label in enumerate(labels):
        own = table[(table[:, 0] == int(label)) & np.isin(table[:, 1], item_ids)]
        own = own[np.argsort(own[:, 3], kind="stable")]
        _, first = np.unique(own[:, 1], return_index=True)
        expected = own[np.sort(first), 1].astype(np.int64)
        np.testing.assert_array_equal(item_ids[hist.of(user)], expected)


def test_min_rating_drops_low_ratings(tiny_data):
    root, item_ids = tiny_data
    every = read_histories(root / "ratings.csv", item_ids)
    liked = read_histories(root / "ratings.csv", item_ids, min_rating=4.0)
    assert 0 < liked.rows.shape[0] < every.rows.shape[0]


def test_leave_one_out_and_windows_learn_every_training_item_once():
    seqs = [np.arange(30), np.arange(100, 104), np.arange(200, 202)]
    starts = np.cumsum([0] + [len(s) for s in seqs])
    hist = type("H", (), {})()
    hist.starts, hist.of = starts, lambda u: seqs[u]
    split = leave_one_out(hist, min_items=3)
    assert len(split.train) == 2  # the 2-item user is left out
    assert split.test_target.tolist() == [29, 103] and split.valid_target.tolist() == [28, 102]
    np.testing.assert_array_equal(split.history(0, "test", 5), [24, 25, 26, 27, 28])
    np.testing.assert_array_equal(split.history(0, "valid", 5), [23, 24, 25, 26, 27])
    windows, learn = training_windows(split.train, 6)
    learned = np.sort(windows[learn])
    # every training item but each sequence's first is a target exactly once, and never without context
    np.testing.assert_array_equal(learned, np.r_[np.arange(1, 28), [101]])
    assert not learn[:, 0].any() and (windows[learn] >= 0).all()


def test_unique_ids_resolve_every_collision():
    codes = np.array([[1, 2, 3], [1, 2, 3], [1, 2, 3], [0, 0, 0]])
    sids = unique_ids(codes, np.array([0.3, 0.1, 0.2, 0.0]), np.array([10, 11, 12, 13]), 8)
    assert np.unique(sids, axis=0).shape[0] == 4
    assert sids[:, -1].tolist() == [2, 0, 1, 0]  # ranked by distance within the bucket


def test_constrained_beam_search_only_emits_real_ids_and_marks_missing_beams():
    sids = np.array([[0, 1, 2, 0], [0, 1, 2, 1], [3, 0, 1, 0], [3, 2, 2, 0], [1, 1, 1, 0], [2, 3, 0, 0]])
    trie = SemanticIdTrie.from_semantic_ids(sids, np.arange(6), sizes=(4, 4, 4, 4))
    torch.manual_seed(0)
    model = SemanticGenerator(4, 4, 3, Budget(width=16, layers=1, heads=2)).eval()
    history = torch.from_numpy(sids[[[0, 2], [5, 4]]])
    ids, score = beam_search(model, history, 8, trie)  # more beams than items: every item is found
    for user in range(2):
        live = ids[user][np.isfinite(score[user])]
        assert sorted(map(tuple, live.tolist())) == sorted(map(tuple, sids.tolist()))
        assert (np.diff(score[user][np.isfinite(score[user])]) <= 0).all()
        assert np.isneginf(score[user]).sum() == 2
    free, free_score = beam_search(model, history, 8, None)
    assert np.isfinite(free_score).all()  # without the trie nothing stops it: any code of each level


def test_metrics_rank_and_ndcg():
    lists = np.array([[5, 6, 7], [1, 2, 3], [9, 9, 9]])
    rank = metrics.ranks_of(np.array([6, 1, 4]), lists)
    assert rank.tolist() == [1, 0, -1]
    values = metrics.metric_values(rank)
    assert values["recall@5"].tolist() == [1, 1, 0]
    np.testing.assert_allclose(values["ndcg@10"], [1 / np.log2(3), 1.0, 0.0])
    ci = metrics.bootstrap(values["recall@5"], seed=0)
    assert ci["lo"] <= ci["mean"] <= ci["hi"] and ci["mean"] == pytest.approx(2 / 3, abs=1e-4)


def test_tiny_run_emits_only_real_items_and_writes_results(tiny_run):
    result, out = tiny_run
    rows, split = result["rows"], result["split"]
    users = len(split.train)
    assert 0 < users <= 40
    for name in ("faiss-rq", "random"):
        run = rows[name][0]
        assert run["status"] == "ok", run.get("error")
        sids = run["sids"]
        assert np.unique(sids, axis=0).shape[0] == ITEMS  # unique IDs for every item
        trie = SemanticIdTrie.from_semantic_ids(sids, np.arange(ITEMS), sizes=(256,) * 4)
        test = run["test"]
        emitted = test["emitted"]
        assert emitted.shape == (users * 5, 4)  # every beam of every user filled
        real = {tuple(s) for s in sids.tolist()}
        assert all(tuple(e) in real and trie.is_valid(e) for e in emitted.tolist())
        lists = test["lists"]
        assert ((lists[:, :5] >= 0) & (lists[:, :5] < ITEMS)).all()  # every emitted ID mapped to an item
        assert all(tuple(s) in real for s in sids[lists[:, :5]].reshape(-1, 4).tolist())
        assert 0.0 <= test["invalid_rate_unconstrained"] <= 1.0
    # random codes on 300 of 16.7M possible IDs: an untrained-ish generator invents IDs without the trie
    assert rows["random"][0]["test"]["invalid_rate_unconstrained"] > 0

    table = {r["generator"]: r for r in result["table"]}
    assert set(table) == {"faiss-rq", "random", gr.ITEM_BASELINE, gr.POPULARITY}
    for row in table.values():
        for metric in ("recall@5", "recall@10", "ndcg@5", "ndcg@10"):
            m = row["test"][metric]
            assert 0.0 <= m["lo"] <= m["mean"] <= m["hi"] <= 1.0
        assert row["test"]["recall@5"]["mean"] <= row["test"]["recall@10"]["mean"]

    saved = json.loads((out / "generative_retrieval.json").read_text())
    assert {r["generator"] for r in saved["rows"]} == set(table)
    assert "invalid_rate_unconstrained" in next(r for r in saved["rows"] if r["generator"] == "random")["test"]
    assert saved["tiny"] is True and saved["machine"]["cpus"] >= 1
    md = (out / "generative_retrieval.md").read_text()
    assert "| faiss-rq |" in md and "Recall@10" in md


def test_the_tiny_run_reports_a_corrected_row_beside_every_trained_row(tiny_run):
    result, out = tiny_run
    argv = ["--catalog", str(out.parent / "items.parquet"), "--interactions", str(out.parent / "ratings.csv")]
    argv += ["--out", str(out), "--tokenizers", "faiss-rq,random", "--tiny", "--threads", "1"]
    rows_dir = str(out / "generative_retrieval_rows")
    merged = gr.main([*argv, "--merge-only", "--pop-correction", "--name", "corrected", "--rows-dir", rows_dir])
    names = [r["generator"] for r in merged["table"]]
    for name in ("faiss-rq", "random", gr.ITEM_BASELINE):
        assert names.index(name + genrec_rerank.SUFFIX) == names.index(name) + 1  # right after its own row
    assert gr.POPULARITY + genrec_rerank.SUFFIX not in names  # nothing to re-rank
    split = result["split"]
    for name in ("faiss-rq", gr.ITEM_BASELINE):
        raw, fixed = merged["rows"][name][0], merged["rows"][name + genrec_rerank.SUFFIX][0]
        cand = raw["test"]["candidates"]
        # the candidates hold the row's own list: alpha 0 gives it back
        counts = genrec_rerank.log_counts(popularity(split, ITEMS))
        assert (genrec_rerank.rerank(cand["items"], cand["scores"], counts, 0.0, 10) == raw["test"]["lists"]).all()
        alpha = fixed["pop_correction"]["alpha"]
        assert alpha in genrec_rerank.ALPHAS and "free_lists" not in fixed["test"]
        again = genrec_rerank.rerank(cand["items"], cand["scores"], counts, alpha, 10)
        assert (again == fixed["test"]["lists"]).all()
    md = (out / "corrected.md").read_text()
    assert "| faiss-rq +pop-correction |" in md and "alpha chosen per model" in md


def test_holdout_run_fits_on_the_split_and_reports_the_held_out_users(tiny_data):
    root, _ = tiny_data
    out = root / "out_holdout"
    argv = ["--catalog", str(root / "items.parquet"), "--interactions", str(root / "ratings.csv")]
    argv += ["--out", str(out), "--tokenizers", "faiss-rq", "--tiny", "--threads", "1", "--holdout-share", "0.1"]
    result = gr.main(argv)
    fit, held = gr.split_rows(ITEMS, 0.1, 0)  # 270 items: >= 256 codes
    split = result["split"]
    users = np.isin(split.target("test"), held)
    assert result["data"]["holdout"]["users"] == int(users.sum()) > 0
    assert result["data"]["holdout"]["fit_items"] == fit.shape[0]
    table = {r["generator"]: r for r in result["table"]}
    for row in table.values():
        # the held-out users' recall is the mean of exactly their per-user values
        whole = row["_test_values"]["recall@10"]
        assert row["test_heldout"]["recall@10"]["mean"] == pytest.approx(whole[users].mean(), abs=1e-4)
    # the tokenizer saw only the training rows: refitting on them gives the same IDs
    sids, _ = gr.fit_ids("faiss-rq", *_catalog_arrays(root), 0, fit)
    np.testing.assert_array_equal(result["rows"]["faiss-rq"][0]["sids"], sids)
    assert not (out / "generative_retrieval.json").exists()
    md = (out / "generative_retrieval_holdout.md").read_text()
    assert "never saw" in md and "| faiss-rq |" in md


def _catalog_arrays(root):
    from semid.model.data.catalog import read_catalog

    cat = read_catalog(root / "items.parquet")
    raw = np.ascontiguousarray(cat.embeddings, dtype=np.float32)
    x = raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)
    return raw, x, np.asarray(cat.item_ids)


def test_tokenizer_interactions_leave_out_every_scored_pair(tiny_data, tmp_path):
    import pyarrow.parquet as pq

    root, item_ids = tiny_data
    hist = read_histories(root / "ratings.csv", item_ids)
    split = leave_one_out(hist)
    users = split_users(hist)
    path = gr.training_interactions(str(root / "ratings.csv"), item_ids, users, split, tmp_path)
    kept = pq.read_table(path).to_pydict()
    pairs = {(str(u), int(i)) for u, i in zip(kept["user"], kept["item"], strict=True)}
    # the tiny ratings number users 1..USERS; read_histories numbers them in sorted-name order
    names = sorted({str(u) for u in range(1, USERS + 1)})
    for k, user in enumerate(users):
        name = names[user]
        for target in (split.test_target[k], split.valid_target[k]):
            assert (name, int(item_ids[target])) not in pairs
        assert any(p[0] == name for p in pairs)  # the user's training pairs stay
    total = sum(1 for _ in open(root / "ratings.csv")) - 1
    assert len(kept["user"]) >= total - 2 * len(users) - 1  # only the scored pairs (and a repeat) go


# ---------------------------------------------------------------------------------------------- TIGER, stopping


def _implicit_csv(path, item_ids: np.ndarray, users: int, per_user: int, seed: int = 1) -> None:
    """Implicit feedback: no rating column, order given by a position column, rows shuffled."""
    rng = np.random.default_rng(seed)
    lines = []
    for user in range(users):
        items = rng.choice(item_ids, size=per_user, replace=False)
        lines += [f"u{user},{item},{pos}" for pos, item in enumerate(items)]
    rng.shuffle(lines)
    path.write_text("user_id,item_id,position\n" + "\n".join(lines) + "\n")


def test_implicit_feedback_is_ordered_by_its_position_column(tiny_data, tmp_path):
    root, item_ids = tiny_data
    _implicit_csv(tmp_path / "inter.csv", item_ids, users=5, per_user=6)
    hist = read_histories(tmp_path / "inter.csv", item_ids)
    assert hist.info["columns"]["time"] == "position" and hist.info["columns"]["rating"] is None
    rows = np.loadtxt(tmp_path / "inter.csv", delimiter=",", skiprows=1, dtype=str)
    for user in range(5):  # users numbered in sorted-label order: u0..u4
        own = rows[rows[:, 0] == f"u{user}"]
        expected = own[np.argsort(own[:, 2].astype(int)), 1].astype(np.int64)
        np.testing.assert_array_equal(item_ids[hist.of(user)], expected)


def test_tiger_run_end_to_end_writes_every_row(tiny_data):
    root, item_ids = tiny_data
    _implicit_csv(root / "implicit.csv", item_ids, users=30, per_user=10)
    out = root / "out_tiger"
    argv = ["--catalog", str(root / "items.parquet"), "--interactions", str(root / "implicit.csv")]
    argv += ["--out", str(out), "--tokenizers", "faiss-rq,faiss-rqkmeans,random", "--generator", "tiger"]
    argv += ["--tiny", "--threads", "1", "--seeds", "0,1", "--name", "gr_tiger"]
    result = gr.main(argv)
    saved = json.loads((out / "gr_tiger.json").read_text())
    names = {"faiss-rq", "faiss-rqkmeans", "random", gr.ITEM_BASELINE, gr.POPULARITY}
    assert {r["generator"] for r in saved["rows"]} == names
    assert saved["seeds"] == [0, 1] and saved["settings"]["generator"] == "tiger"
    for row in saved["rows"]:
        assert row["status"] == "ok"
        for metric in ("recall@5", "recall@10", "ndcg@5", "ndcg@10"):
            m = row["test"][metric]
            assert 0.0 <= m["lo"] <= m["mean"] <= m["hi"] <= 1.0
        if row["generator"] != gr.POPULARITY:
            assert row["seeds"] == 2 and row["train_info"]["epochs_run"] >= 1
    for name in ("faiss-rq", "faiss-rqkmeans", "random"):
        assert 0.0 <= result["rows"][name][0]["test"]["invalid_rate_unconstrained"] <= 1.0
    md = (out / "gr_tiger.md").read_text()
    assert "TIGER-shaped encoder-decoder" in md and "| faiss-rqkmeans |" in md and "## Training" in md
    # each seed's run of a row is reported on its own, and its figures average to the row's
    rows = {r["generator"]: r for r in saved["rows"]}
    per_seed = rows["random"]["per_seed"]
    assert [f["seed"] for f in per_seed] == [0, 1] and all(f["epochs_run"] >= 1 for f in per_seed)
    assert np.mean([f["recall@10"] for f in per_seed]) == pytest.approx(
        rows["random"]["test"]["recall@10"]["mean"], abs=1e-4
    )
    assert "## Each seed (test)" in md and "| random | 1 |" in md
    pop = saved["by_popularity"]
    assert sum(pop["users"]) == saved["users"] and set(pop["rows"]) == names
    assert "## Recall@10 by how often the test item appears in training" in md
    assert set(pop["recommended"]) == names | {"test items"} and "## Where the top-10 recommendations come from" in md
    assert all(abs(sum(v) - 1) < 1e-3 for v in pop["recommended"].values())

    # every finished row was kept: a second run with --reuse trains nothing and gives the same lists
    again = gr.main([*argv, "--reuse"])
    first, second = result["rows"]["random"][1], again["rows"]["random"][1]
    np.testing.assert_array_equal(second["test"]["lists"], first["test"]["lists"])
    assert second["train"] == first["train"]  # the saved run, not a retrained one (its seconds would differ)
    # a kept row leaves out the unconstrained beams (never read by the report): the same table from it
    with open(out / "gr_tiger_rows" / "random.seed1.pkl", "rb") as fh:
        kept = pickle.load(fh)["run"]
    assert "emitted" in first["test"] and "emitted" not in kept["test"]
    assert kept["test"]["invalid_rate_unconstrained"] == first["test"]["invalid_rate_unconstrained"]
    # ... and keeps its catalog rows as int32, the same values
    assert kept["test"]["lists"].dtype == np.int32 and kept["test"]["candidates"]["items"].dtype == np.int32
    np.testing.assert_array_equal(kept["test"]["lists"], first["test"]["lists"])
    np.testing.assert_array_equal(kept["test"]["candidates"]["items"], first["test"]["candidates"]["items"])
    # ... and every item's ID too
    assert kept["sids"].dtype == np.int32 and first["sids"].dtype == np.int64
    np.testing.assert_array_equal(kept["sids"], first["sids"])
    assert kept["test"]["candidates"]["scores"].dtype == np.float32
    assert json.loads((out / "gr_tiger.json").read_text())["rows"] == saved["rows"]
    # --merge-only reports the saved rows and marks a row never run instead of training it
    merged = gr.main([*argv[:7], "faiss-rq,semid-rqkmeans", *argv[8:], "--merge-only"])
    status = {r["generator"]: r["status"] for r in merged["table"]}
    assert status["faiss-rq"] == "ok" and status["semid-rqkmeans"] == "not run"


def _cyclic_split(items: int, users: int, length: int) -> gr.Split:
    """Every user walks the catalog in order from its own start: the next item is always the previous + 1."""
    seqs = [(np.arange(length) + 3 * u) % items for u in range(users)]
    return gr.Split(
        train=[s[:-2] for s in seqs],
        valid_target=np.array([s[-2] for s in seqs]),
        test_target=np.array([s[-1] for s in seqs]),
    )


def test_tiger_learns_a_perfectly_predictable_sequence_far_above_chance():
    items = 48
    split = _cyclic_split(items, users=64, length=10)
    sids = unique_ids(gr.random_codes(items, 3, 256, 0), np.zeros(items), np.arange(items), 256)
    budget = Budget(width=32, layers=1, heads=2, ff=64, d_kv=16, dropout=0.0, lr=3e-3, batch_size=32, epochs=40)
    budget = replace(budget, patience=40, eval_every=5)
    s = gr.Settings(generator="tiger", history=4, beams=10, val_users=None)
    torch.set_num_threads(1)
    run = gr.run_semantic("random", sids, split, budget, s, ["test"], log=lambda *_: None)
    recall = metrics.metric_values(metrics.ranks_of(split.test_target, run["test"]["lists"]))["recall@10"].mean()
    assert recall > 0.8  # ranking at chance would give 10 / 48
    assert run["train"]["best_valid_recall10"] > 0.8


def test_early_stopping_keeps_the_best_state_and_stops_after_patience():
    model = torch.nn.Linear(2, 1)
    scores = iter([0.1, 0.5, 0.3, 0.2, 0.4, 0.9])
    states = []

    def loss_of(idx):
        return model(torch.ones(len(idx), 2)).pow(2).mean()

    def evaluate():
        states.append(model.weight.detach().clone())
        return next(scores)

    out = train(model, 8, loss_of, Budget(epochs=6, batch_size=4, patience=2), evaluate, log=lambda *_: None)
    assert out["epochs_run"] == 4 and out["stopped"] == "patience" and out["best_epoch"] == 2
    assert [c[1] for c in out["valid_recall10_curve"]] == [0.1, 0.5, 0.3, 0.2]
    torch.testing.assert_close(model.weight.detach(), states[1])  # the epoch-2 weights, not the last


def test_min_epochs_keeps_patience_from_stopping_on_an_early_plateau():
    model = torch.nn.Linear(2, 1)
    budget = Budget(epochs=6, batch_size=4, patience=1, min_epochs=4)

    def run(b):
        scores = iter([0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
        return train(
            model,
            8,
            lambda idx: model(torch.ones(len(idx), 2)).pow(2).mean(),
            b,
            lambda: next(scores),
            log=lambda *_: None,
        )

    assert run(replace(budget, min_epochs=0))["epochs_run"] == 2  # patience 1 stops right after the first dip
    out = run(budget)
    assert out["epochs_run"] == 4 and out["stopped"] == "patience" and out["best_epoch"] == 1
    assert gr.item_budget(budget).min_epochs == 4  # the item-id model gets the same rule
    assert "min_epochs" not in gr.budget_signature(replace(budget, min_epochs=0))  # older saved rows still match
    assert gr.budget_signature(budget)["min_epochs"] == 4
    base = ["--catalog", "c.parquet", "--interactions", "i.csv", "--out", "out"]
    with pytest.raises(SystemExit, match="error: --min-epochs"):
        gr.check_levers(gr.parse([*base, "--min-epochs", "-1"]))


def test_seeds_must_be_integers():
    assert gr.seeds_of("0,1,2") == [0, 1, 2] and gr.seeds_of("3") == [3]
    with pytest.raises(SystemExit, match="error: --seeds"):
        gr.seeds_of("a,b")


def test_differences_per_seed_and_over_seeds_and_users():
    rng = np.random.default_rng(0)
    users = 4000

    def values(p: float) -> dict[str, np.ndarray]:
        hit = (rng.random(users) < p).astype(np.float64)
        return {"recall@10": hit, "ndcg@10": hit / 2}

    # seed 0: a clear win; seed 1: a clear loss; popularity ran once (seed None) and pairs with every seed
    mine = {0: values(0.30), 1: values(0.10)}
    other = {0: values(0.10), 1: values(0.30)}
    pop = {None: values(0.05)}
    table = []
    for name, runs in (("semid-x", mine), ("other", other), (gr.POPULARITY, pop)):
        avg = {m: np.mean([r[m] for r in runs.values()], axis=0) for m in ("recall@10", "ndcg@10")}
        table.append({"generator": name, "seeds": len(runs), "_test_values": avg, "_test_seed_values": runs})
    out = {c["other"]: c for c in metrics.comparisons(table, "test", seed=0)}
    versus = out["other"]
    assert versus["per_seed"][0]["recall@10"] > 0.15 and versus["per_seed"][1]["recall@10"] < -0.15
    users_only, two_level = versus["recall@10"], versus["seeds_and_users"]["recall@10"]
    # the seed-averaged difference is near 0 with a narrow users-only interval; resampling the seeds too
    # shows that one run of either seed could have given +0.2 or -0.2
    assert users_only["hi"] - users_only["lo"] < 0.05
    assert two_level["lo"] < -0.1 and two_level["hi"] > 0.1
    assert abs(two_level["mean"] - users_only["mean"]) < 1e-3
    assert sorted(out[gr.POPULARITY]["per_seed"]) == [0, 1] and out[gr.POPULARITY]["seeds_and_users"]
    lines = report.difference_table(list(out.values()))
    assert "Recall@10, seeds and users resampled" in lines[0] and "0: +0.19" in lines[2]


def test_test_items_are_bucketed_by_their_training_count():
    # item i appears counts[i] times in the training sequences; user u's test item is item u
    counts = [0, 1, 4, 5, 19, 20, 49, 50, 1000]
    train = [np.repeat(np.arange(len(counts)), counts)]
    split = gr.Split(train=train, valid_target=np.zeros(len(counts), int), test_target=np.arange(len(counts)))
    bucket, names = metrics.popularity_buckets(split, len(counts))
    assert bucket.tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert names == ["0 (never in training)", "1-4", "5-19", "20-49", "50+"]
    hits = {"recall@10": np.array([0, 1, 0, 1, 1, 0, 0, 1, 0], float)}
    table = [{"generator": "semid-x", "_test_values": hits}]
    assert metrics.by_popularity(table, split, len(counts))["rows"]["semid-x"] == [0.0, 0.5, 1.0, 0.0, 0.5]
    # where the recommendations come from: row "head" recommends only item 8 (count 1000) and padding (-1)
    lists = np.full((len(counts), 12), -1)
    lists[:, 0] = 8
    lists[:, 11] = 0  # beyond the top 10: not counted
    spread = np.tile(np.array([1, 3, 5, 7, 8, -1, -1, -1, -1, -1, 0, 0]), (len(counts), 1))
    rows = {
        "head": [{"status": "ok", "test": {"lists": lists}}],
        "spread": [{"status": "ok", "test": {"lists": spread}}],
    }
    rows["failed"] = [{"status": "failed"}]
    shares = metrics.recommended_by_popularity(rows, split, len(counts))
    assert shares["head"] == [0.0, 0.0, 0.0, 0.0, 1.0]
    assert shares["spread"] == [0.0, 0.2, 0.2, 0.2, 0.4] and "failed" not in shares
    assert shares["test items"] == [round(v / 9, 4) for v in (1, 2, 2, 2, 2)]


def test_val_users_takes_a_positive_count_or_all(capsys):
    base = ["--catalog", "c.parquet", "--interactions", "i.csv", "--out", "out"]
    assert gr.parse([*base, "--val-users", "all"]).val_users is None
    assert gr.parse([*base, "--val-users", "250"]).val_users == 250
    assert gr.parse(base).val_users == gr.Settings.val_users
    # --tiny scores 20 validation users unless --val-users is given, even as the default's value
    assert gr.settings_of(gr.parse([*base, "--tiny"]))[1].val_users == 20
    tiny_1000 = gr.parse([*base, "--tiny", "--val-users", str(gr.Settings.val_users)])
    assert gr.settings_of(tiny_1000)[1].val_users == gr.Settings.val_users
    assert gr.settings_of(gr.parse([*base, "--tiny", "--val-users", "all"]))[1].val_users is None
    for bad in ("0", "-3", "many"):
        with pytest.raises(SystemExit) as err:
            gr.parse([*base, "--val-users", bad])
        assert err.value.code == 2
        assert "--val-users: expected a positive whole number or 'all'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- ID levers


def _levers_inputs(tiny_data, out):
    """(raw embeddings, their unit rows, item ids, the likes file the interactions rows train with) of the tiny set."""
    from semid.model.data.catalog import read_catalog

    root, item_ids = tiny_data
    raw = np.ascontiguousarray(read_catalog(root / "items.parquet").embeddings, dtype=np.float32)
    hist = read_histories(root / "ratings.csv", item_ids)
    likes = gr.training_interactions(str(root / "ratings.csv"), item_ids, split_users(hist), leave_one_out(hist), out)
    return raw, raw / np.linalg.norm(raw, axis=1, keepdims=True), item_ids, likes


def test_id_lever_rows_train_with_their_settings(tiny_data, tmp_path):
    """The LETTER row trains semid on the training interactions with both terms on; the adaptive-shape row's
    codes stay inside its smaller codebook; both end with unique IDs."""
    raw, x, item_ids, likes = _levers_inputs(tiny_data, tmp_path)
    sids, info = gr.fit_ids(gr.LETTER_ROW, raw, x, item_ids, 0, likes=likes)
    assert "'collab_align': 1.0" in info["settings"]["config"] and "code_diversity" in info["settings"]["config"]
    assert np.unique(sids, axis=0).shape[0] == ITEMS
    sids, info = gr.fit_ids(gr.ADAPTIVE_SHAPE_ROW, raw, x, item_ids, 0)
    assert info["settings"]["codebook_size"] == gr.adaptive_codes(ITEMS) == 32
    assert sids[:, :3].max() < 32 and np.unique(sids, axis=0).shape[0] == ITEMS
    sids, info = gr.fit_ids(gr.ADAPTIVE_KMEANS_ROW, raw, x, item_ids, 0)
    assert info["settings"]["codebook_size"] == 32 and "rqkmeans" in info["tokenizer"]
    assert sids[:, :3].max() < 32 and np.unique(sids, axis=0).shape[0] == ITEMS
    assert [gr.adaptive_codes(n) for n in (100, 4344, 20_000)] == [16, 128, 256]


def test_collab_kmeans_row_clusters_content_and_collaborative_embeddings(tiny_data, tmp_path):
    """The fused row appends each item's unit collaborative embedding (from the training pairs only) at
    COLLAB_WEIGHT to its unit content row, clusters that with semid's residual k-means and ends with unique IDs;
    items nobody liked keep a zero collaborative part."""
    raw, x, item_ids, likes = _levers_inputs(tiny_data, tmp_path)
    fused, facts = gr.content_and_collab(x, item_ids, likes, 0)
    assert fused.shape == (ITEMS, x.shape[1] + gr.COLLAB_DIM)
    np.testing.assert_array_equal(fused[:, : x.shape[1]], x)
    collab = np.linalg.norm(fused[:, x.shape[1] :], axis=1)
    liked = collab > 0
    assert facts["collab_items"] == int(liked.sum()) > 0
    np.testing.assert_allclose(collab[liked], gr.COLLAB_WEIGHT, rtol=1e-5)
    sids, info = gr.fit_ids(gr.COLLAB_KMEANS_ROW, raw, x, item_ids, 0, likes=likes)
    assert np.unique(sids, axis=0).shape[0] == ITEMS
    assert info["settings"]["collab_weight"] == gr.COLLAB_WEIGHT and "collaborative" in info["tokenizer"]
    plain, _ = gr.fit_ids("semid-rqkmeans", raw, x, item_ids, 0)
    assert not np.array_equal(plain[:, :3], sids[:, :3])  # the collaborative part moves codes


# ---------------------------------------------------------------------------------------------- generator levers

SMALL_TIGER = Budget(width=32, layers=1, heads=2, ff=64, d_kv=16, dropout=0.0)


def test_user_token_is_prepended_to_the_encoder_input_and_changes_the_memory():
    history = torch.tensor([[[-1, -1, -1, -1], [1, 2, 3, 0], [4, 5, 6, 1]]] * 2)  # one padded item, two real
    torch.manual_seed(0)
    plain = TigerGenerator(4, 8, 3, SMALL_TIGER).eval()
    torch.manual_seed(0)
    model = TigerGenerator(4, 8, 3, SMALL_TIGER, user_buckets=10).eval()
    # the user token's table is created last: every other parameter starts as without it
    for name, value in plain.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value)
    mem, mask = model.encode(history, torch.tensor([3, 7]))
    plain_mem, plain_mask = plain.encode(history)
    assert mem.shape[1] == plain_mem.shape[1] + 1 == 13
    assert mask[:, 0, 0, 0].all() and torch.equal(mask[:, :, :, 1:], plain_mask)  # never masked, then the history
    assert not torch.allclose(mem[0], mem[1])  # same history, other users: other memory
    same, _ = model.encode(history, torch.tensor([3, 3]))
    torch.testing.assert_close(same[0], same[1])
    with pytest.raises(ValueError, match="user token"):
        model.encode(history)
    assert model.loss(history, torch.tensor([[1, 2, 3, 0]] * 2), torch.tensor([3, 7])).isfinite()
    ids, _ = beam_search(model, history, 3, users=torch.tensor([3, 7]))
    assert ids.shape == (2, 3, 4)


def test_user_buckets_are_stable_across_processes_and_in_range():
    # BLAKE2b of the name: fixed values (Python's hash of a str would differ from process to process)
    assert user_buckets(np.array(["A1B2C3", "u0", "12345"]), 2000).tolist() == [215, 687, 964]
    many = user_buckets(np.arange(500).astype(str), 7)
    assert many.min() >= 0 and many.max() < 7 and len(set(many.tolist())) == 7
    train = [np.arange(4), np.arange(1), np.arange(3)]  # 3 + 0 + 2 examples
    hist, target = next_item_examples(train, 2)
    users = example_users(train)
    assert users.tolist() == [0, 0, 0, 2, 2] and target.tolist() == [1, 2, 3, 1, 2]


def test_user_token_needs_the_tiger_generator_and_a_positive_count():
    base = ["--interactions", "x.csv", "--out", "o"]
    with pytest.raises(SystemExit, match="error: --user-token needs --generator tiger"):
        gr.check_levers(gr.parse([*base, "--user-token", "5"]))
    with pytest.raises(SystemExit, match="error: --user-token must be"):
        gr.check_levers(gr.parse([*base, "--generator", "tiger", "--user-token", "-1"]))


def test_shared_base_codes_expand_to_their_items_most_popular_first():
    base = np.array([[1, 2, 3], [4, 5, 6], [1, 2, 3], [1, 2, 3], [7, 7, 7]])
    popularity = np.array([5, 9, 8, 5, 0])
    id_items = IdItems.build(base, popularity, (8, 8, 8))
    assert len(id_items.trie) == 3
    shared = id_items.positions(np.array([[1, 2, 3]]))
    assert id_items.expand(shared, 10).tolist() == [2, 0, 3]  # count 8, then 5 (row 0 before row 3)
    beams = id_items.positions(np.array([[4, 5, 6], [0, 0, 0], [1, 2, 3], [7, 7, 7]]))
    assert beams[1] == -1  # no item has it
    assert id_items.expand(beams, 10).tolist() == [1, 2, 0, 3, 4] and id_items.expand(beams, 2).tolist() == [1, 2]
    unique = IdItems.build(np.array([[0, 1], [1, 0]]), np.zeros(2), (2, 2))
    assert unique.expand(unique.positions(np.array([[1, 0], [0, 1]])), 5).tolist() == [1, 0]


def test_lever_rows_keep_the_old_signature_at_defaults_and_are_labelled():
    s = gr.Settings()
    assert "user_token" not in gr.signature_settings(s) and "dedup_digit" not in gr.signature_settings(s)
    on = replace(s, user_token=2000, dedup_digit=False)
    assert gr.signature_settings(on)["user_token"] == 2000 and gr.signature_settings(on)["dedup_digit"] is False
    assert gr.row_label("semid-rqvae", gr.signature_settings(s)) == "semid-rqvae"
    assert gr.row_label("semid-rqvae", gr.signature_settings(on)) == "semid-rqvae +user-token 2000 -dedup-digit"


def test_tiny_dedup_off_and_user_token_runs_pair_with_the_baseline(tiny_data):
    root, item_ids = tiny_data
    _implicit_csv(root / "levers.csv", item_ids, users=30, per_user=10)
    out = root / "out_levers"
    argv = ["--catalog", str(root / "items.parquet"), "--interactions", str(root / "levers.csv"), "--out", str(out)]
    argv += ["--tokenizers", "semid-rqkmeans", "--generator", "tiger", "--tiny", "--threads", "1"]
    argv += ["--no-item-baseline"]
    base = gr.main([*argv, "--rows-dir", str(out / "base"), "--name", "base"])
    user = gr.main([*argv, "--rows-dir", str(out / "user"), "--name", "user", "--user-token", "50"])
    off = gr.main([*argv, "--rows-dir", str(out / "off"), "--name", "off", "--dedup-digit", "off"])
    row = off["rows"]["semid-rqkmeans -dedup-digit"][0]
    assert row["test"]["emitted"].shape[1] == 3  # base codes only
    base_codes = row["sids"][:, :3]
    lists = row["test"]["lists"]
    assert (lists >= 0).any()
    for items in lists:
        items = items[items >= 0]
        assert len(set(items.tolist())) == items.shape[0]  # an item once per list
    # the first item of each list is the most popular of its code tuple
    counts = popularity(off["split"], len(item_ids))
    for first in lists[:, 0][lists[:, 0] >= 0]:
        sharing = np.flatnonzero((base_codes == base_codes[first]).all(axis=1))
        assert counts[first] == counts[sharing].max()
    assert user["rows"]["semid-rqkmeans +user-token 50"][0]["status"] == "ok"
    merged = gr.main(
        [*argv, "--rows-dir", str(out / "off"), "--name", "all", "--dedup-digit", "off", "--merge-only"]
        + ["--compare-to", f"{out / 'base'},{out / 'user'}"]
    )
    names = {r["generator"] for r in merged["table"]}
    assert {"semid-rqkmeans", "semid-rqkmeans +user-token 50", "semid-rqkmeans -dedup-digit"} <= names
    pairs = {(c["semid"], c["other"]) for c in merged["data"]["comparisons"]}
    assert ("semid-rqkmeans -dedup-digit", "semid-rqkmeans") in pairs
    # the baseline's per-user lists come through unchanged, so the pairing is by user
    np.testing.assert_array_equal(
        merged["rows"]["semid-rqkmeans"][0]["test"]["lists"], base["rows"]["semid-rqkmeans"][0]["test"]["lists"]
    )


def test_a_row_run_with_another_time_cap_joins_labelled_in_place_of_the_row_never_run(tiny_data):
    root, item_ids = tiny_data
    _implicit_csv(root / "capped.csv", item_ids, users=30, per_user=10)
    out = root / "out_capped"
    argv = ["--catalog", str(root / "items.parquet"), "--interactions", str(root / "capped.csv"), "--out", str(out)]
    argv += ["--generator", "tiger", "--tiny", "--threads", "1", "--no-item-baseline", "--budget-minutes", "20"]
    gr.main([*argv, "--tokenizers", "semid-rqkmeans", "--rows-dir", str(out / "base"), "--name", "base"])
    other = [a if a != "20" else "40" for a in argv]
    capped = gr.main([*other, "--tokenizers", "random", "--rows-dir", str(out / "cap40"), "--name", "cap40"])
    merged = gr.main(
        [*argv, "--tokenizers", "semid-rqkmeans,random", "--rows-dir", str(out / "base"), "--name", "all"]
        + ["--merge-only", "--compare-to", str(out / "cap40")]
    )
    names = {r["generator"] for r in merged["table"]}
    assert "random (cap 40 CPU-min)" in names and "random" not in names  # no empty "not run" row beside it
    pairs = {(c["semid"], c["other"]) for c in merged["data"]["comparisons"]}
    assert ("semid-rqkmeans", "random (cap 40 CPU-min)") in pairs
    np.testing.assert_array_equal(
        merged["rows"]["random (cap 40 CPU-min)"][0]["test"]["lists"], capped["rows"]["random"][0]["test"]["lists"]
    )
    # a row trained another way (here another learning rate) is not comparable: left out, whatever its cap
    gr.main([*other, "--tokenizers", "random", "--rows-dir", str(out / "lr"), "--name", "lr", "--lr", "0.01"])
    merged = gr.main(
        [*argv, "--tokenizers", "semid-rqkmeans,random", "--rows-dir", str(out / "base"), "--name", "all_lr"]
        + ["--merge-only", "--compare-to", str(out / "lr")]
    )
    assert {r["generator"] for r in merged["table"]} == {"semid-rqkmeans", "random", "popularity"}
    assert [r["status"] for r in merged["rows"]["random"]] == ["not run"]


def test_a_row_trained_longer_and_stopped_on_every_user_joins_labelled_with_how(tiny_data):
    root, item_ids = tiny_data
    _implicit_csv(root / "longer.csv", item_ids, users=30, per_user=10)
    out = root / "out_longer"
    argv = ["--catalog", str(root / "items.parquet"), "--interactions", str(root / "longer.csv"), "--out", str(out)]
    argv += ["--generator", "tiger", "--tiny", "--threads", "1", "--no-item-baseline"]
    gr.main([*argv, "--tokenizers", "semid-rqkmeans", "--rows-dir", str(out / "base"), "--name", "base"])
    longer = gr.main(
        [*argv, "--tokenizers", "semid-rqkmeans", "--rows-dir", str(out / "long"), "--name", "long"]
        + ["--epochs", "3", "--min-epochs", "3", "--val-users", "all"]
    )
    assert longer["rows"]["semid-rqkmeans"][0]["train"]["epochs_run"] == 3  # patience cannot stop it before
    assert longer["data"]["settings"]["val_users"] is None  # every validation user scores early stopping
    merged = gr.main(
        [*argv, "--tokenizers", "semid-rqkmeans", "--rows-dir", str(out / "base"), "--name", "all", "--merge-only"]
        + ["--compare-to", str(out / "long")]
    )
    label = "semid-rqkmeans (max 3 epochs) (min 3 epochs) (valid every user)"
    assert {r["generator"] for r in merged["table"]} == {"semid-rqkmeans", label, "popularity"}
    assert (label, "semid-rqkmeans") in {(c["semid"], c["other"]) for c in merged["data"]["comparisons"]}
    np.testing.assert_array_equal(
        merged["rows"][label][0]["test"]["lists"], longer["rows"]["semid-rqkmeans"][0]["test"]["lists"]
    )


def test_tiger_decode_with_cached_memory_and_prefix_finds_the_same_beams_as_recomputing_them():
    from benchmarks.genrec_speed import FoldedMemory, RepeatedMemory

    torch.manual_seed(0)
    model = TigerGenerator(4, 16, 5, SMALL_TIGER).eval()
    history = torch.randint(0, 16, (6, 5, 4))
    history[:, :2] = -1  # padded items
    trie = SemanticIdTrie.from_semantic_ids(torch.randint(0, 16, (200, 4)).numpy(), None, sizes=(16,) * 4)
    found = {}
    for cls in (RepeatedMemory, FoldedMemory, TigerGenerator):
        other = cls(4, 16, 5, SMALL_TIGER).eval()
        other.load_state_dict(model.state_dict())
        found[cls] = [beam_search(other, history, 7, trie), beam_search(other, history, 7)]
    for cls in (FoldedMemory, TigerGenerator):
        for (ids, score), (want_ids, want_score) in zip(found[cls], found[RepeatedMemory], strict=True):
            np.testing.assert_array_equal(ids, want_ids)
            np.testing.assert_allclose(score, want_score, atol=1e-4)
    assert np.isfinite(found[TigerGenerator][0][1]).all()  # 200 IDs: every beam filled


def test_published_figures_are_picked_by_the_catalogs_data_set_and_name_their_source():
    from benchmarks.genrec_published import published_for

    for folder in ("amazon-scientific", "movielens-small"):
        entries = published_for(f"../shared/data/{folder}/items.parquet")
        assert entries, folder
        for e in entries:
            assert e["source"] and e["dataset"] and e["same_data"] is False  # none is on our exact preprocessing
            figures = [e[m] for m in ("recall@5", "recall@10", "ndcg@5", "ndcg@10") if e[m] is not None]
            assert figures and all(0.0 < f < 1.0 for f in figures)
    assert published_for("../shared/data/goodbooks-10k/items.parquet") == []


def test_train_items_bounds_what_every_row_learns_and_the_report_says_so(tiny_data, tmp_path):
    root, item_ids = tiny_data
    _implicit_csv(tmp_path / "inter.csv", item_ids, users=10, per_user=10)
    argv = ["--catalog", str(root / "items.parquet"), "--interactions", str(tmp_path / "inter.csv")]
    argv += ["--out", str(tmp_path), "--tokenizers", "random", "--generator", "tiger", "--tiny", "--threads", "1"]
    gr.main([*argv, "--no-item-baseline", "--train-items", "3", "--name", "bounded"])
    saved = json.loads((tmp_path / "bounded.json").read_text())
    # 10 items a user, 2 held out: 8 training items, 7 of them with a history to learn from; the 3 most recent: 2
    assert (saved["training_targets"], saved["all_training_targets"]) == (10 * 2, 10 * 7)
    md = (tmp_path / "bounded.md").read_text()
    assert "each user's 3 most recent training items only (`--train-items`: 20 of 70 training targets)" in md


def test_wide_beams_add_a_twin_row_decoded_from_the_same_models(tiny_data):
    root, item_ids = tiny_data
    _implicit_csv(root / "implicit_wide.csv", item_ids, users=30, per_user=10)
    out = root / "out_wide"
    argv = ["--catalog", str(root / "items.parquet"), "--interactions", str(root / "implicit_wide.csv")]
    argv += ["--out", str(out), "--tokenizers", "faiss-rq", "--generator", "tiger", "--no-item-baseline"]
    argv += ["--tiny", "--threads", "1", "--name", "gr_wide", "--wide-beams", "8"]
    result = gr.main(argv)
    names = [r["generator"] for r in result["table"]]
    assert names.index("faiss-rq +beams 8") == names.index("faiss-rq") + 1  # right after its own row
    assert not any(n.startswith(gr.POPULARITY + " +beams") for n in names)  # nothing decoded: no twin
    run, twin = result["rows"]["faiss-rq"][0], result["rows"]["faiss-rq +beams 8"][0]
    sids = run["sids"]
    assert twin["train"] == run["train"] and twin["sids"] is sids  # the same trained model and IDs
    assert run["test"]["candidates"]["items"].shape[1] == 5 and twin["test"]["candidates"]["items"].shape[1] == 8
    lists = twin["test"]["lists"]
    assert ((lists[:, :5] >= 0) & (lists[:, :5] < len(sids))).all()  # every wide beam's ID is an item's
    assert "free_lists" not in twin["test"] and "invalid_rate_unconstrained" not in twin["test"]
    # the twin is kept with its row: a merge of the saved rows gives it back
    merged = gr.main([*argv, "--merge-only"])
    np.testing.assert_array_equal(merged["rows"]["faiss-rq +beams 8"][0]["test"]["lists"], lists)
    assert "| faiss-rq +beams 8 |" in (out / "gr_wide.md").read_text()
    with pytest.raises(SystemExit, match="--wide-beams must be 0"):
        gr.main([*argv, "--wide-beams", "-1"])


def test_cosine_decay_warms_up_as_before_then_falls_to_zero_at_the_last_step():
    from benchmarks.genrec_model import lr_factor

    per_epoch, budget = 5, Budget(epochs=4)
    steps = range(4 * per_epoch)
    constant = [lr_factor(i, per_epoch, budget) for i in steps]
    assert constant == [min(1.0, (i + 1) / per_epoch) for i in steps]  # the schedule every saved row trained with
    cosine = [lr_factor(i, per_epoch, replace(budget, lr_decay="cosine")) for i in steps]
    assert cosine[:per_epoch] == constant[:per_epoch]
    after = cosine[per_epoch - 1 :]
    assert all(a > b for a, b in zip(after, after[1:], strict=False)) and after[-1] == 0.0
    assert lr_factor(10**6, per_epoch, replace(budget, lr_decay="cosine")) == 0.0  # past the cap: still 0
    with pytest.raises(ValueError, match="lr_decay"):
        replace(budget, lr_decay="linear")  # refused when the budget is made, not an epoch into training


def test_cosine_decay_leaves_the_last_step_without_an_update():
    """One step an epoch: with the cosine decay the third (last) step has rate 0, so the weights after epoch 3 are
    those after epoch 2; at a constant rate they move."""

    def weights_per_epoch(decay: str) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model, seen = torch.nn.Linear(2, 1), []

        def evaluate():
            seen.append(model.weight.detach().clone())
            return float(len(seen))  # always better: nothing stops it, the last state is kept

        budget = Budget(epochs=3, batch_size=4, patience=5, lr=0.1, lr_decay=decay)
        train(model, 4, lambda idx: (model(torch.ones(len(idx), 2)) - 3).pow(2).mean(), budget, evaluate, print)
        return seen

    cosine, constant = weights_per_epoch("cosine"), weights_per_epoch("constant")
    torch.testing.assert_close(cosine[2], cosine[1], rtol=0, atol=0)
    assert not torch.equal(cosine[1], cosine[0]) and not torch.equal(constant[2], constant[1])
    torch.testing.assert_close(cosine[0], constant[0], rtol=0, atol=0)  # the same warm-up step


def test_lr_decay_is_in_the_signature_only_when_it_decays_and_the_item_model_gets_it_too():
    budget = Budget(epochs=16)
    assert "lr_decay" not in gr.budget_signature(budget)  # rows saved before the flag still match
    cosine = replace(budget, lr_decay="cosine")
    assert gr.budget_signature(cosine)["lr_decay"] == "cosine"
    assert gr.item_budget(cosine, 16).lr_decay == "cosine" and gr.item_budget(cosine, 16).epochs == 16
    base = ["--catalog", "c.parquet", "--interactions", "i.csv", "--out", "out"]
    assert gr.settings_of(gr.parse([*base, "--lr-decay", "cosine"]))[0].lr_decay == "cosine"
    with pytest.raises(SystemExit):
        gr.parse([*base, "--lr-decay", "step"])


def test_a_cosine_run_pairs_with_the_constant_rows_item_ids_included(tiny_data):
    root, item_ids = tiny_data
    _implicit_csv(root / "decay.csv", item_ids, users=30, per_user=10)
    out = root / "out_decay"
    argv = ["--catalog", str(root / "items.parquet"), "--interactions", str(root / "decay.csv"), "--out", str(out)]
    argv += ["--generator", "tiger", "--tiny", "--threads", "1", "--tokenizers", "semid-rqkmeans"]
    gr.main([*argv, "--rows-dir", str(out / "constant"), "--name", "constant"])
    cosine = gr.main([*argv, "--rows-dir", str(out / "cosine"), "--name", "cosine", "--lr-decay", "cosine"])
    assert cosine["data"]["budget"]["lr_decay"] == "cosine" and cosine["data"]["item_budget"]["lr_decay"] == "cosine"
    merged = gr.main(
        [*argv, "--rows-dir", str(out / "cosine"), "--name", "all", "--lr-decay", "cosine", "--merge-only"]
        + ["--compare-to", str(out / "constant")]
    )
    names = {r["generator"] for r in merged["table"]}
    assert {"semid-rqkmeans", "semid-rqkmeans (constant lr)", gr.ITEM_BASELINE} <= names
    assert f"{gr.ITEM_BASELINE} (constant lr)" in names
    pairs = {(c["semid"], c["other"]) for c in merged["data"]["comparisons"]}
    assert ("semid-rqkmeans", "semid-rqkmeans (constant lr)") in pairs
    assert ("semid-rqkmeans", f"{gr.ITEM_BASELINE} (constant lr)") in pairs
    assert "cosine decay to 0" in (out / "all.md").read_text()
    # the decayed rows are not the constant ones: neither reused nor carried over as them
    plain = gr.main([*argv, "--rows-dir", str(out / "cosine"), "--name", "plain", "--merge-only"])
    assert [r["status"] for r in plain["rows"]["semid-rqkmeans"]] == ["not run"]


def test_a_compared_item_id_row_is_labelled_with_its_own_epoch_cap_and_rate():
    mine = {"budget": {"epochs": 16, "lr_decay": "cosine"}, "settings": {}, "item_epochs": 16}
    theirs = {"budget": {"epochs": 16}, "settings": {}}  # saved before either flag: 200 item epochs, constant
    assert gr.compared_label(gr.ITEM_BASELINE, theirs, mine) == f"{gr.ITEM_BASELINE} (max 200 epochs) (constant lr)"
    assert gr.compared_label("semid-rqkmeans", theirs, mine) == "semid-rqkmeans (constant lr)"  # the generators' cap
    assert gr._without_levers(theirs) == gr._without_levers(mine)  # comparable: only training length and rate differ
