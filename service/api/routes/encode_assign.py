"""Write-capable routes: `/v1/encode` (optionally registering) and `/v1/assign`."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Query, Request

from semid.service.api.bodies import decode_assign_body, decode_encode_body, is_arrow, json_or_arrow_body
from semid.service.api.deps import ApiKeyHeader, StateDep, require_writer
from semid.service.api.schemas import ERRORS, AssignRequest, AssignResponse, EncodeRequest, EncodeResponse
from semid.service.api.threads import in_read_thread, in_write_thread
from semid.service.placement import encode_items, register_batch

router = APIRouter(tags=["ids"])


def _ids(values: np.ndarray | None, n: int) -> list[Any]:
    return [None] * n if values is None else values.tolist()


@router.post(
    "/v1/encode",
    response_model=EncodeResponse,
    responses=ERRORS,
    openapi_extra=json_or_arrow_body(
        EncodeRequest, "Arrow IPC stream with an `embedding` column and optionally `item_id`; ?register=true"
    ),
)
async def encode(
    request: Request,
    state: StateDep,
    x_api_key: ApiKeyHeader = None,
    register: Annotated[bool, Query(description="Arrow bodies only: register unknown items.")] = False,
) -> dict:
    """Embeddings -> base codes; full semantic IDs for known items, or for new ones with register=true."""
    arrow = is_arrow(request)
    body = await in_read_thread(decode_encode_body, state, await request.body(), arrow, register)
    call = partial(
        encode_items,
        state.index,
        state.encoder,
        body.embeddings,
        body.item_ids,
        register=body.register,
        lock_timeout=state.settings.write_lock_timeout,
    )
    if body.register:
        require_writer(state, x_api_key)
        out = await in_write_thread(request, call)  # registering writes: the write pool
    else:
        out = await in_read_thread(call)
    request.app.state.metrics.encoded.inc(len(out.base_codes))
    request.app.state.metrics.registered.inc(out.registered)
    token = state.index.layout.token
    ids = _ids(body.item_ids, len(out.base_codes))
    rows = zip(out.base_codes.tolist(), out.semantic_ids, ids, out.existing, strict=True)
    results = [
        {"base_code": b, "semantic_id": s, "token": token(s) if s else None, "item_id": i, "existing": e}
        for b, s, i, e in rows
    ]
    return {"results": results, "segment": out.segment}


@router.post(
    "/v1/assign",
    response_model=AssignResponse,
    responses=ERRORS,
    openapi_extra=json_or_arrow_body(
        AssignRequest, "Arrow IPC stream with `item_id`, `embedding` and the index's kept columns"
    ),
)
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
) -> dict:
    """Register many items at once (JSON or an Arrow IPC stream); new ones land in one atomic segment."""
    require_writer(state, x_api_key)
    body = await in_read_thread(decode_assign_body, state, await request.body(), is_arrow(request))
    reg = await in_write_thread(
        request,
        register_batch,
        state.index,
        state.encoder,
        item_ids=body.item_ids,
        embeddings=body.embeddings,
        columns=body.columns,
        recode_changed=recode_changed,
        lock_timeout=state.settings.write_lock_timeout,
    )
    request.app.state.metrics.registered.inc(int((~reg.existing).sum()))
    token = state.index.layout.token
    rows = zip(body.item_ids.tolist(), reg.semantic_ids.tolist(), reg.existing, reg.changed, reg.recoded, strict=True)
    results = [
        {
            "item_id": i,
            "semantic_id": s,
            "token": token(s),
            "existing": bool(e),
            "embedding_changed": bool(c),
            "recoded": bool(r),
        }
        for i, s, e, c, r in rows
    ]
    return {"results": results, "segment": reg.segment, "fallback": reg.fallback}
