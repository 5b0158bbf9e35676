"""Resolving any code tuple (e.g. a generator's output) to the exact item or the nearest valid IDs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from semid.service.encoder import CheckpointEncoder
from semid.service.errors import InvalidInputError
from semid.service.index.snapshot import IndexSnapshot


@dataclass
class Resolved:
    exact: dict[str, Any] | None  # the item holding the full ID, if it is one
    nearest: list[tuple[dict[str, Any], float]]  # (item, squared L2 distance of code vectors), nearest first


RANKINGS = ("prefix", "distance")
PREFIX_CANDIDATES = 10_000  # rows read under one shared prefix to rank by distance (one prefix page)


def resolve_codes(
    snapshot: IndexSnapshot, encoder: CheckpointEncoder, semantic_id: list[int], k: int, *, rank: str = "prefix"
) -> Resolved:
    """The item holding ``semantic_id`` if it is a full ID, and ``k`` active items near it.

    ``rank="prefix"`` (the default): items sharing the longest prefix of the tuple's first (up to L) codes come
    first, each group nearest first by the distance of its code vector to the vector the checkpoint decodes
    from those codes; a generator that got the first codes right and a later one wrong is answered with the
    items under the codes it got right. ``rank="distance"``: by that distance alone (what 0.7.0 did), so an
    item under another first code can come before the items under the tuple's own prefix."""
    if rank not in RANKINGS:
        raise InvalidInputError(f"rank is {rank!r}; expected one of {RANKINGS}", field="rank")
    layout = snapshot.layout
    try:
        codes = layout.validate_prefix(semantic_id, min_length=1)
    except InvalidInputError as err:
        err.field = "semantic_id"
        raise
    exact = None
    if len(codes) == layout.width:
        rows = snapshot.state.rows_of_packed(layout.pack(np.array([codes])))
        if rows[0] >= 0:
            exact = snapshot.item(int(rows[0]))
    base = np.array([codes[: layout.levels]], dtype=np.int64)
    query = encoder.vectors(base)
    distances, rows = snapshot.nearest(query, k)
    ranked = list(zip(rows[0].tolist(), distances[0].tolist(), strict=True))
    if rank == "prefix":
        ranked = _prefix_first(snapshot, encoder, list(base[0]), query[0], k, ranked)
    items = snapshot.items([r for r, _ in ranked]) if ranked else []
    return Resolved(exact, list(zip(items, [d for _, d in ranked], strict=True)))


def _prefix_first(
    snapshot: IndexSnapshot,
    encoder: CheckpointEncoder,
    base: list[int],
    query: np.ndarray,
    k: int,
    by_distance: list[tuple[int, float]],
) -> list[tuple[int, float]]:
    """Longest shared prefix first (then distance), filled up with the nearest by distance alone."""
    out: list[tuple[int, float]] = []
    taken: set[int] = set()
    for depth in range(len(base), 0, -1):
        if len(out) >= k:
            break
        count, rows, _ = snapshot.prefix_rows(base[:depth], limit=PREFIX_CANDIDATES)
        rows = np.array([r for r in rows.tolist() if r not in taken], dtype=np.int64)
        if count == 0 or rows.size == 0:
            continue
        sids = np.asarray(snapshot.state.semantic_ids[rows][:, : len(base)], dtype=np.int64)
        dist = ((encoder.vectors(sids) - query[None, :]) ** 2).sum(1)
        for i in np.argsort(dist, kind="stable")[: k - len(out)]:
            out.append((int(rows[i]), float(dist[i])))
            taken.add(int(rows[i]))
    for row, d in by_distance:
        if len(out) >= k:
            break
        if row not in taken:
            out.append((row, d))
            taken.add(row)
    return out
