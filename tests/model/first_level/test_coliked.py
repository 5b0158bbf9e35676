"""Co-liked partners from interactions: reading and validation, the pair scores, the blend into the
first-level graph, the lift on a catalog with planted taste groups, and the checkpoint's record."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from semid.model.config import TrainConfig
from semid.model.data.catalog import Catalog, CatalogError
from semid.model.data.synthetic import write_catalog
from semid.model.first_level.coliked import ColikedGraph, InteractionsFileError, coliked_partners, read_coliked
from semid.model.first_level.graph_targets import build_targets
from semid.model.training.checkpoint import load_checkpoint
from semid.model.training.job import train_tokenizer
from semid.service.cli import main
from tests.conftest import tiny_config

IDS = np.arange(100, 120, dtype=np.int64)  # a 20-item catalog's ids
PAIRS_OF_TWO = TrainConfig(coliked_min_users=2)  # the tiny files below have two users per pair


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_reads_csv_keeps_likes_and_counts_unknown_items(tmp_path, caplog):
    path = write_csv(
        tmp_path / "r.csv",
        "userId,movieId,rating,timestamp\n1,100,5,0\n1,101,4.5,0\n1,999,5,0\n2,100,4,0\n2,101,4,0\n2,102,1,0\n",
    )
    graph = read_coliked(path, IDS, PAIRS_OF_TWO)
    r = graph.record
    assert (r["rows"], r["likes"], r["known_likes"], r["unknown_items"], r["unknown_likes"]) == (6, 5, 4, 1, 1)
    assert r["columns"] == {"user": "userId", "item": "movieId", "rating": "rating"}
    assert r["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and r["file"] == "r.csv"
    assert graph.partners[0, 0] == 1 and graph.partners[1, 0] == 0  # 100 and 101: liked by both users
    assert (graph.partners[2:] == -1).all()  # 102 was rated 1: not a like
    assert "not in the catalog" in caplog.text


def test_parquet_without_rating_column_counts_every_row_as_a_like(tmp_path):
    path = tmp_path / "r.parquet"
    pq.write_table(pa.table({"user": ["a", "a", "b", "b"], "item": [100, 101, 100, 101]}), path)
    graph = read_coliked(path, IDS, PAIRS_OF_TWO)
    assert graph.record["likes"] == 4 and graph.record["columns"]["rating"] is None
    assert graph.partners[0, 0] == 1


def test_string_ids_join_string_catalog_ids(tmp_path):
    path = write_csv(tmp_path / "r.csv", "user,item\nu1,x\nu1,y\nu2,x\nu2,y\n")
    graph = read_coliked(path, np.array(["y", "z", "x"], dtype=object), PAIRS_OF_TWO)
    assert graph.partners[0, 0] == 2 and graph.partners[2, 0] == 0 and graph.partners[1, 0] == -1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("customer,movieId,rating\n1,100,5\n", "no user column"),
        ("userId,title,rating\n1,x,5\n", "no item column"),
        ("userId,movieId,rating\n1,1.5,5\n", "item column is double"),
        ("userId,movieId,rating\n1,100,good\n", "not numeric"),
        ("userId,movieId,rating\n1,5,5\n2,5,5\n", "none of its 1 liked items is in the catalog"),
        ("userId,movieId,rating\n1,100,2\n", "has no likes"),
    ],
)
def test_bad_files_raise_one_error_naming_the_problem(tmp_path, text, message):
    path = write_csv(tmp_path / "bad.csv", text)
    with pytest.raises(InteractionsFileError, match=message):
        read_coliked(path, IDS, TrainConfig())
    assert issubclass(InteractionsFileError, CatalogError)  # the CLI's exit code 2


def test_missing_file_and_a_named_column_that_is_absent(tmp_path):
    with pytest.raises(InteractionsFileError, match="does not exist"):
        read_coliked(tmp_path / "nope.csv", IDS, TrainConfig())
    path = write_csv(tmp_path / "r.csv", "userId,movieId\n1,100\n")
    with pytest.raises(InteractionsFileError, match="no user column 'who'"):
        read_coliked(path, IDS, TrainConfig(), user_column="who")


def test_scores_damp_heavy_users_and_popular_items():
    # items 0 and 1: liked together by two light users; items 2 and 3: by two users who like 40 items
    users = [0, 0, 1, 1] + [2] * 40 + [3] * 40
    rows = [0, 1, 0, 1] + list(range(2, 42)) + list(range(2, 42))
    partners, scores, _ = coliked_partners(
        np.array(users), np.array(rows), 50, TrainConfig(coliked_partners=3, coliked_min_users=2)
    )
    assert partners[0, 0] == 1 and partners[2, 0] >= 3
    assert scores[0, 0] > 0.99  # only ever liked together: cosine 1
    # a blockbuster liked by everyone is a partner of many items but scores below an exclusive pair
    users = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    rows = np.array([0, 1, 0, 1, 9, 0, 9, 1, 9, 2])
    partners, scores, _ = coliked_partners(users, rows, 10, TrainConfig(coliked_partners=2, coliked_min_users=1))
    assert partners[0, 0] == 1 and scores[0, 0] > scores[0, 1]


def test_min_users_and_partner_count_cut_the_pairs():
    users = np.array([0, 0, 0, 1, 1])
    rows = np.array([0, 1, 2, 0, 1])
    partners, _, _ = coliked_partners(users, rows, 3, TrainConfig(coliked_min_users=2))
    assert partners[0].tolist()[:1] == [1] and (partners[2] == -1).all()  # 0-2 liked by one user only
    partners, _, _ = coliked_partners(users, rows, 3, TrainConfig(coliked_min_users=1, coliked_partners=1))
    assert partners.shape == (3, 1)


def taste_interactions(n_users: int, groups: np.ndarray, seed: int, likes: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Each user likes ``likes`` random items of one random taste group."""
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(groups == g) for g in range(groups.max() + 1)]
    users, rows = [], []
    for u in range(n_users):
        pick = rng.choice(members[rng.integers(len(members))], size=likes, replace=False)
        users += [u] * likes
        rows += pick.tolist()
    return np.array(users), np.array(rows)


def test_partners_are_deterministic_for_a_seed_and_heavy_users_are_sampled():
    groups = np.arange(300) % 10
    users, rows = taste_interactions(50, groups, seed=0, likes=25)
    cfg = TrainConfig(coliked_max_user_likes=10, coliked_min_users=1, seed=3)
    a = coliked_partners(users, rows, 300, cfg)
    b = coliked_partners(users, rows, 300, cfg)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert a[2]["used_likes"] == 500  # 50 users x 10 kept likes
    other = coliked_partners(users, rows, 300, cfg.model_copy(update={"seed": 4}))
    assert not np.array_equal(a[0], other[0])


def test_blend_appends_partners_as_weighted_votes_inside_the_graph_rows():
    partners = np.array([[1, 3], [0, -1], [-1, -1], [0, 1]])
    graph = ColikedGraph(partners=partners, scores=np.ones((4, 2), np.float32), weight=2.5, record={})
    rows = np.array([0, 1, 3])  # a sampled graph without row 2
    content = np.array([[1], [2], [0]])  # positions in rows
    votes, weights = graph.blend(content, rows)
    assert votes.tolist() == [[1, 1, 2], [2, 0, 1], [0, 0, 1]]
    assert weights.tolist() == [[1, 2.5, 2.5], [1, 2.5, 0], [1, 2.5, 2.5]]


def planted_catalog(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Items spread over the sphere (no content clusters), and taste groups that follow content only
    loosely: each group is the items nearest to one of 8 taste centres in a random 4-dim projection."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((640, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    proj = x @ rng.standard_normal((16, 4))
    centres = proj[rng.choice(640, size=8, replace=False)]
    groups = ((proj[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
    return x, groups


def first_code_lift(codes: np.ndarray, users: np.ndarray, rows: np.ndarray) -> float:
    same, total = 0, 0
    for u in np.unique(users):
        liked = codes[rows[users == u], 0]
        eq = liked[:, None] == liked[None, :]
        same += int(eq.sum() - len(liked))
        total += len(liked) * (len(liked) - 1)
    counts = np.bincount(codes[:, 0])
    chance = float(((counts / counts.sum()) ** 2).sum())
    return same / total / chance


def test_interactions_raise_the_co_liked_lift_of_new_users_pairs(tmp_path):
    x, groups = planted_catalog()
    users, rows = taste_interactions(300, groups, seed=1)
    fresh_users, fresh_rows = taste_interactions(200, groups, seed=2)  # measured on users not trained on
    cfg = tiny_config(epochs=12, coliked_weight=2.0, coliked_min_users=1)
    partners, scores, _ = coliked_partners(users, rows, x.shape[0], cfg.train)
    graph = ColikedGraph(partners=partners, scores=scores, weight=2.0, record={"file": "planted"})
    lifts = {}
    for name, coliked in (("before", None), ("after", graph)):
        train_tokenizer(x, cfg, tmp_path / name, coliked=coliked)
        tok = load_checkpoint(tmp_path / name).tokenizer.eval()
        import torch

        with torch.inference_mode():
            codes = tok.encode(torch.from_numpy(x)).codes.numpy()
        lifts[name] = first_code_lift(codes, fresh_users, fresh_rows)
    assert lifts["after"] > 1.5 * lifts["before"], lifts


def test_graph_targets_with_partners_put_more_co_liked_pairs_under_one_label():
    import torch

    x, groups = planted_catalog()
    users, rows = taste_interactions(300, groups, seed=1)
    cfg = TrainConfig(coliked_weight=2.0, coliked_min_users=1)
    partners, scores, _ = coliked_partners(users, rows, x.shape[0], cfg)
    graph = ColikedGraph(partners=partners, scores=scores, weight=2.0, record={})
    kwargs = dict(neighbours=10, balance=1.9, sweeps=8, seed=0, kmeans_iters=10, kmeans_sample=640)
    before = build_targets(torch.from_numpy(x), 8, **kwargs).labels.numpy()
    after = build_targets(torch.from_numpy(x), 8, coliked=graph, **kwargs).labels.numpy()
    again = build_targets(torch.from_numpy(x), 8, coliked=graph, **kwargs).labels.numpy()
    assert np.array_equal(after, again)  # deterministic for a seed
    as_codes = lambda labels: labels[:, None]  # noqa: E731
    fresh_users, fresh_rows = taste_interactions(200, groups, seed=2)
    assert first_code_lift(as_codes(after), fresh_users, fresh_rows) > first_code_lift(
        as_codes(before), fresh_users, fresh_rows
    )


def test_train_tokenizer_refuses_interactions_without_graph_targets(tmp_path):
    x, _ = planted_catalog()
    graph = ColikedGraph(partners=np.full((640, 1), -1), scores=np.zeros((640, 1), np.float32), weight=1, record={})
    with pytest.raises(ValueError, match="graph_targets"):
        train_tokenizer(x, tiny_config(graph_targets=False), tmp_path / "a", coliked=graph)
    with pytest.raises(ValueError, match="rqvae"):
        train_tokenizer(x, tiny_config("rqkmeans"), tmp_path / "b", coliked=graph)


@pytest.fixture
def planted_files(tmp_path) -> tuple[Path, Path]:
    x, groups = planted_catalog()
    catalog = write_catalog(Catalog(item_ids=np.arange(1, 641), embeddings=x), tmp_path / "catalog.parquet")
    users, rows = taste_interactions(300, groups, seed=1)
    ratings = tmp_path / "ratings.csv"
    lines = ["userId,movieId,rating"] + [f"{u},{r + 1},5" for u, r in zip(users, rows, strict=True)] + ["1,9999,5"]
    ratings.write_text("\n".join(lines) + "\n")
    return catalog, ratings


def test_cli_train_with_interactions_records_them_in_the_checkpoint(tmp_path, planted_files):
    catalog, ratings = planted_files
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(tiny_config(epochs=3, coliked_min_users=1).to_dict()))
    out = tmp_path / "ckpt"
    args = ["train", "--catalog", catalog, "--config", cfg, "--out", out, "--quiet", "--interactions", ratings]
    result = CliRunner().invoke(main, [str(a) for a in [*args, "--coliked-weight", "1.5"]])
    assert result.exit_code == 0, result.output
    assert "1 items not in the catalog ignored" in result.stderr
    ck = load_checkpoint(out)
    record = ck.metrics["interactions"]
    assert record["file"] == "ratings.csv" and record["sha256"] == hashlib.sha256(ratings.read_bytes()).hexdigest()
    assert record["unknown_items"] == 1 and record["likes"] == 1801 and record["users"] == 300
    assert record["settings"]["coliked_weight"] == 1.5 and ck.config.train.coliked_weight == 1.5
    shown = json.loads(CliRunner().invoke(main, ["inspect", str(out), "--json"]).stdout)
    assert shown["interactions"] == record
    plain = tmp_path / "plain"
    result = CliRunner().invoke(
        main, [str(a) for a in ["train", "--catalog", catalog, "--config", cfg, "--out", plain]]
    )
    assert result.exit_code == 0 and load_checkpoint(plain).metrics["interactions"] is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("userId,rating\n1,5\n", "no item column"),
        ("userId,movieId,rating\n1,100000,5\n", "none of its 1 liked items is in the catalog"),
        ("userId,movieId,rating\n1,7,bad\n", "not numeric"),
    ],
)
def test_cli_bad_interactions_file_is_a_one_line_error_with_exit_code_2(tmp_path, planted_files, text, message):
    catalog, _ = planted_files
    bad = write_csv(tmp_path / "bad.csv", text)
    args = ["train", "--catalog", catalog, "--out", tmp_path / "o", "--interactions", bad]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


def test_cli_interactions_with_rqkmeans_fail_before_reading_the_file(tmp_path, planted_files):
    catalog, ratings = planted_files
    args = ["train", "--catalog", catalog, "--out", tmp_path / "o", "--tokenizer", "rqkmeans"]
    args += ["--interactions", ratings]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: interactions need the rqvae tokenizer (they are blended into its graph targets)"
    ]
