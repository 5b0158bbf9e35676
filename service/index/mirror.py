"""``StoreMirror``: an index on object storage, mirrored into a local cache directory.

The store holds immutable, content-addressed objects and one mutable object, the commit point::

    s3://bucket/prefix/manifest.json               the manifest (same JSON as on disk)
    s3://bucket/prefix/segments/<sha256>.parquet   a segment, named by its recorded SHA-256
    s3://bucket/prefix/segments/<sha256>.vectors   a segment vector file
    s3://bucket/prefix/faiss/<sha256>.index        a faiss.index written with a manifest
    s3://bucket/prefix/checkpoint/...              the tokenizer checkpoint, written once at create

The cache directory is an ordinary index directory (``manifest.json``, ``segments/seg-NNNNNN.parquet``
...): ``SemanticIdIndex`` opens and serves it as it serves a local index, so a replica keeps serving
from it when the store is unreachable. ``pull`` brings it up to the store's manifest (a conditional
GET: 304 when unchanged; only files the cache lacks are downloaded, each checked against its SHA-256,
then the manifest is replaced last). ``push`` uploads the files a new manifest lists that the store
lacks, then writes the manifest with ``If-Match: <ETag read by the last pull>`` (``If-None-Match: *``
when creating): a writer that did not see the latest commit gets ``CommitConflictError`` and nothing
it wrote is listed. Objects are named by content, so two racing writers never overwrite each other's
files; a loser's objects are unlisted garbage (no compaction of the store yet).

Every change to the cache directory (pull, a write) happens under its ``index.lock``, so processes
sharing one cache (the workers of a server) never remove each other's files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from semid.service.errors import (
    CorruptIndexError,
    IndexExistsError,
    IndexLockedError,
    SemidError,
    StoreUnavailableError,
)
from semid.service.index.manifest import (
    CHECKPOINT_DIR,
    FAISS_NAME,
    LOCK_NAME,
    MANIFEST_NAME,
    SEGMENTS_DIR,
    Manifest,
    read_manifest,
    write_manifest,
)
from semid.service.index.object_store import ObjectStore, StoreLocation, iter_files
from semid.service.index.segment_vectors import vectors_name
from semid.service.index.store import TMP_PREFIX, WriterLock, fault_point

logger = logging.getLogger(__name__)

CACHE_ENV = "SEMID_CACHE_DIR"
UPLOAD_FAULT_STEP = "after-upload"  # SEMID_FAULT: killed with the files uploaded, before the manifest commit


def default_cache_root() -> Path:
    """``SEMID_CACHE_DIR``, else ``$XDG_CACHE_HOME/semid`` (``~/.cache/semid``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "semid"


def store_files(manifest: Manifest) -> dict[str, str]:
    """The files a manifest lists: path in the index directory -> object name in the store."""
    files: dict[str, str] = {}
    for info in manifest.segments:
        if info.sha256 is None:
            raise CorruptIndexError(
                f"segment {info.name} has no recorded checksum (written by an older semid); "
                "an index on object storage names its objects by checksum: rebuild it with `semid assign`"
            )
        files[f"{SEGMENTS_DIR}/{info.name}"] = f"{SEGMENTS_DIR}/{info.sha256}.parquet"
        if info.vectors_sha256 is not None:
            files[f"{SEGMENTS_DIR}/{vectors_name(info.name)}"] = f"{SEGMENTS_DIR}/{info.vectors_sha256}.vectors"
    if manifest.faiss is not None and not manifest.has_vector_files:
        files[FAISS_NAME] = f"faiss/{manifest.faiss.sha256}.index"
    return files


def _sha256(name: str) -> str | None:
    """The checksum an object is named by (``segments/<sha256>.parquet`` -> ``<sha256>``)."""
    return name.rsplit("/", 1)[-1].split(".", 1)[0] or None


@dataclass(frozen=True)
class StoreStatus:
    """What ``/readyz`` reports about the store."""

    uri: str
    store_version: int | None  # the store's manifest version when last reached
    seconds_since_contact: float | None  # None: never reached by this process
    error: str | None  # the last failure to reach it, if the last attempt failed


class StoreMirror:
    """One index on object storage and its local cache directory."""

    def __init__(self, location: StoreLocation, cache_root: Path | None = None) -> None:
        self.store = ObjectStore(location)
        key = hashlib.sha256(f"{self.store.endpoint}|{location.uri}".encode()).hexdigest()[:12]
        self.local = (cache_root or default_cache_root()) / "index" / f"{location.bucket}-{key}"
        self._etag: str | None = None  # the store manifest's ETag that the cache holds
        self._committed: Manifest | None = None  # that manifest
        self._store_version: int | None = None
        self._contact: float | None = None
        self._error: str | None = None
        self._poller: threading.Thread | None = None

    @property
    def uri(self) -> str:
        return self.store.location.uri

    def status(self) -> StoreStatus:
        since = None if self._contact is None else time.monotonic() - self._contact
        return StoreStatus(self.uri, self._store_version, since, self._error)

    # --- reading -------------------------------------------------------------------

    def exists(self) -> bool:
        return self._call(lambda: self.store.exists(MANIFEST_NAME))

    def pull(self) -> bool:
        """Under the cache's lock: bring the cache up to the store's manifest. Returns whether it changed.
        Raises ``IndexNotFoundError`` (no manifest in the store), ``StoreUnavailableError``."""
        got = self._call(lambda: self.store.get(MANIFEST_NAME, if_none_match=self._etag))
        if got is None:
            return False
        data, etag = got
        manifest = self._parse_manifest(data)
        self.local.mkdir(parents=True, exist_ok=True)
        (self.local / SEGMENTS_DIR).mkdir(exist_ok=True)
        have = self._cached_files()
        for path, name in store_files(manifest).items():
            if have.get(path) != name or not (self.local / path).is_file():
                self._call(lambda n=name, p=path: self.store.download(n, self.local / p, sha256=_sha256(n)))
        if self._committed is None and not (self.local / CHECKPOINT_DIR).is_dir():
            self._fetch_checkpoint()  # written once, at create: looked for on this process's first pull only
        write_manifest(self.local, manifest)
        self._etag, self._committed, self._store_version = etag, manifest, manifest.version
        self._remove_unlisted(manifest)
        logger.info("index %s: cache %s now at version %d", self.uri, self.local, manifest.version)
        return True

    def poll_once(self) -> None:
        """A reader's poll: ``pull`` if no other process is changing the cache right now (then that one
        brings it up to date). Failures are recorded for ``status``, not raised."""
        lock = WriterLock(self.local / LOCK_NAME, description=f"cache {self.local}")
        try:
            try:
                with lock.held_for(timeout=0.0):
                    self.pull()
            except IndexLockedError:
                self._peek()  # another worker is bringing the cache up to date: only note what the store holds
        except (SemidError, OSError) as exc:
            logger.warning("index %s: poll failed, serving the cached version: %s", self.uri, exc)

    def _peek(self) -> None:
        """Read the store's manifest version (and so record contact) without touching the cache."""
        got = self._call(lambda: self.store.get(MANIFEST_NAME, if_none_match=self._etag))
        if got is not None:
            self._store_version = self._parse_manifest(got[0]).version

    def follow(self, interval: float) -> None:
        """Poll the store every ``interval`` seconds in a daemon thread (idempotent)."""
        if self._poller is not None:
            return

        def loop() -> None:
            while True:
                time.sleep(interval)
                self.poll_once()

        self._poller = threading.Thread(target=loop, name=f"semid-poll {self.uri}", daemon=True)
        self._poller.start()

    # --- writing -------------------------------------------------------------------

    def prepare_create(self) -> None:
        """Before creating: refuse if the store holds an index; empty the cache (it mirrors nothing)."""
        if self.exists():
            raise IndexExistsError(f"{self.uri} already holds an index")
        if self.local.exists():
            shutil.rmtree(self.local)
        self._etag = self._committed = None

    def push(self, manifest: Manifest, *, create: bool = False) -> None:
        """Under the cache's lock: upload what ``manifest`` lists that the store lacks, then commit it.
        Raises ``CommitConflictError`` (another writer committed first), ``StoreUnavailableError``."""
        if not create and self._etag is None:
            raise RuntimeError("push() before pull(): the writer has not read the store's manifest")
        stored = store_files(self._committed) if self._committed is not None else {}
        for path, name in store_files(manifest).items():
            if stored.get(path) != name:
                self._call(lambda n=name, p=path: self.store.upload_file(n, self.local / p))
        if create and (self.local / CHECKPOINT_DIR).is_dir():
            for file in iter_files(self.local / CHECKPOINT_DIR):
                name = file.relative_to(self.local).as_posix()
                self._call(lambda n=name, f=file: self.store.upload_file(n, f))
        fault_point(UPLOAD_FAULT_STEP)
        body = json.dumps(manifest.to_dict(), indent=2).encode()
        etag = self._call(
            lambda: self.store.put(MANIFEST_NAME, body, if_match=None if create else self._etag, create_only=create)
        )
        self._etag, self._committed, self._store_version = etag, manifest, manifest.version
        logger.info("index %s: committed version %d", self.uri, manifest.version)

    # --- internals -----------------------------------------------------------------

    def _call(self, call):  # type: ignore[no-untyped-def]
        """Run one store call, recording whether the store answered (for ``status``)."""
        try:
            result = call()
        except StoreUnavailableError as exc:
            self._error = str(exc)
            raise
        self._contact, self._error = time.monotonic(), None
        return result

    def _parse_manifest(self, data: bytes) -> Manifest:
        try:
            return Manifest.from_dict(json.loads(data), source=f"{self.uri}/{MANIFEST_NAME}")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CorruptIndexError(f"{self.uri}/{MANIFEST_NAME}: not valid JSON: {exc}") from None

    def _cached_files(self) -> dict[str, str]:
        """What the cache's own manifest says its files are (empty if it has none or it is unreadable)."""
        try:
            return store_files(read_manifest(self.local))
        except (OSError, SemidError):
            return {}

    def _remove_unlisted(self, manifest: Manifest) -> None:
        """Cached segment files the manifest no longer lists (folded into a later segment, or written by a
        writer whose commit lost): a reader's handle has already read them, or maps a file that stays
        readable until it is unmapped."""
        listed = {Path(path).name for path in store_files(manifest)}
        for entry in (self.local / SEGMENTS_DIR).iterdir():
            if entry.name not in listed and not entry.name.startswith(TMP_PREFIX):
                entry.unlink(missing_ok=True)

    def _fetch_checkpoint(self) -> None:
        names = self._call(lambda: self.store.list(f"{CHECKPOINT_DIR}/"))
        if not names:
            return
        staging = self.local / f"{TMP_PREFIX}{CHECKPOINT_DIR}"
        shutil.rmtree(staging, ignore_errors=True)
        for name in names:
            relative = Path(name).relative_to(CHECKPOINT_DIR)
            if ".." in relative.parts:
                continue
            self._call(lambda n=name, r=relative: self.store.download(n, staging / r, sha256=None))
        os.replace(staging, self.local / CHECKPOINT_DIR)
