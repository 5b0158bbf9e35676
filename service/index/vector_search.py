"""``VectorSet``: the items' vectors in row order, searchable, and extended without copying them.

A FAISS flat index cannot be shared while it grows (``add`` may reallocate under a concurrent
search), so extending one meant cloning it: O(index) per write. Here the vectors are immutable
flat *chunks* plus a *tail*: the rows appended since the last chunk, kept in an ``AppendBuffer``
that successive sets share (each sees its own rows only). A write appends to the tail, O(batch).
When the tail passes ``max(TAIL_MIN_ROWS, rows / TAIL_FRACTION)`` rows it becomes a chunk; chunks
are merged pairwise while the previous one is no larger (like a binary counter, so each vector is
copied O(log) times) but never past ``MAX_MERGE_ROWS``, so no write copies the whole index.

A chunk is either a FAISS flat index or a read-only float32 array memory-mapped from a segment
vector file (``segment_vectors.py``: large batch writes). Mapped chunks are never merged or copied;
they are searched block by block with ``faiss.knn`` (exhaustive, like a flat index), so only one
block's pages need to be in memory at a time and opening the index reads none of them.

A k-NN search asks every chunk and the tail (exact, like one flat index) and merges the answers.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from semid.service.index.buffers import AppendBuffer

TAIL_MIN_ROWS = 16_384
TAIL_FRACTION = 8
MAX_MERGE_ROWS = 262_144
MAPPED_BLOCK_ROWS = 1 << 20  # rows of a mapped chunk searched per faiss.knn call

Chunk = faiss.IndexFlatL2 | np.ndarray  # a flat index, or float32 [n, dim] mapped from a vector file


@dataclass(frozen=True, kw_only=True)
class VectorSet:
    dim: int
    chunks: tuple[Chunk, ...]  # immutable once published
    tail: np.ndarray  # float32 [t, dim]: the rows after the chunks
    tail_buffer: AppendBuffer

    @classmethod
    def from_index(cls, index: faiss.Index) -> VectorSet:
        chunks = (index,) if index.ntotal else ()
        empty = np.zeros((0, index.d), dtype=np.float32)
        buffer = AppendBuffer(empty)
        return cls(dim=int(index.d), chunks=chunks, tail=buffer.view(), tail_buffer=buffer)

    @classmethod
    def empty(cls, dim: int) -> VectorSet:
        return cls.from_index(faiss.IndexFlatL2(dim))

    @property
    def ntotal(self) -> int:
        return sum(_count(c) for c in self.chunks) + int(self.tail.shape[0])

    @property
    def d(self) -> int:
        return self.dim

    def extended(self, vectors: np.ndarray) -> VectorSet:
        """These vectors followed by ``vectors`` (float32 ``[n, dim]``), O(n) amortised."""
        arr = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        buffer, tail = self.tail_buffer.append(self.tail, arr)
        chunks = self.chunks
        if tail.shape[0] >= max(TAIL_MIN_ROWS, (self.ntotal + arr.shape[0]) // TAIL_FRACTION):
            chunks = _pushed(chunks, _flat(self.dim, tail))
            buffer = AppendBuffer(np.zeros((0, self.dim), dtype=np.float32))
            tail = buffer.view()
        return VectorSet(dim=self.dim, chunks=chunks, tail=tail, tail_buffer=buffer)

    def with_mapped(self, vectors: np.ndarray) -> VectorSet:
        """These vectors followed by ``vectors`` (float32 ``[n, dim]`` mapped from a vector file), kept
        as their own chunk: never copied. The tail, if any, becomes a chunk first (row order)."""
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"vectors has shape {vectors.shape}; expected (n, {self.dim})")
        chunks = self.chunks
        if self.tail.shape[0]:
            chunks = _pushed(chunks, _flat(self.dim, self.tail))
        if vectors.shape[0]:
            chunks = (*chunks, vectors)
        buffer = AppendBuffer(np.zeros((0, self.dim), dtype=np.float32))
        return VectorSet(dim=self.dim, chunks=chunks, tail=buffer.view(), tail_buffer=buffer)

    def as_index(self) -> faiss.Index:
        """One flat index over every row (what ``faiss.index`` stores); copies unless already one."""
        if len(self.chunks) == 1 and self.tail.shape[0] == 0 and isinstance(self.chunks[0], faiss.Index):
            return self.chunks[0]
        index = faiss.IndexFlatL2(self.dim)
        for chunk in self.chunks:
            if isinstance(chunk, np.ndarray):
                for s in range(0, chunk.shape[0], MAPPED_BLOCK_ROWS):
                    index.add(np.ascontiguousarray(chunk[s : s + MAPPED_BLOCK_ROWS], dtype=np.float32))
            else:
                index.add(chunk.reconstruct_n(0, chunk.ntotal))
        if self.tail.shape[0]:
            index.add(self.tail)
        return index

    def search(self, queries: np.ndarray, k: int, skip_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest rows per query not in ``skip_rows`` (sorted int64), as
        ``(squared L2 float32 [n, k], rows int64 [n, k])``; the caller ensures k <= usable rows."""
        single = len(self.chunks) == 1 and isinstance(self.chunks[0], faiss.Index)
        if single and self.tail.shape[0] == 0 and skip_rows.shape[0] == 0:
            distances, rows = self.chunks[0].search(queries, k)
            return distances, rows.astype(np.int64)
        found_d, found_r = [], []
        start = 0
        for chunk in self.chunks:
            stop = start + _count(chunk)
            if isinstance(chunk, np.ndarray):
                for s in range(start, stop, MAPPED_BLOCK_ROWS):
                    block = chunk[s - start : s - start + MAPPED_BLOCK_ROWS]
                    _search_array(queries, block, k, s, skip_rows, found_d, found_r)
                start = stop
                continue
            skip = _within(skip_rows, start, stop)
            k_c = min(k, stop - start - skip.shape[0])
            if k_c > 0:
                if skip.shape[0]:  # the selectors must outlive the search
                    retired = faiss.IDSelectorBatch(skip)
                    keep = faiss.IDSelectorNot(retired)
                    distances, rows = chunk.search(queries, k_c, params=faiss.SearchParameters(sel=keep))
                else:
                    distances, rows = chunk.search(queries, k_c)
                found_d.append(distances)
                found_r.append(np.where(rows >= 0, rows.astype(np.int64) + start, -1))
            start = stop
        _search_array(queries, self.tail, k, start, skip_rows, found_d, found_r)
        distances = np.concatenate(found_d, axis=1)
        rows = np.concatenate(found_r, axis=1)
        distances = np.where(rows >= 0, distances, np.inf).astype(np.float32)
        by = np.lexsort((rows, distances), axis=1)[:, :k]  # distance, then row: as one flat index
        return np.take_along_axis(distances, by, axis=1), np.take_along_axis(rows, by, axis=1)


def _search_array(
    queries: np.ndarray,
    vectors: np.ndarray,
    k: int,
    start: int,
    skip_rows: np.ndarray,
    found_d: list[np.ndarray],
    found_r: list[np.ndarray],
) -> None:
    """Exhaustive k-NN over ``vectors`` (rows ``start..``), skipped rows dropped; appends the hits."""
    t = int(vectors.shape[0])
    skip = _within(skip_rows, start, start + t)
    k_t = min(t, k + skip.shape[0])
    if k_t <= 0:
        return
    distances, rows = faiss.knn(queries, np.ascontiguousarray(vectors, dtype=np.float32), k_t)
    rows = rows.astype(np.int64)
    if skip.shape[0]:
        rows = np.where(np.isin(rows, skip), -1, rows)
    found_d.append(distances)
    found_r.append(np.where(rows >= 0, rows + start, -1))


def _count(chunk: Chunk) -> int:
    return int(chunk.shape[0]) if isinstance(chunk, np.ndarray) else int(chunk.ntotal)


def _flat(dim: int, vectors: np.ndarray) -> faiss.IndexFlatL2:
    index = faiss.IndexFlatL2(dim)
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def _pushed(chunks: tuple[Chunk, ...], new: faiss.IndexFlatL2) -> tuple[Chunk, ...]:
    out = list(chunks)
    while (
        out
        and isinstance(out[-1], faiss.Index)  # a mapped chunk is never merged (nor copied)
        and out[-1].ntotal <= new.ntotal
        and out[-1].ntotal + new.ntotal <= MAX_MERGE_ROWS
    ):
        previous = out.pop()
        merged = faiss.IndexFlatL2(new.d)
        merged.add(previous.reconstruct_n(0, previous.ntotal))
        merged.add(new.reconstruct_n(0, new.ntotal))
        new = merged
    out.append(new)
    return tuple(out)


def _within(rows: np.ndarray, start: int, stop: int) -> np.ndarray:
    lo, hi = np.searchsorted(rows, [start, stop])
    return (rows[lo:hi] - start).astype(np.int64)
