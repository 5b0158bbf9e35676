"""Data for the generative-retrieval benchmark: users' histories in time order, the leave-one-out split,
training windows, and unique W-token IDs for every tokenizer.

Interactions columns are found as `semid evaluate` finds them (`semid.service.evaluation.interactions`); the
time column the same way among ``TIME_COLUMNS`` (file order when there is none).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from semid.model.data.interactions_file import read_interaction_columns
from semid.service.evaluation.interactions import InteractionsError
from semid.service.generation.trie import SemanticIdTrie
from semid.service.ids.dedup import BucketCounts, resolve_collisions
from semid.service.ids.layout import IdLayout

TIME_COLUMNS = ("timestamp", "time", "ts", "datetime", "date", "position", "order", "step")


@dataclass(frozen=True)
class Histories:
    """Per user, catalog rows in time order: ``rows[starts[u]:starts[u + 1]]``."""

    rows: np.ndarray  # int64 [M]
    starts: np.ndarray  # int64 [U + 1]
    info: dict
    names: np.ndarray | None = None  # str [U]: each user's name in the interactions file

    @property
    def users(self) -> int:
        return int(self.starts.shape[0] - 1)

    def of(self, user: int) -> np.ndarray:
        return self.rows[self.starts[user] : self.starts[user + 1]]


@dataclass(frozen=True)
class Split:
    """Leave-one-out: ``train[u]`` are all but the last two items; validation predicts the second-last from
    ``train[u]``; test predicts the last from ``train[u] + validation item``."""

    train: list[np.ndarray]
    valid_target: np.ndarray  # int64 [U]
    test_target: np.ndarray  # int64 [U]
    users: np.ndarray | None = None  # str [U]: the users' names (None: their numbers)

    def history(self, user: int, part: str, cap: int) -> np.ndarray:
        seq = self.train[user] if part == "valid" else np.r_[self.train[user], self.valid_target[user]]
        return seq[-cap:]

    def target(self, part: str) -> np.ndarray:
        return self.valid_target if part == "valid" else self.test_target

    def user_names(self) -> np.ndarray:
        return self.users if self.users is not None else np.arange(len(self.train)).astype(str)


def _time_column(path: Path, names: list[str]) -> str | None:
    lowered = {n.lower(): n for n in names}
    return next((lowered[c] for c in TIME_COLUMNS if c in lowered), None)


def _column_names(path: Path) -> list[str]:
    if path.suffix in (".parquet", ".pq"):
        return pq.ParquetFile(path).schema_arrow.names
    with open(path, encoding="utf-8", errors="replace") as fh:
        return [n.strip().strip('"') for n in fh.readline().rstrip("\r\n").split(",")]


def _read_column(path: Path, name: str) -> np.ndarray:
    if path.suffix in (".parquet", ".pq"):
        table = pq.read_table(path, columns=[name])
    else:
        table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(include_columns=[name]))
    col = table.column(name)
    values = np.asarray(col.to_numpy(zero_copy_only=False))
    if values.dtype.kind not in "iuf":  # dates or strings: their sort order
        values = np.unique(values.astype(str), return_inverse=True)[1]
    return values.astype(np.float64)


def _catalog_rows(item_ids: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Catalog row of each interaction's item, -1 when it is not in the catalog."""
    order = np.argsort(item_ids, kind="stable")
    sorted_ids = item_ids[order]
    if items.dtype.kind == "f":
        items = np.where(np.isnan(items), -1, items).astype(np.int64)
    if items.dtype.kind != sorted_ids.dtype.kind:
        items = items.astype(sorted_ids.dtype) if sorted_ids.dtype.kind in "iu" else items.astype(str)
    pos = np.clip(np.searchsorted(sorted_ids, items), 0, len(sorted_ids) - 1)
    return np.where(sorted_ids[pos] == items, order[pos], -1)


def read_histories(
    path: str | Path,
    item_ids: np.ndarray,
    *,
    min_rating: float | None = None,
    user_column: str | None = None,
    item_column: str | None = None,
    time_column: str | None = None,
) -> Histories:
    """Every user's interactions with catalog items in time order (ties: file order), one row per (user,
    item) (the first time), rows with rating < ``min_rating`` dropped (None: keep every rating). Implicit
    feedback works: without a rating column every row is a positive. Columns are detected by name unless
    named; the order column is any of ``TIME_COLUMNS`` (a time or a position)."""
    path = Path(path)
    table, columns = read_interaction_columns(
        path, user_column, item_column, None, rating_required=False, error=InteractionsError
    )
    names = _column_names(path)
    if time_column is not None and time_column not in names:
        raise InteractionsError(f"interactions {path} has no time column {time_column!r}; columns are {names}")
    time_name = time_column or _time_column(path, names)
    n = table.num_rows
    when = _read_column(path, time_name) if time_name else np.arange(n, dtype=np.float64)
    if "rating" in table.column_names:
        rating = table.column("rating").to_numpy(zero_copy_only=False).astype(np.float64)
    else:
        rating = np.ones(n)
    rows = _catalog_rows(np.asarray(item_ids), np.asarray(table.column("item").to_numpy(zero_copy_only=False)))
    labels, users = np.unique(
        np.asarray(table.column("user").to_numpy(zero_copy_only=False)).astype(str), return_inverse=True
    )
    keep = rows >= 0
    if min_rating is not None:
        keep &= np.nan_to_num(rating, nan=-np.inf) >= min_rating
    idx = np.flatnonzero(keep)
    idx = idx[np.lexsort((idx, when[idx], users[idx]))]  # by user, then time, then file order
    u, r = users[idx], rows[idx]
    first = _first_occurrence(u, r)
    u, r = u[first], r[first]
    kept_users, u = np.unique(u, return_inverse=True)
    starts = np.searchsorted(u, np.arange(u.max() + 2 if u.shape[0] else 1))
    columns = {**columns, "time": time_name or "(file order)"}
    info = {
        "columns": columns,
        "interactions": n,
        "kept": int(r.shape[0]),
        "not_in_catalog": int((rows < 0).sum()),
        "min_rating": min_rating,
    }
    return Histories(rows=r.astype(np.int64), starts=starts.astype(np.int64), info=info, names=labels[kept_users])


def _first_occurrence(users: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Mask keeping the first (in the given order) interaction of each (user, item)."""
    key = users.astype(np.int64) * (int(rows.max()) + 1 if rows.shape[0] else 1) + rows
    _, first_index = np.unique(key, return_index=True)
    mask = np.zeros(key.shape[0], dtype=bool)
    mask[first_index] = True
    return mask


def split_users(hist: Histories, *, min_items: int = 3, max_users: int | None = None) -> np.ndarray:
    """The user numbers ``leave_one_out`` splits, in its order: users with at least ``min_items`` items (at most
    ``max_users`` of them, the first by user number)."""
    users = np.flatnonzero(np.diff(hist.starts) >= min_items)
    return users if max_users is None else users[:max_users]


def leave_one_out(hist: Histories, *, min_items: int = 3, max_users: int | None = None) -> Split:
    """Users with at least ``min_items`` items (at most ``max_users`` of them, the first by user number)."""
    users = split_users(hist, min_items=min_items, max_users=max_users)
    if users.shape[0] == 0:
        raise InteractionsError(f"no user has {min_items} or more interactions with catalog items")
    seqs = [hist.of(int(u)) for u in users]
    names = getattr(hist, "names", None)
    return Split(
        train=[s[:-2] for s in seqs],
        valid_target=np.array([s[-2] for s in seqs], dtype=np.int64),
        test_target=np.array([s[-1] for s in seqs], dtype=np.int64),
        users=None if names is None else names[users],
    )


def popularity(split: Split, items: int) -> np.ndarray:
    """Each item's count in the training sequences."""
    return np.bincount(np.concatenate(split.train), minlength=items) if split.train else np.zeros(items, np.int64)


def training_windows(train: list[np.ndarray], length: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping windows of up to ``length`` items over every training sequence, cut from the end (so
    the most recent items keep the longest context), each window after the first of a sequence starting one
    item early so that no item is a target without context. Returns rows [S, length] padded with -1 on the
    right, and a bool mask [S, length] of the positions to learn (targets)."""
    windows, masks = [], []
    step = length - 1
    for seq in train:
        end = seq.shape[0]
        while end >= 2:
            start = max(0, end - length)
            win = seq[start:end]
            mask = np.ones(win.shape[0], dtype=bool)
            mask[0] = False  # the first item is context only
            windows.append(np.pad(win, (0, length - win.shape[0]), constant_values=-1))
            masks.append(np.pad(mask, (0, length - win.shape[0])))
            end -= step
    if not windows:
        return np.zeros((0, length), dtype=np.int64), np.zeros((0, length), dtype=bool)
    return np.stack(windows).astype(np.int64), np.stack(masks)


def unique_ids(codes: np.ndarray, distances: np.ndarray, item_ids: np.ndarray, codebook_size: int) -> np.ndarray:
    """semid's collision resolution on base codes [N, L]: a dedup digit per item (rank in its bucket by
    distance, then item id), so every tokenizer yields unique IDs of width L + 1."""
    layout = IdLayout.for_tokenizer(levels=codes.shape[1], codebook_size=codebook_size)
    return resolve_collisions(
        layout=layout,
        base_codes=codes,
        distances=distances,
        item_ids=item_ids,
        alternatives=codes[:, -1:],
        occupancy=BucketCounts(),
    ).semantic_ids


def random_codes(n: int, levels: int, codebook_size: int, seed: int) -> np.ndarray:
    """Random base codes of the same shape, uniform per level."""
    return np.random.default_rng([seed, 11]).integers(0, codebook_size, size=(n, levels), dtype=np.int64)


def next_item_examples(train: list[np.ndarray], history: int) -> tuple[np.ndarray, np.ndarray]:
    """One example per training item after each sequence's first: the up to ``history`` items before it
    (left-padded with -1) and the item. Returns histories [S, history] and targets [S] (the encoder-decoder
    generator learns one target per example, as TIGER)."""
    hist, target = [], []
    for seq in train:
        for t in range(1, seq.shape[0]):
            before = seq[max(0, t - history) : t]
            hist.append(np.pad(before, (history - before.shape[0], 0), constant_values=-1))
            target.append(seq[t])
    if not hist:
        return np.zeros((0, history), dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.stack(hist).astype(np.int64), np.asarray(target, dtype=np.int64)


def example_users(train: list[np.ndarray]) -> np.ndarray:
    """The user (position in ``train``) of each of ``next_item_examples(train, ...)``'s examples."""
    return np.repeat(np.arange(len(train)), [max(s.shape[0] - 1, 0) for s in train]).astype(np.int64)


def user_buckets(names: np.ndarray, buckets: int) -> np.ndarray:
    """Each user's token for the generator: its name hashed into ``buckets`` buckets (TIGER's user token).
    BLAKE2b of the name, so a user gets the same bucket in every process and on every machine (Python's
    ``hash`` of a string changes per process)."""
    return np.array(
        [int.from_bytes(hashlib.blake2b(str(n).encode(), digest_size=8).digest(), "little") % buckets for n in names],
        dtype=np.int64,
    )


@dataclass(frozen=True)
class IdItems:
    """The generator's IDs mapped back to catalog items: ``trie`` holds the distinct IDs; the items of the
    ``i``-th ID in the trie's order are ``items[starts[i]:starts[i + 1]]``, the most popular in training
    first (ties: lower catalog row). With unique IDs (the dedup digit) every ID has one item; with base codes
    only, an ID shared by several items stands for all of them in that order."""

    trie: SemanticIdTrie
    starts: np.ndarray  # int64 [distinct IDs + 1]
    items: np.ndarray  # int64 [N] catalog rows

    @classmethod
    def build(cls, ids: np.ndarray, popularity: np.ndarray, sizes: tuple[int, ...]) -> IdItems:
        trie = SemanticIdTrie.from_semantic_ids(ids, None, sizes=sizes)
        position = trie.rows_of(ids)
        order = np.lexsort((np.arange(ids.shape[0]), -popularity, position))
        starts = np.searchsorted(position[order], np.arange(len(trie) + 1))
        return cls(trie=trie, starts=starts.astype(np.int64), items=order.astype(np.int64))

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Position of each ID of ``ids [B, W]`` among the distinct IDs, -1 for an ID no item has."""
        return self.trie.rows_of(ids)

    def expand(self, positions: np.ndarray, top: int) -> np.ndarray:
        """The first ``top`` items of the IDs at ``positions`` (in order; -1 skipped)."""
        return self.expand_scored(positions, np.zeros(positions.shape[0], np.float32), top)[0]

    def expand_scored(self, positions: np.ndarray, scores: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
        """``expand`` with each item's score: the score of the ID it came from."""
        items, values = [], []
        for p, score in zip(positions.tolist(), scores.tolist(), strict=True):
            if p >= 0:
                items.append(self.items[self.starts[p] : self.starts[p + 1]])
                values.append(np.full(items[-1].shape[0], score, np.float32))
        if not items:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        return np.concatenate(items)[:top], np.concatenate(values)[:top]
