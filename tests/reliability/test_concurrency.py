"""Two writers at once: serialised by the lock when one waits, refused with a clear error when not."""

from __future__ import annotations

import pytest

from semid.service.index.check import check_index
from tests.reliability.conftest import assign_args, run_semid, start_assign


@pytest.mark.slow
def test_two_assign_processes_waiting_for_the_lock_both_land(tmp_path, checkpoint, catalogs):
    index = tmp_path / "idx"
    assert run_semid(*assign_args(checkpoint, catalogs["small"], index)).returncode == 0
    a = start_assign(checkpoint, catalogs["large"], index, "--wait-lock", "120")
    b = start_assign(checkpoint, catalogs["other"], index, "--wait-lock", "120")
    outs = [p.communicate(timeout=300) for p in (a, b)]
    assert a.returncode == 0 and b.returncode == 0, outs
    report = check_index(index)
    assert report.ok, report.problems
    assert report.item_count == 40_000 + 3_000


@pytest.mark.slow
def test_a_second_writer_without_waiting_is_refused_or_serialised_never_corrupting(tmp_path, checkpoint, catalogs):
    index = tmp_path / "idx"
    assert run_semid(*assign_args(checkpoint, catalogs["small"], index)).returncode == 0
    procs = [start_assign(checkpoint, catalogs["large"], index), start_assign(checkpoint, catalogs["other"], index)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for code, err in results:
        if code != 0:  # refused: one clear line, no traceback
            assert "error:" in err and "Traceback" not in err, err
            assert "being written" in err or "changed while" in err or "already" in err, err
    report = check_index(index)
    assert report.ok, report.problems
    expected = 4_000 + (36_000 if results[0][0] == 0 else 0) + (3_000 if results[1][0] == 0 else 0)
    assert report.item_count == expected
