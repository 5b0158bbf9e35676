"""User-item interactions (CSV or Parquet) for the co-liked test of `semid evaluate`.

Items one user liked are related by taste, not only by content. If the IDs put co-liked items
under the same prefixes more often than random pairs, the ID space carries what a generative
recommender has to learn. Only the user, item and rating columns are read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from semid.model.data.catalog import CatalogError
from semid.model.data.interactions_file import read_interaction_columns


class InteractionsError(CatalogError):
    """The interactions file is missing, unreadable or lacks a needed column."""


@dataclass(frozen=True, kw_only=True)
class LikedItems:
    """Liked interactions mapped to index rows, sorted by user."""

    users: np.ndarray  # int64 [M], dense user numbers, sorted
    rows: np.ndarray  # int64 [M], index row of the liked item
    columns: dict[str, str]  # the columns used: user, item, rating
    interactions: int  # rows in the file
    liked: int  # rows with rating >= min_rating
    unknown_interactions: int  # liked rows whose item is not in the index
    unknown_items: int  # distinct such items
    unknown_examples: list[str]


def read_interactions(
    path: str | Path,
    *,
    user_column: str | None = None,
    item_column: str | None = None,
    rating_column: str | None = None,
) -> tuple[pa.Table, dict[str, str]]:
    """The user, item and rating columns (auto-detected unless named) as a table with those names."""
    path = Path(path)
    table, cols = read_interaction_columns(
        path, user_column, item_column, rating_column, rating_required=True, error=InteractionsError
    )
    rating = table.column("rating")
    if not (pa.types.is_integer(rating.type) or pa.types.is_floating(rating.type)):
        raise InteractionsError(f"interactions {path}: rating column {cols['rating']!r} is {rating.type}, not numeric")
    return table, cols


def liked_items(
    table: pa.Table,
    columns: dict[str, str],
    lookup_rows: Callable[[np.ndarray], np.ndarray],
    *,
    min_rating: float = 4.0,
) -> LikedItems:
    """Keep rows with rating >= ``min_rating`` whose item is in the index (``lookup_rows`` -> row or -1)."""
    n = table.num_rows
    rating = table.column("rating").to_numpy(zero_copy_only=False).astype(np.float64)
    keep = np.flatnonzero(np.nan_to_num(rating, nan=-np.inf) >= min_rating)
    item_col = table.column("item").take(pa.array(keep))
    user_col = table.column("user").take(pa.array(keep))
    items = np.asarray(item_col.to_numpy(zero_copy_only=False))
    if items.dtype.kind == "f":  # a CSV column with empty cells reads as float
        items = np.where(np.isnan(items), -1, items).astype(np.int64)
    rows = lookup_rows(items)
    known = rows >= 0
    unknown = np.unique(items[~known].astype(str))
    _, users = np.unique(np.asarray(user_col.to_numpy(zero_copy_only=False)).astype(str), return_inverse=True)
    users, rows = users[known].astype(np.int64), rows[known].astype(np.int64)
    order = np.lexsort((rows, users))
    users, rows = users[order], rows[order]
    first = np.r_[True, (users[1:] != users[:-1]) | (rows[1:] != rows[:-1])]  # one row per (user, item)
    return LikedItems(
        users=users[first],
        rows=rows[first],
        columns=columns,
        interactions=n,
        liked=int(keep.shape[0]),
        unknown_interactions=int((~known).sum()),
        unknown_items=int(unknown.shape[0]),
        unknown_examples=unknown[:5].tolist(),
    )


def coliked_pairs(liked: LikedItems, pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded pairs (a, b) of distinct items liked by one user, plus a popularity-matched partner for a.

    A liked interaction is drawn uniformly among users with at least two liked items (so active
    users weigh more, as in training data), then another item of the same user. The third array
    holds, for each pair, the item of another random liked interaction: a random partner drawn
    from the same popularity as co-liked items, to tell taste from popularity (it can be the first
    item itself; callers drop those pairs).
    """
    users, rows = liked.users, liked.rows
    if users.shape[0] == 0:
        return (np.zeros(0, dtype=np.int64),) * 3
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    counts = np.diff(np.r_[starts, users.shape[0]])
    eligible_users = counts >= 2
    if not eligible_users.any():
        return (np.zeros(0, dtype=np.int64),) * 3
    per_row_user = np.repeat(np.arange(starts.shape[0]), counts)
    eligible = np.flatnonzero(eligible_users[per_row_user])
    first = eligible[rng.integers(0, eligible.shape[0], size=pairs)]
    u = per_row_user[first]
    offset = rng.integers(0, counts[u] - 1)  # another position of the same user ...
    second = starts[u] + offset
    second += second >= first  # ... skipping the first one
    popular = rng.integers(0, rows.shape[0], size=pairs)
    return rows[first], rows[second], rows[popular]
