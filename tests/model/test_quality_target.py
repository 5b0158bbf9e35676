"""The trained default model on MovieLens meets the recorded quality target (docs/benchmarks.md, "ID quality on
MovieLens"; issue 5): base collisions <= 0.70 %, perplexity >= 230 at every level, neighbour share
at depth 1 >= 0.45, every level >= 80 % used. (The target's "training <= 5 minutes" is a wall-clock
figure that depends on the machine's load: benchmarks/train_speed.py measures it, this test does not.)

The whole user path: `semid train` with the defaults, `semid assign`, `semid export`, then the figures
of `semid evaluate` (equal to the reference scorer's, see tests/service/evaluation/test_evaluation.py) and, when
../shared/tools is present, the reference scorer itself on the export. Skipped, with the reason, when
../shared/data/movielens-small is absent. About 2 minutes on 2 idle cores (4.3 CPU-minutes); 8.5 minutes
measured on 2 cores shared with other test runs.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
from click.testing import CliRunner

from semid.service.cli import main
from tests.conftest import ROOT

SCORER = ROOT.parent / "shared" / "tools" / "score_ids.py"

MAX_COLLISION_RATE = 0.0070
MIN_PERPLEXITY = 230.0
MIN_NN_SHARE_D1 = 0.45
MIN_UTILISATION = 0.80
LEVELS, CODEBOOK = 3, 256


def assert_target(figures: dict, source: str) -> None:
    misses = []
    if figures["base_collision_rate"] > MAX_COLLISION_RATE:
        misses.append(f"base_collision_rate {figures['base_collision_rate']} > {MAX_COLLISION_RATE}")
    for lv in range(1, LEVELS + 1):
        if figures[f"perplexity_l{lv}"] < MIN_PERPLEXITY:
            misses.append(f"perplexity_l{lv} {figures[f'perplexity_l{lv}']} < {MIN_PERPLEXITY}")
        if figures[f"util_l{lv}"] < MIN_UTILISATION:
            misses.append(f"util_l{lv} {figures[f'util_l{lv}']} < {MIN_UTILISATION}")
    if figures["nn_share_d1"] < MIN_NN_SHARE_D1:
        misses.append(f"nn_share_d1 {figures['nn_share_d1']} < {MIN_NN_SHARE_D1}")
    assert not misses, f"{source}: {misses}"


@pytest.mark.slow
def test_default_model_on_movielens_meets_the_quality_target(movielens, tmp_path):
    runner = CliRunner()

    def semid(*args) -> str:
        result = runner.invoke(main, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        return result.output

    semid("train", "--catalog", movielens, "--out", tmp_path / "ckpt")
    semid("assign", "--checkpoint", tmp_path / "ckpt", "--catalog", movielens, "--index", tmp_path / "idx", "--quiet")
    semid("export", "--index", tmp_path / "idx", "--out", tmp_path / "ids.parquet")
    semid("evaluate", "--index", tmp_path / "idx", "--catalog", movielens, "--out", tmp_path / "eval")

    summary = json.loads((tmp_path / "eval" / "metrics.json").read_text())["summary"]
    assert summary["items"] == 9742 and summary["unique_full_ids"] == 1.0
    # the scorer's codes are the emitted ones (docs/benchmarks.md): semid's prefix_* figures
    assert_target({**summary, "base_collision_rate": summary["prefix_collision_rate"]}, "semid evaluate")

    if SCORER.is_file():
        spec = importlib.util.spec_from_file_location("score_ids", SCORER)
        scorer = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(scorer)
        reference = scorer.score(str(movielens), str(tmp_path / "ids.parquet"), levels=LEVELS, k=CODEBOOK)
        assert reference["missing_items"] == 0 and reference["unique_full_ids"] == 1.0
        assert_target(reference, "reference scorer")
