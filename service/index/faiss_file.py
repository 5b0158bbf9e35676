"""``faiss.index``: the whole-index FAISS file on disk (an exact L2 index over the vectors, in row order).

The file is derived data: if it is missing, unreadable, does not match the checksum
the manifest records for it (bit rot, or a crash between writing it and the
manifest), or holds a different number of vectors than the manifest lists (online
writes skip rewriting it), it is rebuilt from the segments' ``vector`` column.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np

from semid.service.index.manifest import FAISS_NAME, SEGMENTS_DIR, Manifest, SegmentInfo, VectorsInfo
from semid.service.index.segments import read_vectors
from semid.service.index.store import sha256_bytes, sha256_file, write_bytes_atomically

logger = logging.getLogger(__name__)


def vectors_checksum_problem(path: Path, manifest: Manifest) -> str | None:
    """Why ``faiss.index`` does not match the checksum the manifest records, or None.

    None also when no checksum is recorded (older manifest) or the file is missing.
    """
    if manifest.faiss is None or not path.exists():
        return None
    try:
        actual = sha256_file(path)
    except OSError as exc:
        return f"{FAISS_NAME} is unreadable ({exc})"
    if actual != manifest.faiss.sha256:
        return (
            f"{FAISS_NAME} does not match the checksum recorded in the manifest (sha256 "
            f"{manifest.faiss.sha256[:16]}..., file {actual[:16]}...): corrupt, or written by an interrupted write"
        )
    return None


def load_vector_index(root: Path, manifest: Manifest) -> tuple[faiss.Index, bool]:
    """The index on disk if it matches the manifest, else one rebuilt from segments.

    Returns ``(index, rebuilt)``; a rebuild is logged as a warning.
    """
    path = root / FAISS_NAME
    index = None
    if not path.exists():
        logger.warning("index %s: %s missing; rebuilding from segments", root, FAISS_NAME)
    elif manifest.faiss is not None and manifest.faiss.rows != manifest.item_count:
        logger.info(
            "index %s: %s is stale (%d of %d items); rebuilding",
            root,
            FAISS_NAME,
            manifest.faiss.rows,
            manifest.item_count,
        )
    elif (problem := vectors_checksum_problem(path, manifest)) is not None:
        logger.warning("index %s: %s; rebuilding from segments", root, problem)
    else:
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            logger.warning("index %s: %s unreadable (%s); rebuilding", root, FAISS_NAME, exc)
    if index is not None and index.ntotal == manifest.item_count and index.d == manifest.vector_dim:
        return index, False
    if index is not None:
        logger.warning(
            "index %s: %s holds %d vectors of dimension %d, expected %d of %d; rebuilding",
            root,
            FAISS_NAME,
            index.ntotal,
            index.d,
            manifest.item_count,
            manifest.vector_dim,
        )
    rebuilt = faiss.IndexFlatL2(manifest.vector_dim)
    add_segments(rebuilt, root, manifest.segments, vector_dim=manifest.vector_dim)
    return rebuilt, True


def add_segments(index: faiss.Index, root: Path, segments: Sequence[SegmentInfo], *, vector_dim: int) -> None:
    for info in segments:
        index.add(read_segment_vectors(root, info, vector_dim=vector_dim))


def read_segment_vectors(root: Path, info: SegmentInfo, *, vector_dim: int) -> np.ndarray:
    """float32 ``[n, vector_dim]`` vectors of one listed segment, checked against its checksum."""
    return read_vectors(root / SEGMENTS_DIR / info.name, vector_dim=vector_dim, sha256=info.sha256)


def write_vector_index(root: Path, index: faiss.Index) -> VectorsInfo:
    """Write ``faiss.index`` atomically (fault steps ``after-vectors-*``); returns what the manifest records."""
    data = memoryview(faiss.serialize_index(index))
    write_bytes_atomically(root / FAISS_NAME, data, kind="vectors")
    return VectorsInfo(rows=int(index.ntotal), sha256=sha256_bytes(data))
