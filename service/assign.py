"""`semid assign`: stream a catalog, encode it, resolve collisions, write or extend the index.

The run is one atomic write: every new item lands in a single segment that the manifest lists
only once it is complete, so an interrupted run leaves the previous index as it was.

Memory stays bounded by the catalog's row count, not its embeddings: the catalog is read in
batches (Parquet row groups), each batch is encoded and only compact per-item columns are kept
(ids, base codes and last-level alternatives in the smallest int type, distances, hashes: about
60 bytes per item at the default layout). A run that places at least ``VECTOR_FILE_MIN_ROWS``
items resolves collisions in shards of about ``RESOLVE_SHARD_ROWS`` items
(``ids.dedup.resolution_shards``: the same IDs as one call, see there) and streams the items'
vectors, computed from their resolved IDs a chunk at a time, into a vector file of the segment
(``index.segment_vectors``), so they are never all in memory, and opening the index does not read them.
Smaller runs write the vectors inline.

Known items keep their IDs. A known item whose embedding changed is reported; with
``recode_changed`` it is re-coded in the same segment (see ``semid.service.placement``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from semid.model.data.catalog import CatalogError, check_parquet_columns, iter_parquet_batches, read_catalog
from semid.service.encoder import CheckpointEncoder, EncodedBatch
from semid.service.ids.dedup import resolution_shards, resolve_collisions
from semid.service.ids.hashing import embedding_hash
from semid.service.index.handle import SemanticIdIndex
from semid.service.index.object_store import index_location
from semid.service.placement import check_compatible, place_new_items, recoded_in_place

log = logging.getLogger(__name__)

MAX_LISTED_CHANGED = 20
VECTOR_FILE_MIN_ROWS = 65_536  # a run placing this many items writes its vectors to a vector file
RESOLVE_SHARD_ROWS = 1 << 20  # items per collision-resolution call in that case (bounds its temporaries)
VECTOR_CHUNK_ROWS = 1 << 18  # items whose vectors are computed and written at a time


@dataclass
class AssignSummary:
    items: int = 0
    new_items: int = 0
    existing_items: int = 0
    changed_items: int = 0
    changed_ids: list = field(default_factory=list)
    recoded_items: int = 0  # changed items re-coded (--recode-changed)
    recoded_new_ids: int = 0  # of those, items whose ID changed (the old one stays reserved)
    index_items: int = 0
    distinct_base_codes: int = 0
    base_collision_rate: float = 0.0
    largest_bucket: int = 0
    fallback_items: int = 0
    segment: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def add_index_stats(self, index: SemanticIdIndex) -> None:
        """The index's figures after the run: size and base-code collisions."""
        stats = index.snapshot.base_code_stats()
        self.index_items = len(index)
        self.distinct_base_codes = stats["distinct"]
        self.base_collision_rate = stats["collision_rate"]
        self.largest_bucket = stats["largest_bucket"]

    def lines(self) -> list[str]:
        changed = f"embedding changed       {self.changed_items}"
        if self.changed_items:
            more = " ..." if self.changed_items > len(self.changed_ids) else ""
            fate = "re-coded" if self.recoded_items else "they keep their IDs; --recode-changed re-codes them"
            changed += f" (ids: {', '.join(map(str, self.changed_ids))}{more}; {fate})"
        out = [
            f"items in catalog        {self.items}",
            f"new items assigned      {self.new_items}",
            f"already in the index    {self.existing_items}",
            changed,
        ]
        if self.recoded_items:
            kept = self.recoded_items - self.recoded_new_ids
            out.append(
                f"re-coded                {self.recoded_items} ({self.recoded_new_ids} got a new ID, their old "
                f"one reserved; {kept} kept theirs: same base code)"
            )
        out += [
            f"items in index          {self.index_items}",
            f"distinct base codes     {self.distinct_base_codes}",
            f"base collision rate     {100 * self.base_collision_rate:.3f}%",
            f"largest bucket          {self.largest_bucket}",
            f"needed the fallback     {self.fallback_items}",
            f"segment written         {self.segment or '(none: nothing new)'}",
            f"seconds                 {self.seconds:.2f}",
        ]
        return out


@dataclass
class _Pending:
    """New items gathered over the stream, encoded, waiting for collision resolution.

    Codes and alternatives are kept in ``code_dtype`` (int16 at the default layout): at 10M items
    the int64 alternatives alone would take 1.3 GB."""

    code_dtype: type = np.int64
    ids: list[np.ndarray] = field(default_factory=list)
    codes: list[np.ndarray] = field(default_factory=list)
    dists: list[np.ndarray] = field(default_factory=list)
    alts: list[np.ndarray] = field(default_factory=list)
    hashes: list[np.ndarray] = field(default_factory=list)
    recodes: list[np.ndarray] = field(default_factory=list)
    columns: list[pa.Table] = field(default_factory=list)

    def add(self, mask: np.ndarray, ids, enc, hashes, columns: pa.Table | None, recodes: np.ndarray) -> None:
        self.ids.append(ids[mask])
        self.recodes.append(recodes[mask])
        self.codes.append(enc.base_codes[mask].astype(self.code_dtype))
        self.dists.append(enc.distances[mask])
        self.alts.append(enc.alternatives[mask].astype(self.code_dtype))
        self.hashes.append(hashes[mask])
        if columns is not None:
            self.columns.append(columns.filter(pa.array(mask)))


def open_or_create_index(
    index_dir: str | Path, encoder: CheckpointEncoder, id_kind: str, keep_columns: Sequence[str], checkpoint_dir: Path
) -> SemanticIdIndex:
    """The index to extend (same checkpoint, id kind and kept columns, else an error) or a new empty one.
    Shared by both engines (this module and ``semid.service.assign_ray``)."""
    if SemanticIdIndex.exists(index_dir):
        index = SemanticIdIndex.open(index_dir, expected_fingerprint=encoder.fingerprint)
        check_compatible(index, encoder)
        if index.id_kind != id_kind:
            raise CatalogError(f"catalog item ids are {id_kind} but index {index_dir} holds {index.id_kind} ids")
        missing = [c for c in index.keep_columns if c not in keep_columns]
        if missing or list(keep_columns) != list(index.keep_columns):
            raise CatalogError(
                f"index {index_dir} keeps columns {list(index.keep_columns)}; pass the same --keep-columns "
                f"(got {list(keep_columns)})"
            )
        return index
    return SemanticIdIndex.create(
        index_dir,
        layout=encoder.layout,
        fingerprint=encoder.fingerprint,
        id_kind=id_kind,
        vector_dim=encoder.vector_dim,
        keep_columns=keep_columns,
        checkpoint_dir=checkpoint_dir,
    )


def _batches(
    catalog: Path,
    *,
    id_column: str,
    embedding_column: str,
    keep_columns: Sequence[str],
    ids_path: Path | None,
    batch_rows: int,
    dim: int,
):
    if catalog.suffix == ".npy":
        cat = read_catalog(catalog, ids_path=ids_path)
        if cat.dim != dim:
            raise CatalogError(f"catalog {catalog} has dimension {cat.dim}; the checkpoint expects {dim}")
        for s in range(0, len(cat), batch_rows):
            from semid.model.data.catalog import CatalogBatch

            yield CatalogBatch(
                item_ids=cat.item_ids[s : s + batch_rows],
                embeddings=cat.embeddings[s : s + batch_rows],
                columns=None,
                start=s,
            )
        return
    yield from iter_parquet_batches(
        catalog,
        id_column=id_column,
        embedding_column=embedding_column,
        keep_columns=keep_columns,
        batch_rows=batch_rows,
        dim=dim,
    )


def assign_catalog(
    *,
    checkpoint: str | Path,
    catalog: str | Path,
    index_dir: str | Path,
    keep_columns: Sequence[str] = (),
    id_column: str = "item_id",
    embedding_column: str = "embedding",
    ids_path: str | Path | None = None,
    lock_timeout: float = 0.0,
    batch_rows: int = 65536,
    progress: bool = False,
    recode_changed: bool = False,
    vector_file_min_rows: int = VECTOR_FILE_MIN_ROWS,
) -> AssignSummary:
    start = time.perf_counter()
    checkpoint, catalog, index_dir = Path(checkpoint), Path(catalog), index_location(index_dir)
    if not catalog.is_file():
        raise CatalogError(f"catalog file {catalog} does not exist")
    encoder = CheckpointEncoder.from_dir(checkpoint)
    summary = AssignSummary()
    pending = _Pending(code_dtype=_code_dtype(encoder))
    changed_ids: list = []
    seen: list[np.ndarray] = []
    index: SemanticIdIndex | None = None
    total = None
    if catalog.suffix != ".npy":  # every column checked before the bar is drawn: errors get their own line
        columns = {"id_column": id_column, "embedding_column": embedding_column, "keep_columns": keep_columns}
        total = check_parquet_columns(catalog, **columns).metadata.num_rows
    bar = tqdm(total=total, unit="items", desc="assign", disable=not progress)
    try:
        for batch in _batches(
            catalog,
            id_column=id_column,
            embedding_column=embedding_column,
            keep_columns=keep_columns,
            ids_path=Path(ids_path) if ids_path else None,
            batch_rows=batch_rows,
            dim=encoder.input_dim,
        ):
            if index is None:
                id_kind = "str" if batch.item_ids.dtype == object else "int"
                index = open_or_create_index(index_dir, encoder, id_kind, keep_columns, checkpoint)
            ids = batch.item_ids
            seen.append(ids)
            hashes = embedding_hash(batch.embeddings)
            rows = index.snapshot.lookup_items(ids)
            known = rows >= 0
            changed = np.zeros(len(ids), dtype=bool)
            if known.any():
                changed[known] = index.snapshot.embedding_hashes(rows[known]) != hashes[known]
                if changed.any():
                    changed_ids.extend(ids[changed].tolist())
            summary.existing_items += int(known.sum())
            recodes = changed if recode_changed else np.zeros(len(ids), dtype=bool)
            place = ~known | recodes
            if place.any():
                enc = encoder.encode(batch.embeddings[place]) if not place.all() else encoder.encode(batch.embeddings)
                full = _expand(enc, place) if not place.all() else enc
                pending.add(place, ids, full, hashes, batch.columns, recodes)
            summary.items += len(ids)
            bar.update(len(ids))
    finally:
        bar.close()  # ends the bar's line, so an error raised mid-way starts on its own
    if index is None:
        raise CatalogError(f"catalog {catalog} is empty")
    _check_unique(seen)
    summary.changed_items = len(changed_ids)
    summary.changed_ids = changed_ids[:MAX_LISTED_CHANGED]
    if changed_ids and not recode_changed:
        log.warning("%d known items have a changed embedding; they keep their published IDs", len(changed_ids))
    if pending.ids and sum(len(x) for x in pending.ids) >= vector_file_min_rows:
        log.info("read and encoded %d items in %.1f s", summary.items, time.perf_counter() - start)
        _place_streamed(index, encoder, pending, summary, keep_columns=keep_columns, lock_timeout=lock_timeout)
        loading = time.perf_counter()
        index.refresh()  # load the new segment now that the run's own arrays are freed
        log.info("loaded the new segment in %.1f s", time.perf_counter() - loading)
    elif pending.ids:
        item_ids = np.concatenate(pending.ids)
        base = np.concatenate(pending.codes).astype(np.int64)
        columns = None
        if keep_columns:
            table = pa.concat_tables(pending.columns)
            columns = {name: table.column(name) for name in keep_columns}
        encoded = EncodedBatch(
            base_codes=base,
            distances=np.concatenate(pending.dists),
            alternatives=np.concatenate(pending.alts).astype(np.int64),
        )
        recodes = np.concatenate(pending.recodes)
        result, summary.segment = place_new_items(
            index,
            encoder,
            item_ids=item_ids,
            encoded=encoded,
            hashes=np.concatenate(pending.hashes),
            columns=columns,
            recodes=recodes,
            lock_timeout=lock_timeout,
        )
        summary.new_items = int((~recodes).sum())
        summary.recoded_items = int(recodes.sum())
        summary.recoded_new_ids = int((recodes & ~result.kept_id).sum())
        summary.fallback_items = int(result.used_fallback.sum())
    summary.add_index_stats(index)
    summary.seconds = round(time.perf_counter() - start, 3)
    return summary


def _code_dtype(encoder: CheckpointEncoder) -> type:
    """The smallest signed int type holding every code (alternatives use -1 as padding)."""
    largest = max(encoder.layout.codebook_sizes)
    return (
        np.int16 if largest <= np.iinfo(np.int16).max else np.int32 if largest <= np.iinfo(np.int32).max else np.int64
    )


def _take_concat(parts: list) -> np.ndarray:
    """Concatenate and empty the list (its chunks are freed as the copy is made)."""
    out = np.concatenate(parts)
    parts.clear()
    return out


def _place_streamed(
    index: SemanticIdIndex,
    encoder: CheckpointEncoder,
    pending: _Pending,
    summary: AssignSummary,
    *,
    keep_columns: Sequence[str],
    lock_timeout: float,
) -> None:
    """``place_new_items`` for a large run: the same IDs, in bounded memory.

    Collisions are resolved per shard of base-code prefixes (``resolution_shards``), every shard
    against the index's occupancy, which gives the IDs of one call over the whole batch; the vectors
    of the resolved IDs go to a vector file a chunk at a time. The append does not rebuild the
    handle's in-memory state (``defer_load``); the caller refreshes once this run's arrays are freed.
    """
    start = time.perf_counter()
    layout = encoder.layout
    item_ids = _take_concat(pending.ids)
    n = item_ids.shape[0]
    codes = _take_concat(pending.codes)
    dists = _take_concat(pending.dists)
    alts = _take_concat(pending.alts)
    hashes = _take_concat(pending.hashes)
    flags = _take_concat(pending.recodes)
    columns = None
    if keep_columns:
        table = pa.concat_tables(pending.columns)
        pending.columns.clear()
        columns = {name: table.column(name) for name in keep_columns}
    with index.writer(timeout=lock_timeout):
        sids, fallback, kept_id = recoded_in_place(index, item_ids=item_ids, base_codes=codes, recodes=flags)
        todo = np.flatnonzero(~kept_id)
        occupancy = index.snapshot.occupancy()
        shards = max(1, -(-todo.shape[0] // RESOLVE_SHARD_ROWS))
        shard_of = resolution_shards(layout, codes[todo], shards) if shards > 1 else np.zeros(todo.shape[0], np.int64)
        for shard in range(shards):
            rows = todo[shard_of == shard]
            if rows.shape[0] == 0:
                continue
            result = resolve_collisions(
                layout=layout,
                base_codes=codes[rows].astype(np.int64),
                distances=dists[rows],
                item_ids=item_ids[rows],
                alternatives=alts[rows],
                occupancy=occupancy,
            )
            sids[rows], fallback[rows] = result.semantic_ids, result.used_fallback
        del dists, alts, todo, shard_of
        log.info("resolved collisions of %d items in %d shards in %.1f s", n, shards, time.perf_counter() - start)
        summary.segment = append_streamed(
            index,
            encoder,
            item_ids=item_ids,
            base_codes=codes,
            semantic_ids=sids,
            fallback=fallback,
            embedding_hash=hashes,
            columns=columns,
            recodes=flags,
        )
    summary.new_items = int((~flags).sum())
    summary.recoded_items = int(flags.sum())
    summary.recoded_new_ids = int((flags & ~kept_id).sum())
    summary.fallback_items = int(fallback.sum())


def append_streamed(index: SemanticIdIndex, encoder: CheckpointEncoder, *, semantic_ids: np.ndarray, **rows) -> str:
    """Append a large run's placed rows (``index.append``'s keywords), their vectors decoded from the IDs a
    chunk at a time into a segment vector file; call under the writer lock. The handle's in-memory state is
    not rebuilt (``defer_load``): the caller refreshes once its own arrays are freed. Shared by both engines,
    so a run writes the same index whichever engine placed it."""
    start = time.perf_counter()
    levels = encoder.layout.levels
    with index.stage_vectors() as staged:
        for s in range(0, semantic_ids.shape[0], VECTOR_CHUNK_ROWS):
            staged.write(encoder.vectors(semantic_ids[s : s + VECTOR_CHUNK_ROWS, :levels]))
        staged.finish()
        log.info("wrote the vector file in %.1f s", time.perf_counter() - start)
        start = time.perf_counter()
        segment = index.append(semantic_ids=semantic_ids, vectors=staged, defer_load=True, **rows)
    log.info("wrote the segment and the manifest in %.1f s", time.perf_counter() - start)
    return segment


def _expand(enc, mask: np.ndarray):
    """Place the encodings of the masked rows back at their positions in the full batch."""
    n = mask.shape[0]
    codes = np.zeros((n, enc.base_codes.shape[1]), dtype=np.int64)
    dists = np.zeros(n, dtype=np.float32)
    alts = np.zeros((n, enc.alternatives.shape[1]), dtype=np.int64)
    codes[mask], dists[mask], alts[mask] = enc.base_codes, enc.distances, enc.alternatives
    return EncodedBatch(base_codes=codes, distances=dists, alternatives=alts)


def _check_unique(parts: list[np.ndarray]) -> None:
    from semid.model.data.catalog import check_unique_ids

    ids = np.concatenate(parts)
    check_unique_ids(ids)
