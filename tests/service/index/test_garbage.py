"""collect_garbage on a local index: unlisted files go, listed ones stay, a held lock refuses, dry runs keep all."""

from __future__ import annotations

import numpy as np
import pytest

from semid.service.errors import IndexLockedError, IndexNotFoundError
from semid.service.index.check import check_index
from semid.service.index.garbage import collect_garbage
from semid.service.index.handle import SemanticIdIndex
from semid.service.index.manifest import LOCK_NAME, read_manifest
from semid.service.index.store import TMP_PREFIX, WriterLock
from tests.service.index.test_handle import dir_state, filled_index


@pytest.fixture
def index_with_garbage(tmp_path):
    root = tmp_path / "idx"
    filled_index(root, np.random.default_rng(0), batches=2)  # writes take the lock per write, not per handle
    listed = {s.name for s in read_manifest(root).segments}
    assert listed, "the manifest lists a segment file"
    (root / "segments" / "seg-999999.parquet").write_bytes(b"a crashed write's segment")
    (root / f"{TMP_PREFIX}manifest.json").write_bytes(b"{half a manifest")
    return root, listed


def test_unlisted_files_are_removed_and_the_index_is_unchanged(index_with_garbage):
    root, listed = index_with_garbage
    state = dir_state(root)
    report = collect_garbage(root)
    assert {f"{TMP_PREFIX}manifest.json", "segments/seg-999999.parquet"} <= set(report.removed)
    assert not listed & {name.rsplit("/", 1)[-1] for name in report.removed}  # the listed segment stays
    assert report.removed_bytes == sum(len(state[name]) for name in report.removed)
    assert dir_state(root) == {k: v for k, v in state.items() if k not in report.removed}
    assert check_index(root).ok and len(SemanticIdIndex.open(root, read_only=True)) == 40
    assert collect_garbage(root).removed == []  # nothing left to collect


def test_a_dry_run_lists_and_deletes_nothing(index_with_garbage):
    root, listed = index_with_garbage
    report = collect_garbage(root, dry_run=True)
    assert report.dry_run and {f"{TMP_PREFIX}manifest.json", "segments/seg-999999.parquet"} <= set(report.removed)
    assert (root / "segments" / "seg-999999.parquet").exists() and (root / f"{TMP_PREFIX}manifest.json").exists()


def test_a_writer_holding_the_lock_refuses_the_collection(index_with_garbage):
    root, _ = index_with_garbage
    lock = WriterLock(root / LOCK_NAME, description="a writer")
    with lock.held_for():
        with pytest.raises(IndexLockedError):
            collect_garbage(root)
    assert (root / "segments" / "seg-999999.parquet").exists()


def test_no_index_and_a_negative_grace_are_errors(tmp_path):
    with pytest.raises(IndexNotFoundError):
        collect_garbage(tmp_path / "nothing")
    with pytest.raises(ValueError, match="grace_seconds"):
        collect_garbage(tmp_path, grace_seconds=-1)
