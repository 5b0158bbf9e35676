"""Segment vector files: a large segment's vectors as raw float32 rows beside it, memory-mapped.

A batch write of many rows (``semid assign`` of a large catalog) keeps its vectors out of the
Parquet segment and out of ``faiss.index``: ``segments/seg-NNNNNN.vectors`` holds them as raw
little-endian float32, ``rows x vector_dim``, no header, and the manifest records the file's
SHA-256 on the segment (``SegmentInfo.vectors_sha256``; its presence is what says the segment has
such a file). Why: at 10M items the vectors are GBs, and an index opened for prefix look-ups must
not read them. Opening maps the file (``np.memmap``: O(1), the pages are read by the first k-NN
search that needs them) after checking its size; the checksum is computed while the file is
written and verified by ``semid check``, never on open (hashing GBs per open is what this avoids).

The file is written in a stream (``StagedVectors``: one batch at a time, hashed as it goes) under
a temporary name in the segments directory, fsynced, and renamed to its final name before the
manifest that lists it is written (fault steps ``after-vectors-*``, like ``faiss.index``), so a
crash leaves either an unlisted file (removed by the next writer) or a committed one.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from types import TracebackType

import numpy as np

from semid.service.errors import CorruptIndexError, IndexWriteError, InvalidInputError
from semid.service.index.store import TMP_PREFIX, create_temp_file, fault_point, fsync_path, sha256_file

logger = logging.getLogger(__name__)

VECTORS_SUFFIX = ".vectors"


def vectors_name(segment_name: str) -> str:
    """``seg-000001.parquet`` -> ``seg-000001.vectors``."""
    return segment_name.rsplit(".", 1)[0] + VECTORS_SUFFIX


def map_vectors(path: Path, *, rows: int, dim: int) -> np.ndarray:
    """float32 ``[rows, dim]`` mapped read-only from ``path``; reads no vector, only the file size.

    ``CorruptIndexError`` if the file is missing or its size is not ``rows * dim * 4`` bytes
    (truncated, or a different file): a k-NN search could not use it.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise CorruptIndexError(f"vector file {path.name} is listed in the manifest but missing") from None
    except OSError as exc:
        raise CorruptIndexError(f"vector file {path.name} is unreadable: {exc}") from None
    expected = rows * dim * 4
    if size != expected:
        raise CorruptIndexError(
            f"vector file {path.name} has {size} bytes; {rows} vectors of dimension {dim} take {expected}"
        )
    if rows == 0:
        return np.zeros((0, dim), dtype=np.float32)
    return np.memmap(path, dtype="<f4", mode="r", shape=(rows, dim))


def vectors_file_problem(path: Path, *, rows: int, dim: int, sha256: str) -> str | None:
    """Why the vector file is not the one the manifest recorded (None if it is): reads it whole."""
    try:
        map_vectors(path, rows=rows, dim=dim)
        actual = sha256_file(path)
    except CorruptIndexError as exc:
        return str(exc)
    except OSError as exc:
        return f"vector file {path.name} is unreadable: {exc}"
    if actual != sha256:
        return (
            f"vector file {path.name} does not match its checksum (manifest sha256 {sha256[:16]}..., file "
            f"{actual[:16]}...): the file is corrupt"
        )
    return None


class StagedVectors:
    """A vector file being written batch by batch under a temporary name; ``commit`` renames it.

    Use as a context manager: leaving it without ``commit`` (an error) removes the temporary file.
    File-system errors are raised as ``IndexWriteError`` (the index is unchanged).
    """

    def __init__(self, directory: Path, *, dim: int) -> None:
        self.dim = dim
        self.rows = 0
        self.path = directory / f"staged{VECTORS_SUFFIX}"  # named for errors until the file exists
        self._digest = hashlib.sha256()
        self._sha256: str | None = None
        try:
            self.path, self._file = create_temp_file(self.path)
        except OSError as exc:
            raise _write_error(self.path, exc) from exc

    def __enter__(self) -> StagedVectors:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is not None:
            self.discard()

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            raise RuntimeError("finish() the staged vectors first")
        return self._sha256

    def write(self, vectors: np.ndarray) -> None:
        """Append float32 ``[n, dim]`` finite rows."""
        arr = np.ascontiguousarray(vectors, dtype="<f4")
        if arr.ndim != 2 or arr.shape[1] != self.dim or not np.isfinite(arr).all():
            raise InvalidInputError(
                f"vectors must be finite, shape (n, {self.dim}); got {np.shape(vectors)}", field="vectors"
            )
        try:
            self._file.write(memoryview(arr).cast("B"))
        except OSError as exc:
            raise _write_error(self.path, exc) from exc
        self._digest.update(memoryview(arr).cast("B"))
        self.rows += arr.shape[0]

    def finish(self) -> None:
        """Flush and fsync the temporary file (fault steps ``after-vectors-write``/``-fsync``)."""
        try:
            self._file.flush()
            fault_point("after-vectors-write", self.path)
            os.fsync(self._file.fileno())
            fault_point("after-vectors-fsync", self.path)
            self._file.close()
        except OSError as exc:
            raise _write_error(self.path, exc) from exc
        self._sha256 = self._digest.hexdigest()

    def commit(self, final: Path) -> None:
        """Rename to ``final`` and fsync the directory (raises ``OSError``: the caller knows the step)."""
        os.replace(self.path, final)
        self.path = final
        fault_point("after-vectors-rename", final)
        fsync_path(final.parent)

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()
        if self.path.name.startswith(TMP_PREFIX):
            self.path.unlink(missing_ok=True)


def _write_error(path: Path, exc: OSError) -> IndexWriteError:
    reason = exc.strerror or str(exc) or type(exc).__name__
    logger.info("%s writing %s (the index is unchanged)", reason, path)
    return IndexWriteError(
        f"{reason[:1].lower() + reason[1:]} writing {path} (the index is unchanged)",
        errno=exc.errno,
        path=str(path),
        committed=False,
    )
