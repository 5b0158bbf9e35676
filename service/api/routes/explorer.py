"""The web explorer's views of what codes mean: a node's terms, label and representative items, and the map."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from semid.service.api.deps import StateDep
from semid.service.api.schemas import ERRORS, ItemPublic
from semid.service.api.threads import in_read_thread
from semid.service.explorer.nodes import explain_prefix
from semid.service.explorer.projection import DEFAULT_MAP_ITEMS, MAX_MAP_ITEMS, MAX_SEED, code_map

router = APIRouter(tags=["explorer"])


class Term(BaseModel):
    term: str
    items: int = Field(description="Scanned items of the node holding the term.")
    share: float = Field(description="Fraction of the node's items holding it (estimated from the scanned ones).")
    lift: float = Field(description="share / the parent's share (1 at the root).")


class NodeMeaning(BaseModel):
    prefix: list[int]
    count: int = Field(description="Items under the prefix.")
    scanned: int = Field(description="Items read for the terms and representatives (a sample of a large node).")
    label: str | None = Field(description="The first two terms, joined by ' · '; null without kept text.")
    terms: list[Term] = Field(description="Terms that set the node apart from its parent first, then frequent ones.")
    representatives: list[ItemPublic] = Field(description="Scanned items nearest the node's mean code vector.")


class Explanation(BaseModel):
    prefix: list[int]
    columns: list[str] = Field(description="The kept text columns the terms come from.")
    scan_limit: int
    node: NodeMeaning
    children: list[NodeMeaning]


class MapPoint(BaseModel):
    item_id: int | str
    semantic_id: list[int]
    x: float
    y: float
    caption: str | None


class CodeMap(BaseModel):
    seed: int
    size: int
    items: int = Field(description="Items in the index (the sample is min(size, items) of them).")
    columns: list[str]
    explained_variance: list[float]
    points: list[MapPoint]


async def _explain(state, text: str | None) -> dict:
    snapshot = state.index.snapshot
    codes = snapshot.layout.parse(text) if text is not None else ()
    return await in_read_thread(explain_prefix, snapshot, state.encoder, codes)


@router.get("/v1/explain", response_model=Explanation, responses=ERRORS)
async def explain_root(state: StateDep) -> dict:
    """What the root and each first code mean: terms of the kept text columns, a label, representative items."""
    return await _explain(state, None)


@router.get("/v1/explain/{prefix}", response_model=Explanation, responses=ERRORS)
async def explain(prefix: str, state: StateDep) -> dict:
    """What a prefix (0..L+1 codes) and each of its next codes mean: terms ranked against the parent, a label
    and the items nearest the node's mean code vector. Large nodes are read through a bounded sample."""
    return await _explain(state, prefix)


@router.get("/v1/map", response_model=CodeMap, responses=ERRORS)
async def item_map(
    state: StateDep,
    seed: Annotated[int, Query(ge=0, le=MAX_SEED, description="The sample's seed: same seed, same points.")] = 0,
    size: Annotated[int, Query(ge=1, le=MAX_MAP_ITEMS, description="Items to sample.")] = DEFAULT_MAP_ITEMS,
) -> dict:
    """A seeded sample of items projected to 2-D (PCA of their code vectors), for the explorer's map."""
    return await in_read_thread(code_map, state.index.snapshot, state.encoder, seed=seed, size=size)
