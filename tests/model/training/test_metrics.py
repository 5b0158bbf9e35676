"""Per-level code health has one home (semid.model.training.metrics.level_health), one rounding (LevelHealth.to_json)
and one flat-key format (flat_levels / levels_from_flat)."""

from __future__ import annotations

import numpy as np
import pytest

from semid.model.training.metrics import (
    ROUNDING,
    TRAINING_LEVEL_FIELDS,
    codebook_health,
    flat_key,
    flat_levels,
    level_health,
    levels_from_flat,
)


def test_balanced_and_collapsed_levels():
    k = 8
    codes = np.stack([np.tile(np.arange(k), 5), np.repeat(np.arange(k), 5), np.zeros(5 * k, dtype=int)], axis=1)
    first, second, third = level_health(codes, k)
    for lv in (first, second):
        assert lv.perplexity == pytest.approx(k) and lv.entropy == pytest.approx(np.log(k))
        assert lv.utilisation == 1.0 and lv.dead_codes == 0 and lv.max_perplexity == k
    assert third.level == 3 and third.perplexity == pytest.approx(1.0) and third.dead_codes == k - 1
    assert third.sorted_counts() == [5 * k] + [0] * (k - 1)


def test_codebook_sizes_per_level_and_few_items():
    codes = np.array([[0, 3], [1, 3], [1, 9]])
    first, second = level_health(codes, (4, 16))
    assert (first.codebook_size, second.codebook_size) == (4, 16)
    assert first.utilisation == 0.5 and second.dead_codes == 14
    assert first.max_perplexity == 3 and second.max_perplexity == 3  # every item its own code at most
    with pytest.raises(ValueError):
        level_health(codes, (4, 16, 16))


def test_perplexity_is_the_reference_scorers():
    """The scorer: counts of the distinct codes, p = c / c.sum(), perplexity = exp(-sum p log p)."""
    codes = np.random.default_rng(0).zipf(1.6, size=(5000, 2)) % 256
    for lv in level_health(codes, 256):
        _, c = np.unique(codes[:, lv.level - 1], return_counts=True)
        p = c / c.sum()
        assert lv.perplexity == float(np.exp(-(p * np.log(p)).sum()))
        assert lv.utilisation == len(c) / 256


def test_rounding_happens_in_to_json_only():
    (lv,) = level_health(np.array([[0], [0], [1], [2], [2], [2], [3]]), 7)
    assert lv.perplexity != round(lv.perplexity, ROUNDING["perplexity"])  # unrounded until the JSON boundary
    out = lv.to_json()
    assert out["perplexity"] == round(lv.perplexity, 1) and out["utilisation"] == round(4 / 7, 4)
    assert out["entropy"] == round(lv.entropy, 4) and out["dead_codes"] == 3 and out["max_perplexity"] == 7


def test_flat_keys_round_trip_in_level_order_past_level_nine():
    codes = np.random.default_rng(1).integers(0, 4, size=(50, 12))
    levels = level_health(codes, 4)
    flat = flat_levels(levels)
    assert list(flat)[:4] == ["util_l1", "perplexity_l1", "dead_codes_l1", "util_l2"]
    assert flat_key("perplexity", 10) == "perplexity_l10" and flat_key("max_perplexity", 2) == "max_perplexity_l2"
    back = levels_from_flat(flat)
    assert [lv["level"] for lv in back] == list(range(1, 13))  # l10..l12 after l9, not after l1
    assert back == [{k: v for k, v in lv.to_json().items() if k in ("level", *TRAINING_LEVEL_FIELDS)} for lv in levels]
    assert flat_levels(back) == flat  # dicts flatten as they are


def test_an_old_checkpoints_final_metrics_read():
    """metrics.json written before perplexity was rounded to 1 place (it had 2): read as it is."""
    old = {
        "recon_mse": 0.31,
        "util_l1": 1.0,
        "perplexity_l1": 201.37,
        "dead_codes_l1": 0,
        "util_l2": 0.9961,
        "perplexity_l2": 230.05,
        "dead_codes_l2": 1,
        "base_collision_rate": 0.004,
        "codes_reset_l1": 3,
    }
    assert levels_from_flat(old) == [
        {"level": 1, "utilisation": 1.0, "perplexity": 201.37, "dead_codes": 0},
        {"level": 2, "utilisation": 0.9961, "perplexity": 230.05, "dead_codes": 1},
    ]
    assert levels_from_flat({"recon_mse": 1.0}) == []


def test_training_rows_carry_the_rounded_levels():
    codes = np.random.default_rng(2).integers(0, 8, size=(300, 3))
    row = codebook_health(codes, 8)
    assert row == {
        **flat_levels(level_health(codes, 8)),
        "base_collision_rate": row["base_collision_rate"],
        "largest_bucket": row["largest_bucket"],
    }
    assert all(row[flat_key("perplexity", i)] == round(row[flat_key("perplexity", i)], 1) for i in (1, 2, 3))


def test_no_other_module_computes_or_parses_per_level_health():
    """A second perplexity formula or a second reader of `perplexity_l2`-style keys could drift from this one."""
    import re

    from tests.conftest import ROOT

    home = ROOT / "model" / "metrics.py"
    patterns = {
        "an entropy/perplexity formula": re.compile(r"np\.exp\(\s*-?\s*\(?\s*p\s*\*\s*np\.log"),
        "a flat per-level key built by hand": re.compile(r"""(util|perplexity|dead_codes)_l\{"""),
        "a level parsed out of a key": re.compile(
            r"""startswith\(\s*["'](util|perplexity|dead_codes)|rsplit\(\s*["']_l"""
        ),
    }
    found = []
    for folder in ("model", "service", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == home:
                continue
            text = path.read_text(encoding="utf-8")
            found += [f"{path.relative_to(ROOT)}: {what}" for what, rx in patterns.items() if rx.search(text)]
    assert not found, f"use semid.model.training.metrics (level_health, flat_levels, levels_from_flat): {found}"
