"""Parquet segments: the Arrow schema of one batch of items and its conversion to NumPy.

Columns: item_id (int64 or string), semantic_id (fixed-size list of ints, L+1),
base_code (fixed-size list, L), fallback (bool), embedding_hash (uint64), recodes
(bool: the row supersedes the item's earlier row; absent in segments written before
re-coding existed, read as all False), vector (fixed-size list<float32>[vector_dim])
and the kept catalog columns. A segment whose vectors are in a vector file (large batch writes)
has no ``vector`` column and stores the codes packed in two int64 columns (``PACKED_COLUMNS``),
written with Parquet page checksums. Reading goes column-wise through Arrow's buffers, never row
by row.

A segment is written as one buffer whose SHA-256 the manifest records; readers given
that checksum verify the bytes before parsing them (``CorruptIndexError`` on mismatch).

The kept columns are what a tampered file (or one whose checksum is not recorded) can inflate most:
a dictionary-encoded column of one long string decodes to rows x its length from a few bytes. So they
are read dictionary-encoded and their decoded size is counted from the dictionary and the indices
before they are decoded; together with the column chunks' declared uncompressed sizes it must stay
within ``kept_budget(file bytes)``: ``KEPT_BYTES_PER_FILE_BYTE`` times the file, at least
``KEPT_MIN_BUDGET``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from semid.service.errors import CorruptIndexError
from semid.service.ids.layout import IdLayout
from semid.service.index.buffers import AppendBuffer
from semid.service.index.manifest import SegmentInfo
from semid.service.index.store import sha256_bytes, sha256_file, write_bytes_atomically

CORE_COLUMNS = ("item_id", "semantic_id", "base_code", "fallback", "embedding_hash")
RECODES_COLUMN = "recodes"
# A segment with a vector file stores its codes packed (``IdLayout.pack`` / ``pack_base``) in these two
# int64 columns instead of the two list columns: Parquet decodes a list column about 4x slower than a
# flat one, most of the time it took to open a 10M-row segment, and the packed ID is what the index
# sorts on anyway.
PACKED_COLUMNS = {"semantic_id": "packed_id", "base_code": "packed_base"}
KEPT_BYTES_PER_FILE_BYTE = 64  # decoded kept columns per byte of the segment file ...
KEPT_MIN_BUDGET = 64 << 20  # ... but never less than this


@dataclass(frozen=True, kw_only=True)
class SegmentData:
    """One segment's columns as arrays (vectors are read separately, only when needed)."""

    item_ids: np.ndarray  # int64 [n] or object (str) [n]
    semantic_ids: np.ndarray  # int64 [n, L+1]
    base_codes: np.ndarray  # int64 [n, L]
    fallback: np.ndarray  # bool [n]
    embedding_hashes: np.ndarray  # uint64 [n]
    recodes: np.ndarray  # bool [n]: the row supersedes the item's earlier row
    kept: pa.Table  # the kept columns, n rows
    packed: np.ndarray | None = None  # int64 [n]: layout.pack(semantic_ids), when the reader computed it

    @property
    def rows(self) -> int:
        return int(self.fallback.shape[0])


def code_type(layout: IdLayout) -> pa.DataType:
    largest = max(layout.sizes) - 1
    if largest <= np.iinfo(np.int16).max:
        return pa.int16()
    if largest <= np.iinfo(np.int32).max:
        return pa.int32()
    return pa.int64()


def build_table(
    *,
    layout: IdLayout,
    id_kind: str,
    item_ids: np.ndarray,
    semantic_ids: np.ndarray,
    base_codes: np.ndarray,
    fallback: np.ndarray,
    embedding_hashes: np.ndarray,
    recodes: np.ndarray,
    vectors: np.ndarray | None,
    columns: Mapping[str, pa.Array],
    keep_columns: Sequence[str],
) -> pa.Table:
    """Arrow table of one segment; inputs are already validated by the index. ``vectors`` None:
    they are in the segment's vector file, the table has no ``vector`` column, and the codes are
    stored packed (``PACKED_COLUMNS``)."""
    ctype = code_type(layout)
    np_ctype = ctype.to_pandas_dtype()
    ids = pa.array(item_ids, type=pa.int64() if id_kind == "int" else pa.string())
    arrays: dict[str, pa.Array] = {"item_id": ids}
    if vectors is None:
        arrays[PACKED_COLUMNS["semantic_id"]] = pa.array(layout.pack(semantic_ids), type=pa.int64())
        arrays[PACKED_COLUMNS["base_code"]] = pa.array(layout.pack_base(base_codes), type=pa.int64())
    else:
        arrays["semantic_id"] = _fixed_list(semantic_ids.astype(np_ctype), ctype, layout.width)
        arrays["base_code"] = _fixed_list(base_codes.astype(np_ctype), ctype, layout.levels)
    arrays |= {
        "fallback": pa.array(fallback, type=pa.bool_()),
        "embedding_hash": pa.array(embedding_hashes, type=pa.uint64()),
        RECODES_COLUMN: pa.array(recodes, type=pa.bool_()),
    }
    if vectors is not None:
        arrays["vector"] = _fixed_list(vectors.astype(np.float32), pa.float32(), vectors.shape[1])
    for name in keep_columns:
        arrays[name] = columns[name]
    return pa.table(arrays)


def write_segment(table: pa.Table, path: Path, *, page_checksums: bool = False) -> str:
    """Write ``table`` to ``path`` atomically (fault steps ``after-segment-*``); returns its SHA-256.

    ``page_checksums``: also a CRC per Parquet page, which readers verify as they read (a large
    segment is opened without hashing the whole file; see ``read_segment``)."""
    sink = pa.BufferOutputStream()
    # float vectors hardly repeat: dictionary-encoding them only costs time (about 40 % of the write)
    dense = ("vector", *PACKED_COLUMNS.values())
    if PACKED_COLUMNS["semantic_id"] in table.column_names:  # a large segment: unique ids do not repeat either
        dense += ("item_id", "embedding_hash")
    dictionary = [name for name in table.column_names if name not in dense]
    pq.write_table(table, sink, compression="zstd", use_dictionary=dictionary, write_page_checksum=page_checksums)
    data = memoryview(sink.getvalue())
    write_bytes_atomically(path, data, kind="segment")
    return sha256_bytes(data)


def segment_source(path: Path, sha256: str | None) -> Path | pa.BufferReader:
    """``path`` itself (no checksum recorded), or its bytes once they match ``sha256``."""
    if sha256 is None:
        return path
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CorruptIndexError(f"segment {path.name} is listed in the manifest but missing") from None
    except OSError as exc:
        raise CorruptIndexError(f"segment {path.name} is unreadable: {exc}") from None
    problem = _checksum_problem(path.name, sha256, sha256_bytes(data))
    if problem is not None:
        raise CorruptIndexError(problem)
    return pa.BufferReader(data)


def segment_checksum_problem(path: Path, sha256: str) -> str | None:
    """Why the segment's bytes do not match ``sha256`` (None if they do, or the file cannot be read)."""
    try:
        actual = sha256_file(path)
    except OSError:
        return None  # reported by the reader
    return _checksum_problem(path.name, sha256, actual)


def _checksum_problem(name: str, recorded: str, actual: str) -> str | None:
    if actual == recorded:
        return None
    return (
        f"segment {name} does not match its checksum (manifest sha256 {recorded[:16]}..., file "
        f"{actual[:16]}...): the file is corrupt"
    )


def read_segment_table(path: Path, *, sha256: str | None = None) -> pa.Table:
    """All columns of one segment, verified against ``sha256`` when given."""
    source = segment_source(path, sha256)
    try:
        with pq.ParquetFile(source) as parquet:  # about 5x faster than pq.read_table on a small file
            return parquet.read()
    except FileNotFoundError:
        raise CorruptIndexError(f"segment {path.name} is listed in the manifest but missing") from None
    except (OSError, pa.ArrowException) as exc:
        raise CorruptIndexError(f"segment {path.name} is unreadable: {exc}") from None


SMALL_SEGMENT_ROWS = 1024  # a write that fits with the tail segment in this many rows rewrites the tail
COMPACT_RUN = 16  # this many trailing segments of one size class are merged into one by the next write ...
COMPACT_LEVELS = 1  # ... for size classes up to SMALL_SEGMENT_ROWS * COMPACT_RUN ** (COMPACT_LEVELS - 1) rows


def fold_into_tail(
    segments_dir: Path, segments: Sequence[SegmentInfo], table: pa.Table, *, max_rows: int | None = None
) -> tuple[pa.Table, tuple[SegmentInfo, ...]]:
    """Compaction of small writes: ``(table to write, segments kept before it)``.

    A write that fits with the tail segment in ``max_rows`` rows (e.g. one API request) is written
    together with the tail's rows as a new segment that replaces the tail, so rows keep their order
    and many small writes don't leave many files. Size classes go up from ``max_rows`` rows by a
    factor ``COMPACT_RUN`` (``COMPACT_LEVELS`` of them): a write that does not fit the tail, when
    the last ``COMPACT_RUN - 1`` segments are all within its size class, is written together with
    them (then the same one class up). So files stay few, a small write rewrites at most
    ``max_rows`` rows, and a merge of ``n`` rows happens once per about ``n`` rows written
    (amortised O(levels) per row); larger writes are never merged. The replaced segments are removed
    by the next write. Each one is verified against its checksum first, so a corrupt segment is never
    re-checksummed.
    """
    max_rows = SMALL_SEGMENT_ROWS if max_rows is None else max_rows
    tail = segments[-1] if segments else None
    if "vector" not in table.column_names:  # its vectors are in a vector file: never folded
        return table, tuple(segments)
    if tail is not None and not tail.has_vector_file and tail.rows + table.num_rows <= max_rows:
        return _joined(segments_dir, [tail], table), tuple(segments[:-1])
    kept = tuple(segments)
    limit = max_rows
    for _ in range(COMPACT_LEVELS):
        if limit <= 0:
            break
        if table.num_rows <= limit:  # else the table belongs to a larger size class
            run = 0
            while run < len(kept) and kept[-1 - run].rows <= limit and not kept[-1 - run].has_vector_file:
                run += 1
            if run < COMPACT_RUN - 1:
                break
            table, kept = _joined(segments_dir, list(kept[len(kept) - run :]), table), kept[: len(kept) - run]
        limit *= COMPACT_RUN
    return table, kept


def _joined(segments_dir: Path, previous: Sequence[SegmentInfo], table: pa.Table) -> pa.Table:
    """The rows of ``previous`` (verified) followed by ``table``'s, in the first one's schema."""
    tables = []
    for info in previous:
        part = read_segment_table(segments_dir / info.name, sha256=info.sha256)
        if RECODES_COLUMN not in part.column_names:  # written before re-coding existed
            at = part.column_names.index("vector")
            part = part.add_column(at, RECODES_COLUMN, pa.array(np.zeros(part.num_rows, bool)))
        tables.append(part if not tables else part.cast(tables[0].schema))
    return pa.concat_tables([*tables, table.cast(tables[0].schema)])


def read_segment(
    path: Path,
    *,
    layout: IdLayout,
    id_kind: str,
    keep_columns: Sequence[str],
    sha256: str | None = None,
    page_checksums: bool = False,
) -> SegmentData:
    """Read and validate one segment (its bytes against ``sha256`` when given, its pages against
    their CRCs with ``page_checksums``); any problem raises ``CorruptIndexError`` naming it."""
    name = path.name
    try:
        source = segment_source(path, sha256)
        file_bytes = source.size() if isinstance(source, pa.BufferReader) else path.stat().st_size
        with pq.ParquetFile(source) as plain:  # the stored Arrow types (read_dictionary changes them)
            stored = plain.schema_arrow
        as_dictionary = [
            c
            for c in keep_columns
            if c in stored.names and _is_bytes(stored.field(c).type)  # a plain string column, read encoded
        ]
        with pq.ParquetFile(
            source, page_checksum_verification=page_checksums, read_dictionary=as_dictionary
        ) as parquet:
            names = stored.names
            has_recodes = RECODES_COLUMN in names
            is_packed = PACKED_COLUMNS["semantic_id"] in names
            core = [PACKED_COLUMNS.get(c, c) if is_packed else c for c in CORE_COLUMNS]
            _check_declared_kept(parquet.metadata, keep_columns, kept_budget(file_bytes), name)
            table = parquet.read(columns=[*core, *([RECODES_COLUMN] if has_recodes else []), *keep_columns])
        table = _decoded_kept(table, stored, as_dictionary, keep_columns, kept_budget(file_bytes), name)
    except CorruptIndexError:
        raise
    except FileNotFoundError:
        raise CorruptIndexError(f"segment {name} is listed in the manifest but missing") from None
    except (OSError, pa.ArrowException) as exc:
        raise CorruptIndexError(f"segment {name} is unreadable: {exc}") from None
    try:
        item_col = table.column("item_id")
        if item_col.null_count:
            raise ValueError("item_id has nulls")
        if id_kind == "int":
            if not pa.types.is_integer(item_col.type):
                raise ValueError(f"item_id is {item_col.type}; the index holds int ids")
            item_ids = arrow_to_numpy(item_col).astype(np.int64, copy=False)
        else:
            if not (pa.types.is_string(item_col.type) or pa.types.is_large_string(item_col.type)):
                raise ValueError(f"item_id is {item_col.type}; the index holds string ids")
            item_ids = item_col.to_numpy()
        fallback_col = table.column("fallback")
        hash_col = table.column("embedding_hash")
        if fallback_col.null_count or hash_col.null_count:
            raise ValueError("fallback/embedding_hash have nulls")
        recodes = np.zeros(table.num_rows, dtype=bool)
        if has_recodes:
            recodes_col = table.column(RECODES_COLUMN)
            if recodes_col.null_count or not pa.types.is_boolean(recodes_col.type):
                raise ValueError(f"{RECODES_COLUMN} must be bool without nulls")
            recodes = arrow_to_numpy(recodes_col)
        if is_packed:
            packed, semantic_ids, base_codes = _unpacked_codes(table, layout)
        else:
            semantic_ids = list_column_to_numpy(table.column("semantic_id"), layout.width, np.int64)
            base_codes = list_column_to_numpy(table.column("base_code"), layout.levels, np.int64)
            packed = layout.pack(semantic_ids)  # range checks: InvalidSemanticIdError is a ValueError
            layout.pack_base(base_codes)
        data = SegmentData(
            item_ids=item_ids,
            semantic_ids=semantic_ids,
            base_codes=base_codes,
            fallback=arrow_to_numpy(fallback_col),
            embedding_hashes=arrow_to_numpy(hash_col).astype(np.uint64, copy=False),
            recodes=recodes,
            kept=table.select(list(keep_columns)),
            packed=packed,  # kept: opening an index needs it next
        )
    except (ValueError, TypeError, KeyError, pa.ArrowException) as exc:
        raise CorruptIndexError(f"segment {name} is malformed: {exc}") from None
    return data


def kept_budget(file_bytes: int) -> int:
    """Most bytes a segment file of ``file_bytes`` may decode its kept columns to."""
    return max(KEPT_MIN_BUDGET, KEPT_BYTES_PER_FILE_BYTE * file_bytes)


def _is_bytes(kind: pa.DataType) -> bool:
    return any(test(kind) for test in (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary))


def _check_declared_kept(metadata: pq.FileMetaData, keep_columns: Sequence[str], budget: int, name: str) -> None:
    """The kept column chunks' declared uncompressed sizes (what their pages inflate to) within ``budget``."""
    keep = set(keep_columns)
    declared = 0
    for g in range(metadata.num_row_groups):
        group = metadata.row_group(g)
        for i in range(group.num_columns):
            chunk = group.column(i)
            if chunk.path_in_schema.split(".")[0] in keep:
                declared += chunk.total_uncompressed_size
    if declared > budget:
        raise CorruptIndexError(
            f"segment {name}: its kept columns declare {declared} uncompressed bytes, more than {budget} for a "
            "file of its size; the file is corrupt or was not written by semid"
        )


def _decoded_kept(
    table: pa.Table,
    stored: pa.Schema,
    as_dictionary: Sequence[str],
    keep_columns: Sequence[str],
    budget: int,
    name: str,
) -> pa.Table:
    """``table`` with the columns read dictionary-encoded decoded to their stored types, once the kept
    columns' decoded size (counted from each dictionary's value lengths taken by the indices) is within
    ``budget``."""
    total = 0
    for column in keep_columns:
        chunks = table.column(column).chunks if column in table.column_names else []
        for chunk in chunks:
            if column in as_dictionary and pa.types.is_dictionary(chunk.type):
                lengths = pc.binary_length(chunk.dictionary)
                total += (pc.sum(pc.take(lengths, chunk.indices)).as_py() or 0) + 8 * len(chunk)
            else:
                total += chunk.nbytes
        if total > budget:
            raise CorruptIndexError(
                f"segment {name}: its kept columns decode to more than {budget} bytes (from a file whose size "
                "allows at most that); the file is corrupt or was not written by semid"
            )
    for column in as_dictionary:
        if column in table.column_names:
            at = table.column_names.index(column)
            decoded = table.column(column).cast(stored.field(column).type)
            table = table.set_column(at, stored.field(column), decoded)
    return table


def _unpacked_codes(table: pa.Table, layout: IdLayout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(packed int64 [n], semantic ids [n, L+1], base codes [n, L])`` from the packed columns,
    range-checked (``ValueError`` names the first bad row)."""
    columns = [table.column(PACKED_COLUMNS[name]) for name in ("semantic_id", "base_code")]
    for column in columns:
        if column.null_count or not pa.types.is_int64(column.type):
            raise ValueError(f"packed columns {sorted(PACKED_COLUMNS.values())} must be int64 without nulls")
    packed = arrow_to_numpy(columns[0])
    packed_base = arrow_to_numpy(columns[1])
    semantic_ids = _unpack(packed, layout.bits, layout.width)  # == layout.unpack, one temporary fewer
    base_codes = _unpack(packed_base, layout.bits, layout.levels)
    sizes = np.asarray(layout.sizes, dtype=np.int64)
    bad = (packed < 0) | (packed >> (layout.bits * layout.width) != 0)
    bad |= (packed_base < 0) | (packed_base >> (layout.bits * layout.levels) != 0)
    for pos in np.flatnonzero(sizes < (1 << layout.bits)):  # a full-width position cannot overflow
        bad |= semantic_ids[:, pos] >= sizes[pos]
        if pos < layout.levels:
            bad |= base_codes[:, pos] >= sizes[pos]
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"packed codes of row {row} are out of range for layout {layout.sizes}")
    return packed, semantic_ids, base_codes


def _unpack(packed: np.ndarray, bits: int, width: int) -> np.ndarray:
    """``layout.unpack`` written into an array the index's ``AppendBuffer`` adopts without a copy."""
    shifts = np.arange(width - 1, -1, -1, dtype=np.int64) * bits
    out = AppendBuffer.with_room(packed.shape[0], (width,), np.int64)
    np.right_shift(packed[:, None], shifts[None, :], out=out)
    out &= np.int64((1 << bits) - 1)
    return out


def read_vectors(path: Path, *, vector_dim: int, sha256: str | None = None) -> np.ndarray:
    """float32 ``[n, vector_dim]`` vectors of one segment (its bytes checked against ``sha256`` when given)."""
    try:
        with pq.ParquetFile(segment_source(path, sha256)) as parquet:
            column = parquet.read(columns=["vector"]).column("vector")
        return list_column_to_numpy(column, vector_dim, np.float32)
    except CorruptIndexError:
        raise
    except FileNotFoundError:
        raise CorruptIndexError(f"segment {path.name} is listed in the manifest but missing") from None
    except (OSError, ValueError, TypeError, KeyError, pa.ArrowException) as exc:
        raise CorruptIndexError(f"segment {path.name}: cannot read vectors: {exc}") from None


def list_column_to_numpy(column: pa.ChunkedArray | pa.Array, width: int, dtype: type) -> np.ndarray:
    """A list / fixed-size-list column whose every row has ``width`` values -> ``[n, width]``."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(array)
    if array.null_count:
        raise ValueError("list column has null rows")
    if pa.types.is_fixed_size_list(array.type):
        if array.type.list_size != width:
            raise ValueError(f"list size is {array.type.list_size}; expected {width}")
    elif pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        if n and (pc.min_max(pc.list_value_length(array)).as_py() != {"min": width, "max": width}):
            raise ValueError(f"list rows do not all have {width} values")
    else:
        raise ValueError(f"column type is {array.type}; expected a list")
    values = array.flatten()
    if values.null_count:
        raise ValueError("list values contain nulls")
    return arrow_to_numpy(values).astype(dtype, copy=False).reshape(n, width)


def arrow_to_numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A column without nulls as NumPy, numbers and bools read from Arrow's buffers.

    pyarrow's ``to_numpy`` imports pandas on first use (about 1.5 s on this machine), which would be
    most of the time it takes to open a small index; strings still go through it.
    """
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    kind = array.type
    if pa.types.is_boolean(kind):
        bits = np.frombuffer(array.buffers()[1], dtype=np.uint8)
        return np.unpackbits(bits, bitorder="little", count=array.offset + len(array))[array.offset :].astype(bool)
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        dtype = np.dtype({"float": "float32", "double": "float64", "halffloat": "float16"}.get(str(kind), str(kind)))
        return np.frombuffer(array.buffers()[1], dtype=dtype, count=len(array), offset=array.offset * dtype.itemsize)
    return array.to_numpy(zero_copy_only=False)


def _fixed_list(values: np.ndarray, value_type: pa.DataType, width: int) -> pa.Array:
    flat = pa.array(np.ascontiguousarray(values).reshape(-1), type=value_type)
    return pa.FixedSizeListArray.from_arrays(flat, width)
