"""Long-lived readers (server workers, read-only replicas): catching up with other handles' commits."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import semid.service.index.handle as index_module
from semid.service.errors import ReadOnlyReplicaError
from semid.service.index.handle import SemanticIdIndex
from tests.service.index.test_handle import dir_state, filled_index, make_batch


def test_reader_sees_another_handles_commit_on_its_next_check(tmp_path):
    rng = np.random.default_rng(1)
    writer, _ = filled_index(tmp_path / "idx", rng, batches=1)
    reader = SemanticIdIndex.open(tmp_path / "idx", read_only=True)
    assert not reader.manifest_changed() and not reader.refresh_if_changed()
    version = reader.version
    writer.append(**make_batch(rng, 5, start=100, occupancy=writer.snapshot.occupancy()))
    assert len(reader) == 20 and reader.manifest_changed()  # one stat tells, before any read
    assert reader.refresh_if_changed()
    assert len(reader) == 25 and reader.version == writer.version > version
    assert reader.snapshot.get_item(100)["item_id"] == 100
    assert not reader.manifest_changed()


def test_reader_revalidates_within_the_bound_even_if_stat_looks_the_same(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    writer, _ = filled_index(tmp_path / "idx", rng, batches=1)
    reader = SemanticIdIndex.open(tmp_path / "idx")
    writer.append(**make_batch(rng, 5, start=100, occupancy=writer.snapshot.occupancy()))
    monkeypatch.setattr(index_module, "_manifest_key", lambda root: reader._seen)  # a reused inode, same size/mtime
    assert not reader.manifest_changed()
    reader._checked_at -= index_module.REVALIDATE_SECONDS
    assert reader.manifest_changed() and reader.refresh_if_changed()
    assert len(reader) == 25


def test_read_only_handle_refuses_writes_and_writes_nothing(tmp_path):
    rng = np.random.default_rng(3)
    filled_index(tmp_path / "idx", rng, batches=1)
    (tmp_path / "idx" / "faiss.index").unlink()  # a writable open would rebuild and store it
    before = dir_state(tmp_path / "idx")
    reader = SemanticIdIndex.open(tmp_path / "idx", read_only=True)
    assert reader.read_only and len(reader) == 20
    with pytest.raises(ReadOnlyReplicaError, match="send writes to the writer"):
        reader.append(**make_batch(rng, 2, start=500, occupancy=reader.snapshot.occupancy()))
    assert dir_state(tmp_path / "idx") == before


def test_a_stale_refresh_never_replaces_a_newer_snapshot(tmp_path):
    """A reader's refresh that read the manifest before this handle's own write must not undo it."""
    rng = np.random.default_rng(4)
    index, _ = filled_index(tmp_path / "idx", rng, batches=1)
    old = index.snapshot
    index.append(**make_batch(rng, 5, start=100, occupancy=index.snapshot.occupancy()))
    assert not index._install(old)
    assert len(index) == 25


def test_concurrent_readers_refresh_once_and_agree(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    writer, _ = filled_index(tmp_path / "idx", rng, batches=1)
    reader = SemanticIdIndex.open(tmp_path / "idx", read_only=True)
    writer.append(**make_batch(rng, 5, start=100, occupancy=writer.snapshot.occupancy()))
    calls = []
    real = SemanticIdIndex.refresh
    monkeypatch.setattr(SemanticIdIndex, "refresh", lambda self: (calls.append(1), real(self)))
    threads = [threading.Thread(target=reader.refresh_if_changed) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(reader) == 25


def test_a_readers_refresh_during_this_processs_write_never_writes_the_manifest(tmp_path, monkeypatch):
    """The race the mixed load test caught: a server thread's refresh that rebuilt the stale FAISS file while
    another thread held the writer lock recorded it in a manifest read before that thread's next commit,
    so the commit's segment dropped out of the index on disk (the server still served its items)."""
    rng = np.random.default_rng(6)
    index, _ = filled_index(tmp_path / "idx", rng, batches=1)
    real_write = index_module.write_manifest
    writers: list[str] = []
    reader_refreshed = []

    def write_then_let_a_reader_in(root, manifest):
        writers.append(threading.current_thread().name)
        real_write(root, manifest)
        if threading.current_thread() is threading.main_thread() and not reader_refreshed:
            # the window between the commit and this handle's install: a reader thread catches up from disk
            t = threading.Thread(target=lambda: reader_refreshed.append(index.refresh_if_changed()), name="reader")
            t.start()
            t.join()

    monkeypatch.setattr(index_module, "write_manifest", write_then_let_a_reader_in)
    index._checked_at -= index_module.REVALIDATE_SECONDS  # the reader looks
    with index.writer():
        for start in (100, 200):  # online writes: the FAISS file goes stale, readers rebuild it on refresh
            batch = make_batch(rng, 4, start=start, occupancy=index.snapshot.occupancy())
            index.append(**batch, persist_vectors=False)
    assert reader_refreshed == [True]
    assert writers == ["MainThread", "MainThread"]  # the reader never wrote the manifest
    assert len(index) == 28
    report = index.check()
    assert report.ok and report.item_count == 28
