"""Co-liked items from user-item interactions, as extra edges of the first-level graph.

`semid train --interactions FILE` reads (user, item[, rating]) rows, keeps the likes (rating >=
``coliked_min_rating``; every row when the file has no rating column) of items in the catalog, and
scores each pair of items by the users who liked both:

    score(i, j) = sum over users u who liked i and j of 1 / log2(1 + likes of u)
                  / sqrt(popularity(i) * popularity(j))

The user term damps heavy users (a user who liked 500 items says less about each pair than one who
liked 5), the popularity term (the same weighted count of one item) keeps blockbusters from being
everyone's partner: it is the cosine of the items' damped user vectors, the usual item-item
collaborative similarity. Each item keeps its top ``coliked_partners`` partners liked by at least
``coliked_min_users`` users. In the graph refinement of semid.model.first_level.graph_targets each partner votes
for its code with weight ``coliked_weight`` beside the item's k content neighbours (weight 1), so
co-liked items are pulled under one first code; items without partners keep content-only votes.

The encoder still maps an embedding to codes with no interaction input, so encoding stays a pure
function of the checkpoint, and items never seen in the interactions (or new items) are encoded by
content. The checkpoint records the file's name, SHA-256, counts and settings (``record``).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy import sparse

from semid.model.config import SemidConfig, TrainConfig
from semid.model.data.catalog import CatalogError
from semid.model.data.interactions_file import read_interaction_columns

log = logging.getLogger(__name__)

SETTINGS = ("coliked_min_rating", "coliked_partners", "coliked_min_users", "coliked_weight", "coliked_max_user_likes")
_CHUNK_ROWS = 512  # items per sparse product when scoring pairs


class InteractionsFileError(CatalogError):
    """The interactions file is missing, unreadable, lacks a column, has a wrong type or misses the catalog."""


@dataclass(frozen=True, kw_only=True)
class ColikedGraph:
    """Each training row's co-liked partners (training rows, -1 padded) and what built them."""

    partners: np.ndarray  # int64 [n, p]: partner rows, best first, -1 where an item has fewer
    scores: np.ndarray  # float32 [n, p]: their co-liked scores (0 where -1)
    weight: float  # vote of one partner relative to one content neighbour
    record: dict[str, Any]  # what the checkpoint stores: file, sha256, counts, settings
    liked: np.ndarray | None = None  # int64 [m, 2]: (user index, row) of every known like (semid.model.training.collab)

    def blend(self, graph: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The content k-NN graph of the targets' ``rows`` ([m, k] positions in ``rows``) with each
        row's partners appended as positions: ([m, k + p] neighbours, [m, k + p] vote weights).
        Partners outside ``rows`` (a sampled graph) and padding vote for the item itself with weight 0."""
        position = np.full(self.partners.shape[0], -1, dtype=np.int64)
        position[rows] = np.arange(rows.shape[0])
        found = self.partners[rows]
        pos = np.where(found >= 0, position[np.maximum(found, 0)], -1)
        own = np.arange(rows.shape[0])[:, None]
        extra = np.where(pos >= 0, pos, own)
        extra_w = np.where(pos >= 0, np.float32(self.weight), np.float32(0.0))
        weights = np.concatenate([np.ones(graph.shape, dtype=np.float32), extra_w.astype(np.float32)], axis=1)
        return np.concatenate([graph, extra], axis=1), weights


def check_trainable(config: SemidConfig) -> None:
    """Interactions are blended into the RQ-VAE's graph targets: other settings cannot use them."""
    if config.model.tokenizer != "rqvae":
        raise ValueError("interactions need the rqvae tokenizer (they are blended into its graph targets)")
    if not config.train.graph_targets:
        raise ValueError("interactions are blended into the graph targets; train with graph_targets on")


def read_coliked(
    path: str | Path,
    item_ids: np.ndarray,
    config: TrainConfig,
    *,
    user_column: str | None = None,
    item_column: str | None = None,
    rating_column: str | None = None,
) -> ColikedGraph:
    """Read the interactions file and build the co-liked partners of the catalog rows ``item_ids``."""
    path = Path(path)
    table, columns = read_interaction_columns(
        path, user_column, item_column, rating_column, rating_required=False, error=InteractionsFileError
    )
    users, items, likes = _likes(table, path, config.coliked_min_rating)
    if likes == 0:
        raise InteractionsFileError(
            f"interactions {path} has no likes (rows with a user, an item and a rating >= {config.coliked_min_rating})"
        )
    rows = _catalog_rows(items, item_ids, path)
    known = rows >= 0
    unknown_items = np.unique(items[~known].astype(str))
    if not known.any():
        raise InteractionsFileError(
            f"interactions {path}: none of its {unknown_items.shape[0]} liked items is in the catalog "
            f"(items such as {', '.join(unknown_items[:3].tolist())}; catalog ids such as "
            f"{', '.join(map(str, item_ids[:3].tolist()))})"
        )
    if unknown_items.shape[0]:
        log.warning(
            "interactions %s: %d liked items (%d likes) are not in the catalog; ignored",
            path.name,
            unknown_items.shape[0],
            int((~known).sum()),
        )
    partners, scores, counts = coliked_partners(users[known], rows[known], item_ids.shape[0], config)
    record = {
        "file": path.name,
        "sha256": _sha256(path),
        "columns": columns,
        "rows": int(table.num_rows),
        "likes": likes,
        "known_likes": int(known.sum()),
        "used_likes": counts["used_likes"],
        "unknown_likes": int((~known).sum()),
        "unknown_items": int(unknown_items.shape[0]),
        "users": counts["users"],
        "liked_items": counts["liked_items"],
        "items_with_partners": int((partners[:, 0] >= 0).sum()) if partners.shape[1] else 0,
        "edges": int((partners >= 0).sum()),
        "settings": {name: getattr(config, name) for name in SETTINGS},
    }
    log.info("co-liked graph from %s: %s", path.name, {k: v for k, v in record.items() if k != "settings"})
    _, user_index = np.unique(users[known].astype(str), return_inverse=True)
    liked = np.stack([user_index.reshape(-1), rows[known]], axis=1).astype(np.int64)
    return ColikedGraph(partners=partners, scores=scores, weight=config.coliked_weight, record=record, liked=liked)


def coliked_partners(
    users: np.ndarray, rows: np.ndarray, n_items: int, config: TrainConfig
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Top co-liked partners of every item (see the module docstring) from liked (user, row) pairs.

    Users with more than ``coliked_max_user_likes`` likes keep a seeded sample of them (it bounds the
    pairs a heavy user adds). Deterministic for a config (its seed)."""
    users = np.asarray(users)
    rows = np.asarray(rows, dtype=np.int64)
    _, user_idx = np.unique(users.astype(str) if users.dtype.kind in "OUS" else users, return_inverse=True)
    pairs = np.unique(np.stack([user_idx.reshape(-1).astype(np.int64), rows], axis=1), axis=0)  # one per (user, item)
    user_idx, rows = pairs[:, 0], pairs[:, 1]
    rng = np.random.default_rng([config.seed, 14])
    key = rng.random(user_idx.shape[0])
    order = np.lexsort((key, user_idx))  # seeded order within each user
    user_idx, rows = user_idx[order], rows[order]
    starts = np.flatnonzero(np.r_[True, user_idx[1:] != user_idx[:-1]])
    rank = np.arange(user_idx.shape[0]) - np.repeat(starts, np.diff(np.r_[starts, user_idx.shape[0]]))
    keep = rank < config.coliked_max_user_likes
    user_idx, rows = user_idx[keep], rows[keep]
    n_users = int(user_idx.max()) + 1
    per_user = np.bincount(user_idx, minlength=n_users)
    damp = 1.0 / np.log2(1.0 + per_user)
    binary = sparse.csr_matrix((np.ones(rows.shape[0]), (rows, user_idx)), shape=(n_items, n_users))
    # entries sqrt(damp): a product of two rows sums damp over the users who liked both
    damped = sparse.csr_matrix((np.sqrt(damp[user_idx]), (rows, user_idx)), shape=(n_items, n_users))
    popularity = np.bincount(rows, weights=damp[user_idx], minlength=n_items)
    p = config.coliked_partners
    partners = np.full((n_items, p), -1, dtype=np.int64)
    scores = np.zeros((n_items, p), dtype=np.float32)
    binary_t, damped_t = binary.T.tocsr(), damped.T.tocsr()
    for start in range(0, n_items, _CHUNK_ROWS):
        stop = min(start + _CHUNK_ROWS, n_items)
        support = (binary[start:stop] @ binary_t).tocsr()
        weight = (damped[start:stop] @ damped_t).tocsr()
        support.sort_indices()
        weight.sort_indices()  # all entries are positive: both products have the same pattern
        support, weight = support.tocoo(), weight.tocoo()
        i, j = support.row, support.col
        ok = (support.data >= config.coliked_min_users) & (i + start != j)
        i, j = i[ok].astype(np.int64), j[ok].astype(np.int64)
        if i.shape[0] == 0:
            continue
        s = weight.data[ok] / np.sqrt(popularity[i + start] * popularity[j])
        top = np.lexsort((j, -s, i))  # best first; ties by row, so the result is deterministic
        i, j, s = i[top], j[top], s[top]
        first = np.flatnonzero(np.r_[True, i[1:] != i[:-1]])
        rank = np.arange(i.shape[0]) - np.repeat(first, np.diff(np.r_[first, i.shape[0]]))
        sel = rank < p
        partners[i[sel] + start, rank[sel]] = j[sel]
        scores[i[sel] + start, rank[sel]] = s[sel]
    counts = {
        "used_likes": int(rows.shape[0]),  # one per (user, item), heavy users sampled down
        "users": int((per_user > 0).sum()),
        "liked_items": int(np.unique(rows).shape[0]),
    }
    return partners, scores, counts


def _likes(table: pa.Table, path: Path, min_rating: float) -> tuple[np.ndarray, np.ndarray, int]:
    """(users, items, number of likes) of the rows that are likes, nulls dropped; types checked."""
    item_type = table.column("item").type
    if not (pa.types.is_integer(item_type) or pa.types.is_string(item_type) or pa.types.is_large_string(item_type)):
        raise InteractionsFileError(f"interactions {path}: item column is {item_type}; expected integers or strings")
    keep = pc.and_(pc.is_valid(table.column("user")), pc.is_valid(table.column("item")))
    if "rating" in table.column_names:
        rating = table.column("rating")
        if not (pa.types.is_integer(rating.type) or pa.types.is_floating(rating.type)):
            raise InteractionsFileError(f"interactions {path}: rating column is {rating.type}, not numeric")
        keep = pc.and_(keep, pc.fill_null(pc.greater_equal(rating, pa.scalar(min_rating)), False))
    liked = table.filter(keep)
    users = liked.column("user").to_numpy(zero_copy_only=False)
    items = liked.column("item").to_numpy(zero_copy_only=False)
    return users, items, int(liked.num_rows)


def _catalog_rows(items: np.ndarray, item_ids: np.ndarray, path: Path) -> np.ndarray:
    """Catalog row of each item, -1 if absent. Integer ids join integer ids; otherwise both as strings."""
    if items.dtype.kind in "iu" and item_ids.dtype.kind in "iu":
        keys, wanted = item_ids.astype(np.int64), items.astype(np.int64)
    else:
        keys, wanted = item_ids.astype(str), items.astype(str)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    if sorted_keys.shape[0] == 0:
        raise InteractionsFileError(f"interactions {path}: the catalog is empty")
    pos = np.clip(np.searchsorted(sorted_keys, wanted), 0, sorted_keys.shape[0] - 1)
    return np.where(sorted_keys[pos] == wanted, order[pos], -1)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
