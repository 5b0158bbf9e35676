"""SIGKILL a large-run assign (vector file, sharded resolution) at each step of its write path.

The library's ``assign_catalog`` runs in a child process with ``vector_file_min_rows=1``, so a 3,000-item
catalog takes the path a 10M-item run takes: segment, vector file (``after-vectors-*``: the streamed file
is written, fsynced and renamed), then the manifest. After every kill the index opens, `check` passes,
the 4,000 acknowledged items keep their IDs, and a re-run completes and leaves nothing behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from semid.service.export import export_table
from semid.service.index.check import check_index
from semid.service.index.handle import SemanticIdIndex
from semid.service.index.store import CRASH_STEPS, FAULT_ENV
from tests.conftest import ROOT

_ASSIGN = """
import sys
from semid.service.assign import assign_catalog
assign_catalog(checkpoint=sys.argv[1], catalog=sys.argv[2], index_dir=sys.argv[3], vector_file_min_rows=1)
"""


def _assign(checkpoint, catalog, index, fault: str | None) -> int:
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    if fault:
        env[FAULT_ENV] = fault
    args = [sys.executable, "-c", _ASSIGN, str(checkpoint), str(catalog), str(index)]
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600).returncode


def _ids(index_dir) -> dict:
    table = export_table(SemanticIdIndex.open(index_dir))
    return dict(
        zip(table.column("item_id").to_pylist(), map(tuple, table.column("semantic_id").to_pylist()), strict=True)
    )


def _leftovers(index_dir) -> list[str]:
    return sorted(
        p.name
        for p in (index_dir / "segments").iterdir()
        if p.name.startswith(".tmp-") or p.name not in _listed(index_dir)
    )


def _listed(index_dir) -> set[str]:
    segments = SemanticIdIndex.open(index_dir).segments
    return {*segments, *(name.replace(".parquet", ".vectors") for name in segments)}


@pytest.fixture(scope="module")
def streamed_base(tmp_path_factory, checkpoint, catalogs):
    index = tmp_path_factory.mktemp("streamed") / "base"
    assert _assign(checkpoint, catalogs["small"], index, None) == 0
    return index


STEPS = [s for s in CRASH_STEPS if s.startswith("after-vectors-")] + ["after-segment-rename", "after-manifest-fsync"]


@pytest.mark.slow
@pytest.mark.parametrize("step", STEPS)
def test_sigkill_streamed_assign_at_each_step(step, tmp_path, streamed_base, checkpoint, catalogs):
    import shutil

    index = tmp_path / "idx"
    shutil.copytree(streamed_base, index)
    acknowledged = _ids(index)
    assert len(acknowledged) == 4_000
    assert _assign(checkpoint, catalogs["other"], index, step) == -signal.SIGKILL
    report = check_index(index)
    assert report.ok, report.problems
    now = _ids(index)
    assert len(now) == 4_000 and all(now[item] == sid for item, sid in acknowledged.items())
    if step == "after-vectors-rename":
        assert "seg-000002.vectors" in _leftovers(index)  # renamed, never listed
    assert _assign(checkpoint, catalogs["other"], index, None) == 0  # a re-run completes
    final = _ids(index)
    assert len(final) == 7_000 and all(final[item] == sid for item, sid in now.items())
    report = check_index(index)
    assert report.ok and report.notes == [], (report.problems, report.notes)
    assert _leftovers(index) == []
