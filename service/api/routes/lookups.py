"""Read-only look-ups: an item, an ID, a prefix page, the valid next codes, and resolution of any tuple."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request

from semid.service.api.bodies import decode_resolve_body, is_arrow, read_body
from semid.service.api.deps import StateDep
from semid.service.api.limits import RESOLVE_MAX_BYTES, check_string_id
from semid.service.api.pages import DEFAULT_PAGE, prefix_page
from semid.service.api.schemas import (
    ERRORS,
    ChildrenResponse,
    ItemPublic,
    PrefixPage,
    ResolveRequest,
    ResolveResponse,
)
from semid.service.api.state import ServiceState
from semid.service.api.threads import in_read_thread
from semid.service.errors import InvalidInputError
from semid.service.index.snapshot import MAX_PAGE_LIMIT, IndexSnapshot
from semid.service.lookup import resolve_codes

router = APIRouter(tags=["look-up"])


# The bodies of the hot read routes, called by the routes and by the fast path (service/api/fast_reads.py)


def item_answer(state: ServiceState, item_id: str) -> dict:
    check_string_id(item_id, "item_id")
    return state.index.snapshot.get_item(item_id)


def by_id_answer(state: ServiceState, semantic_id: str) -> dict:
    snapshot = state.index.snapshot
    return snapshot.get_by_semantic_id(snapshot.layout.parse(semantic_id, field="semantic_id"))


def prefix_answer(state: ServiceState, prefix: str, limit: int | None, cursor: str | None) -> dict:
    """``limit`` already within 1..MAX_PAGE_LIMIT (the route's query bounds); None: the default page."""
    limit = min(DEFAULT_PAGE, state.settings.max_page) if limit is None else limit
    if limit > state.settings.max_page:
        raise InvalidInputError(f"limit is {limit}; at most {state.settings.max_page}", field="limit")
    snapshot = state.index.snapshot
    return prefix_page(snapshot, snapshot.layout.parse(prefix), limit=limit, cursor=cursor)


@router.get("/v1/items/{item_id}", response_model=ItemPublic, responses=ERRORS)
async def get_item(item_id: str, state: StateDep) -> dict:
    """The semantic ID (and kept columns) of one item."""
    return item_answer(state, item_id)


@router.get("/v1/ids/{semantic_id}", response_model=ItemPublic, responses=ERRORS)
async def get_by_id(semantic_id: str, state: StateDep) -> dict:
    """The item holding a full semantic ID, written with dashes: 12-201-7-0."""
    return by_id_answer(state, semantic_id)


@router.get("/v1/prefixes/{prefix}", response_model=PrefixPage, responses=ERRORS)
async def prefix_items(
    prefix: str,
    state: StateDep,
    limit: Annotated[
        int | None,
        Query(ge=1, le=MAX_PAGE_LIMIT, description=f"Items per page (default {DEFAULT_PAGE}, or max_page if smaller)."),
    ] = None,
    cursor: Annotated[str | None, Query(max_length=64, description="next_cursor of the previous page.")] = None,
) -> dict:
    """Items under an ID prefix (1..L+1 codes), in ID order, paginated, with the total count."""
    return prefix_answer(state, prefix, limit, cursor)


def _children(snapshot: IndexSnapshot, codes: tuple[int, ...]) -> dict:
    children = snapshot.children(codes)
    return {"prefix": list(codes), "children": [{"code": c, "count": n} for c, n in children]}


@router.get("/v1/prefixes/{prefix}/children", response_model=ChildrenResponse, responses=ERRORS)
async def prefix_children(prefix: str, state: StateDep) -> dict:
    """The valid next codes under a prefix, with item counts: the allowed tokens for constrained decoding."""
    snapshot = state.index.snapshot
    return _children(snapshot, snapshot.layout.parse(prefix))


@router.get("/v1/children", response_model=ChildrenResponse, responses=ERRORS)
async def root_children(state: StateDep) -> dict:
    """The valid first codes, with item counts."""
    return _children(state.index.snapshot, ())


@router.post(
    "/v1/resolve",
    response_model=ResolveResponse,
    responses=ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ResolveRequest.model_json_schema()}},
        }
    },
)
async def resolve(
    request: Request,
    state: StateDep,
    rank: Annotated[
        Literal["prefix", "distance"],
        Query(description="prefix: items sharing the longest prefix first, then by distance; distance: by distance"),
    ] = "prefix",
) -> dict:
    """Any code tuple (e.g. generated) -> the exact item, and k valid IDs near it: by default those sharing
    the longest prefix with it first (nearest first within), then the nearest by code-vector distance."""
    # read here, bounded, and parsed in a worker thread (a body parameter would be parsed on the event loop)
    if is_arrow(request):
        raise InvalidInputError("/v1/resolve takes a JSON body", field="content-type")
    body = await in_read_thread(decode_resolve_body, await read_body(request, RESOLVE_MAX_BYTES))
    if not 1 <= body.k <= state.settings.max_k:
        raise InvalidInputError(f"k is {body.k}; expected 1..{state.settings.max_k}", field="k")
    snapshot = state.index.snapshot
    found = await in_read_thread(resolve_codes, snapshot, state.encoder, body.semantic_id, body.k, rank=rank)
    nearest = [
        {"semantic_id": it["semantic_id"], "item_id": it["item_id"], "distance": d, "item": it}
        for it, d in found.nearest
    ]
    return {"exact": found.exact, "nearest": nearest}
