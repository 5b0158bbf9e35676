"""``check_index``: a read-only consistency check of an index directory."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import faiss

from semid.service.errors import CorruptIndexError
from semid.service.index.faiss_file import vectors_checksum_problem
from semid.service.index.manifest import FAISS_NAME, MANIFEST_NAME, SEGMENTS_DIR, read_manifest
from semid.service.index.segment_vectors import vectors_file_problem, vectors_name
from semid.service.index.segments import SegmentData, read_segment, read_vectors, segment_checksum_problem
from semid.service.index.state import IndexState

logger = logging.getLogger(__name__)

_SHOWN = 10


@dataclass(frozen=True, kw_only=True)
class CheckReport:
    ok: bool
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # not errors: e.g. a stale FAISS file, rebuilt on open
    item_count: int = 0
    segment_count: int = 0


def check_index(path: str | Path) -> CheckReport:
    """Every listed segment present, readable and matching its recorded checksum (and its vector
    file, if it has one: size and checksum), row
    counts as in the manifest, every
    item with one active row (a later row only where it says it re-codes the item), no
    semantic id held by two items (reserved ids of re-coded items included), vectors of
    the right width, faiss in step.

    Never raises for a broken index; the problems are listed in the report.
    """
    root = Path(path)
    try:
        manifest = read_manifest(root)
    except (FileNotFoundError, NotADirectoryError):
        return CheckReport(ok=False, problems=[f"{root / MANIFEST_NAME} is missing"])
    except CorruptIndexError as exc:
        return CheckReport(ok=False, problems=[str(exc)])
    problems: list[str] = []
    parts: list[SegmentData] = []
    for info in manifest.segments:
        seg_path = root / SEGMENTS_DIR / info.name
        if info.sha256 is not None and seg_path.is_file():
            # a mismatch is a problem; the file is still parsed below, to report what else is wrong
            problem = segment_checksum_problem(seg_path, info.sha256)
            if problem is not None:
                problems.append(problem)
        try:
            part = read_segment(
                seg_path, layout=manifest.layout, id_kind=manifest.id_kind, keep_columns=manifest.keep_columns
            )
            if info.vectors_sha256 is not None:  # the whole vector file, against the checksum taken on write
                vector_rows = info.rows
                problem = vectors_file_problem(
                    root / SEGMENTS_DIR / vectors_name(info.name),
                    rows=info.rows,
                    dim=manifest.vector_dim,
                    sha256=info.vectors_sha256,
                )
                if problem is not None:
                    problems.append(problem)
            else:
                vector_rows = read_vectors(seg_path, vector_dim=manifest.vector_dim).shape[0]
        except CorruptIndexError as exc:
            problems.append(str(exc))
            continue
        if part.rows != info.rows or vector_rows != info.rows:
            problems.append(f"segment {info.name} has {part.rows} rows; the manifest says {info.rows}")
        parts.append(part)
    state = IndexState.from_segments(layout=manifest.layout, id_kind=manifest.id_kind, parts=parts)
    dup_items = state.duplicate_item_ids()
    if dup_items:
        problems.append(
            f"{len(dup_items)} item ids are held by several rows without a re-code (or a first row says it "
            f"re-codes), e.g. {dup_items[:_SHOWN]}"
        )
    dup_sids = state.duplicate_packed()
    if dup_sids.shape[0]:
        shown = manifest.layout.unpack(dup_sids[:_SHOWN]).tolist()
        problems.append(f"{dup_sids.shape[0]} semantic ids are held by several items, e.g. {shown}")
    # The FAISS file is derived from the segments' vectors and rebuilt on open when it is out of
    # step (online writes skip rewriting it), so a stale or missing one is a note, not a problem.
    notes: list[str] = []
    unverified = [s.name for s in manifest.segments if s.sha256 is None]
    if unverified:
        notes.append(
            f"{len(unverified)} of {len(manifest.segments)} segments have no recorded checksum (written by an "
            f"older semid), so bit rot in them cannot be detected, e.g. {unverified[:3]}"
        )
    faiss_path = root / FAISS_NAME
    if manifest.has_vector_files:
        if faiss_path.exists():
            notes.append(f"{FAISS_NAME} is not used (segments keep their vectors in vector files); a write removes it")
    elif not faiss_path.exists():
        notes.append(f"{FAISS_NAME} is missing; it is rebuilt from the segments on open")
    else:
        if manifest.faiss is None:
            notes.append(
                f"{FAISS_NAME} has no recorded checksum (older manifest); the next write of the file records one"
            )
        elif manifest.faiss.rows == manifest.item_count and (problem := vectors_checksum_problem(faiss_path, manifest)):
            notes.append(f"{problem}; rebuilt from the segments on open")
        try:
            index = faiss.read_index(str(faiss_path))
            if index.ntotal != manifest.item_count:
                notes.append(
                    f"{FAISS_NAME} holds {index.ntotal} vectors for {manifest.item_count} items; rebuilt on open"
                )
            if index.d != manifest.vector_dim:
                notes.append(f"{FAISS_NAME} has dimension {index.d}, not {manifest.vector_dim}; rebuilt on open")
        except RuntimeError as exc:
            notes.append(f"{FAISS_NAME} is unreadable ({exc}); rebuilt on open")
    for problem in problems:
        logger.warning("check %s: %s", root, problem)
    return CheckReport(
        ok=not problems,
        problems=problems,
        notes=notes,
        item_count=state.size,
        segment_count=len(manifest.segments),
    )
