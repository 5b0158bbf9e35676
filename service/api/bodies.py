"""Request bodies, JSON or Arrow IPC, decoded into arrays (in a worker thread, bounded first).

Each decoder returns NumPy arrays and Arrow columns ready for the core; every failure is a
:class:`~semid.service.errors.SemidError` naming the field (or FastAPI's validation error for JSON).

JSON encode bodies are parsed by the first of three paths that takes them. simdjson
(:mod:`semid.service.api.json_matrix`) turns a plain body straight into a float32 matrix without a Python float
per number; msgspec (typed, strict floats, checked in C) takes what simdjson hands over; pydantic parses
whatever msgspec refuses. Each fast path takes only bodies pydantic accepts with the same values (tested on
fixed hostile bodies and seeded mutations), so every error a client sees, and every body accepted, stays
pydantic's. Arrow IPC bodies skip parsing entirely.

Every JSON body (encode, assign, resolve) is bounded before pydantic sees it: the values it can hold
(:func:`~semid.service.api.limits.check_json_size`), then its structure
(:mod:`semid.service.api.json_shape`: batch lengths, keys per object); pydantic stops each list at its first
bad entry, so a refused body builds a handful of errors, not one per value.

Where a JSON request's time goes, stage by stage (the bound, the parse, the encoding, the response), is in
benchmarks/results/json_body_speed.md. A path that makes no Python float through msgspec.Raw, NumPy and Arrow's
CSV reader was slower than msgspec and is kept in the benchmark only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
import numpy as np
import pyarrow as pa
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from semid.model.data.catalog import CatalogError, embeddings_to_numpy
from semid.service.api.arrow_body import read_arrow_body
from semid.service.api.json_matrix import JsonEncodeBody, read_encode_body
from semid.service.api.json_shape import SPARE_KEYS, BodyShape, check_shape
from semid.service.api.limits import (
    RESOLVE_MAX_VALUES,
    arrow_byte_cap,
    check_batch,
    check_json_size,
    check_string_id,
    json_value_cap,
)
from semid.service.api.schemas import AssignRequest, EncodeRequest, ResolveRequest
from semid.service.api.state import ServiceState
from semid.service.errors import BatchTooLargeError, InvalidInputError

ARROW_STREAM = "application/vnd.apache.arrow.stream"
M = TypeVar("M", bound=BaseModel)


class _EncodeJson(msgspec.Struct, forbid_unknown_fields=True):
    """The fast path's view of an :class:`EncodeRequest` body. It accepts a subset of what pydantic
    accepts (floats: JSON numbers only; no NaN/Infinity, lax booleans or the field's Python name),
    and the item ids and flag it returns are validated by pydantic again."""

    embeddings: list[list[float]]
    item_ids: list[int | str] | None = None
    register: bool = False


_ENCODE_JSON = msgspec.json.Decoder(_EncodeJson)


@dataclass
class EncodeBody:
    embeddings: np.ndarray  # float32 [N, D], not yet checked against the checkpoint
    item_ids: np.ndarray | None
    register: bool


@dataclass
class AssignBody:
    item_ids: np.ndarray
    embeddings: np.ndarray  # float32 [N, D], checked
    columns: dict[str, pa.Array]  # the index's kept columns


def is_arrow(request: Request) -> bool:
    """Whether the body is an Arrow IPC stream; 422 for any content type but JSON or Arrow."""
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type not in ("application/json", "", ARROW_STREAM):
        raise InvalidInputError(
            f"content-type {content_type!r}; expected application/json or {ARROW_STREAM}", field="content-type"
        )
    return content_type == ARROW_STREAM


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body, or 413 as soon as it is over ``max_bytes`` (by its Content-Length, or while it streams in),
    for routes whose bodies are far smaller than the server-wide limit."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise BatchTooLargeError(f"request body over {max_bytes} bytes", field="body")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise BatchTooLargeError(f"request body over {max_bytes} bytes", field="body")
        chunks.append(chunk)
    return b"".join(chunks)


def encode_shape(state: ServiceState) -> BodyShape:
    most = state.settings.max_batch
    return BodyShape(frozenset({"embeddings", "item_ids", "register"}), {"embeddings": most, "item_ids": most})


def assign_shape(state: ServiceState) -> BodyShape:
    keys = 2 + len(state.index.keep_columns) + SPARE_KEYS  # item_id, embedding, the kept columns, others
    return BodyShape(frozenset({"items"}), {"items": state.settings.max_batch}, entries_of="items", entry_keys=keys)


RESOLVE_SHAPE = BodyShape(frozenset({"semantic_id", "k"}))


def decode_encode_body(state: ServiceState, raw: bytes, arrow: bool, register_query: bool) -> EncodeBody:
    if arrow:
        ids, x, _ = _read_arrow(state, raw, need_ids=register_query, rows_field="embeddings")
        body = EncodeBody(x, ids, register_query)
    else:
        if register_query:
            raise InvalidInputError(
                'the register query parameter applies to Arrow bodies; in a JSON body send "register": true',
                field="register",
            )
        req = parse_encode_json(raw, json_value_cap(state), encode_shape(state))
        check_batch(state, len(req.embeddings), "embeddings")
        ids = None if req.item_ids is None else ids_array(state, req.item_ids)
        body = EncodeBody(_as_matrix(req.embeddings, "embeddings"), ids, req.register_items)
    n = body.embeddings.shape[0]
    check_batch(state, n, "embeddings")
    if body.item_ids is not None and len(body.item_ids) != n:
        raise InvalidInputError(f"item_ids has {len(body.item_ids)} entries for {n} embeddings", field="item_ids")
    return body


def decode_assign_body(state: ServiceState, raw: bytes, arrow: bool) -> AssignBody:
    if arrow:
        ids, emb, columns = _read_arrow(state, raw, need_ids=True, rows_field="items")
        assert ids is not None  # need_ids
    else:
        ids, emb, columns = _read_json_items(state, raw)
    return AssignBody(ids, state.encoder.check(emb, field="embedding"), columns)


def decode_resolve_body(raw: bytes) -> ResolveRequest:
    return parse_json(ResolveRequest, raw, RESOLVE_MAX_VALUES, RESOLVE_SHAPE)


def parse_json(model: type[M], raw: bytes, max_values: int, shape: BodyShape | None = None) -> M:
    """Validate a raw JSON body, after bounding how many values it can expand to and (given its ``shape``)
    how many keys and entries it holds."""
    check_json_size(raw, max_values=max_values)
    if shape is not None:
        check_shape(raw, shape)
    try:
        return model.model_validate_json(raw)
    except ValidationError as err:
        # without each error's input: the handler does not show it, and a refused value may be megabytes
        raise RequestValidationError(err.errors(include_url=False, include_input=False), body=None) from err


def parse_encode_json(raw: bytes, max_values: int, shape: BodyShape | None = None) -> EncodeRequest:
    """An encode body, bounded before parsing, then parsed by the first of: simdjson straight to a float32
    matrix (``embeddings`` is then an array), msgspec, pydantic. Each fast path takes only bodies pydantic
    accepts with the same values, and pydantic validates their ids and flag, so pydantic's errors are the
    ones raised."""
    open_brackets = check_json_size(raw, max_values=max_values)
    fast: JsonEncodeBody | _EncodeJson | bool | None = read_encode_body(raw, open_brackets)
    if fast is False:  # a row holds a value that is not a number: pydantic's error, without msgspec's pass
        return parse_json(EncodeRequest, raw, max_values, shape)
    try:
        if not isinstance(fast, JsonEncodeBody):
            fast = _ENCODE_JSON.decode(raw)
        head = EncodeRequest.model_validate({"embeddings": [], "item_ids": fast.item_ids, "register": fast.register})
    except (msgspec.DecodeError, UnicodeDecodeError, ValidationError):  # msgspec: invalid UTF-8 in a key
        return parse_json(EncodeRequest, raw, max_values, shape)
    return EncodeRequest.model_construct(
        embeddings=fast.embeddings, item_ids=head.item_ids, register_items=head.register_items
    )


def ids_array(state: ServiceState, ids: list[Any], field: str = "item_ids") -> np.ndarray:
    """Item ids of the index's kind (int64 or str objects), or 422 naming ``field``."""
    if state.index.id_kind == "int":
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise InvalidInputError(f"{field} must be integers for this index", field=field)
        if any(not -(2**63) <= i < 2**63 for i in ids):
            raise InvalidInputError(f"{field} must fit in 64 bits", field=field)
        return np.asarray(ids, dtype=np.int64)
    if not all(isinstance(i, str) for i in ids):
        raise InvalidInputError(f"{field} must be strings for this index", field=field)
    for i in ids:
        check_string_id(i, field)
    return np.asarray(ids, dtype=object)


def _as_matrix(rows: list[list[float]] | np.ndarray, field: str) -> np.ndarray:
    if isinstance(rows, np.ndarray):  # the simdjson path's matrix: already float32 and rectangular
        return rows
    widths = {len(r) for r in rows}
    if len(widths) > 1:
        raise InvalidInputError(f"{field} must all have the same dimension, got {sorted(widths)[:5]}", field=field)
    with np.errstate(over="ignore"):  # beyond float32 becomes inf, which the encoder's check rejects (422)
        # the same float32 values as np.asarray(rows, dtype=np.float32) (each float rounded once), ~1.4x quicker
        return np.array(rows, dtype=np.float64).astype(np.float32)


def _read_arrow(
    state: ServiceState, raw: bytes, *, need_ids: bool, rows_field: str
) -> tuple[np.ndarray | None, np.ndarray, dict[str, pa.Array]]:
    """(item ids or None, embeddings, kept columns) from an Arrow IPC stream body, bounded and validated."""
    table = read_arrow_body(
        raw, max_rows=state.settings.max_batch, max_bytes=arrow_byte_cap(state), rows_field=rows_field
    )
    for col in ("item_id", "embedding") if need_ids else ("embedding",):
        if col not in table.column_names:
            raise InvalidInputError(f"Arrow stream has no column {col!r}", field=col)
    check_batch(state, table.num_rows, rows_field)
    try:
        emb = embeddings_to_numpy(table.column("embedding").combine_chunks(), "embedding", 0, None)
    except CatalogError as err:
        raise InvalidInputError(str(err), field="embedding") from err
    columns = {c: table.column(c).combine_chunks() for c in state.index.keep_columns if c in table.column_names}
    for c in state.index.keep_columns:
        columns.setdefault(c, pa.nulls(table.num_rows, pa.string()))
    if "item_id" not in table.column_names:
        return None, emb, columns
    id_col = table.column("item_id").combine_chunks()
    if id_col.null_count:
        raise InvalidInputError("item_id has nulls", field="item_id")
    kind = id_col.type
    if not (pa.types.is_integer(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise InvalidInputError(f"item_id has type {id_col.type}; expected integers or strings", field="item_id")
    return ids_array(state, id_col.to_pylist(), "item_id"), emb, columns


def _read_json_items(state: ServiceState, raw: bytes) -> tuple[np.ndarray, np.ndarray, dict[str, pa.Array]]:
    body = parse_json(AssignRequest, raw, json_value_cap(state), assign_shape(state))
    check_batch(state, len(body.items), "items")
    ids = ids_array(state, [it.item_id for it in body.items], "items.item_id")
    emb = _as_matrix([it.embedding for it in body.items], "items.embedding")
    _check_extra_fields(body.items, state.index.keep_columns)
    columns = {}
    for c in state.index.keep_columns:
        values = [(it.model_extra or {}).get(c) for it in body.items]
        try:
            columns[c] = pa.array(values)
        except (pa.ArrowException, OverflowError) as err:  # OverflowError: an integer beyond 64 bits
            raise InvalidInputError(f"items.{c} has mixed or unsupported values: {err}", field=f"items.{c}") from err
    return ids, emb, columns


def _check_extra_fields(items: list[Any], keep: tuple[str, ...]) -> None:
    """A field that is neither item_id, embedding nor a column the index keeps would be dropped: 422 naming it."""
    for row, it in enumerate(items):
        for name in it.model_extra or ():
            if name not in keep:
                kept = f"the index keeps {list(keep)}" if keep else "the index keeps no extra columns"
                raise InvalidInputError(
                    f"items[{row}].{name} is not a field of an item ({kept}; build it with --keep-columns to add one)",
                    field=f"items.{name}",
                )


def _inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its $defs inlined, for request bodies documented by hand."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


def json_or_arrow_body(model: type[BaseModel], arrow_doc: str) -> dict[str, Any]:
    """OpenAPI ``requestBody`` of a route that reads JSON (``model``) or an Arrow IPC stream."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": _inline_schema(model)},
                ARROW_STREAM: {"schema": {"type": "string", "format": "binary", "description": arrow_doc}},
            },
        }
    }
