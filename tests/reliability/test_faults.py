"""Faults the index survives: bit rot (checksums), a kill at each write step, a full disk, a
read-only file system. Faults are injected with SEMID_FAULT (semid.service.index.store.fault_point) and, where
mounting is permitted, with a real 4 MiB tmpfs."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys

import faiss
import numpy as np
import pytest

import semid.service.index.segments as segments_module
from semid.service.errors import CorruptIndexError, IndexWriteError
from semid.service.ids.layout import IdLayout
from semid.service.index.check import check_index
from semid.service.index.handle import SemanticIdIndex
from semid.service.index.store import CRASH_STEPS, FAULT_ENV
from tests.conftest import ROOT
from tests.reliability.conftest import assign_args, run_semid
from tests.service.index.test_handle import DIM, filled_index, make_batch, new_index

ROOMY = IdLayout(codebook_sizes=(64, 64, 64), dedup_size=64)  # room for thousands of test items


def flip_byte(path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    i = int(len(data) * at)
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def temp_files(root) -> list[str]:
    return sorted(p.name for p in root.rglob(".tmp-*"))


def two_segment_index(path, rng, monkeypatch):
    monkeypatch.setattr(segments_module, "SMALL_SEGMENT_ROWS", 0)  # every write its own segment
    index, batches = filled_index(path, rng, batches=2)
    monkeypatch.undo()
    assert index.segments == ("seg-000001.parquet", "seg-000002.parquet")
    return index, batches


# --- bit rot -------------------------------------------------------------------------------


def test_flipped_byte_in_a_segment_is_named_by_open_and_by_check(tmp_path, monkeypatch):
    two_segment_index(tmp_path / "idx", np.random.default_rng(1), monkeypatch)
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert all(len(s["sha256"]) == 64 for s in manifest["segments"]) and manifest["faiss"]["rows"] == 40
    flip_byte(tmp_path / "idx" / "segments" / "seg-000001.parquet")
    with pytest.raises(CorruptIndexError, match="segment seg-000001.parquet does not match its checksum"):
        SemanticIdIndex.open(tmp_path / "idx")
    report = check_index(tmp_path / "idx")
    assert not report.ok
    assert any("seg-000001.parquet does not match its checksum" in p for p in report.problems)
    assert not any("seg-000002" in p for p in report.problems)
    cli = run_semid("check", "--index", str(tmp_path / "idx"))
    assert cli.returncode == 1
    assert any(line.startswith("problem: segment seg-000001.parquet") for line in cli.stdout.splitlines())


def test_a_writer_catching_up_refuses_a_corrupt_new_segment(tmp_path, monkeypatch):
    monkeypatch.setattr(segments_module, "SMALL_SEGMENT_ROWS", 0)  # every write its own segment
    rng = np.random.default_rng(2)
    first, _ = filled_index(tmp_path / "idx", rng, batches=1)
    second = SemanticIdIndex.open(tmp_path / "idx")
    second.append(**make_batch(rng, 5, start=100, occupancy=second.snapshot.occupancy()))
    flip_byte(tmp_path / "idx" / "segments" / second.segments[-1])
    manifest = (tmp_path / "idx" / "manifest.json").read_bytes()
    with pytest.raises(CorruptIndexError, match=f"{second.segments[-1]} does not match its checksum"):
        first.append(**make_batch(rng, 3, start=9000, occupancy=first.snapshot.occupancy()))
    assert (tmp_path / "idx" / "manifest.json").read_bytes() == manifest and len(first) == 20


def test_a_corrupt_tail_is_not_folded_into_a_fresh_checksum(tmp_path):
    rng = np.random.default_rng(3)
    index, _ = filled_index(tmp_path / "idx", rng, batches=1)  # one 20-row tail segment, held in memory
    flip_byte(tmp_path / "idx" / "segments" / "seg-000001.parquet")
    manifest = (tmp_path / "idx" / "manifest.json").read_bytes()
    with pytest.raises(CorruptIndexError, match="seg-000001.parquet does not match its checksum"):
        index.append(**make_batch(rng, 3, start=500, occupancy=index.snapshot.occupancy()))
    assert (tmp_path / "idx" / "manifest.json").read_bytes() == manifest
    assert sorted(p.name for p in (tmp_path / "idx" / "segments").iterdir()) == ["seg-000001.parquet"]


def test_flipped_byte_in_faiss_index_is_rebuilt_and_noted(tmp_path):
    rng = np.random.default_rng(4)
    index, _ = filled_index(tmp_path / "idx", rng, batches=2)
    queries = rng.standard_normal((5, DIM)).astype(np.float32)
    expected = index.snapshot.nearest(queries, k=10)
    path = tmp_path / "idx" / "faiss.index"
    flip_byte(path, at=0.9)  # inside the vectors: faiss itself reads the file without complaint
    assert faiss.read_index(str(path)).ntotal == 40
    report = check_index(tmp_path / "idx")
    assert report.ok
    assert any(n.startswith("faiss.index does not match the checksum") for n in report.notes), report.notes
    reopened = SemanticIdIndex.open(tmp_path / "idx")  # rebuilt from the segments, rewritten, recorded
    for got, want in zip(reopened.snapshot.nearest(queries, k=10), expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert check_index(tmp_path / "idx").notes == []


def test_manifest_without_checksums_still_opens_and_gains_them_on_the_next_write(tmp_path):
    rng = np.random.default_rng(5)
    filled_index(tmp_path / "idx", rng, batches=1)
    manifest_path = tmp_path / "idx" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())  # as a semid without checksums wrote it
    del manifest["faiss"]
    for seg in manifest["segments"]:
        del seg["sha256"]
    manifest_path.write_text(json.dumps(manifest))
    old = SemanticIdIndex.open(tmp_path / "idx")
    assert len(old) == 20
    report = check_index(tmp_path / "idx")
    assert report.ok and any("no recorded checksum" in n for n in report.notes)
    old.append(**make_batch(rng, 4, start=100, occupancy=old.snapshot.occupancy()))  # folds the tail: rewritten
    manifest = json.loads(manifest_path.read_text())
    assert all("sha256" in s for s in manifest["segments"]) and manifest["faiss"]["rows"] == 24
    assert check_index(tmp_path / "idx").notes == []


def test_malformed_checksum_in_manifest_is_corrupt(tmp_path):
    filled_index(tmp_path / "idx", np.random.default_rng(6), batches=1)
    manifest_path = tmp_path / "idx" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["segments"][0]["sha256"] = "not-a-digest"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(CorruptIndexError, match="sha256"):
        SemanticIdIndex.open(tmp_path / "idx")
    assert not check_index(tmp_path / "idx").ok


# --- a kill at each step (library writes in a child process) -------------------------------

_APPEND = """
import sys
import numpy as np
from semid.service.index.handle import SemanticIdIndex
from tests.service.index.test_handle import make_batch
index = SemanticIdIndex.open(sys.argv[1])
start = int(sys.argv[2])
batch = make_batch(np.random.default_rng(start), 30, start=start, occupancy=index.snapshot.occupancy())
index.append(**batch, persist_vectors=True)
"""

_CREATE = """
import sys
from tests.service.index.test_handle import new_index
new_index(sys.argv[1])
"""


def _child(script: str, *args: str, fault: str | None) -> int:
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    if fault:
        env[FAULT_ENV] = fault
    proc = subprocess.run(
        [sys.executable, "-c", script, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    return proc.returncode


def _ids(index) -> dict:
    state = index.state
    return dict(zip(state.item_ids.tolist(), map(tuple, state.semantic_ids.tolist()), strict=True))


@pytest.mark.parametrize("step", CRASH_STEPS)
def test_kill_at_each_step_of_an_append(step, tmp_path):
    index, _ = filled_index(tmp_path / "idx", np.random.default_rng(7), batches=2)
    acknowledged = _ids(index)
    assert _child(_APPEND, str(tmp_path / "idx"), "1000", fault=step) == -signal.SIGKILL
    report = check_index(tmp_path / "idx")
    assert report.ok, report.problems
    after = SemanticIdIndex.open(tmp_path / "idx")
    now = _ids(after)
    assert all(now[item] == sid for item, sid in acknowledged.items())
    assert len(now) == (70 if step == "after-manifest-rename" else 40)
    assert _child(_APPEND, str(tmp_path / "idx"), "2000", fault=None) == 0  # a re-run completes
    final = SemanticIdIndex.open(tmp_path / "idx")
    assert len(final) == len(now) + 30 and check_index(tmp_path / "idx").ok
    assert all(_ids(final)[item] == sid for item, sid in now.items())
    assert temp_files(tmp_path / "idx") == []


@pytest.mark.parametrize("step", ["after-vectors-write", "after-vectors-rename", "after-manifest-fsync"])
def test_kill_while_creating_leaves_no_index_or_an_empty_one(step, tmp_path):
    assert _child(_CREATE, str(tmp_path / "idx"), fault=step) == -signal.SIGKILL
    if (tmp_path / "idx" / "manifest.json").exists():
        pytest.fail("the manifest is written last; it cannot exist before its rename")
    index = new_index(tmp_path / "idx")  # creating again in the same directory works
    assert len(index) == 0 and check_index(tmp_path / "idx").ok and temp_files(tmp_path / "idx") == []


def test_kill_after_create_commits_an_empty_index(tmp_path):
    assert _child(_CREATE, str(tmp_path / "idx"), fault="after-manifest-rename") == -signal.SIGKILL
    assert len(SemanticIdIndex.open(tmp_path / "idx")) == 0 and check_index(tmp_path / "idx").ok


# --- disk full / read-only, injected -------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "file", "code"),
    [
        ("enospc-segment-write", "segments/seg-000002.parquet", errno.ENOSPC),
        ("enospc-segment-fsync", "segments/seg-000002.parquet", errno.ENOSPC),
        ("enospc-manifest-write", "manifest.json", errno.ENOSPC),
        ("erofs-segment-write", "segments/seg-000002.parquet", errno.EROFS),
        ("eio-manifest-fsync", "manifest.json", errno.EIO),
    ],
)
def test_online_write_failure_is_an_index_write_error_and_loses_nothing(fault, file, code, tmp_path, monkeypatch):
    rng = np.random.default_rng(8)
    index, _ = filled_index(tmp_path / "idx", rng, batches=1)
    acknowledged = _ids(index)
    manifest = (tmp_path / "idx" / "manifest.json").read_bytes()
    batch = make_batch(rng, 5, start=100, occupancy=index.snapshot.occupancy())
    monkeypatch.setenv(FAULT_ENV, fault)
    with pytest.raises(IndexWriteError) as caught:
        index.append(**batch, persist_vectors=False)
    err = caught.value
    assert err.code == "index_write_failed" and err.errno == code and not err.committed
    assert err.insufficient_storage == (code == errno.ENOSPC)
    assert err.path == str(tmp_path / "idx" / file) and f"writing {tmp_path / 'idx' / file}" in str(err)
    assert str(err).startswith(os.strerror(code)[:1].lower() + os.strerror(code)[1:])
    assert "the index is unchanged" in str(err)
    assert (tmp_path / "idx" / "manifest.json").read_bytes() == manifest
    assert _ids(index) == acknowledged and temp_files(tmp_path / "idx") == []
    assert check_index(tmp_path / "idx").ok
    monkeypatch.delenv(FAULT_ENV)
    index.append(**batch, persist_vectors=False)  # the space is back: the same write goes through
    assert len(SemanticIdIndex.open(tmp_path / "idx")) == 25


def test_failure_after_the_manifest_rename_says_the_write_is_in(tmp_path, monkeypatch):
    rng = np.random.default_rng(9)
    index, _ = filled_index(tmp_path / "idx", rng, batches=1)
    batch = make_batch(rng, 5, start=100, occupancy=index.snapshot.occupancy())
    monkeypatch.setenv(FAULT_ENV, "eio-manifest-rename")  # the directory fsync after the rename fails
    with pytest.raises(IndexWriteError, match="the write is in the index") as caught:
        index.append(**batch)
    assert caught.value.committed
    assert len(index) == 25 and len(SemanticIdIndex.open(tmp_path / "idx")) == 25


def _export_ids(index_dir) -> dict:
    return _ids(SemanticIdIndex.open(index_dir))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fault", "reason", "file"),
    [
        ("enospc-segment-write", "no space left on device", "segments/seg-000002.parquet"),
        ("enospc-vectors-write", "no space left on device", "faiss.index"),
        ("enospc-manifest-write", "no space left on device", "manifest.json"),
        ("erofs-segment-write", "read-only file system", "segments/seg-000002.parquet"),
    ],
)
def test_assign_disk_full_or_read_only_fails_clearly(fault, reason, file, tmp_path, small_index, checkpoint, catalogs):
    index = tmp_path / "idx"
    shutil.copytree(small_index, index)
    before = _export_ids(index)
    manifest = (index / "manifest.json").read_bytes()
    failed = run_semid(*assign_args(checkpoint, catalogs["other"], index), env={**os.environ, FAULT_ENV: fault})
    assert failed.returncode not in (0, -signal.SIGKILL)
    assert failed.stderr.strip().splitlines() == [f"error: {reason} writing {index / file} (the index is unchanged)"]
    assert (index / "manifest.json").read_bytes() == manifest and temp_files(index) == []
    assert run_semid("check", "--index", str(index)).returncode == 0
    assert _export_ids(index) == before
    again = run_semid(*assign_args(checkpoint, catalogs["other"], index))
    assert again.returncode == 0, again.stderr
    assert len(_export_ids(index)) == 7_000


# --- disk full / read-only, on a real (tiny) file system ------------------------------------


@pytest.fixture
def tiny_fs(tmp_path):
    """A 4 MiB tmpfs at tmp_path/fs; skipped where mounting is not permitted."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command on this machine")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here (needs root / CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(mnt, *, leave: int = 0):
    """Write a filler file until the file system is full, then give back ``leave`` bytes."""
    filler = mnt / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    chunk = b"\0" * 65536
    try:
        while True:
            os.write(fd, chunk)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    if leave:
        os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


def test_online_write_on_a_full_file_system(tiny_fs):
    rng = np.random.default_rng(10)
    index, _ = filled_index(tiny_fs / "idx", rng, batches=1, layout=ROOMY, values=64)
    acknowledged = _ids(index)
    batch = make_batch(rng, 3000, start=100, occupancy=index.snapshot.occupancy(), layout=ROOMY, values=64)
    filler = fill(tiny_fs, leave=16 * 1024)  # room for the lock file, not for a 3,000-row segment
    with pytest.raises(IndexWriteError, match="no space left on device writing") as caught:
        index.append(**batch, persist_vectors=False)
    assert caught.value.errno == errno.ENOSPC and caught.value.insufficient_storage
    assert _ids(index) == acknowledged and temp_files(tiny_fs / "idx") == []
    assert check_index(tiny_fs / "idx").ok
    assert _ids(SemanticIdIndex.open(tiny_fs / "idx")) == acknowledged
    filler.unlink()
    index.append(**batch, persist_vectors=False)
    assert len(SemanticIdIndex.open(tiny_fs / "idx")) == 3020 and check_index(tiny_fs / "idx").ok


@pytest.mark.slow
def test_assign_on_a_full_file_system(tiny_fs, small_index, checkpoint, catalogs):
    index = tiny_fs / "idx"
    shutil.copytree(small_index, index)
    before = _export_ids(index)
    filler = fill(tiny_fs, leave=16 * 1024)
    failed = run_semid(*assign_args(checkpoint, catalogs["other"], index))
    assert failed.returncode not in (0, -signal.SIGKILL)
    (line,) = failed.stderr.strip().splitlines()  # one line, no traceback
    assert line.startswith(f"error: no space left on device writing {index}/"), failed.stderr
    assert run_semid("check", "--index", str(index)).returncode == 0
    assert _export_ids(index) == before and temp_files(index) == []
    filler.unlink()
    assert run_semid(*assign_args(checkpoint, catalogs["other"], index)).returncode == 0
    assert len(_export_ids(index)) == 7_000


@pytest.mark.slow
def test_read_only_file_system_reads_but_refuses_writes_clearly(tiny_fs, small_index, checkpoint, catalogs):
    rng = np.random.default_rng(11)
    lib, _ = filled_index(tiny_fs / "lib", rng, batches=1)
    # faiss stale:
    lib.append(**make_batch(rng, 4, start=100, occupancy=lib.snapshot.occupancy()), persist_vectors=False)
    acknowledged = _ids(lib)
    shutil.copytree(small_index, tiny_fs / "cli")
    before = _export_ids(tiny_fs / "cli")
    done = subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"remounting read-only is not permitted here: {done.stderr.strip()}")
    reader = SemanticIdIndex.open(tiny_fs / "lib")  # the stale faiss.index is rebuilt in memory only
    assert _ids(reader) == acknowledged and reader.snapshot.nearest(np.zeros(DIM), k=30)[1].shape == (1, 24)
    assert check_index(tiny_fs / "lib").ok
    with pytest.raises(IndexWriteError, match="read-only file system writing .*index.lock") as caught:
        reader.append(**make_batch(rng, 2, start=900, occupancy=reader.snapshot.occupancy()))
    assert caught.value.errno == errno.EROFS and not caught.value.insufficient_storage
    failed = run_semid(*assign_args(checkpoint, catalogs["other"], tiny_fs / "cli"))
    last = failed.stderr.strip().splitlines()[-1]
    assert failed.returncode not in (0, -signal.SIGKILL)
    assert last.startswith("error: read-only file system writing "), failed.stderr
    assert _export_ids(tiny_fs / "cli") == before
    subprocess.run(["mount", "-o", "remount,rw", str(tiny_fs)], check=True)
    assert run_semid(*assign_args(checkpoint, catalogs["other"], tiny_fs / "cli")).returncode == 0
