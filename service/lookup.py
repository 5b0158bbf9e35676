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


def resolve_codes(snapshot: IndexSnapshot, encoder: CheckpointEncoder, semantic_id: list[int], k: int) -> Resolved:
    """The item holding ``semantic_id`` if it is a full ID, and the ``k`` active items whose code vectors
    are nearest the vector the checkpoint decodes from the tuple's first (up to L) codes."""
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
    distances, rows = snapshot.nearest(encoder.vectors(base), k)
    items = snapshot.items(rows[0]) if rows.shape[1] else []
    return Resolved(exact, list(zip(items, distances[0].tolist(), strict=True)))
