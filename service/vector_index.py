"""``faiss.index``: an exact L2 index over the items' vectors, in row order.

The file is derived data: if it is missing, unreadable, or holds a different
number of vectors than the manifest lists (a crash between writing it and the
manifest), it is rebuilt from the segments' ``vector`` column.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import faiss

from service.manifest import FAISS_NAME, SEGMENTS_DIR, Manifest, SegmentInfo
from service.segments import read_vectors
from service.store import replace_atomically

logger = logging.getLogger(__name__)


def load_vector_index(root: Path, manifest: Manifest) -> tuple[faiss.Index, bool]:
    """The index on disk if it matches the manifest, else one rebuilt from segments.

    Returns ``(index, rebuilt)``; a rebuild is logged as a warning.
    """
    path = root / FAISS_NAME
    index = None
    if path.exists():
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            logger.warning("index %s: %s unreadable (%s); rebuilding", root, FAISS_NAME, exc)
    else:
        logger.warning("index %s: %s missing; rebuilding from segments", root, FAISS_NAME)
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
        index.add(read_vectors(root / SEGMENTS_DIR / info.name, vector_dim=vector_dim))


def write_vector_index(root: Path, index: faiss.Index) -> None:
    replace_atomically(root / FAISS_NAME, lambda tmp: faiss.write_index(index, str(tmp)))
