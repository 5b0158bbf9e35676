"""semid.service.statistics: an index snapshot's headline figures, computed outside the HTTP layer.

The HTTP contract of ``GET /v1/stats`` is tested in tests/service/api/test_stats_ui.py; here the figures are
checked against a plain count of the active rows, and the module is shown to need no web framework."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from semid.service.assign import assign_catalog
from semid.service.index.handle import SemanticIdIndex
from semid.service.statistics import snapshot_stats


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory, tiny_checkpoint, tiny_catalog_file):
    out = tmp_path_factory.mktemp("statistics") / "index"
    assign_catalog(checkpoint=tiny_checkpoint, catalog=tiny_catalog_file, index_dir=out)
    return SemanticIdIndex.open(out).snapshot


def test_figures_are_plain_counts_of_the_active_rows(snapshot):
    figures = snapshot_stats(snapshot)
    state, layout = snapshot.state, snapshot.layout
    sids = state.semantic_ids[state.active]
    assert figures["items"] == len(sids) == 600
    assert figures["retired"] == 0
    assert figures["fallback"] == int(state.fallback[state.active].sum())
    parents = 1
    for pos, level in enumerate(figures["levels"]):
        prefixes = {tuple(s[: pos + 1]) for s in sids.tolist()}
        used = np.unique(sids[:, pos])
        assert level["codebook_size"] == layout.sizes[pos]
        assert level["codes_used"] == len(used)
        assert level["prefixes"] == len(prefixes)
        assert level["mean_fanout"] == pytest.approx(len(prefixes) / parents)
        assert level["dedup"] == (pos == layout.levels)
        parents = len(prefixes)
    assert figures["levels"][-1]["prefixes"] == 600  # full IDs are unique


def test_figures_are_computed_once_per_snapshot(snapshot):
    assert snapshot_stats(snapshot) is snapshot_stats(snapshot)


def test_the_statistics_need_no_web_framework():
    code = "import sys, semid.service.statistics; print([m for m in ('fastapi', 'starlette') if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
