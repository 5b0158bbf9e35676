"""Arrow IPC request bodies, read defensively: bounded before decoding, fully validated before use.

A client's Arrow stream is hostile until proven otherwise. pyarrow's stream reader checks the
flatbuffer metadata but not the data: string offsets pointing outside their buffer are only found by
``validate(full=True)`` (``to_pylist`` on them reads out of bounds and can crash the process), and a
compressed buffer may declare any uncompressed length (a 13 KB zstd stream can expand to 400 MB).
So each message is inspected before it is decoded:

1. only a schema followed by record batches (no dictionaries, tensors or a second schema);
2. the schema has unique column names;
3. each record batch's row count (from its metadata) keeps the running total within ``max_rows``, and
   its buffers' decoded size (the uncompressed length each compressed buffer declares in its first
   8 bytes, or the buffer's own length) keeps the running total within ``max_bytes``;
4. only then is the batch decoded and validated with ``validate(full=True)``.

Every failure is an :class:`ArrowBodyError` (HTTP 422) or :class:`BatchTooLargeError` (413).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import pyarrow as pa

from semid.service.errors import BatchTooLargeError, InvalidInputError

# Message.fbs: the header union's type tag and RecordBatch's fields, by vtable slot
_HEADER_SCHEMA, _HEADER_DICTIONARY, _HEADER_RECORD_BATCH = 1, 2, 3
_MSG_HEADER_TYPE, _MSG_HEADER = 1, 2
_RB_LENGTH, _RB_BUFFERS, _RB_COMPRESSION = 0, 2, 3
_NO_COMPRESSION = -1  # a compressed body's buffer prefix meaning "stored uncompressed"


class ArrowBodyError(InvalidInputError):
    """An Arrow IPC body that is malformed, inconsistent or of a shape semid does not accept."""

    code = "invalid_arrow"

    def __init__(self, message: str, *, field: str = "body") -> None:
        super().__init__(message, field=field)


@dataclass(frozen=True)
class _BatchHeader:
    rows: int
    decoded_bytes: int


class _Flat:
    """Just enough of the flatbuffers wire format to read a few fields of a verified Message."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def u32(self, pos: int) -> int:
        return struct.unpack_from("<I", self.data, pos)[0]

    def root(self) -> int:
        return self.u32(0)

    def field_pos(self, table: int, slot: int) -> int | None:
        vtable = table - struct.unpack_from("<i", self.data, table)[0]
        vtable_size = struct.unpack_from("<H", self.data, vtable)[0]
        entry = 4 + 2 * slot
        if entry + 2 > vtable_size:
            return None
        offset = struct.unpack_from("<H", self.data, vtable + entry)[0]
        return table + offset if offset else None

    def scalar(self, table: int, slot: int, fmt: str, default: int = 0) -> int:
        pos = self.field_pos(table, slot)
        return default if pos is None else struct.unpack_from(fmt, self.data, pos)[0]

    def ref(self, table: int, slot: int) -> int | None:
        pos = self.field_pos(table, slot)
        return None if pos is None else pos + self.u32(pos)


def _batch_header(message: pa.ipc.Message) -> _BatchHeader:
    """Row count and decoded byte size of a record-batch message, read without decoding its body."""
    flat = _Flat(message.metadata.to_pybytes())
    root = flat.root()
    batch = flat.ref(root, _MSG_HEADER)
    if batch is None:
        raise ArrowBodyError("Arrow record batch message has no header")
    rows = flat.scalar(batch, _RB_LENGTH, "<q")
    body = message.body
    body_size = 0 if body is None else body.size
    compressed = flat.ref(batch, _RB_COMPRESSION) is not None
    buffers = flat.ref(batch, _RB_BUFFERS)
    decoded = 0
    if buffers is not None:
        count = flat.u32(buffers)
        for i in range(count):
            offset, length = struct.unpack_from("<qq", flat.data, buffers + 4 + 16 * i)
            if offset < 0 or length < 0 or offset + length > body_size:
                raise ArrowBodyError(f"Arrow buffer {i} lies outside the message body ({offset}+{length}>{body_size})")
            if compressed and length >= 8:
                declared = struct.unpack_from("<q", body, offset)[0]
                if declared != _NO_COMPRESSION:
                    if declared < 0:
                        raise ArrowBodyError(f"Arrow buffer {i} declares a negative uncompressed length")
                    length = declared
            decoded += length
    if rows < 0:
        raise ArrowBodyError(f"Arrow record batch declares {rows} rows")
    return _BatchHeader(rows=rows, decoded_bytes=decoded)


def read_arrow_body(raw: bytes, *, max_rows: int, max_bytes: int, rows_field: str = "items") -> pa.Table:
    """The table of an Arrow IPC stream body, after bounding and fully validating every batch."""
    try:
        reader = pa.ipc.MessageReader.open_stream(pa.BufferReader(raw))
    except (pa.ArrowException, OSError, ValueError) as err:
        raise ArrowBodyError(f"body is not an Arrow IPC stream: {err}") from err
    schema: pa.Schema | None = None
    batches: list[pa.RecordBatch] = []
    rows = decoded = 0
    while True:
        try:
            message = reader.read_next_message()
        except StopIteration:
            break
        except (pa.ArrowException, OSError, ValueError) as err:
            raise ArrowBodyError(f"body is not a valid Arrow IPC stream: {err}") from err
        if message.type == "schema":
            if schema is not None:
                raise ArrowBodyError("Arrow stream has a second schema message")
            schema = _read_schema(message)
            continue
        if message.type != "record batch":
            raise ArrowBodyError(f"Arrow stream has a {message.type} message; only record batches are accepted")
        if schema is None:
            raise ArrowBodyError("Arrow stream has a record batch before its schema")
        try:
            header = _batch_header(message)
        except struct.error as err:
            raise ArrowBodyError(f"Arrow record batch metadata is malformed: {err}") from err
        rows += header.rows
        decoded += header.decoded_bytes
        if rows > max_rows:
            raise BatchTooLargeError(
                f"{rows_field} has more than {max_rows} rows; at most {max_rows} per request", field=rows_field
            )
        if decoded > max_bytes:
            raise BatchTooLargeError(
                f"Arrow body would decode to more than {max_bytes} bytes; at most {max_bytes} per request",
                field="body",
            )
        batches.append(_read_batch(message, schema))
    if schema is None:
        raise ArrowBodyError("body is not an Arrow IPC stream: it has no schema message")
    try:
        return pa.Table.from_batches(batches, schema=schema)
    except (pa.ArrowException, ValueError) as err:
        raise ArrowBodyError(f"Arrow record batches do not match the schema: {err}") from err


def _read_schema(message: pa.ipc.Message) -> pa.Schema:
    try:
        schema = pa.ipc.read_schema(message)
    except (pa.ArrowException, OSError, ValueError) as err:
        raise ArrowBodyError(f"Arrow schema is invalid: {err}") from err
    seen: set[str] = set()
    for name in schema.names:
        if name in seen:
            raise ArrowBodyError(f"Arrow stream has the column {name!r} twice; column names must be unique", field=name)
        seen.add(name)
    return schema


def _read_batch(message: pa.ipc.Message, schema: pa.Schema) -> pa.RecordBatch:
    try:
        batch = pa.ipc.read_record_batch(message, schema)
        batch.validate(full=True)
    except (pa.ArrowException, OSError, ValueError, MemoryError) as err:
        raise ArrowBodyError(f"Arrow record batch is invalid: {err}") from err
    return batch
