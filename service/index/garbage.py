"""``collect_garbage``: delete the files and objects of an index that no manifest lists.

Writes never change a listed file; they add new ones and then commit a manifest. What is left unlisted is
garbage, never read: a crashed writer's files, a losing writer's uploads (two writers racing on object
storage), and segments folded into a later one. On a local disk every write already removes them under the
index's lock; on object storage nothing did, so they piled up (``docs/scale-out.md``).

On object storage a writer uploads its objects first and commits the manifest last, so an object not listed
*yet* may belong to a write in flight. Such an object is at most as old as that write; only unlisted objects
older than ``grace_seconds`` (default one hour) are deleted. A writer never relies on an older unlisted
object: it uploads everything its own last-read manifest does not list, and its commit is refused if the
store's manifest changed since it read it. The manifest is read again after listing; objects a commit made
in between lists are kept. A replica that is part-way through pulling an older manifest may find one of
its objects gone; it keeps serving its cache and pulls the newer manifest at its next poll.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from semid.service.errors import CorruptIndexError, IndexNotFoundError
from semid.service.index.manifest import LOCK_NAME, MANIFEST_NAME, SEGMENTS_DIR, Manifest, read_manifest
from semid.service.index.mirror import store_files
from semid.service.index.object_store import ObjectStore, StoreLocation, local_path, parse_store_uri
from semid.service.index.store import WriterLock

__all__ = ["DEFAULT_GRACE_SECONDS", "GarbageReport", "collect_garbage"]

logger = logging.getLogger(__name__)

DEFAULT_GRACE_SECONDS = 3600.0
COLLECTED_PREFIXES = (f"{SEGMENTS_DIR}/", "faiss/")  # what writes add; the manifest and checkpoint are kept


@dataclass
class GarbageReport:
    """What ``collect_garbage`` found: ``removed`` were deleted (would be, with ``dry_run``), ``young`` are
    unlisted but within the grace period and kept, ``listed`` files or objects the manifest names."""

    index: str
    version: int
    listed: int
    removed: list[str] = field(default_factory=list)
    removed_bytes: int = 0
    young: list[str] = field(default_factory=list)
    dry_run: bool = False


def collect_garbage(
    index: str | Path, *, grace_seconds: float = DEFAULT_GRACE_SECONDS, dry_run: bool = False
) -> GarbageReport:
    """Delete what the index's manifest does not list (``dry_run``: only report it).

    A local index is cleaned under its writer lock (``IndexLockedError`` if a writer holds it; the grace
    period does not apply, as no write can be in flight). An index on object storage (``s3://...``) is
    cleaned without a lock, keeping unlisted objects younger than ``grace_seconds``."""
    if grace_seconds < 0:
        raise ValueError(f"grace_seconds must be >= 0, got {grace_seconds}")
    location = parse_store_uri(index)
    if location is not None:
        return _collect_store(location, grace_seconds=grace_seconds, dry_run=dry_run)
    return _collect_local(local_path(index), dry_run=dry_run)


def _collect_local(root: Path, *, dry_run: bool) -> GarbageReport:
    from semid.service.index.handle import find_leftovers

    if not (root / MANIFEST_NAME).is_file():
        raise IndexNotFoundError(f"no index at {root} ({MANIFEST_NAME} missing)")
    lock = WriterLock(root / LOCK_NAME, description=f"index {root}")
    with lock.held_for(timeout=0.0):
        manifest = read_manifest(root)
        report = GarbageReport(str(root), manifest.version, _listed_count(manifest), dry_run=dry_run)
        for path in find_leftovers(root, manifest):
            report.removed.append(path.relative_to(root).as_posix())
            report.removed_bytes += _size(path)
            if not dry_run:
                _remove(path)
    return report


def _collect_store(location: StoreLocation, *, grace_seconds: float, dry_run: bool) -> GarbageReport:
    store = ObjectStore(location)
    manifest, etag = _read(store)
    listed = _named(manifest)
    now = time.time()
    unlisted = [obj for obj in store.entries("") if obj.name.startswith(COLLECTED_PREFIXES) and obj.name not in listed]
    again, etag_again = _read(store)
    if etag_again != etag:  # a commit landed while listing: keep what it lists too
        listed |= _named(again)
        unlisted = [obj for obj in unlisted if obj.name not in listed]
        manifest = again
    report = GarbageReport(location.uri, manifest.version, len(listed), dry_run=dry_run)
    old = [obj for obj in unlisted if now - obj.modified >= grace_seconds]
    report.young = sorted(obj.name for obj in unlisted if now - obj.modified < grace_seconds)
    report.removed = sorted(obj.name for obj in old)
    report.removed_bytes = sum(obj.size for obj in old)
    if old and not dry_run:
        store.delete(report.removed)
        logger.info("index %s: deleted %d unlisted objects (%d bytes)", location.uri, len(old), report.removed_bytes)
    return report


def _read(store: ObjectStore) -> tuple[Manifest, str]:
    got = store.get(MANIFEST_NAME)
    assert got is not None  # no If-None-Match: never a 304
    data, etag = got
    source = f"{store.location.uri}/{MANIFEST_NAME}"
    try:
        return Manifest.from_dict(json.loads(data), source=source), etag
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptIndexError(f"{source}: not valid JSON: {exc}") from None


def _named(manifest: Manifest) -> set[str]:
    """The objects a manifest names: the files a reader fetches, and the faiss index it records even when
    segments' vector files make it unused (kept: it is small and one per manifest)."""
    named = set(store_files(manifest).values())
    if manifest.faiss is not None:
        named.add(f"faiss/{manifest.faiss.sha256}.index")
    return named


def _listed_count(manifest: Manifest) -> int:
    return sum(1 + int(s.has_vector_file) for s in manifest.segments)


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _remove(path: Path) -> None:
    import shutil

    logger.info("removing unlisted %s", path)
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
