"""benchmarks/genrec_scale.py: the synthetic data it writes, and the benchmark run end to end on a tiny size."""

import json

import numpy as np
import pyarrow.parquet as pq

from benchmarks import generative_retrieval as gr
from benchmarks import genrec_scale as scale


def test_walks_are_distinct_items_of_at_least_three_in_position_order():
    cluster, x = scale.synthetic_catalog(500, 8, 20, seed=0)
    assert x.shape == (500, 8) and np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    user, item, position = scale.synthetic_sequences(cluster, 200, mean_length=6.0, seed=0)
    assert np.array_equal(np.unique(user), np.arange(200))
    for u in range(200):
        mine = item[user == u]
        assert mine.size >= 3 and np.unique(mine).size == mine.size
        assert np.array_equal(position[user == u], np.arange(1, mine.size + 1))
    # most steps stay in the walk's cluster (0.8 by construction, plus jumps that land in the same one)
    walks = [item[user == u] for u in range(200)]
    same = [cluster[a] == cluster[b] for w in walks for a, b in zip(w[:-1], w[1:], strict=True)]
    assert 0.7 < np.mean(same) < 0.95
    assert 4.5 < np.bincount(user).mean() < 7.5  # about mean_length


def test_tiny_scale_run_uses_every_user_and_writes_its_figures(tmp_path):
    out = tmp_path / "results"
    argv = ["--items", "300", "--users", "90", "--dim", "16", "--clusters", "12", "--tokenizers", "random"]
    data = scale.main([*argv, "--budget-minutes", "1", "--tiny", "--out", str(out), "--name", "scale_tiny"])
    assert data["users_in_split"] == 90 and data["interactions"] >= 3 * 90
    rows = {r["row"]: r for r in data["rows"]}
    assert set(rows) == {"random", gr.ITEM_BASELINE}
    for row in rows.values():
        assert row["status"] == "ok" and row["epochs_run"] >= 1 and 0.0 <= row["recall@10"] <= 1.0
    assert rows["random"]["row_at_45_min_estimate_min"] >= scale.ROW_BUDGET_MIN
    assert rows["random"]["decode_all_users_s"] >= 0.0
    saved = json.loads((out / "scale_tiny.json").read_text())
    assert saved["rows"] == data["rows"] and saved["max_rss_mb"] > 0
    assert "| random | ok |" in (out / "scale_tiny.md").read_text()


def test_the_interactions_file_has_no_rating_column(tmp_path):
    info = scale.write_data(tmp_path, items=50, users=10, dim=4, clusters=3, mean_length=4.0, seed=1)
    table = pq.read_table(tmp_path / "interactions.parquet")
    assert table.column_names == ["user_id", "item_id", "position"] and table.num_rows == info["interactions"]
    assert pq.read_table(tmp_path / "items.parquet").num_rows == 50
