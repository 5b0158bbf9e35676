"""`semid evaluate`: figures on hand-made cases with known answers, the report, refusals, the CLI,
and agreement with the reference scorer."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from semid.model.data.catalog import Catalog
from semid.model.data.synthetic import write_catalog
from semid.service.cli import main
from semid.service.evaluation.code_health import neighbour_share
from semid.service.evaluation.figures import (
    collision_figures,
    level_figures,
    neighbourhood_figures,
    pair_share,
    prefix_fanout,
)
from semid.service.evaluation.interactions import InteractionsError, coliked_pairs, liked_items, read_interactions
from semid.service.evaluation.report import render_report
from semid.service.evaluation.run import CatalogMismatchError, EvaluationOptions, evaluate_index, run_evaluation
from tests.conftest import ROOT

SCORER = ROOT.parent / "shared" / "tools" / "score_ids.py"
PLOT_TITLES = (
    "Code usage, level 1 (sorted)",
    "Code usage, level 3 (sorted)",
    "Bucket sizes (items per base code)",
    "Fan-out at depth 1 (children per prefix)",
    "Neighbour share by depth (nn vs random)",
    "Co-liked share by depth (co-liked vs random)",
    "Reconstruction error per epoch",
    "Perplexity per level per epoch",
)


# --- figures on hand-made cases -------------------------------------------------------


def test_one_bucket_collides_everything():
    n = 50
    figures = collision_figures(np.zeros((n, 3), dtype=np.int64))
    assert figures["collision_rate"] == pytest.approx(1 - 1 / n, abs=1e-5)
    assert figures["largest_bucket"] == n
    assert figures["distinct"] == 1
    assert figures["bucket_size_histogram"] == {str(n): 1}


def test_unique_codes_do_not_collide():
    codes = np.arange(30).reshape(10, 3)
    figures = collision_figures(codes)
    assert figures["collision_rate"] == 0.0 and figures["largest_bucket"] == 1
    assert figures["bucket_size_histogram"] == {"1": 10}


def test_balanced_codes_have_perplexity_k():
    k = 8
    codes = np.stack([np.tile(np.arange(k), 5), np.repeat(np.arange(k), 5), np.zeros(5 * k, dtype=int)], axis=1)
    first, second, third = level_figures(codes, (k, k, k))
    for level in (first, second):
        assert level["perplexity"] == pytest.approx(k)
        assert level["utilisation"] == 1.0 and level["dead_codes"] == 0
        assert level["sorted_counts"] == [5] * k
    assert third["perplexity"] == pytest.approx(1.0) and third["dead_codes"] == k - 1


def test_prefix_fanout_counts_children():
    codes = np.array([[0, 0], [0, 1], [0, 1], [1, 5]])
    root, depth1 = prefix_fanout(codes)
    assert root["nodes"] == 1 and root["max_children"] == 2
    assert depth1["nodes"] == 2 and depth1["mean_children"] == 1.5 and depth1["max_children"] == 2
    assert depth1["histogram"] == {"1": 1, "2": 1}


def test_same_first_code_gives_neighbour_share_one(rng):
    emb = rng.normal(size=(60, 8)).astype(np.float32)
    codes = np.stack([np.zeros(60, dtype=int), rng.integers(0, 4, 60), rng.integers(0, 4, 60)], axis=1)
    figures = neighbourhood_figures(emb, codes, k=5, sample=20, seed=0)
    assert figures["nn_share_d1"] == 1.0 and figures["random_share_d1"] == 1.0 and figures["nn_lift_d1"] == 1.0


def test_neighbour_shares_match_id_quality(rng):
    emb = rng.normal(size=(200, 8)).astype(np.float32)
    codes = rng.integers(0, 3, size=(200, 3))
    figures = neighbourhood_figures(emb, codes, k=7, sample=50, seed=3)
    reference = neighbour_share(emb, codes, k=7, sample=50, seed=3)
    assert {key: figures[key] for key in reference} == reference


def test_prefix_recall_is_one_when_codes_are_the_clusters(rng):
    clusters, size = 12, 6  # clusters of k + 1 tight items, each cluster its own code
    centres = rng.normal(size=(clusters, 16)) * 10
    emb = (np.repeat(centres, size, axis=0) + rng.normal(size=(clusters * size, 16)) * 0.01).astype(np.float32)
    codes = np.repeat(np.arange(clusters), size)[:, None].repeat(2, axis=1)
    figures = neighbourhood_figures(emb, codes, k=size - 1, sample=30, seed=0)
    assert figures["prefix_recall_at_k"] == 1.0
    assert figures["nn_share_d2"] == 1.0
    shuffled = neighbourhood_figures(emb, rng.permutation(codes), k=size - 1, sample=30, seed=0)
    assert shuffled["prefix_recall_at_k"] < 0.5


def test_coliked_items_sharing_codes_have_lift_above_one(tmp_path, rng):
    groups, per_group = 10, 8
    codes = np.stack([np.repeat(np.arange(groups), per_group), rng.integers(0, 4, groups * per_group)], axis=1)
    rows = []
    for user in range(40):  # each user likes 4 items of one group, and dislikes items of another
        group = user % groups
        for item in rng.choice(per_group, 4, replace=False):
            rows.append((user, group * per_group + int(item), 5.0))
        rows.append((user, ((group + 1) % groups) * per_group, 1.0))
    path = tmp_path / "ratings.csv"
    path.write_text("userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{r},0\n" for u, i, r in rows))
    table, columns = read_interactions(path)
    assert columns == {"user": "userId", "item": "movieId", "rating": "rating"}

    def lookup(items):
        items = np.asarray(items, dtype=np.int64)
        return np.where(items < groups * per_group - 1, items, -1)  # the last item is "not in the index"

    liked = liked_items(table, columns, lookup, min_rating=4.0)
    assert liked.liked == 160 and liked.unknown_items <= 1
    a, b, _ = coliked_pairs(liked, 500, np.random.default_rng(0))
    assert (a != b).all()
    share = pair_share(codes, a, b)
    random_share = pair_share(codes, a, np.random.default_rng(1).integers(0, codes.shape[0], a.shape[0]))
    assert share[0] == 1.0 and share[0] / random_share[0] > 3


def test_interactions_without_needed_columns_are_refused(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("person,thing\n1,2\n")
    with pytest.raises(InteractionsError, match="no user column"):
        read_interactions(path)
    with pytest.raises(InteractionsError, match="no rating column 'stars'"):
        read_interactions(path, user_column="person", item_column="thing", rating_column="stars")


# --- the whole evaluation on a tiny index ---------------------------------------------


@pytest.fixture(scope="module")
def tiny_index(tmp_path_factory, tiny_checkpoint, tiny_catalog_file) -> Path:
    from semid.service.assign import assign_catalog

    index_dir = tmp_path_factory.mktemp("eval") / "index"
    assign_catalog(checkpoint=tiny_checkpoint, catalog=tiny_catalog_file, index_dir=index_dir)
    return index_dir


@pytest.fixture(scope="module")
def ratings_file(tmp_path_factory, tiny_catalog) -> Path:
    rng = np.random.default_rng(0)
    ids = tiny_catalog.item_ids
    lines = ["user,item_id,stars"]
    for user in range(30):
        for item in rng.choice(ids, 6, replace=False):
            lines.append(f"{user},{item},{rng.integers(1, 6)}")
    lines.append("0,999999999,5")  # an item the index does not hold
    path = tmp_path_factory.mktemp("ratings") / "ratings.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_index, tiny_catalog_file, ratings_file) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("eval-out")
    options = EvaluationOptions(sample=200, k=5, pairs=2000, rating_column="stars")
    metrics = run_evaluation(tiny_index, tiny_catalog_file, out, interactions=ratings_file, options=options)
    return out, metrics


def test_evaluation_figures(evaluated):
    _, m = evaluated
    s = m["summary"]
    assert s["items"] == 600 and s["unique_full_ids"] == 1.0
    assert 0 <= s["base_collision_rate"] < 1 and s["largest_bucket"] >= 1
    assert m["reconstruction"]["recon_mse"] > 0
    assert len(m["training"]) > 1 and "recon_mse" in m["training"][-1]
    co = m["coliked"]
    assert co["columns"] == {"user": "user", "item": "item_id", "rating": "stars"}
    assert co["unknown_items"] == 1 and co["pairs"] == 2000
    assert {v["status"] for v in m["verdicts"]} <= {"green", "amber", "red"}


def test_per_level_figures_agree_across_training_evaluate_and_id_quality(evaluated, tiny_checkpoint, tiny_catalog):
    """One per-level figure, three readers: the checkpoint's training metrics (`semid train` / `inspect`), `semid
    evaluate` (levels, summary, verdicts, training curves) and the id-quality report, on the same codes, agree
    exactly -- each calls semid.model.training.metrics.level_health and rounds with LevelHealth.to_json."""
    import torch

    from semid.model.training.checkpoint import load_checkpoint
    from semid.model.training.metrics import flat_levels, levels_from_flat
    from semid.service.evaluation.code_health import id_quality

    _, m = evaluated
    checkpoint = load_checkpoint(tiny_checkpoint)
    size = checkpoint.config.model.codebook_size
    fields = ("utilisation", "perplexity", "dead_codes")

    # training: the final figures cover every item of the catalog the index holds, so they are the base codes'
    training = levels_from_flat(checkpoint.metrics["final"])
    evaluate_base = [{"level": lv["level"], **{f: lv[f] for f in fields}} for lv in m["levels"]["base"]]
    assert len(training) == 3 and training == evaluate_base

    # the id-quality report on the tokenizer's codes of the same items
    codes = checkpoint.tokenizer.encode(torch.from_numpy(tiny_catalog.embeddings)).codes.numpy()
    report = id_quality(tiny_catalog.embeddings, codes, size, k=5, sample=50)
    assert {k: report[k] for k in flat_levels(training, ("utilisation", "perplexity"))} == flat_levels(
        training, ("utilisation", "perplexity")
    )

    # within `semid evaluate`: summary, verdicts and the copied training curves say what the levels say
    emitted = m["levels"]["emitted"]
    summary_levels = levels_from_flat(m["summary"])
    assert summary_levels == [
        {"level": lv["level"], **{f: lv[f] for f in ("utilisation", "perplexity", "dead_codes", "max_perplexity")}}
        for lv in emitted
    ]
    verdict = {v["key"]: v for v in m["verdicts"]}
    for lv in emitted:
        assert f"{lv['perplexity']:.0f} of {lv['max_perplexity']}" in verdict[f"perplexity_l{lv['level']}"]["value"]
    assert levels_from_flat(m["training"][-1]) == levels_from_flat(checkpoint.metrics["epochs"][-1])


def test_report_is_self_contained_and_has_every_plot(evaluated):
    out, metrics = evaluated
    html = (out / "report.html").read_text()
    assert html == render_report(json.loads((out / "metrics.json").read_text()))
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html)
    assert "<script" not in html and "<link" not in html and "<img" not in html
    for title in PLOT_TITLES:
        assert f"<title>{title}</title>" in html, title
    assert html.count("<svg") >= len(PLOT_TITLES)


def test_report_without_interactions_says_so(evaluated):
    _, metrics = evaluated
    html = render_report({**metrics, "coliked": None})
    assert "Not measured: run with <code>--interactions FILE</code>" in html


def test_refuses_a_catalog_missing_index_items(tmp_path, tiny_index, tiny_catalog):
    keep = slice(7, None)
    partial = write_catalog(
        Catalog(item_ids=tiny_catalog.item_ids[keep], embeddings=tiny_catalog.embeddings[keep]),
        tmp_path / "partial.parquet",
    )
    with pytest.raises(CatalogMismatchError, match=r"lacks 7 of the index's 600 items \(e\.g\. "):
        evaluate_index(tiny_index, partial)


def test_refuses_a_wrong_dimension_catalog(tmp_path, tiny_index, tiny_catalog):
    narrow = write_catalog(
        Catalog(item_ids=tiny_catalog.item_ids, embeddings=tiny_catalog.embeddings[:, :8].copy()),
        tmp_path / "narrow.parquet",
    )
    with pytest.raises(CatalogMismatchError, match="dimension 8; the index's checkpoint expects 16"):
        evaluate_index(tiny_index, narrow)


# --- the CLI, and agreement with the reference scorer ---------------------------------


def _load_scorer():
    if not SCORER.is_file():
        pytest.skip(f"reference scorer not found at {SCORER} (only present beside the repo)")
    spec = importlib.util.spec_from_file_location("score_ids", SCORER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_evaluate_writes_metrics_and_report(tmp_path, tiny_index, tiny_catalog_file):
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["evaluate", "--index", str(tiny_index), "--catalog", str(tiny_catalog_file), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("summary", "verdicts", "collisions", "levels", "fanout", "neighbours", "reconstruction", "training"):
        assert key in metrics
    assert metrics["coliked"] is None
    for key in ("prefix_collision_rate", "prefix_recall_at_k", "recon_mse", "fallback_items"):
        assert key in metrics["summary"]
    assert (out / "report.html").is_file()


SAMPLE = EvaluationOptions().sample  # the scorer's sample is fixed at 2,000 items; semid's default is the same


@pytest.fixture(scope="module")
def large_index(tmp_path_factory) -> tuple[Path, Path]:
    """An index of more items than the evaluation samples (so the seeded sample's order matters), with exact
    duplicates (where the scorer's "drop the first hit" differs from "drop the item itself") and fallback items
    (where base codes differ from the emitted ones): 3 levels of 12 codes, room for 2,700 items."""
    from semid.model.config import SemidConfig
    from semid.model.data.synthetic import synthetic_catalog
    from semid.model.training.job import train_tokenizer
    from semid.service.assign import assign_catalog
    from tests.conftest import tiny_config

    base = tmp_path_factory.mktemp("eval-large")
    catalog = synthetic_catalog(items=SAMPLE + 700, dim=16, categories=4, subcategories=3, exact_duplicates=60, seed=5)
    catalog_file = write_catalog(catalog, base / "catalog.parquet")
    config = tiny_config().to_dict()
    config["model"]["codebook_size"] = 12
    train_tokenizer(catalog.embeddings, SemidConfig.from_dict(config), base / "checkpoint")
    assign_catalog(checkpoint=base / "checkpoint", catalog=catalog_file, index_dir=base / "index")
    return base / "index", catalog_file


def _scorer_equivalents(metrics: dict, levels: int) -> dict:
    """semid's figure for every key the reference scorer prints (docs/configuration.md, "semid evaluate").

    The scorer's codes are the first L positions of each exported ID (what a model emits), so its
    ``base_collision_rate`` / ``largest_bucket`` are semid's ``prefix_*`` figures; they equal semid's base
    figures only when no item needed the fallback. ``unique_full_ids`` is rounded to 6 places by semid.
    """
    s = metrics["summary"]
    out = {
        "items": s["items"],
        "missing_items": metrics["catalog_match"]["catalog_items_not_in_index"],
        "unique_full_ids": s["unique_full_ids"],
        "base_collision_rate": s["prefix_collision_rate"],
        "largest_bucket": s["prefix_largest_bucket"],
    }
    for lv in range(1, levels + 1):
        out[f"util_l{lv}"] = s[f"util_l{lv}"]
        out[f"perplexity_l{lv}"] = s[f"perplexity_l{lv}"]
        out[f"nn_share_d{lv}"] = s[f"nn_share_d{lv}"]
        out[f"nn_lift_d{lv}"] = s[f"nn_lift_d{lv}"]
    return out


def test_cli_evaluate_equals_the_reference_scorer_on_every_figure(tmp_path, large_index):
    scorer = _load_scorer()
    from semid.service.export import export_index

    index_dir, catalog_file = large_index
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["evaluate", "--index", str(index_dir), "--catalog", str(catalog_file), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["items"] > SAMPLE and metrics["neighbours"]["sampled_items"] == SAMPLE
    assert metrics["neighbours"]["k"] == 10  # the scorer's k

    ids = tmp_path / "ids.parquet"
    export_index(index_dir, ids)
    layout = metrics["layout"]
    levels, size = len(layout["codebook_sizes"]), layout["codebook_sizes"][0]
    reference = scorer.score(str(catalog_file), str(ids), levels=levels, k=size, seed=0)
    ours = _scorer_equivalents(metrics, levels)
    assert set(ours) == set(reference), "the scorer prints a figure this test does not compare"
    expected = {**reference, "unique_full_ids": round(reference["unique_full_ids"], 6)}
    assert ours == expected

    # the fixture exercises what it is meant to: fallback items, and sampled items whose first hit is a duplicate
    from semid.model.data.catalog import read_catalog
    from semid.service.evaluation.code_health import sample_neighbours

    assert metrics["summary"]["fallback_items"] > 0
    catalog = read_catalog(catalog_file)
    row_of = {int(i): n for n, i in enumerate(catalog.item_ids)}
    exported = pq.read_table(ids, columns=["item_id"]).column("item_id").to_pylist()
    queries, found, _ = sample_neighbours(catalog.embeddings[[row_of[i] for i in exported]], len(exported))
    assert (found[:, 0] != queries).any()


def test_scorer_neighbours_keep_an_item_whose_duplicate_came_first():
    from semid.service.evaluation.code_health import nearest_neighbours, search_neighbours

    emb = np.eye(4, 8, dtype=np.float32)
    emb = np.concatenate([emb, emb[:1], np.full((1, 8), 0.1, dtype=np.float32)])  # row 4 duplicates row 0
    found = search_neighbours(emb, np.array([0, 4]), 2)
    assert set(found[:, 0]) <= {0, 4}
    nn = nearest_neighbours(emb, np.array([0, 4]), 2)
    assert (nn == found[:, 1:]).all()
    figures = neighbourhood_figures(emb, np.arange(6)[:, None], k=2, sample=6, seed=0)
    assert 0 < figures["nn_share_d1"] < 1  # an item kept in its own list shares its code


def test_cli_errors_are_one_line(tmp_path, tiny_index, tiny_catalog, tiny_catalog_file):
    runner = CliRunner()
    narrow = write_catalog(
        Catalog(item_ids=tiny_catalog.item_ids, embeddings=tiny_catalog.embeddings[:, :8].copy()),
        tmp_path / "narrow.parquet",
    )
    bad = tmp_path / "events.csv"
    bad.write_text("person,thing\n1,2\n")
    cases = [
        (["--index", str(tmp_path / "nope"), "--catalog", str(tiny_catalog_file)], "no index at"),
        (["--index", str(tiny_index), "--catalog", str(tmp_path / "nope.parquet")], "does not exist"),
        (["--index", str(tiny_index), "--catalog", str(narrow)], "dimension 8"),
        (
            ["--index", str(tiny_index), "--catalog", str(tiny_catalog_file), "--interactions", str(bad)],
            "no user column",
        ),
        (
            [
                "--index",
                str(tiny_index),
                "--catalog",
                str(tiny_catalog_file),
                "--interactions",
                str(tmp_path / "x.csv"),
            ],
            "does not exist",
        ),
    ]
    for args, message in cases:
        result = runner.invoke(main, ["evaluate", *args, "--out", str(tmp_path / "out")])
        assert result.exit_code == 2, (args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output


def test_evaluation_is_seeded(tiny_index, tiny_catalog_file):
    options = EvaluationOptions(sample=100, k=5, seed=4)
    first = evaluate_index(tiny_index, tiny_catalog_file, options=options)
    again = evaluate_index(tiny_index, tiny_catalog_file, options=options)
    assert first["neighbours"] == again["neighbours"] and first["reconstruction"] == again["reconstruction"]
