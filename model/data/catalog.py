"""Reading a catalog (item_id + embedding) from Parquet or NumPy, with one-line errors on bad input.

Parquet is read in streaming record batches straight into one preallocated float32 array, so the
embeddings are never held twice in memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


class CatalogError(ValueError):
    """The catalog cannot be used; the message names the problem (and the row where it applies)."""


@dataclass
class CatalogBatch:
    item_ids: np.ndarray  # int64 or str (object) [n]
    embeddings: np.ndarray  # float32 [n, D]
    columns: pa.Table | None  # kept extra columns, same rows
    start: int  # row number of the first item in the file


@dataclass
class Catalog:
    item_ids: np.ndarray
    embeddings: np.ndarray
    columns: pa.Table | None = None

    def __len__(self) -> int:
        return int(self.item_ids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])


def _check_file(path: Path) -> None:
    if not path.exists():
        raise CatalogError(f"catalog file {path} does not exist")
    if not path.is_file():
        raise CatalogError(f"catalog path {path} is not a file")


def _ids_to_numpy(column: pa.ChunkedArray | pa.Array, name: str, start: int) -> np.ndarray:
    if column.null_count:
        first = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise CatalogError(f"column {name!r} has a null item id at row {start + first}")
    t = column.type
    if pa.types.is_integer(t):
        return column.to_numpy().astype(np.int64, copy=False)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return np.asarray(column.to_pylist(), dtype=object)
    raise CatalogError(f"column {name!r} has type {t}; expected int64 or string item ids")


def embeddings_to_numpy(column: pa.Array, name: str, start: int, dim: int | None) -> np.ndarray:
    t = column.type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)):
        raise CatalogError(f"column {name!r} has type {t}; expected a list of floats (fixed_size_list<float32>)")
    if not (pa.types.is_floating(t.value_type) or pa.types.is_integer(t.value_type)):
        raise CatalogError(f"column {name!r} holds {t.value_type}; expected numeric (float) embedding values")
    if column.null_count:
        first = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise CatalogError(f"column {name!r} has a null embedding at row {start + first}")
    n = len(column)
    if pa.types.is_fixed_size_list(t):
        width = t.list_size
    else:
        lengths = column.value_lengths().to_numpy(zero_copy_only=False)
        width = int(lengths[0]) if n else 0
        bad = np.flatnonzero(lengths != width)
        if bad.size:
            row = int(bad[0])
            raise CatalogError(
                f"column {name!r} is ragged: row {start + row} has {int(lengths[row])} values, row {start} has {width}"
            )
    if dim is not None and width != dim:
        raise CatalogError(f"column {name!r} has dimension {width} at row {start}; expected {dim}")
    values = column.flatten()
    if values.null_count:
        raise CatalogError(f"column {name!r} has null values inside an embedding near row {start}")
    arr = values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(n, width)
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise CatalogError(f"column {name!r} has NaN or Inf at row {start + row}")
    return arr


ACCEPTED = (
    "semid reads a Parquet file (one row per item: an id column and an embedding column of float lists) or a .npy "
    "[items, dim] float array (ids from --ids)"
)


def _not_parquet(path: Path, err: Exception) -> CatalogError:
    if path.suffix.lower() in (".csv", ".tsv", ".json", ".jsonl", ".txt"):
        return CatalogError(f"catalog {path} is a {path.suffix[1:].upper()} file; {ACCEPTED}")
    return CatalogError(f"catalog {path} is not a readable Parquet file ({err}); {ACCEPTED}")


def parquet_rows(path: Path) -> int:
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (pa.ArrowInvalid, OSError) as err:
        raise _not_parquet(path, err) from err


def check_parquet_columns(
    path: Path, *, id_column: str, embedding_column: str, keep_columns: Sequence[str] = ()
) -> pq.ParquetFile:
    """Open a Parquet catalog and check it has the columns asked for; the error names the flag that picks them."""
    _check_file(path)
    try:
        pf = pq.ParquetFile(path, pre_buffer=False)  # pre-buffering caches every row group read until the end
    except (pa.ArrowInvalid, OSError) as err:
        raise _not_parquet(path, err) from err
    names = pf.schema_arrow.names
    for col, flag in ((id_column, "--id-column"), (embedding_column, "--embedding-column")):
        if col not in names:
            raise CatalogError(f"catalog {path} has no column {col!r}; columns are {names} (name yours with {flag})")
    for col in keep_columns:
        if col not in names:
            raise CatalogError(f"catalog {path} has no column {col!r} for --keep-columns; columns are {names}")
    return pf


def iter_parquet_batches(
    path: str | Path,
    *,
    id_column: str = "item_id",
    embedding_column: str = "embedding",
    keep_columns: Sequence[str] = (),
    batch_rows: int = 65536,
    dim: int | None = None,
) -> Iterator[CatalogBatch]:
    """Stream a Parquet catalog in validated batches."""
    path = Path(path)
    pf = check_parquet_columns(path, id_column=id_column, embedding_column=embedding_column, keep_columns=keep_columns)
    start = 0
    try:
        for rb in pf.iter_batches(batch_size=batch_rows, columns=[id_column, embedding_column, *keep_columns]):
            ids = _ids_to_numpy(rb.column(id_column), id_column, start)
            emb = embeddings_to_numpy(rb.column(embedding_column), embedding_column, start, dim)
            dim = emb.shape[1]
            kept = pa.Table.from_batches([rb.select(list(keep_columns))]) if keep_columns else None
            yield CatalogBatch(item_ids=ids, embeddings=emb, columns=kept, start=start)
            start += rb.num_rows
    except (pa.ArrowInvalid, OSError) as err:
        raise CatalogError(f"catalog {path} is corrupt or truncated near row {start}: {err}") from err


def _read_npy(path: Path, ids_path: Path | None) -> Catalog:
    try:
        emb = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as err:
        raise CatalogError(f"embeddings file {path} is not a plain numeric .npy array: {err}") from err
    if emb.ndim != 2:
        raise CatalogError(f"embeddings file {path} has shape {emb.shape}; expected 2-d [items, dim]")
    if not np.issubdtype(emb.dtype, np.number):
        raise CatalogError(f"embeddings file {path} has dtype {emb.dtype}; expected floats")
    out = np.empty(emb.shape, dtype=np.float32)
    for s in range(0, emb.shape[0], 65536):
        chunk = np.asarray(emb[s : s + 65536], dtype=np.float32)
        finite = np.isfinite(chunk).all(axis=1)
        if not finite.all():
            raise CatalogError(f"embeddings file {path} has NaN or Inf at row {s + int(np.flatnonzero(~finite)[0])}")
        out[s : s + chunk.shape[0]] = chunk
    if ids_path is None:
        ids = np.arange(emb.shape[0], dtype=np.int64)
    else:
        _check_file(ids_path)
        if ids_path.suffix == ".npy":
            ids = np.load(ids_path, allow_pickle=False)
        else:
            ids = np.asarray(ids_path.read_text().split(), dtype=object)
        if ids.ndim != 1 or ids.shape[0] != emb.shape[0]:
            raise CatalogError(
                f"ids file {ids_path} has {ids.shape[0] if ids.ndim else 0} ids for {emb.shape[0]} embeddings"
            )
        ids = ids.astype(np.int64) if np.issubdtype(ids.dtype, np.integer) else ids.astype(str).astype(object)
    return Catalog(item_ids=ids, embeddings=out)


def read_catalog(
    path: str | Path,
    *,
    id_column: str = "item_id",
    embedding_column: str = "embedding",
    keep_columns: Sequence[str] = (),
    ids_path: str | Path | None = None,
) -> Catalog:
    """Whole catalog in memory (embeddings in one float32 array), validated."""
    path = Path(path)
    _check_file(path)
    if path.suffix == ".npy":
        catalog = _read_npy(path, Path(ids_path) if ids_path else None)
    else:
        n = parquet_rows(path) if path.suffix == ".parquet" else None
        catalog = _read_parquet(path, n, id_column, embedding_column, keep_columns)
    if len(catalog) == 0:
        raise CatalogError(f"catalog {path} is empty")
    check_unique_ids(catalog.item_ids)
    return catalog


def _read_parquet(path: Path, n: int | None, id_column: str, embedding_column: str, keep: Sequence[str]) -> Catalog:
    ids_parts, kept_parts = [], []
    emb: np.ndarray | None = None
    chunks: list[np.ndarray] = []
    for batch in iter_parquet_batches(path, id_column=id_column, embedding_column=embedding_column, keep_columns=keep):
        if n is not None:
            if emb is None:
                emb = np.empty((n, batch.embeddings.shape[1]), dtype=np.float32)
            emb[batch.start : batch.start + len(batch.item_ids)] = batch.embeddings
        else:
            chunks.append(batch.embeddings)
        ids_parts.append(batch.item_ids)
        if batch.columns is not None:
            kept_parts.append(batch.columns)
    if emb is None:
        emb = np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)
    ids = np.concatenate(ids_parts) if ids_parts else np.zeros(0, dtype=np.int64)
    kept = pa.concat_tables(kept_parts) if kept_parts else None
    return Catalog(item_ids=ids, embeddings=emb, columns=kept)


def check_unique_ids(ids: np.ndarray) -> None:
    if ids.dtype == object:
        seen: dict[object, int] = {}
        for row, value in enumerate(ids.tolist()):
            if value in seen:
                raise CatalogError(f"duplicate item_id {value!r} at rows {seen[value]} and {row}")
            seen[value] = row
        return
    order = np.argsort(ids, kind="stable")
    s = ids[order]
    dup = np.flatnonzero(s[1:] == s[:-1])
    if dup.size:
        i = int(dup[0])
        raise CatalogError(f"duplicate item_id {s[i].item()!r} at rows {int(order[i])} and {int(order[i + 1])}")
