"""``SemanticIdIndex``: the on-disk index directory and the look-ups it serves.

Directory::

    manifest.json            which segments form the index (replaced last, atomically)
    segments/seg-NNNNNN.parquet
    segments/seg-NNNNNN.vectors  raw float32 vectors of a large batch write, memory-mapped (segment_vectors.py)
    faiss.index              IndexFlatL2 over the vectors in row order (rebuilt if stale); not used
                             once a segment has a vector file
    checkpoint/              copy of the tokenizer checkpoint the ids came from
    index.lock               writers' flock

Readers never lock: a handle loads the segments named by the manifest and serves
from memory. Writers hold ``index.lock``; under it a handle first catches up with
segments other processes appended, so ids are checked against the latest state.
A long-lived reader (a server worker, a read-only replica) calls ``refresh_if_changed``
before each request: one ``stat`` of the manifest, and a refresh only when it was replaced.

An index on object storage (``s3://bucket/prefix``) is served from a local cache directory that
``StoreMirror`` (``mirror.py``) keeps in step with the store: the handle works on that directory as
on a local one; a writer pulls the store's manifest under the lock and commits with a conditional
write of the store's manifest before its local one; a reader's poller pulls in the background.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa

from semid.service.errors import (
    CommitConflictError,
    CorruptIndexError,
    FingerprintMismatchError,
    IndexExistsError,
    IndexLockedError,
    IndexNotFoundError,
    IndexWriteError,
    InvalidInputError,
    ReadOnlyReplicaError,
    SemidError,
    StoreUnavailableError,
)
from semid.service.ids.layout import IdLayout
from semid.service.index.batch import validate_batch
from semid.service.index.check import CheckReport, check_index
from semid.service.index.faiss_file import load_vector_index, read_segment_vectors, write_vector_index
from semid.service.index.manifest import (
    CHECKPOINT_DIR,
    FAISS_NAME,
    LOCK_NAME,
    MANIFEST_NAME,
    SEGMENTS_DIR,
    Manifest,
    SegmentInfo,
    read_manifest,
    write_manifest,
)
from semid.service.index.mirror import StoreMirror, StoreStatus
from semid.service.index.object_store import local_path, parse_store_uri
from semid.service.index.segment_vectors import VECTORS_SUFFIX, StagedVectors, map_vectors, vectors_name
from semid.service.index.segments import build_table, fold_into_tail, read_segment, write_segment
from semid.service.index.snapshot import IndexSnapshot
from semid.service.index.state import IndexState
from semid.service.index.store import TMP_PREFIX, WriterLock, copy_dir_atomically
from semid.service.index.vector_search import VectorSet

logger = logging.getLogger(__name__)

# A reader re-reads the manifest at least this often even when its stat looks unchanged (a new
# file can reuse the old one's inode, size and coarse mtime): the bound on how stale a reader can be.
REVALIDATE_SECONDS = 1.0


class SemanticIdIndex:
    """An index directory opened for reading, and for appending under its lock.

    Build with ``create`` or ``open``. Reads are safe from many threads; appends
    replace the in-memory snapshot in one assignment.
    """

    def __init__(
        self,
        path: Path,
        snapshot: IndexSnapshot,
        *,
        lock_timeout: float,
        read_only: bool = False,
        seen: tuple[int, ...] | None = None,
        mirror: StoreMirror | None = None,
    ) -> None:
        self._path = path
        self._mirror = mirror
        self._snapshot = snapshot
        self._lock = WriterLock(path / LOCK_NAME, description=f"index {path}")
        self._lock_timeout = lock_timeout
        self._thread_lock = threading.RLock()
        self._writer_thread: int | None = None  # the thread inside ``writer()``, which alone may write files
        self._read_only = read_only
        self._install_lock = threading.Lock()  # snapshot swaps: never an older version over a newer one
        self._refresh_lock = threading.Lock()  # one reader refresh at a time; the others wait for it
        self._seen = seen  # the manifest's stat key when this handle last caught up with it
        self._checked_at = time.monotonic()

    # --- opening -------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        layout: IdLayout,
        fingerprint: str,
        id_kind: str,
        vector_dim: int,
        keep_columns: Sequence[str] = (),
        checkpoint_dir: Path | None = None,
        lock_timeout: float = 0.0,
    ) -> SemanticIdIndex:
        """Make an empty index at ``path`` (missing or empty directory).

        Raises ``IndexExistsError`` if ``path`` already holds an index or other files,
        ``InvalidInputError`` for bad arguments.
        """
        location = parse_store_uri(path)
        mirror = StoreMirror(location) if location is not None else None
        root = mirror.local if mirror is not None else local_path(path)
        if not isinstance(layout, IdLayout):
            raise InvalidInputError(f"layout must be an IdLayout, got {type(layout).__name__}", field="layout")
        manifest = Manifest(
            checkpoint_fingerprint=fingerprint,
            layout=layout,
            id_kind=id_kind,
            vector_dim=vector_dim,
            keep_columns=tuple(keep_columns),
        )
        if checkpoint_dir is not None and not Path(checkpoint_dir).is_dir():
            raise InvalidInputError(f"checkpoint_dir {checkpoint_dir} is not a directory", field="checkpoint_dir")
        if mirror is not None:
            mirror.prepare_create()
        _refuse_existing(root)
        target = str(root)
        try:
            root.mkdir(parents=True, exist_ok=True)
            lock = WriterLock(root / LOCK_NAME, description=f"index {root}")
            target = LOCK_NAME
            with lock.held_for(timeout=lock_timeout):
                _refuse_existing(root)  # another creator may have finished while we waited
                target = SEGMENTS_DIR
                (root / SEGMENTS_DIR).mkdir(exist_ok=True)
                _remove_leftovers(root, manifest)
                if checkpoint_dir is not None:
                    target = CHECKPOINT_DIR
                    copy_dir_atomically(Path(checkpoint_dir), root / CHECKPOINT_DIR)
                vectors = faiss.IndexFlatL2(vector_dim)
                target = FAISS_NAME
                manifest = replace(manifest, faiss=write_vector_index(root, vectors))
                target = MANIFEST_NAME
                if mirror is not None:
                    try:
                        mirror.push(manifest, create=True)
                    except CommitConflictError:
                        raise IndexExistsError(f"{mirror.uri} was created by another writer meanwhile") from None
                write_manifest(root, manifest)
        except OSError as exc:
            raise _write_error(root, exc, target) from exc
        logger.info("created index %s (layout %s, id_kind %s)", root, layout.to_dict(), id_kind)
        state = IndexState.from_segments(layout=layout, id_kind=id_kind, parts=[])
        snapshot = IndexSnapshot(manifest=manifest, state=state, vectors=VectorSet.from_index(vectors))
        return cls(root, snapshot, lock_timeout=lock_timeout, mirror=mirror)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        expected_fingerprint: str | None = None,
        lock_timeout: float = 0.0,
        read_only: bool = False,
    ) -> SemanticIdIndex:
        """Load the index at ``path``. ``read_only``: never write into it (a faiss index rebuilt on load stays
        in memory; for readers such as `semid export` that may run beside a writer).

        Raises ``IndexNotFoundError`` (no manifest), ``CorruptIndexError`` (bad manifest,
        missing or malformed segment, duplicate ids), ``FingerprintMismatchError``.
        ``lock_timeout`` is how long later writes wait for the writer lock. ``read_only``: the
        handle never takes the lock nor writes (a rebuilt ``faiss.index`` stays in memory), and
        its writes raise ``ReadOnlyReplicaError``.
        """
        location = parse_store_uri(path)
        mirror = StoreMirror(location) if location is not None else None
        root = mirror.local if mirror is not None else local_path(path)
        if mirror is not None:
            _pull_for_open(mirror, lock_timeout)
        seen = _manifest_key(root)  # before reading: a replacement in between is caught by the next check
        manifest = _read_manifest_or_raise(root)
        if expected_fingerprint is not None and manifest.checkpoint_fingerprint != expected_fingerprint:
            raise FingerprintMismatchError(
                f"index {root} was built from the checkpoint with fingerprint {manifest.checkpoint_fingerprint}, "
                f"not {expected_fingerprint}; use that checkpoint or build a new index",
                expected=expected_fingerprint,
                actual=manifest.checkpoint_fingerprint,
            )
        snapshot, rebuilt = _load_snapshot(root, manifest, None)
        index = cls(root, snapshot, lock_timeout=lock_timeout, read_only=read_only, seen=seen, mirror=mirror)
        if rebuilt and not read_only and mirror is None:
            index._persist_rebuilt_vectors()
        logger.info("opened index %s: %d items in %d segments", root, len(index), len(manifest.segments))
        return index

    @staticmethod
    def exists(path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` (a directory or an object-store URI) holds an index (has a manifest)."""
        location = parse_store_uri(path)
        if location is not None:
            return StoreMirror(location).exists()
        return (local_path(path) / MANIFEST_NAME).is_file()

    # --- properties ----------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def location(self) -> str:
        """What was opened: the local directory, or the object-store URI (then ``path`` is its cache)."""
        return self._mirror.uri if self._mirror is not None else str(self._path)

    def store_status(self) -> StoreStatus | None:
        """For an index on object storage: the store's version when last reached and how long ago. The version
        is at least this snapshot's: the snapshot came from the store, and another process sharing the cache
        may have pulled it since this one last read the store's manifest."""
        if self._mirror is None:
            return None
        status = self._mirror.status()
        if status.store_version is not None and status.store_version < self.version:
            status = replace(status, store_version=self.version)
        return status

    def follow_store(self, interval: float) -> None:
        """For an index on object storage: poll its manifest every ``interval`` seconds in the background
        (a server does; refreshes then follow as for a local index). No-op for a local index."""
        if self._mirror is not None:
            self._mirror.follow(interval)

    @property
    def layout(self) -> IdLayout:
        return self._snapshot.manifest.layout

    @property
    def fingerprint(self) -> str:
        return self._snapshot.manifest.checkpoint_fingerprint

    @property
    def id_kind(self) -> str:
        return self._snapshot.manifest.id_kind

    @property
    def keep_columns(self) -> tuple[str, ...]:
        return self._snapshot.manifest.keep_columns

    @property
    def vector_dim(self) -> int:
        return self._snapshot.manifest.vector_dim

    @property
    def item_count(self) -> int:
        return self._snapshot.state.size

    @property
    def read_only(self) -> bool:
        return self._read_only

    @property
    def version(self) -> int:
        """The snapshot's manifest version (its highest segment number; grows with every commit)."""
        return self._snapshot.manifest.version

    @property
    def snapshot(self) -> IndexSnapshot:
        """The current immutable state and its look-ups; take it once per request."""
        return self._snapshot

    @property
    def state(self) -> IndexState:
        """The current immutable in-memory arrays, for bulk reads (export, evaluation)."""
        return self._snapshot.state

    def __len__(self) -> int:
        return self.item_count

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(s.name for s in self._snapshot.manifest.segments)

    @property
    def checkpoint_dir(self) -> Path | None:
        path = self._path / CHECKPOINT_DIR
        return path if path.is_dir() else None

    # --- writing -------------------------------------------------------------------

    def stage_vectors(self) -> StagedVectors:
        """A vector file to fill batch by batch, then hand to ``append(vectors=...)`` (under the writer
        lock, which the caller holds: the next writer removes unlisted files). For large batches:
        their vectors never need to be in memory at once, and opening the index maps them."""
        if self._writer_thread != threading.get_ident():
            raise RuntimeError("stage_vectors() needs the writer lock: call it inside `with index.writer()`")
        return StagedVectors(self._path / SEGMENTS_DIR, dim=self.vector_dim)

    @contextlib.contextmanager
    def writer(self, *, timeout: float | None = None) -> Iterator[SemanticIdIndex]:
        """Hold the writer lock across several steps (occupancy -> resolve -> append).

        On entry the handle catches up with segments appended by other processes.
        Raises ``IndexLockedError`` if the lock is not free within ``timeout`` seconds
        (default: the handle's ``lock_timeout``). Re-entrant within one thread; other
        threads using the same handle wait or fail like other processes do.
        """
        if self._read_only:
            raise ReadOnlyReplicaError(f"index {self._path} is open read-only; send writes to the writer")
        wait = self._lock_timeout if timeout is None else max(0.0, timeout)
        got = self._thread_lock.acquire(timeout=wait) if wait > 0 else self._thread_lock.acquire(False)
        if not got:
            raise IndexLockedError(
                f"index {self._path} is being written by another thread of this process (pid {os.getpid()})",
                holder_pid=os.getpid(),
            )
        try:
            if self._lock.held:  # re-entered by the thread that holds it
                yield self
                return
            try:
                self._lock.acquire(timeout=wait)
            except OSError as exc:  # e.g. a read-only file system: index.lock cannot be opened for writing
                raise _write_error(self._path, exc, LOCK_NAME) from exc
            self._writer_thread = threading.get_ident()
            try:
                if self._mirror is not None:
                    self._mirror.pull()  # the store's latest commit, which the conditional commit will name
                self.refresh()
                yield self
            finally:
                self._writer_thread = None
                self._lock.release()
        finally:
            self._thread_lock.release()

    def manifest_changed(self) -> bool:
        """Whether the manifest may have been replaced since this handle caught up with it: one ``stat``
        (and ``True`` at least every ``REVALIDATE_SECONDS``). Cheap enough to call before every request."""
        if time.monotonic() - self._checked_at >= REVALIDATE_SECONDS:
            return True
        return _manifest_key(self._path) != self._seen

    def refresh_if_changed(self) -> bool:
        """``refresh`` if the manifest was replaced since the last check; one thread at a time (the others
        wait, then find it done). Returns whether it looked. On error the old snapshot stays, and the
        same manifest is not retried before it changes or ``REVALIDATE_SECONDS`` pass."""
        with self._refresh_lock:
            if not self.manifest_changed():
                return False
            key = _manifest_key(self._path)
            try:
                self.refresh()
            finally:
                self._seen, self._checked_at = key, time.monotonic()
        return True

    def _install(self, snapshot: IndexSnapshot) -> bool:
        """Swap in ``snapshot`` unless this handle already holds a newer version (a reader's refresh
        racing a write of this process)."""
        with self._install_lock:
            if snapshot.manifest.version < self._snapshot.manifest.version:
                return False
            self._snapshot = snapshot
            return True

    def refresh(self) -> None:
        """Load segments that other processes appended since this handle was loaded."""
        current = self._snapshot
        manifest = _read_manifest_or_raise(self._path)
        if manifest.segments == current.manifest.segments:
            if manifest != current.manifest:  # e.g. another handle recorded a rebuilt faiss.index
                self._install(replace(current, manifest=manifest))
            return
        if manifest.checkpoint_fingerprint != current.manifest.checkpoint_fingerprint:
            raise FingerprintMismatchError(
                f"index {self._path} was replaced by one built from checkpoint {manifest.checkpoint_fingerprint}",
                expected=current.manifest.checkpoint_fingerprint,
                actual=manifest.checkpoint_fingerprint,
            )
        known = current.manifest.segments
        extends = manifest.segments[: len(known)] == known
        loaded, rebuilt = _load_snapshot(self._path, manifest, current if extends else None)
        if not self._install(loaded):
            return
        # Only the thread inside ``writer()`` may record the rebuilt file: a reader's refresh that ran while
        # another thread of this process writes would replace the manifest that write just committed.
        if rebuilt and self._writer_thread == threading.get_ident():
            self._store_rebuilt_vectors()
        logger.info("index %s refreshed: %d items", self._path, self.item_count)

    def append(
        self,
        *,
        item_ids: np.ndarray,
        base_codes: np.ndarray,
        semantic_ids: np.ndarray,
        fallback: np.ndarray,
        embedding_hash: np.ndarray,
        vectors: np.ndarray | StagedVectors,
        columns: Mapping[str, pa.Array] | None = None,
        recodes: np.ndarray | None = None,
        persist_vectors: bool = True,
        defer_load: bool = False,
    ) -> str:
        """Write one batch as a new segment, atomically; returns the segment's name.

        ``recodes`` (bool per row) marks rows that re-code an indexed item: the new row
        supersedes the old one, whose semantic id stays reserved unless the new row keeps it.

        ``persist_vectors=False`` skips rewriting ``faiss.index`` (small online writes):
        the vectors are in the segment, and the next open rebuilds the stale FAISS file.

        ``vectors`` as ``StagedVectors`` (from ``stage_vectors``, finished): the segment keeps its
        vectors in that file (renamed to ``seg-NNNNNN.vectors``), not in the Parquet file, and from
        then on the index does not use ``faiss.index`` (see ``segment_vectors.py``).

        ``defer_load``: the handle keeps its current snapshot and the next ``refresh`` (or writer)
        loads the new segment from disk, so a one-shot batch writer can free its own arrays before
        the in-memory state of a large batch is built.

        Refuses, writing nothing: ``DuplicateItemError`` (item ids repeated or already
        indexed), ``UnknownItemError`` (an item to re-code is not indexed),
        ``DuplicateSemanticIdError`` (semantic ids repeated, taken or reserved),
        ``InvalidInputError`` and subclasses (shapes, ranges, columns),
        ``IndexLockedError`` (another writer).
        """
        with self.writer():
            snap = self._snapshot
            staged = vectors if isinstance(vectors, StagedVectors) else None
            if staged is not None and (staged.rows != len(item_ids) or staged.dim != snap.manifest.vector_dim):
                raise InvalidInputError(
                    f"staged vectors hold {staged.rows} rows of dimension {staged.dim}; expected "
                    f"{len(item_ids)} of {snap.manifest.vector_dim}",
                    field="vectors",
                )
            part, vecs = validate_batch(
                manifest=snap.manifest,
                state=snap.state,
                item_ids=item_ids,
                base_codes=base_codes,
                semantic_ids=semantic_ids,
                fallback=fallback,
                embedding_hash=embedding_hash,
                vectors=None if staged is not None else vectors,
                columns=columns or {},
                recodes=recodes,
            )
            manifest = snap.manifest
            table = build_table(
                layout=manifest.layout,
                id_kind=manifest.id_kind,
                item_ids=part.item_ids,
                semantic_ids=part.semantic_ids,
                base_codes=part.base_codes,
                fallback=part.fallback,
                embedding_hashes=part.embedding_hashes,
                recodes=part.recodes,
                vectors=vecs,
                columns={name: part.kept.column(name) for name in manifest.keep_columns},
                keep_columns=manifest.keep_columns,
            )
            _remove_leftovers(self._path, manifest, keep=staged.path if staged is not None else None)
            name = manifest.next_segment_name()
            if staged is None:
                table, kept_segments = fold_into_tail(self._path / SEGMENTS_DIR, manifest.segments, table)
            else:
                kept_segments = manifest.segments  # a segment with a vector file is never folded
            target = f"{SEGMENTS_DIR}/{name}"
            try:
                sha256 = write_segment(table, self._path / SEGMENTS_DIR / name, page_checksums=staged is not None)
                faiss_info = manifest.faiss  # unchanged file when not persisted: stale, rebuilt on open
                vectors_sha256 = None
                if staged is not None:
                    vectors_file = self._path / SEGMENTS_DIR / vectors_name(name)
                    target = f"{SEGMENTS_DIR}/{vectors_file.name}"
                    staged.commit(vectors_file)
                    vectors_sha256, faiss_info = staged.sha256, None
                    mapped = map_vectors(vectors_file, rows=staged.rows, dim=staged.dim)
                    new_vectors = snap.vectors.with_mapped(mapped)  # O(1): the file is mapped, not read
                else:
                    assert vecs is not None  # validated above
                    new_vectors = snap.vectors.extended(vecs)  # O(batch): no copy of the index's vectors
                    if manifest.has_vector_files:
                        faiss_info = None  # faiss.index is not used any more
                    elif persist_vectors:
                        target = FAISS_NAME
                        faiss_info = write_vector_index(self._path, new_vectors.as_index())
                new_manifest = replace(manifest, segments=kept_segments, faiss=faiss_info).with_segment(
                    SegmentInfo(name=name, rows=table.num_rows, sha256=sha256, vectors_sha256=vectors_sha256)
                )
                target = MANIFEST_NAME
                if self._mirror is not None:
                    self._mirror.push(new_manifest)  # the commit point; CommitConflictError if another won
                write_manifest(self._path, new_manifest)
            except OSError as exc:
                # The manifest is the commit point: if it was replaced (only its directory's fsync
                # failed) the write is visible, and this handle moves on with it.
                committed = target == MANIFEST_NAME and _listed(self._path, name)
                if committed:
                    self._install(
                        IndexSnapshot(manifest=new_manifest, state=snap.state.extended(part), vectors=new_vectors)
                    )
                raise _write_error(self._path, exc, target, committed=committed) from exc
            if not defer_load:
                self._install(
                    IndexSnapshot(manifest=new_manifest, state=snap.state.extended(part), vectors=new_vectors)
                )
            if staged is not None:
                (self._path / FAISS_NAME).unlink(missing_ok=True)  # not used once a segment has a vector file
        logger.info("index %s: appended %s with %d items", self._path, name, part.rows)
        return name

    def check(self) -> CheckReport:
        """Consistency check of the files on disk (not of this handle's memory)."""
        return check_index(self._path)

    # --- internals -----------------------------------------------------------------

    def _persist_rebuilt_vectors(self) -> None:
        """Write a rebuilt faiss index unless another writer holds the lock or the file system
        refuses (read-only, full): then it stays in memory only."""
        try:
            with self._lock.held_for(timeout=0.0):
                self._store_rebuilt_vectors()
        except IndexLockedError:
            logger.warning("index %s: rebuilt %s in memory only; a writer holds the lock", self._path, FAISS_NAME)
        except OSError as exc:
            logger.warning("index %s: rebuilt %s in memory only; cannot lock: %s", self._path, FAISS_NAME, exc)

    def _store_rebuilt_vectors(self) -> None:
        """Under the lock: write the snapshot's rebuilt faiss index and record its checksum in the
        manifest, if the manifest still lists the snapshot's segments. Best effort (derived data)."""
        snap = self._snapshot
        if self._mirror is not None:  # derived data: not worth a commit to the store
            return
        try:
            current = _read_manifest_or_raise(self._path)
            if current.segments != snap.manifest.segments:
                return
            manifest = replace(current, faiss=write_vector_index(self._path, snap.vectors.as_index()))
            write_manifest(self._path, manifest)
        except OSError as exc:
            logger.warning("index %s: rebuilt %s kept in memory only: %s", self._path, FAISS_NAME, exc)
            return
        self._install(replace(snap, manifest=manifest))
        logger.warning("index %s: wrote rebuilt %s", self._path, FAISS_NAME)


# --- module helpers ------------------------------------------------------------------


def _manifest_key(root: Path) -> tuple[int, ...] | None:
    """What changes when the manifest is replaced (it is renamed into place: a new inode)."""
    try:
        st = os.stat(root / MANIFEST_NAME)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _pull_for_open(mirror: StoreMirror, lock_timeout: float) -> None:
    """Bring the cache up to the store before opening it. If the store is unreachable but the cache
    holds a version, that version is opened (a replica restarted during an outage keeps serving)."""
    lock = WriterLock(mirror.local / LOCK_NAME, description=f"cache {mirror.local}")
    mirror.local.mkdir(parents=True, exist_ok=True)
    try:
        with lock.held_for(timeout=max(lock_timeout, 10.0)):
            mirror.pull()
    except (StoreUnavailableError, IndexLockedError) as exc:
        if not (mirror.local / MANIFEST_NAME).is_file():
            raise
        logger.warning("index %s: opening the cached version in %s: %s", mirror.uri, mirror.local, exc)


def _read_manifest_or_raise(root: Path) -> Manifest:
    try:
        return read_manifest(root)
    except (FileNotFoundError, NotADirectoryError):
        raise IndexNotFoundError(f"no index at {root} ({MANIFEST_NAME} missing)") from None


def _write_error(root: Path, exc: OSError, target: str, *, committed: bool = False) -> OSError:
    """A file-system failure while writing ``target`` (a name inside ``root``) as a domain error; semid's
    own errors (e.g. the object store unreachable, or created meanwhile) pass through."""
    if isinstance(exc, SemidError):
        return exc
    reason = exc.strerror or str(exc) or type(exc).__name__
    reason = reason[:1].lower() + reason[1:]
    outcome = "the manifest was replaced, so the write is in the index" if committed else "the index is unchanged"
    logger.info("index %s: %s writing %s (%s)", root, reason, target, outcome)
    return IndexWriteError(
        f"{reason} writing {root / target} ({outcome})", errno=exc.errno, path=str(root / target), committed=committed
    )


def _listed(root: Path, segment: str) -> bool:
    try:
        return any(s.name == segment for s in read_manifest(root).segments)
    except (OSError, CorruptIndexError):
        return False


def _refuse_existing(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise IndexExistsError(f"{root} exists and is not a directory")
    if (root / MANIFEST_NAME).exists():
        raise IndexExistsError(f"{root} already holds an index")
    if root.is_dir():
        own = {LOCK_NAME, SEGMENTS_DIR, CHECKPOINT_DIR, FAISS_NAME}
        foreign = sorted(p.name for p in root.iterdir() if p.name not in own and not p.name.startswith(TMP_PREFIX))
        if foreign:
            raise IndexExistsError(f"{root} is not empty (holds {', '.join(foreign[:5])}); refusing to create an index")


def _remove_leftovers(root: Path, manifest: Manifest, *, keep: Path | None = None) -> None:
    """Delete :func:`find_leftovers` (under the lock; ``keep`` is the caller's own staged file)."""
    for entry in find_leftovers(root, manifest):
        if keep is not None and entry.name == keep.name:
            continue
        logger.info("removing leftover %s", entry)
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def find_leftovers(root: Path, manifest: Manifest) -> list[Path]:
    """Temp files, segments and vector files the manifest does not list (crashed writes, segments folded
    away), and ``faiss.index`` once segments have vector files (it is not used then)."""
    listed = {s.name for s in manifest.segments}
    listed_vectors = {vectors_name(s.name) for s in manifest.segments if s.has_vector_file}
    found: list[Path] = []
    for directory in (root, root / SEGMENTS_DIR):
        if not directory.is_dir():
            continue
        for entry in sorted(directory.iterdir()):
            in_segments = directory.name == SEGMENTS_DIR
            orphan = in_segments and entry.name.endswith(".parquet") and entry.name not in listed
            orphan |= in_segments and entry.name.endswith(VECTORS_SUFFIX) and entry.name not in listed_vectors
            orphan |= directory == root and entry.name == FAISS_NAME and manifest.has_vector_files
            if entry.name.startswith(TMP_PREFIX) or orphan:
                found.append(entry)
    return found


def _load_snapshot(root: Path, manifest: Manifest, base: IndexSnapshot | None) -> tuple[IndexSnapshot, bool]:
    """Read the manifest's segments (only those after ``base``'s, if given).

    Also returns whether the faiss index had to be rebuilt from the segments.
    """
    layout, id_kind, keep = manifest.layout, manifest.id_kind, manifest.keep_columns
    known = len(base.manifest.segments) if base is not None else 0
    unverified = [info.name for info in manifest.segments[known:] if info.sha256 is None]
    if unverified:  # manifests written before checksums existed: kept openable, but said so
        logger.warning(
            "index %s: %d segments have no recorded checksum (written by an older semid), so a corrupt or "
            "tampered file cannot be told from a good one, e.g. %s; their decoded size is still bounded. "
            "`semid check` lists them",
            root,
            len(unverified),
            unverified[:3],
        )
    parts = []
    for info in manifest.segments[known:]:
        # a segment with a vector file was written with Parquet page checksums: they are verified as the
        # pages are read, and its SHA-256 (hashing the whole file, too slow at 10M rows) by `semid check`
        part = read_segment(
            root / SEGMENTS_DIR / info.name,
            layout=layout,
            id_kind=id_kind,
            keep_columns=keep,
            sha256=None if info.has_vector_file else info.sha256,
            page_checksums=info.has_vector_file,
        )
        if part.rows != info.rows:
            raise CorruptIndexError(f"segment {info.name} has {part.rows} rows; the manifest says {info.rows}")
        parts.append(part)
    if base is None:
        state = IndexState.from_segments(layout=layout, id_kind=id_kind, parts=parts)
        duplicates = state.duplicate_item_ids()
        if duplicates:
            raise CorruptIndexError(f"index {root}: item ids held by several rows without a re-code: {duplicates[:10]}")
        dup_sids = state.duplicate_packed()
        if dup_sids.shape[0]:
            raise CorruptIndexError(
                f"index {root}: semantic ids held by several items: {layout.unpack(dup_sids[:10]).tolist()}"
            )
    else:  # only the new segments are checked against the state they extend: O(new rows)
        state = base.state
        for info, part in zip(manifest.segments[known:], parts, strict=True):
            problem = state.conflicts(part)
            if problem is not None:
                raise CorruptIndexError(f"index {root}: segment {info.name}: {problem}")
            state = state.extended(part)
    rebuilt = False
    if base is not None or manifest.has_vector_files:
        vectors = base.vectors if base is not None else VectorSet.empty(manifest.vector_dim)
        for info in manifest.segments[known:]:
            if info.has_vector_file:  # mapped, not read: opening reads no vector of a large segment
                path = root / SEGMENTS_DIR / vectors_name(info.name)
                vectors = vectors.with_mapped(map_vectors(path, rows=info.rows, dim=manifest.vector_dim))
            else:
                vectors = vectors.extended(read_segment_vectors(root, info, vector_dim=manifest.vector_dim))
    else:
        index, rebuilt = load_vector_index(root, manifest)
        vectors = VectorSet.from_index(index)
    return IndexSnapshot(manifest=manifest, state=state, vectors=vectors), rebuilt
