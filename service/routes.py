"""HTTP routes under /v1: thin wrappers that validate, call the index or encoder, and return."""

from __future__ import annotations

import hmac
from typing import Annotated, Any, TypeVar

import numpy as np
import pyarrow as pa
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from model.catalog import CatalogError, embeddings_to_numpy
from service import bodies
from service.arrow_body import read_arrow_body
from service.bodies import in_read_thread, in_write_thread
from service.errors import InvalidInputError
from service.registry import register_batch
from service.schemas import (
    AssignRequest,
    AssignResponse,
    ChildrenResponse,
    EncodeRequest,
    EncodeResponse,
    ErrorResponse,
    Health,
    ItemPublic,
    PrefixPage,
    ResolveRequest,
    ResolveResponse,
)
from service.state import ServiceState

ARROW_STREAM = "application/vnd.apache.arrow.stream"
M = TypeVar("M", bound=BaseModel)
DEFAULT_PAGE = 100
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 403, 404, 409, 413, 422, 503)
}

router = APIRouter()


class ApiKeyError(Exception):
    def __init__(self, message: str, *, status: int, code: str):
        super().__init__(message)
        self.status = status
        self.code = code


class BatchTooLargeError(Exception):
    def __init__(self, message: str, *, field: str):
        super().__init__(message)
        self.field = field


class NotReadyError(Exception):
    """The index is not loaded (yet): 503."""


async def get_state(request: Request) -> ServiceState:
    state = request.app.state.semid
    if state is None:
        raise NotReadyError("the index is not loaded yet")
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]
ApiKeyHeader = Annotated[str | None, Header(alias="X-API-Key", description="API key for write routes.")]


def require_api_key(state: ServiceState, key: str | None) -> None:
    expected = state.settings.api_key
    if expected is None:
        return
    if not key:
        raise ApiKeyError(
            "this route writes to the index and needs the X-API-Key header", status=401, code="api_key_missing"
        )
    if not hmac.compare_digest(key.encode(), expected.encode()):
        raise ApiKeyError("the X-API-Key header is not the configured API key", status=403, code="api_key_invalid")


def _check_batch(state: ServiceState, n: int, field: str) -> None:
    if n == 0:
        raise InvalidInputError(f"{field} is empty; expected at least one", field=field)
    if n > state.settings.max_batch:
        raise BatchTooLargeError(
            f"{field} has {n} entries; at most {state.settings.max_batch} per request", field=field
        )


def _as_matrix(rows: list[list[float]], field: str) -> np.ndarray:
    widths = {len(r) for r in rows}
    if len(widths) > 1:
        raise InvalidInputError(f"{field} must all have the same dimension, got {sorted(widths)[:5]}", field=field)
    with np.errstate(over="ignore"):  # beyond float32 becomes inf, which the encoder's check rejects (422)
        return np.asarray(rows, dtype=np.float32)


def _ids_array(state: ServiceState, ids: list[Any], field: str = "item_ids") -> np.ndarray:
    if state.index.id_kind == "int":
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise InvalidInputError(f"{field} must be integers for this index", field=field)
        if any(not -(2**63) <= i < 2**63 for i in ids):
            raise InvalidInputError(f"{field} must fit in 64 bits", field=field)
        return np.asarray(ids, dtype=np.int64)
    if not all(isinstance(i, str) for i in ids):
        raise InvalidInputError(f"{field} must be strings for this index", field=field)
    for i in ids:
        bodies.check_string_id(i, field)
    return np.asarray(ids, dtype=object)


def _public_id(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


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


def _json_or_arrow_body(model: type[BaseModel], arrow_doc: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": _inline_schema(model)},
                ARROW_STREAM: {"schema": {"type": "string", "format": "binary", "description": arrow_doc}},
            },
        }
    }


def _parse_json(model: type[M], raw: bytes, max_values: int) -> M:
    """Validate a raw JSON body, after bounding how many values it can expand to."""
    bodies.check_json_size(raw, max_values=max_values)
    try:
        return model.model_validate_json(raw)
    except ValidationError as err:
        raise RequestValidationError(err.errors(include_url=False), body=None) from err


def _content_type(request: Request) -> str:
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type not in ("application/json", "", ARROW_STREAM):
        raise InvalidInputError(
            f"content-type {content_type!r}; expected application/json or {ARROW_STREAM}", field="content-type"
        )
    return content_type


def _encode_job(
    state: ServiceState, raw: bytes, arrow: bool, register_query: bool
) -> tuple[np.ndarray, list[Any] | None, bool]:
    """Decode an encode body (worker thread): (embeddings, item ids or None, register)."""
    if arrow:
        ids, x, _ = _read_arrow(state, raw, need_ids=register_query, table_field="embeddings")
        item_ids = None if ids is None else [_public_id(i) for i in ids.tolist()]
        return x, item_ids, register_query
    if register_query:
        raise InvalidInputError(
            'the register query parameter applies to Arrow bodies; in a JSON body send "register": true',
            field="register",
        )
    body = _parse_json(EncodeRequest, raw, bodies.json_value_cap(state, "embeddings"))
    _check_batch(state, len(body.embeddings), "embeddings")
    return _as_matrix(body.embeddings, "embeddings"), body.item_ids, body.register_items


@router.post(
    "/v1/encode",
    response_model=EncodeResponse,
    responses=ERRORS,
    tags=["ids"],
    openapi_extra=_json_or_arrow_body(
        EncodeRequest, "Arrow IPC stream with an `embedding` column and optionally `item_id`; ?register=true"
    ),
)
async def encode(
    request: Request,
    state: StateDep,
    x_api_key: ApiKeyHeader = None,
    register: Annotated[bool, Query(description="Arrow bodies only: register unknown items.")] = False,
) -> JSONResponse:
    """Embeddings -> base codes; full semantic IDs for known items, or for new ones with register=true."""
    arrow = _content_type(request) == ARROW_STREAM
    raw = await request.body()
    x, item_ids, register_items = await in_read_thread(_encode_job, state, raw, arrow, register)
    if register_items:
        require_api_key(state, x_api_key)
        result = await in_write_thread(request, _encode, state, request, x, item_ids, True)
    else:
        result = await in_read_thread(_encode, state, request, x, item_ids, False)
    return JSONResponse(result)


def _encode(
    state: ServiceState,
    request: Request,
    x: np.ndarray,
    item_ids: list[Any] | None,
    register_items: bool,
) -> dict[str, Any]:
    n = x.shape[0]
    _check_batch(state, n, "embeddings")
    if item_ids is not None and len(item_ids) != n:
        raise InvalidInputError(f"item_ids has {len(item_ids)} entries for {n} embeddings", field="item_ids")
    if register_items and item_ids is None:
        raise InvalidInputError("register=true needs item_ids, one per embedding", field="item_ids")
    x = state.encoder.check(x)
    encoded = state.encoder.encode(x, alternatives=1)
    layout = state.index.layout
    sids: list[list[int] | None] = [None] * n
    existing: list[bool | None] = [None] * n
    segment = None
    if item_ids is not None:
        ids = _ids_array(state, item_ids)
        if register_items:
            reg = register_batch(
                state.index, state.encoder, item_ids=ids, embeddings=x, lock_timeout=state.settings.write_lock_timeout
            )
            sids = reg.semantic_ids.tolist()
            existing = reg.existing.tolist()
            segment = reg.segment
            request.app.state.metrics.registered.inc(int((~reg.existing).sum()))
        else:
            rows = state.index.lookup_items(ids)
            known = state.index.state.semantic_ids[np.maximum(rows, 0)].tolist()
            sids = [k if r >= 0 else None for k, r in zip(known, rows.tolist(), strict=True)]
            existing = [r >= 0 for r in rows.tolist()]
    request.app.state.metrics.encoded.inc(n)
    base = encoded.base_codes.tolist()
    shown_ids = item_ids or [None] * n
    results = [
        {
            "base_code": b,
            "semantic_id": s,
            "token": layout.token(s) if s is not None else None,
            "item_id": i,
            "existing": e,
        }
        for b, s, i, e in zip(base, sids, shown_ids, existing, strict=True)
    ]
    return {"results": results, "segment": segment}


_ASSIGN_BODY = _json_or_arrow_body(
    AssignRequest, "Arrow IPC stream with `item_id`, `embedding` and the index's kept columns"
)


def _read_arrow(
    state: ServiceState, raw: bytes, *, need_ids: bool = True, table_field: str = "items"
) -> tuple[np.ndarray | None, np.ndarray, dict[str, pa.Array]]:
    """(item ids or None, embeddings, kept columns) from an Arrow IPC stream body, bounded and validated."""
    table = read_arrow_body(
        raw,
        max_rows=state.settings.max_batch,
        max_bytes=bodies.arrow_byte_cap(state),
        rows_field=table_field,
    )
    for col in ("item_id", "embedding") if need_ids else ("embedding",):
        if col not in table.column_names:
            raise InvalidInputError(f"Arrow stream has no column {col!r}", field=col)
    _check_batch(state, table.num_rows, table_field)
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
    if pa.types.is_integer(id_col.type) or pa.types.is_string(id_col.type) or pa.types.is_large_string(id_col.type):
        ids = _ids_array(state, id_col.to_pylist(), "item_id")
    else:
        raise InvalidInputError(f"item_id has type {id_col.type}; expected integers or strings", field="item_id")
    return ids, emb, columns


def _read_json_items(state: ServiceState, raw: bytes) -> tuple[np.ndarray, np.ndarray, dict[str, pa.Array]]:
    body = _parse_json(AssignRequest, raw, bodies.json_value_cap(state, "items"))
    _check_batch(state, len(body.items), "items")
    ids = _ids_array(state, [it.item_id for it in body.items], "items.item_id")
    emb = _as_matrix([it.embedding for it in body.items], "items.embedding")
    columns = {}
    for c in state.index.keep_columns:
        values = [(it.model_extra or {}).get(c) for it in body.items]
        try:
            columns[c] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
            raise InvalidInputError(f"items.{c} has mixed or unsupported values: {err}", field=f"items.{c}") from err
    return ids, emb, columns


def _assign_job(state: ServiceState, raw: bytes, arrow: bool) -> tuple[np.ndarray, np.ndarray, dict[str, pa.Array]]:
    """Decode and check an assign body (worker thread): (item ids, embeddings, kept columns)."""
    ids, emb, columns = _read_arrow(state, raw) if arrow else _read_json_items(state, raw)
    assert ids is not None  # _read_arrow requires item_id by default
    return ids, state.encoder.check(emb, field="embedding"), columns


@router.post("/v1/assign", response_model=AssignResponse, responses=ERRORS, tags=["ids"], openapi_extra=_ASSIGN_BODY)
async def assign(
    request: Request,
    state: StateDep,
    x_api_key: ApiKeyHeader = None,
    recode_changed: Annotated[
        bool,
        Query(
            description="Re-code known items whose embedding changed (same base code keeps the ID; else a new "
            "ID and the old one stays reserved). Default: they keep their IDs and are flagged."
        ),
    ] = False,
) -> JSONResponse:
    """Register many items at once (JSON or an Arrow IPC stream); new ones land in one atomic segment."""
    require_api_key(state, x_api_key)
    arrow = _content_type(request) == ARROW_STREAM
    raw = await request.body()
    ids, emb, columns = await in_read_thread(_assign_job, state, raw, arrow)
    reg = await in_write_thread(
        request,
        register_batch,
        state.index,
        state.encoder,
        item_ids=ids,
        embeddings=emb,
        columns=columns,
        recode_changed=recode_changed,
        lock_timeout=state.settings.write_lock_timeout,
    )
    request.app.state.metrics.registered.inc(int((~reg.existing).sum()))
    layout = state.index.layout
    sids = reg.semantic_ids.tolist()
    results = [
        {
            "item_id": _public_id(i),
            "semantic_id": s,
            "token": layout.token(s),
            "existing": bool(e),
            "embedding_changed": bool(c),
            "recoded": bool(r),
        }
        for i, s, e, c, r in zip(ids.tolist(), sids, reg.existing, reg.changed, reg.recoded, strict=True)
    ]
    return JSONResponse({"results": results, "segment": reg.segment, "fallback": reg.fallback})


@router.get("/v1/items/{item_id}", response_model=ItemPublic, responses=ERRORS, tags=["look-up"])
async def get_item(item_id: str, state: StateDep) -> JSONResponse:
    """The semantic ID (and kept columns) of one item."""
    bodies.check_string_id(item_id, "item_id")
    return JSONResponse(state.index.get_item(item_id))


@router.get("/v1/ids/{semantic_id}", response_model=ItemPublic, responses=ERRORS, tags=["look-up"])
async def get_by_id(semantic_id: str, state: StateDep) -> JSONResponse:
    """The item holding a full semantic ID, written with dashes: 12-201-7-0."""
    layout = state.index.layout
    try:
        codes = layout.parse(semantic_id)
    except InvalidInputError as err:
        err.field = "semantic_id"
        raise
    return JSONResponse(state.index.get_by_semantic_id(codes))


@router.get("/v1/prefixes/{prefix}", response_model=PrefixPage, responses=ERRORS, tags=["look-up"])
async def prefix_items(
    prefix: str,
    state: StateDep,
    limit: Annotated[
        int | None, Query(ge=1, le=10_000, description="Items per page (default 100, or max_page if smaller).")
    ] = None,
    cursor: Annotated[str | None, Query(max_length=64, description="next_cursor of the previous page.")] = None,
) -> JSONResponse:
    """Items under an ID prefix (1..L+1 codes), in ID order, paginated, with the total count."""
    if limit is None:
        limit = min(DEFAULT_PAGE, state.settings.max_page)
    if limit > state.settings.max_page:
        raise InvalidInputError(f"limit is {limit}; at most {state.settings.max_page}", field="limit")
    page = state.index.prefix_items(state.index.layout.parse(prefix), limit=limit, cursor=cursor)
    return JSONResponse(
        {"prefix": list(page.prefix), "count": page.count, "items": page.items, "next_cursor": page.next_cursor}
    )


def _children(state: ServiceState, codes: tuple[int, ...]) -> JSONResponse:
    children = state.index.children(codes)
    return JSONResponse({"prefix": list(codes), "children": [{"code": c, "count": n} for c, n in children]})


@router.get("/v1/prefixes/{prefix}/children", response_model=ChildrenResponse, responses=ERRORS, tags=["look-up"])
async def prefix_children(prefix: str, state: StateDep) -> JSONResponse:
    """The valid next codes under a prefix, with item counts: the allowed tokens for constrained decoding."""
    return _children(state, state.index.layout.parse(prefix))


@router.get("/v1/children", response_model=ChildrenResponse, responses=ERRORS, tags=["look-up"])
async def root_children(state: StateDep) -> JSONResponse:
    """The valid first codes, with item counts."""
    return _children(state, ())


@router.post("/v1/resolve", response_model=ResolveResponse, responses=ERRORS, tags=["look-up"])
def resolve(body: ResolveRequest, state: StateDep) -> JSONResponse:
    """Any code tuple (e.g. generated) -> the exact item, or the k nearest valid IDs and their items."""
    layout = state.index.layout
    if not 1 <= body.k <= state.settings.max_k:
        raise InvalidInputError(f"k is {body.k}; expected 1..{state.settings.max_k}", field="k")
    try:
        codes = layout.validate_prefix(body.semantic_id, min_length=1)
    except InvalidInputError as err:
        err.field = "semantic_id"
        raise
    exact = None
    if len(codes) == layout.width:
        rows = state.index.state.rows_of_packed(layout.pack(np.array([codes])))
        if rows[0] >= 0:
            exact = state.index.item(int(rows[0]))
    base = np.array([codes[: layout.levels]], dtype=np.int64)
    distances, rows = state.index.nearest(state.encoder.vectors(base), body.k)
    items = state.index.items(rows[0]) if rows.shape[1] else []
    nearest = [
        {"semantic_id": it["semantic_id"], "item_id": it["item_id"], "distance": float(d), "item": it}
        for it, d in zip(items, distances[0].tolist(), strict=True)
    ]
    return JSONResponse({"exact": exact, "nearest": nearest})


@router.get("/healthz", response_model=Health, tags=["operations"])
async def healthz() -> dict:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", response_model=Health, responses={503: {"model": ErrorResponse}}, tags=["operations"])
async def readyz(request: Request) -> JSONResponse:
    """Readiness: the index and checkpoint are loaded."""
    state = request.app.state.semid
    if state is None:
        return JSONResponse({"error": {"code": "not_ready", "message": "the index is loading"}}, status_code=503)
    return JSONResponse({"status": "ready", "items": len(state.index), "fingerprint": state.index.fingerprint})
