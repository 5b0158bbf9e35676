"""`semid.Index`: the collision-free, append-only index of semantic IDs, in process.

A facade over ``semid.service.index.handle`` (the on-disk index), ``semid.service.placement`` (encode,
resolve collisions, append a segment) and ``semid.service.lookup`` (nearest valid IDs). It offers what the
HTTP service offers, without a server: the same files, the same IDs, the same errors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from semid.service.errors import CorruptIndexError
from semid.service.generation.trie import SemanticIdTrie
from semid.service.generation.vocab import SemanticIdVocab
from semid.service.ids.layout import IdLayout
from semid.service.index.handle import SemanticIdIndex
from semid.service.index.snapshot import IndexSnapshot
from semid.service.lookup import Resolved, resolve_codes
from semid.service.placement import Registered, check_compatible, register_batch
from semid.tokenizer import Tokenizer

__all__ = ["Index", "PrefixPage", "Registered", "Resolved"]


@dataclass(frozen=True)
class PrefixPage:
    """One page of the items under an ID prefix, in semantic-ID order."""

    count: int  # items under the prefix (all pages)
    items: list[dict[str, Any]]  # this page's items, as :meth:`Index.lookup` returns them
    next_cursor: int | None  # pass as ``after=`` for the next page; None on the last page


class Index:
    """An index of unique, stable semantic IDs (a directory of Parquet segments, a FAISS file and a manifest).

    >>> index = semid.Index.create("idx/", semid.Tokenizer.load("ckpt/"))   # doctest: +SKIP
    >>> index.assign([101, 102], embeddings).semantic_ids                   # doctest: +SKIP
    array([[3, 1, 0], [3, 5, 0]])
    >>> semid.Index.open("idx/").lookup(101)["semantic_id"]                  # doctest: +SKIP
    [3, 1, 0]

    Known items keep their IDs; new ones land in one new segment per :meth:`assign` call (an atomic write);
    an ID once issued is never reissued. Reads see one consistent :attr:`snapshot`. Errors are
    ``semid.SemidError`` subclasses that name the bad field (most are also ``ValueError`` or ``KeyError``).
    """

    def __init__(
        self, handle: SemanticIdIndex, tokenizer: Tokenizer | None = None, *, lock_timeout: float = 0.0
    ) -> None:
        self._handle = handle
        self._tokenizer = tokenizer
        self._lock_timeout = lock_timeout

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        tokenizer: Tokenizer | str | os.PathLike[str] | None = None,
        lock_timeout: float = 0.0,
    ) -> Index:
        """The index at ``path``. Its tokenizer is the checkpoint copy the index keeps, loaded on first need
        (``assign``, ``resolve``), unless ``tokenizer`` (a :class:`Tokenizer` or checkpoint directory) is given,
        which must be the one the index was built with. ``lock_timeout``: seconds a write waits for another
        writer (default: fail at once with ``IndexLockedError``)."""
        tok = Tokenizer.load(tokenizer) if isinstance(tokenizer, (str, os.PathLike)) else tokenizer
        expected = tok.fingerprint if tok is not None else None
        handle = SemanticIdIndex.open(path, expected_fingerprint=expected, lock_timeout=lock_timeout)
        if tok is not None:
            check_compatible(handle, tok._encoder)
        return cls(handle, tok, lock_timeout=lock_timeout)

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        tokenizer: Tokenizer,
        *,
        id_kind: str = "int",
        keep_columns: tuple[str, ...] | list[str] = (),
        lock_timeout: float = 0.0,
    ) -> Index:
        """A new, empty index at ``path`` (a missing or empty directory) for IDs made by ``tokenizer``.

        ``id_kind``: ``"int"`` or ``"str"`` item ids. ``keep_columns``: item columns stored next to the IDs
        (then every :meth:`assign` passes them). The index keeps a copy of the checkpoint."""
        if id_kind not in ("int", "str"):
            raise ValueError(f"id_kind is {id_kind!r}; expected 'int' or 'str'")
        enc = tokenizer._encoder
        handle = SemanticIdIndex.create(
            path,
            layout=enc.layout,
            fingerprint=enc.fingerprint,
            id_kind=id_kind,
            vector_dim=enc.vector_dim,
            keep_columns=tuple(keep_columns),
            checkpoint_dir=tokenizer.path,
            lock_timeout=lock_timeout,
        )
        return cls(handle, tokenizer, lock_timeout=lock_timeout)

    # --- what it is ----------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._handle.path

    @property
    def layout(self) -> IdLayout:
        """The ID layout: codes per position (the base code's levels, then the dedup digit)."""
        return self._handle.layout

    @property
    def fingerprint(self) -> str:
        """Fingerprint of the checkpoint the IDs were made with."""
        return self._handle.fingerprint

    @property
    def tokenizer(self) -> Tokenizer:
        """The index's tokenizer (its checkpoint copy, loaded now if it was not yet)."""
        if self._tokenizer is None:
            copy = self._handle.checkpoint_dir
            if copy is None or not copy.is_dir():
                raise CorruptIndexError(f"index {self.path} has no checkpoint copy; pass tokenizer= to Index.open")
            self._tokenizer = Tokenizer.load(copy)
            check_compatible(self._handle, self._tokenizer._encoder)
        return self._tokenizer

    @property
    def snapshot(self) -> IndexSnapshot:
        """The current, immutable view of the index: reads from one snapshot agree with each other."""
        return self._handle.snapshot

    def __len__(self) -> int:
        return len(self._handle)

    def __repr__(self) -> str:
        return f"Index({str(self.path)!r}, items={len(self)})"

    # --- writing -------------------------------------------------------------------

    def assign(
        self,
        item_ids: Any,
        embeddings: Any,
        *,
        columns: dict[str, Any] | None = None,
        recode_changed: bool = False,
    ) -> Registered:
        """Semantic IDs for a batch of items: known items keep theirs, new ones are placed in one new segment.

        ``item_ids``: N ints or strings (the index's ``id_kind``), each at most once; ``embeddings``: float
        ``[N, D]``; ``columns``: the kept columns, each N values. A known item whose embedding changed keeps
        its ID and is flagged (``changed``) unless ``recode_changed``. Returns :class:`Registered`:
        ``semantic_ids`` int64 ``[N, width]`` and per-item ``existing``, ``changed``, ``recoded`` flags."""
        ids = np.asarray(item_ids)
        if ids.dtype.kind in "US":
            ids = ids.astype(object)
        arrays = None if columns is None else {k: pa.array(v) for k, v in columns.items()}
        return register_batch(
            self._handle,
            self.tokenizer._encoder,
            item_ids=ids,
            embeddings=embeddings,
            columns=arrays,
            recode_changed=recode_changed,
            lock_timeout=self._lock_timeout,
        )

    def refresh(self) -> None:
        """Catch up with segments another process appended since this index was opened."""
        self._handle.refresh()

    # --- reading -------------------------------------------------------------------

    def lookup(self, item_id: int | str) -> dict[str, Any]:
        """The item's record: ``item_id``, ``semantic_id``, ``token``, ``base_code``, ``fallback`` and the
        kept columns. ``UnknownItemError`` (a ``KeyError``) if it is not indexed."""
        return self.snapshot.get_item(item_id)

    def lookup_id(self, semantic_id: list[int] | tuple[int, ...]) -> dict[str, Any]:
        """The item holding a full semantic ID. ``UnknownSemanticIdError`` (a ``KeyError``) if none does,
        saying so when the ID was retired by a re-coding; ``InvalidSemanticIdError`` if it is malformed."""
        return self.snapshot.get_by_semantic_id(semantic_id)

    def prefix(self, prefix: list[int] | tuple[int, ...], *, limit: int = 100, after: int | None = None) -> PrefixPage:
        """Items whose semantic ID starts with ``prefix`` (1 to width codes), ``limit`` (1..1000) at a time;
        ``after`` is the previous page's ``next_cursor``."""
        snap = self.snapshot
        count, rows, more = snap.prefix_rows(prefix, limit=limit, after=after)
        return PrefixPage(count=count, items=snap.items(rows), next_cursor=more)

    def children(self, prefix: list[int] | tuple[int, ...] = ()) -> list[tuple[int, int]]:
        """``(code, items)`` for each code that follows ``prefix`` (``()`` = the first level) in some ID."""
        return [(int(c), int(n)) for c, n in self.snapshot.children(prefix)]

    def resolve(self, semantic_id: list[int] | tuple[int, ...], *, k: int = 10) -> Resolved:
        """Any code tuple (e.g. a generator's output, maybe no item's ID) to items: ``exact`` is the item
        holding it if it is a full ID, ``nearest`` the ``k`` items whose code vectors are nearest the
        vector its first (up to ``levels``) codes decode to, as ``(item, squared distance)``."""
        return resolve_codes(self.snapshot, self.tokenizer._encoder, list(semantic_id), k)

    # --- constrained decoding ------------------------------------------------------

    def trie(self) -> SemanticIdTrie:
        """The exact trie of the current IDs (see :mod:`semid.generation`)."""
        return SemanticIdTrie.from_snapshot(self.snapshot)

    def vocab(self, *, offset: int = 0, special_tokens: bool = False) -> SemanticIdVocab:
        """One token per (position, code) of this index's layout, starting at flat id ``offset``;
        ``special_tokens`` adds pad, bos and eos after the codes."""
        return SemanticIdVocab.for_layout(self.layout, offset=offset, special_tokens=special_tokens)
