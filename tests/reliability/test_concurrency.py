"""Two writers at once: serialised by the lock when one waits, refused with a clear error when not."""

from __future__ import annotations

import subprocess

import pytest

from service.index_check import check_index
from tests.conftest import ROOT
from tests.reliability.conftest import SEMID


def _start(checkpoint, catalog, index, *extra) -> subprocess.Popen:
    return subprocess.Popen(
        [
            *SEMID,
            "assign",
            "--checkpoint",
            str(checkpoint),
            "--catalog",
            str(catalog),
            "--index",
            str(index),
            "--quiet",
            *extra,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_two_assign_processes_waiting_for_the_lock_both_land(tmp_path, checkpoint, catalogs):
    index = tmp_path / "idx"
    first = subprocess.run(
        [
            *SEMID,
            "assign",
            "--checkpoint",
            str(checkpoint),
            "--catalog",
            str(catalogs["small"]),
            "--index",
            str(index),
            "--quiet",
        ],
        cwd=ROOT,
        capture_output=True,
    )
    assert first.returncode == 0
    a = _start(checkpoint, catalogs["large"], index, "--wait-lock", "120")
    b = _start(checkpoint, catalogs["other"], index, "--wait-lock", "120")
    outs = [p.communicate(timeout=300) for p in (a, b)]
    assert a.returncode == 0 and b.returncode == 0, outs
    report = check_index(index)
    assert report.ok, report.problems
    assert report.item_count == 40_000 + 3_000


@pytest.mark.slow
def test_a_second_writer_without_waiting_is_refused_or_serialised_never_corrupting(tmp_path, checkpoint, catalogs):
    index = tmp_path / "idx"
    subprocess.run(
        [
            *SEMID,
            "assign",
            "--checkpoint",
            str(checkpoint),
            "--catalog",
            str(catalogs["small"]),
            "--index",
            str(index),
            "--quiet",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    procs = [_start(checkpoint, catalogs["large"], index), _start(checkpoint, catalogs["other"], index)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for code, err in results:
        if code != 0:  # refused: one clear line, no traceback
            assert "error:" in err and "Traceback" not in err, err
            assert "being written" in err or "changed while" in err or "already" in err, err
    report = check_index(index)
    assert report.ok, report.problems
    expected = 4_000 + (36_000 if results[0][0] == 0 else 0) + (3_000 if results[1][0] == 0 else 0)
    assert report.item_count == expected
