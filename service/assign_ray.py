"""`semid assign --engine ray`: batch assignment on Ray Data, for catalogs and machines beyond one.

The same run as ``semid.service.assign`` (same IDs, same index, byte-identical ``semid export``),
split into three steps:

1. encode (outside the writer lock): Ray Data reads the Parquet catalog (one file or a directory of
   files, hive partitions allowed) and streams it through a pool of ``EncodeBatches`` actors, each
   loading the checkpoint once. An actor hashes every row, recognises items the index already holds
   (a sorted copy of the index's item ids and embedding hashes is broadcast once through the object
   store) and encodes only the new ones (with ``recode_changed``, also known items whose embedding
   changed): base code, distance, last-level alternatives.
2. resolve (under the writer lock): the new rows are grouped by ``ids.dedup.resolution_shards``, a
   function of the base code's prefix, and ``ResolveShard`` calls ``ids.dedup.resolve_collisions``
   (the single-machine rule itself) on each shard against the index's occupancy read under the lock;
   re-coded items whose base code did not move keep their ID first (``placement.recoded_in_place``).
   Items in different prefixes never interact, so the shards' IDs are exactly the IDs of one call.
3. write (same lock): the driver puts the IDs back in catalog order and appends them as the
   single-machine engine would: a run placing at least ``VECTOR_FILE_MIN_ROWS`` items decodes the
   vectors from the IDs a chunk at a time into a segment vector file (``assign.append_streamed``, the
   same function that engine calls), a smaller one computes them at once and calls
   ``SemanticIdIndex.append`` with the arguments ``placement.place_new_items`` would pass. Either way
   one segment and one manifest replacement, so the run is atomic and known items keep their IDs, and
   both engines write the same index format for the same run.

The driver holds what ``append`` needs for the new items (item ids, base codes, IDs, hashes, kept
columns; vectors only for runs below the vector-file threshold, else one chunk at a time) plus the
index itself; embeddings and alternatives stay in the workers and the object store. Ray is an optional
extra (``semid[ray]``) imported only here, only when this engine runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from semid.model.data.catalog import CatalogError, _ids_to_numpy, check_unique_ids, embeddings_to_numpy
from semid.service.assign import (
    MAX_LISTED_CHANGED,
    VECTOR_FILE_MIN_ROWS,
    AssignSummary,
    append_streamed,
    open_or_create_index,
)
from semid.service.encoder import CheckpointEncoder
from semid.service.errors import InvalidInputError, MissingExtraError, SemidError
from semid.service.ids.dedup import BucketCounts, resolution_shards, resolve_collisions
from semid.service.ids.hashing import embedding_hash
from semid.service.ids.layout import IdLayout
from semid.service.index.handle import SemanticIdIndex
from semid.service.index.object_store import index_location
from semid.service.placement import recoded_in_place

log = logging.getLogger(__name__)

NEW, KNOWN, CHANGED = 0, 1, 2  # the ``status`` column written by EncodeBatches
SHARDS_PER_WORKER = 4  # resolution shards per worker: a few calls each, none holding a big share
CONNECT_TIMEOUT_S = 10.0  # --ray-address: how long the probe of host:port waits for an answer


def import_ray() -> Any:
    """The ``ray`` module with Ray Data, or ``MissingExtraError`` naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data ships in ray[data]; a bare `ray` lacks its dependencies
    except ImportError as err:
        raise MissingExtraError(
            f"--engine ray needs the optional extra: pip install 'semid[ray]' ({err})", extra="ray"
        ) from None
    return ray


# --- the steps that run in Ray workers ------------------------------------------------------------


@dataclass(frozen=True)
class CatalogColumns:
    id_column: str
    embedding_column: str
    keep_columns: tuple[str, ...]


class EncodeBatches:
    """Ray Data callable class: one checkpoint per actor; catalog batch -> status, codes, hashes."""

    def __init__(
        self, *, checkpoint: str, columns: CatalogColumns, known: Any, recode: bool = False, threads: int = 1
    ) -> None:
        import ray
        import torch

        torch.set_num_threads(threads)
        self.encoder = CheckpointEncoder.from_dir(checkpoint)
        self.columns = columns
        self.recode = recode  # encode known items whose embedding changed too (--recode-changed)
        self.known = ray.get(known) if known is not None else None  # (sorted item ids, their hashes)

    def __call__(self, table: pa.Table) -> pa.Table:
        cols = self.columns
        try:
            ids = _ids_to_numpy(table.column(cols.id_column), cols.id_column, 0)
            emb = embeddings_to_numpy(
                table.column(cols.embedding_column).combine_chunks(), cols.embedding_column, 0, self.encoder.input_dim
            )
        except CatalogError as err:  # rows are counted within this batch; name where it starts
            first = table.column(cols.id_column)[0].as_py() if table.num_rows else None
            raise CatalogError(f"{err} (rows counted from the batch starting at item {first!r})") from None
        n = ids.shape[0]
        hashes = embedding_hash(emb)
        status = np.full(n, NEW, dtype=np.int8)
        if self.known is not None:
            rows = _find(self.known[0], ids)
            hit = rows >= 0
            status[hit] = np.where(self.known[1][rows[hit]] != hashes[hit], CHANGED, KNOWN)
        new = (status == NEW) | ((status == CHANGED) & self.recode)  # the rows to place
        levels, alternatives = self.encoder.levels, self.encoder.alternatives
        codes = np.zeros((n, levels), dtype=np.int64)
        dists = np.zeros(n, dtype=np.float32)
        alts = np.full((n, alternatives), -1, dtype=np.int64)
        if new.any():
            enc = self.encoder.encode(emb if new.all() else emb[new])
            codes[new], dists[new] = enc.base_codes, enc.distances
            alts[new, : enc.alternatives.shape[1]] = enc.alternatives
        out = {
            "item_id": table.column(cols.id_column),
            "status": pa.array(status),
            "base_code": _fixed_list(codes),
            "distance": pa.array(dists),
            "alternatives": _fixed_list(alts),
            "embedding_hash": pa.array(hashes.astype(np.uint64)),
        }
        out.update({name: table.column(name) for name in cols.keep_columns})
        return pa.table(out)


class ResolveShard:
    """Ray Data callable class: IDs of one resolution shard, by ``resolve_collisions`` itself."""

    def __init__(self, *, layout: IdLayout, occupancy: Any) -> None:
        import ray

        self.layout = layout
        self.occupancy: BucketCounts = ray.get(occupancy)

    def __call__(self, table: pa.Table) -> pa.Table:
        result = resolve_collisions(
            layout=self.layout,
            base_codes=_numpy_list(table.column("base_code")),
            distances=table.column("distance").to_numpy(),
            item_ids=_ids_to_numpy(table.column("item_id"), "item_id", 0),
            alternatives=_numpy_list(table.column("alternatives")),
            occupancy=self.occupancy,
        )
        return pa.table(
            {
                "item_id": table.column("item_id"),
                "semantic_id": _fixed_list(result.semantic_ids),
                "fallback": pa.array(result.used_fallback),
            }
        )


def with_shards(table: pa.Table, *, layout: IdLayout, shards: int, recode: bool, keep_ids: np.ndarray) -> pa.Table:
    """The rows of an encoded batch that need an ID, with the columns resolution reads and their shard:
    new items and, with ``recode``, changed items except ``keep_ids`` (sorted: they keep their ID)."""
    status = table.column("status").to_numpy()
    place = (status == NEW) | ((status == CHANGED) & recode)
    if keep_ids.shape[0] and place.any():
        place &= _find(keep_ids, _ids_to_numpy(table.column("item_id"), "item_id", 0)) < 0
    new = table.filter(pa.array(place)).select(["item_id", "base_code", "distance", "alternatives"])
    shard = resolution_shards(layout, _numpy_list(new.column("base_code")), shards)
    return new.append_column("shard", pa.array(shard))


# --- the driver ----------------------------------------------------------------------------------


def assign_catalog_ray(
    *,
    checkpoint: str | Path,
    catalog: str | Path,
    index_dir: str | Path,
    keep_columns: Sequence[str] = (),
    id_column: str = "item_id",
    embedding_column: str = "embedding",
    lock_timeout: float = 0.0,
    batch_rows: int = 65536,
    workers: int | None = None,
    ray_address: str | None = None,
    progress: bool = False,
    recode_changed: bool = False,
    vector_file_min_rows: int = VECTOR_FILE_MIN_ROWS,
) -> AssignSummary:
    """``assign.assign_catalog`` on Ray: same IDs, same index; see the module docstring for the steps.

    Uses the Ray instance already initialised in this process if there is one, else starts one
    (``ray_address`` given: connects to that cluster; else a local Ray with this machine's cores) and
    stops it at the end. ``workers``: encoding actors (default: the cluster's CPUs).
    """
    if workers is not None and workers < 1:
        raise InvalidInputError(f"workers is {workers}; expected an int >= 1", field="workers")
    start = time.perf_counter()
    ray = import_ray()
    # Workers open these paths themselves, and on a cluster they do not run in this process's directory.
    checkpoint, catalog, index_dir = Path(checkpoint).absolute(), _worker_path(str(catalog)), index_location(index_dir)
    columns = CatalogColumns(id_column, embedding_column, tuple(keep_columns))
    id_kind = _catalog_id_kind(catalog, columns)
    encoder = CheckpointEncoder.from_dir(checkpoint)
    with _ray_session(ray, ray_address, progress):  # joined first: a cluster that is not there creates no index
        index = open_or_create_index(index_dir, encoder, id_kind, columns.keep_columns, checkpoint)
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        try:
            run = _Run(
                encoder,
                index,
                catalog,
                checkpoint,
                columns,
                lock_timeout,
                batch_rows,
                workers or cpus,
                cpus,
                recode_changed,
                vector_file_min_rows,
            )
            return _run(ray, run, start)
        except Exception as err:  # a worker's domain error surfaces wrapped; raise the error itself
            raise _unwrapped(ray, err) from None


@dataclass(frozen=True)
class _Run:
    encoder: CheckpointEncoder
    index: SemanticIdIndex
    catalog: str
    checkpoint: Path
    columns: CatalogColumns
    lock_timeout: float
    batch_rows: int
    workers: int
    cpus: int  # the cluster's CPUs
    recode: bool
    vector_file_min_rows: int


def _run(ray: Any, run: _Run, start: float) -> AssignSummary:
    encoder, index, columns, workers = run.encoder, run.index, run.columns, run.workers
    known = _known_items(index)
    names = [columns.id_column, columns.embedding_column, *columns.keep_columns]
    source = ray.data.read_parquet(run.catalog).select_columns(names)  # Ray pushes the projection into the read
    encoded = source.map_batches(
        EncodeBatches,
        fn_constructor_kwargs={
            "checkpoint": str(run.checkpoint),
            "columns": columns,
            "known": ray.put(known) if known is not None else None,
            "recode": run.recode,
        },
        batch_size=run.batch_rows,
        batch_format="pyarrow",
        compute=_actor_pool(ray, workers, run.cpus),
        num_cpus=1,
    ).materialize()
    summary = AssignSummary()
    new = _gather(encoded, columns, summary, run.recode)
    if new is None:
        summary.add_index_stats(index)
        summary.seconds = round(time.perf_counter() - start, 3)
        return summary
    layout = encoder.layout
    shards = SHARDS_PER_WORKER * workers
    with index.writer(timeout=run.lock_timeout):  # the occupancy the IDs are resolved against stays current
        sids, fallback, kept_id = recoded_in_place(
            index, item_ids=new.item_ids, base_codes=new.base_codes, recodes=new.recodes
        )
        shard_args = {"layout": layout, "shards": shards, "recode": run.recode, "keep_ids": _kept_keys(new, kept_id)}
        resolved = (
            encoded.map_batches(with_shards, fn_kwargs=shard_args, batch_format="pyarrow")
            .groupby("shard", num_partitions=shards)
            .map_groups(
                ResolveShard,
                fn_constructor_kwargs={"layout": layout, "occupancy": ray.put(index.snapshot.occupancy())},
                batch_format="pyarrow",
                compute=_actor_pool(ray, workers, run.cpus),
                num_cpus=1,
            )
        )
        todo = np.flatnonzero(~kept_id)
        if todo.shape[0]:
            sids[todo], fallback[todo] = _in_catalog_order(resolved, new.item_ids[todo], layout.width)
        rows = {
            "item_ids": new.item_ids,
            "base_codes": new.base_codes,
            "fallback": fallback,
            "embedding_hash": new.hashes,
            "columns": new.columns,
            "recodes": new.recodes,
        }
        streamed = new.item_ids.shape[0] >= run.vector_file_min_rows  # the single-machine engine's rule
        if streamed:  # vectors decoded a chunk at a time into a segment vector file, as that engine writes them
            summary.segment = append_streamed(index, encoder, semantic_ids=sids, **rows)
        else:
            summary.segment = index.append(semantic_ids=sids, vectors=encoder.vectors(sids[:, : layout.levels]), **rows)
    if streamed:
        del rows
        index.refresh()  # load the new segment (mapped vectors), as the single-machine engine does
    summary.new_items = int((~new.recodes).sum())
    summary.recoded_items = int(new.recodes.sum())
    summary.recoded_new_ids = int((new.recodes & ~kept_id).sum())
    summary.fallback_items = int(fallback.sum())
    summary.add_index_stats(index)
    summary.seconds = round(time.perf_counter() - start, 3)
    return summary


@dataclass
class _NewItems:
    """What the driver keeps of the new rows for ``append``, in catalog order."""

    item_ids: np.ndarray  # int64 or object (str) [N]
    base_codes: np.ndarray  # int64 [N, L]
    hashes: np.ndarray  # uint64 [N]
    columns: dict[str, pa.ChunkedArray] | None
    recodes: np.ndarray  # bool [N]: a known item whose embedding changed, re-coded (--recode-changed)


def _kept_keys(new: _NewItems, kept_id: np.ndarray) -> np.ndarray:
    """Sorted ids of re-coded items that keep their ID (resolution skips them)."""
    return np.sort(_sort_keys(new.item_ids[kept_id]))


def _gather(encoded: Any, columns: CatalogColumns, summary: AssignSummary, recode: bool) -> _NewItems | None:
    """One ordered pass over the encoded rows: counts, changed items, catalog-wide unique ids, the rows to
    place (new items; with ``recode`` also the changed ones)."""
    names = ["item_id", "status", "base_code", "embedding_hash", *columns.keep_columns]
    all_ids, ids, codes, hashes, kept, changed, recodes = [], [], [], [], [], [], []
    new_count = 0
    for batch in encoded.select_columns(names).iter_batches(batch_size=None, batch_format="pyarrow"):
        batch_ids = _ids_to_numpy(batch.column("item_id"), columns.id_column, 0)
        status = batch.column("status").to_numpy()
        all_ids.append(batch_ids)
        changed.append(batch_ids[status == CHANGED])
        new_count += int((status == NEW).sum())
        new = (status == NEW) | ((status == CHANGED) & recode)
        if new.any():
            recodes.append(status[new] == CHANGED)
            ids.append(batch_ids[new])
            codes.append(_numpy_list(batch.column("base_code"))[new])
            hashes.append(batch.column("embedding_hash").to_numpy()[new])
            if columns.keep_columns:
                kept.append(batch.select(list(columns.keep_columns)).filter(pa.array(new)))
    if not all_ids:
        raise CatalogError("the catalog is empty")
    every = np.concatenate(all_ids)
    check_unique_ids(every)
    changed_ids = np.concatenate(changed).tolist()
    summary.items = int(every.shape[0])
    summary.existing_items = summary.items - new_count
    summary.changed_items = len(changed_ids)
    summary.changed_ids = changed_ids[:MAX_LISTED_CHANGED]
    if changed_ids and not recode:
        log.warning("%d known items have a changed embedding; they keep their published IDs", len(changed_ids))
    if not ids:
        return None
    table = pa.concat_tables(kept) if kept else None
    return _NewItems(
        item_ids=np.concatenate(ids),
        base_codes=np.concatenate(codes),
        hashes=np.concatenate(hashes),
        columns={name: table.column(name) for name in columns.keep_columns} if table is not None else None,
        recodes=np.concatenate(recodes),
    )


def _in_catalog_order(resolved: Any, item_ids: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The resolved IDs and fallback flags, rows matched to ``item_ids`` (shards come back in any order)."""
    got_ids, got_sids, got_fallback = [], [], []
    for batch in resolved.iter_batches(batch_size=None, batch_format="pyarrow"):
        got_ids.append(_ids_to_numpy(batch.column("item_id"), "item_id", 0))
        got_sids.append(_numpy_list(batch.column("semantic_id")).reshape(-1, width))
        got_fallback.append(batch.column("fallback").to_numpy(zero_copy_only=False))
    got = np.concatenate(got_ids)
    if got.shape[0] != item_ids.shape[0]:
        raise RuntimeError(f"resolution returned {got.shape[0]} rows for {item_ids.shape[0]} new items")
    want_keys, got_keys = _sort_keys(item_ids), _sort_keys(got)
    want_order, got_order = np.argsort(want_keys, kind="stable"), np.argsort(got_keys, kind="stable")
    rows = np.empty_like(want_order)
    rows[want_order] = got_order
    if not (got_keys[rows] == want_keys).all():
        raise RuntimeError("resolution returned other items than the new ones")
    return np.concatenate(got_sids)[rows], np.concatenate(got_fallback)[rows]


# --- helpers -------------------------------------------------------------------------------------


@contextlib.contextmanager
def _ray_session(ray: Any, address: str | None, progress: bool) -> Iterator[None]:
    """Ray Data set up for this run; Ray itself started (and stopped after) unless already running."""
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # the segment lists new items in catalog order
    context.raise_original_map_exception = True  # a worker's CatalogError reaches the CLI as itself
    context.enable_progress_bars = progress
    verbose = logging.getLogger().isEnabledFor(logging.INFO)  # -v shows Ray Data's plans, timings and failures
    if not verbose:  # and the workers' own log lines; else the CLI's one-line error says it all
        logging.getLogger("ray.data").setLevel(logging.CRITICAL)
    if ray.is_initialized():
        yield
        return
    if address:
        _join(ray, address, log_to_driver=verbose)
    else:
        # "local": a new Ray on this machine even where RAY_ADDRESS or `ray start` names a cluster (ray.init()
        # would join that one and refuse num_cpus); --ray-address auto joins it.
        ray.init(
            address="local",
            num_cpus=os.cpu_count(),
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=verbose,
        )
    try:
        yield
    finally:
        ray.shutdown()


def _join(ray: Any, address: str, *, log_to_driver: bool) -> None:
    """Connects to the cluster at ``address``, or a one-line ``InvalidInputError``. A ``host:port`` (or
    ``ray://host:port``) is probed first: with nothing listening there, ``ray.init`` retries for many
    minutes (still retrying after 5 with Ray 2.60), logging a warning every few seconds."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if sep and port.isdigit():  # else 'auto' or a form Ray resolves itself
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
        except OSError as err:
            reason = err.strerror or str(err) or type(err).__name__
            raise InvalidInputError(
                f"no Ray cluster answers at {address} ({reason}): start one with `ray start --head`, "
                "or check --ray-address",
                field="ray_address",
            ) from None
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=log_to_driver)
    except (ConnectionError, RuntimeError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise InvalidInputError(f"could not join the Ray cluster at {address}: {first}", field="ray_address") from None


def _actor_pool(ray: Any, workers: int, cpus: int) -> Any:
    """Up to ``workers`` actors of one CPU each. All started at once when the cluster (``cpus``) keeps a CPU
    beside them, so that every node encodes from the start (Ray Data spreads actors over the nodes; a pool
    that grows from one stayed at one actor on one node of a 2-node cluster for a small catalog). Else it
    starts at one and grows: a pool holding every CPU leaves none to the tasks that read the catalog (or
    shuffle it) and the run waits forever (seen on a cluster of two 1-CPU nodes)."""
    initial = workers if workers < cpus else 1
    return ray.data.ActorPoolStrategy(min_size=1, max_size=workers, initial_size=initial)


def _worker_path(path: str) -> str:
    """A catalog path as the workers must be given it: local paths absolute, URIs (``s3://...``) as they are."""
    return path if "://" in path else str(Path(path).absolute())


def _catalog_id_kind(catalog: str, columns: CatalogColumns) -> str:
    """Checks the catalog's columns on the driver before any worker starts: 'int' or 'str' item ids."""
    import pyarrow.dataset as pds

    if "://" not in catalog and not Path(catalog).exists():
        raise CatalogError(f"catalog {catalog} does not exist")
    try:
        schema = pds.dataset(catalog, format="parquet", partitioning="hive").schema
    except (pa.ArrowInvalid, OSError) as err:
        raise CatalogError(f"catalog {catalog} is not readable Parquet: {err}") from err
    for name in (columns.id_column, columns.embedding_column, *columns.keep_columns):
        if name not in schema.names:
            raise CatalogError(f"catalog {catalog} has no column {name!r}; columns are {schema.names}")
    kind = schema.field(columns.id_column).type
    if pa.types.is_integer(kind):
        return "int"
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "str"
    raise CatalogError(f"column {columns.id_column!r} has type {kind}; expected int64 or string item ids")


def _known_items(index: SemanticIdIndex) -> tuple[np.ndarray, np.ndarray] | None:
    """The index's items sorted by id, with their embedding hashes (None for an empty index)."""
    if len(index) == 0:
        return None
    snapshot = index.snapshot
    rows = snapshot.state.order  # each item's current row
    keys = _sort_keys(snapshot.state.item_ids[rows])
    order = np.argsort(keys, kind="stable")
    return keys[order], snapshot.embedding_hashes(rows)[order]


def _find(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Row of each id in ``sorted_ids`` (-1 when absent)."""
    keys = _sort_keys(ids)
    pos = np.minimum(np.searchsorted(sorted_ids, keys), sorted_ids.shape[0] - 1)
    return np.where(sorted_ids[pos] == keys, pos, -1)


def _sort_keys(ids: np.ndarray) -> np.ndarray:
    """Item ids as a NumPy array that sorts and compares natively (str ids as unicode, not objects)."""
    return ids.astype(np.str_) if ids.dtype == object else ids.astype(np.int64, copy=False)


def _fixed_list(values: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(values).reshape(-1)), values.shape[1])


def _numpy_list(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A fixed-size list column as a 2-d array."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    width = array.type.list_size
    return array.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)


def _unwrapped(ray: Any, err: Exception) -> Exception:
    """The domain error a Ray worker raised, on one line (Ray keeps it as the cause and appends its retry
    report to the message), else ``err`` itself."""
    cause = getattr(err, "cause", None) if isinstance(err, ray.exceptions.RayError) else None
    if isinstance(cause, SemidError):
        cause.message = cause.message.splitlines()[0]
        return cause
    if isinstance(cause, CatalogError):
        return CatalogError(str(cause).splitlines()[0])
    return err
