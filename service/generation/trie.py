"""``SemanticIdTrie``: the exact set of valid semantic IDs, as flat sorted arrays, for constrained decoding.

A semantic ID has ``W`` positions, position ``p`` taking codes ``0 .. sizes[p] - 1``. A prefix of length
``d`` is packed into one int64 in mixed radix (``key = key * sizes[p] + code``), so sorting keys sorts
prefixes lexicographically. The trie holds, per depth ``d = 0 .. W``, the sorted distinct keys of the
real IDs' prefixes of length ``d`` (its nodes) and, per depth ``d < W``, a CSR view of their children:
``first[d][i] .. first[d][i + 1]`` are node ``i``'s children at depth ``d + 1`` and ``codes[d]`` their
codes, sorted. Every node comes from a real ID, so a node always has a child (a live beam never gets an
empty set) and every path to depth ``W`` is a real ID (exactness). A complete ID allows only the end
token, ``max(sizes)``, one beyond the largest code.

Batched look-ups pack each prefix once and find its node with one ``searchsorted`` (of the sorted
queries). A depth whose packed bit rows of allowed codes fit ``BIT_ROWS_BUDGET`` keeps one per node
(``np.unpackbits`` gives the mask); a depth with more nodes scatters its CSR instead.

Only the leaf keys (the packed full IDs), the sizes and the items go to disk (``.save``, an ``.npz``);
every other array is derived on load, after validation. A trie file comes from a server or a file, so
reading it is bounded before anything is allocated: at most ``MAX_WIDTH`` positions (as ``IdLayout``) of
at most ``MAX_SIZE`` codes, string items of at most ``MAX_ITEM_CHARS`` characters, and each member's
``.npy`` header (dtype, shape) must account for exactly the zip entry's declared size, which is
bounded by its stored size (``MAX_INFLATION``) and read no further than declared.
"""

from __future__ import annotations

import io
import math
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from semid.model.data.files import write_bytes_atomically
from semid.service.errors import InvalidInputError

FORMAT = "semid-trie"
VERSION = 1
BIT_ROWS_BUDGET = 32 << 20  # bytes of packed bit rows a depth may keep (else it scatters the CSR)
_MAX_KEY = (1 << 63) - 1
MAX_WIDTH = 26  # positions of an ID: IdLayout's limit (one letter per position in token strings)
MAX_SIZE = 1 << 20  # codes per position: a vocabulary's limit (semid.service.generation.vocab.MAX_TOKENS)
MAX_ITEM_CHARS = 1024  # characters of a string item id
MAX_INFLATION = 32  # a compressed member may declare at most this many times its stored bytes (+ 1 MiB)
_MEMBERS = ("format", "version", "sizes", "keys", "items")
_SMALL_MEMBER = 1 << 12  # format, version and sizes are a few bytes each
_HEADER_BYTES = 1 << 14  # an .npy header is at most this long here (numpy itself allows 10,000 bytes)


class InvalidTrieError(InvalidInputError):
    """A trie cannot be built from the given IDs, or a trie file is malformed."""

    code = "invalid_trie"

    def __init__(self, message: str, *, field: str = "trie") -> None:
        super().__init__(message, field=field)


class SemanticIdTrie:
    """Every valid semantic ID of a catalog, and the codes allowed after any prefix."""

    def __init__(self, sizes: Sequence[int], keys: np.ndarray, items: np.ndarray) -> None:
        """From validated parts: ``keys`` the sorted distinct packed full IDs, ``items`` their items.
        Use the ``from_*`` constructors or ``load``."""
        self._sizes = tuple(int(s) for s in sizes)
        self._items = items
        self._keys: list[np.ndarray] = [keys]
        self._first: list[np.ndarray] = []
        self._codes: list[np.ndarray] = []
        code_dtype = np.int16 if max(self._sizes) < (1 << 15) else np.int32
        for size in reversed(self._sizes):  # derive shallower depths from deeper ones
            child = self._keys[0]
            parent = child // size
            starts = np.flatnonzero(np.r_[True, parent[1:] != parent[:-1]]) if child.shape[0] else child[:0]
            self._keys.insert(0, parent[starts])
            self._first.insert(0, np.r_[starts, child.shape[0]].astype(np.int64))
            self._codes.insert(0, (child % size).astype(code_dtype))
        if self._keys[0].shape[0] == 0:  # empty trie: the root still exists, with no children
            self._keys[0] = np.zeros(1, dtype=np.int64)
            self._first[0] = np.zeros(2, dtype=np.int64)
        self._bits = [self._bit_rows(d) for d in range(self.width)]
        self._radix = [self._radix_of(d) for d in range(self.width + 1)]

    # --- construction --------------------------------------------------------------

    @classmethod
    def from_semantic_ids(
        cls,
        sids: np.ndarray,
        item_ids: np.ndarray | Sequence[Any] | None = None,
        sizes: Sequence[int] | None = None,
    ) -> SemanticIdTrie:
        """The trie of ``sids`` (int ``[N, W]``, position ``p`` in ``0 .. sizes[p] - 1``).

        ``item_ids`` (``[N]``, ints or strings) names the item of each row; two rows with the same ID
        are refused then. Without it, an item is its first row's number and repeated IDs count once.
        """
        if sizes is None:
            raise InvalidTrieError("sizes is required: the range of every position", field="sizes")
        sizes = _check_sizes(sizes)
        arr = _as_array(sids)
        if arr.ndim != 2 or arr.shape[1] != len(sizes) or (arr.shape[0] and arr.dtype.kind not in "iu"):
            raise InvalidTrieError(
                f"semantic ids have shape {arr.shape} and dtype {arr.dtype}; expected integers (N, {len(sizes)})"
            )
        arr = arr.astype(np.int64, copy=False)
        bad = (arr < 0) | (arr >= np.asarray(sizes, dtype=np.int64))
        if bad.any():
            row, pos = (int(x) for x in np.argwhere(bad)[0])
            raise InvalidTrieError(
                f"semantic id row {row} position {pos} is {int(arr[row, pos])}; expected 0..{sizes[pos] - 1}"
            )
        keys = _pack(arr, sizes)
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        first = np.r_[True, keys[1:] != keys[:-1]] if keys.shape[0] else np.zeros(0, dtype=bool)
        if item_ids is None:
            items = order[first].astype(np.int64)
        else:
            items = _item_array(item_ids)
            if items.shape != (arr.shape[0],):
                raise InvalidTrieError(
                    f"item_ids has shape {items.shape}; expected ({arr.shape[0]},)", field="item_ids"
                )
            if not first.all():
                dup = int(np.flatnonzero(~first)[0])
                raise InvalidTrieError(
                    f"items {items[order[dup - 1]]!r} and {items[order[dup]]!r} share the semantic id "
                    f"{arr[order[dup]].tolist()}; an id must name one item",
                    field="semantic_ids",
                )
            items = items[order]
        return cls(sizes, keys[first], items)

    @classmethod
    def from_snapshot(cls, snapshot: Any) -> SemanticIdTrie:
        """The active items of an ``IndexSnapshot`` (or anything with ``.state`` and ``.layout``)."""
        state = snapshot.state
        rows = state.order  # active rows, sorted by packed id
        return cls.from_semantic_ids(state.semantic_ids[rows], state.item_ids[rows], sizes=snapshot.layout.sizes)

    @classmethod
    def from_index(cls, index_dir: str | os.PathLike[str]) -> SemanticIdTrie:
        """The active items of the semid index at ``index_dir``."""
        from semid.service.index.handle import SemanticIdIndex

        return cls.from_snapshot(SemanticIdIndex.open(index_dir).snapshot)

    @classmethod
    def from_export(cls, path: str | os.PathLike[str], *, sizes: Sequence[int] | None = None) -> SemanticIdTrie:
        """The items of a ``semid export`` Parquet file. The layout comes from the file's metadata
        (written by ``semid export``); pass ``sizes`` for files without it."""
        import pyarrow.parquet as pq

        from semid.service.ids.layout import IdLayout

        table = pq.read_table(path, columns=["item_id", "semantic_id"])
        if sizes is None:
            meta = (table.schema.metadata or {}).get(b"semid.layout")
            if meta is None:
                raise InvalidTrieError(f"{path} has no semid.layout metadata; pass sizes=", field="sizes")
            import json

            sizes = IdLayout.from_dict(json.loads(meta)).sizes
        column = table.column("semantic_id").combine_chunks()
        width = len(sizes)
        flat = column.flatten().to_numpy(zero_copy_only=False)
        lengths = column.value_lengths().to_numpy(zero_copy_only=False) if len(column) else np.zeros(0)
        if column.null_count or (lengths != width).any():
            raise InvalidTrieError(f"{path}: every semantic_id must hold {width} codes", field="semantic_id")
        items = table.column("item_id").to_pylist()
        return cls.from_semantic_ids(flat.reshape(-1, width), items, sizes=sizes)

    # --- shape ---------------------------------------------------------------------

    @property
    def sizes(self) -> tuple[int, ...]:
        """Codes per position (the dedup digit last)."""
        return self._sizes

    @property
    def width(self) -> int:
        """W, the positions of a full ID (L levels + the dedup digit)."""
        return len(self._sizes)

    @property
    def end_token(self) -> int:
        """The only token allowed after a complete ID: one beyond the largest code."""
        return max(self._sizes)

    @property
    def vocab_width(self) -> int:
        """Columns of ``allowed_next_batch``'s mask: every code and the end token."""
        return max(self._sizes) + 1

    @property
    def items(self) -> np.ndarray:
        """Item of each ID, in ID order."""
        return self._items

    @property
    def semantic_ids(self) -> np.ndarray:
        """Every ID, int64 ``[N, W]``, sorted."""
        return _unpack(self._keys[-1], self._sizes)

    def __len__(self) -> int:
        return int(self._keys[-1].shape[0])

    def nbytes(self) -> int:
        """Bytes held by the trie's arrays (items included)."""
        arrays = [*self._keys, *self._first, *self._codes, *(b for b in self._bits if b is not None), self._items]
        return int(sum(a.nbytes for a in arrays))

    # --- look-ups ------------------------------------------------------------------

    def allowed_next(self, prefix: Sequence[int]) -> list[int]:
        """Sorted codes allowed after ``prefix``; ``[end_token]`` after a complete ID; ``[]`` if no ID
        starts with ``prefix``."""
        codes = np.asarray(prefix, dtype=np.int64).reshape(1, -1) if len(prefix) else np.zeros((1, 0), np.int64)
        if codes.shape[1] > self.width:
            return []
        node, hit = self._nodes(codes)
        if not hit[0]:
            return []
        depth = codes.shape[1]
        if depth == self.width:
            return [self.end_token]
        first = self._first[depth]
        return self._codes[depth][first[node[0]] : first[node[0] + 1]].tolist()

    def allowed_next_batch(self, prefixes: Any) -> Any:
        """bool ``[B, vocab_width]``: the codes allowed after each of ``B`` prefixes of one length ``d``
        (``0 <= d <= W``; column ``end_token`` for complete IDs). A prefix no ID starts with gets an empty
        row. numpy in, numpy out; torch in, torch out (on the input's device)."""
        arr, device = _to_numpy(prefixes)
        if arr.ndim != 2:
            raise InvalidTrieError(f"prefixes have shape {arr.shape}; expected (B, d)", field="prefixes")
        batch, depth = arr.shape
        if depth > self.width:
            raise InvalidTrieError(f"prefixes have {depth} codes; expected at most {self.width}", field="prefixes")
        mask = self._mask(arr.astype(np.int64, copy=False), batch, depth)
        if device is None:
            return mask
        import torch

        return torch.from_numpy(mask).to(device)

    def is_valid(self, sid: Sequence[int]) -> bool:
        """Whether ``sid`` is some item's full ID."""
        return len(sid) == self.width and bool(self._nodes(np.asarray(sid, dtype=np.int64).reshape(1, -1))[1][0])

    def item_of(self, sid: Sequence[int]) -> Any:
        """The item holding ``sid``, or None."""
        if len(sid) != self.width:
            return None
        node, hit = self._nodes(np.asarray(sid, dtype=np.int64).reshape(1, -1))
        return _plain(self._items[node[0]]) if hit[0] else None

    def rows_of(self, sids: Any) -> np.ndarray:
        """int64 ``[B]``: the position (in ID order) of each full ID of ``sids [B, W]``, -1 if invalid."""
        arr, _ = _to_numpy(sids)
        if arr.ndim != 2 or arr.shape[1] != self.width:
            raise InvalidTrieError(
                f"semantic ids have shape {arr.shape}; expected (B, {self.width})", field="semantic_ids"
            )
        node, hit = self._nodes(arr.astype(np.int64, copy=False))
        return np.where(hit, node, -1)

    def items_of(self, sids: Any, *, missing: Any = None) -> np.ndarray:
        """Items of ``sids [B, W]`` in one call, ``missing`` where an ID is invalid (default: -1 for int
        items, "" for string items)."""
        rows = self.rows_of(sids)
        if missing is None:
            missing = "" if self._items.dtype.kind == "U" else -1
        out = self._items[np.maximum(rows, 0)] if len(self) else np.zeros(rows.shape[0], self._items.dtype)
        out = out.astype(np.result_type(out.dtype, np.asarray(missing).dtype), copy=True)
        out[rows < 0] = missing
        return out

    # --- files ---------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The ``.npz`` form of ``save``."""
        buf = io.BytesIO()
        np.savez(
            buf,
            format=np.array(FORMAT),
            version=np.array(VERSION, dtype=np.int64),
            sizes=np.asarray(self._sizes, dtype=np.int64),
            keys=self._keys[-1],
            items=self._items,
        )
        return buf.getvalue()

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the trie (sizes, packed IDs, items) as ``.npz``, atomically."""
        write_bytes_atomically(Path(path), self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes) -> SemanticIdTrie:
        return cls._from_npz(io.BytesIO(data), "trie")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SemanticIdTrie:
        """Read and validate a file written by ``save``; raises ``InvalidTrieError`` if it is malformed."""
        with open(path, "rb") as f:
            return cls._from_npz(f, str(path))

    @classmethod
    def _from_npz(cls, source: Any, name: str) -> SemanticIdTrie:
        try:
            with zipfile.ZipFile(source) as zf:
                return cls._from_zip(zf, name)
        except InvalidTrieError:
            raise
        except Exception as err:  # not a zip, truncated, a bad CRC, an unsupported compression...
            raise InvalidTrieError(f"{name} is not a trie file: {type(err).__name__}: {err}") from None

    @classmethod
    def _from_zip(cls, zf: zipfile.ZipFile, name: str) -> SemanticIdTrie:
        """Each member's header is checked (and the small ones read) before a large one is read."""
        listed = set(zf.namelist())
        missing = [key for key in _MEMBERS if f"{key}.npy" not in listed]
        if missing:
            raise InvalidTrieError(f"{name} lacks {missing}")
        members = {key: _Member(zf, key, name) for key in _MEMBERS}
        positions = math.prod(members["sizes"].shape)
        if positions > MAX_WIDTH:
            raise InvalidTrieError(f"{name}: sizes has {positions} positions; expected at most {MAX_WIDTH}")
        for key in ("format", "version", "sizes"):
            if members[key].nbytes > _SMALL_MEMBER:
                raise InvalidTrieError(f"{name}: {key} holds {members[key].nbytes} bytes; expected a few")
        fmt = members["format"].read()
        if fmt.shape != () or fmt.dtype.kind != "U" or str(fmt) != FORMAT:
            raise InvalidTrieError(f"{name} is not a {FORMAT} file")
        version = members["version"].read()
        if version.shape != () or version.dtype.kind not in "iu" or int(version) != VERSION:
            raise InvalidTrieError(f"{name} has format version {version!r}; expected {VERSION}")
        sizes_arr = members["sizes"].read()
        if sizes_arr.ndim != 1 or sizes_arr.dtype.kind not in "iu":
            raise InvalidTrieError(f"{name}: sizes must be a list of ints")
        sizes = _check_sizes(sizes_arr.tolist())
        keys_m, items_m = members["keys"], members["items"]
        if len(keys_m.shape) != 1 or keys_m.dtype != np.int64:
            raise InvalidTrieError(f"{name}: keys must be int64 [N], got {keys_m.dtype} {keys_m.shape}")
        count = keys_m.shape[0]
        if count > _capacity(sizes):
            raise InvalidTrieError(f"{name}: {count} keys, more than the sizes {sizes} hold")
        kind, width = items_m.dtype.kind, items_m.dtype.itemsize
        if items_m.shape != (count,) or kind not in "iuU" or (kind in "iu" and width > 8):
            raise InvalidTrieError(
                f"{name}: items must be ints or strings [{count}], got {items_m.dtype} {items_m.shape}"
            )
        if kind == "U" and width // 4 > MAX_ITEM_CHARS:
            raise InvalidTrieError(
                f"{name}: items are strings of up to {width // 4} characters; expected at most {MAX_ITEM_CHARS}"
            )
        keys = keys_m.read()
        if count and (int(keys[0]) < 0 or int(keys[-1]) >= _capacity(sizes) or (np.diff(keys) <= 0).any()):
            raise InvalidTrieError(f"{name}: keys must be distinct, sorted and within the sizes")
        items = items_m.read()
        if kind in "iu":
            items = items.astype(np.int64, copy=False)
        return cls(sizes, keys, items)

    # --- internals -----------------------------------------------------------------

    def _nodes(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Node index at depth ``d`` of each prefix ``[B, d]`` and whether that node exists."""
        batch, depth = codes.shape
        if depth == 0:
            return np.zeros(batch, dtype=np.int64), np.full(batch, len(self) > 0)
        limits, weights = self._radix[depth]
        if codes.min() >= 0 and (codes < limits).all():  # the usual case, cheaper than a per-row check
            ok = np.ones(batch, dtype=bool)
        else:
            ok = ((codes >= 0) & (codes < limits)).all(axis=1)
        key = codes @ weights  # mixed-radix packing; garbage where not ok, masked below
        keys = self._keys[depth]
        if keys.shape[0] == 0:
            return np.zeros(batch, dtype=np.int64), np.zeros(batch, dtype=bool)
        if batch > 16:  # sorted queries walk the keys in order: about half the cache misses of random ones
            order = np.argsort(key)
            node = np.empty(batch, dtype=np.int64)
            node[order] = np.searchsorted(keys, key[order])
        else:
            node = np.searchsorted(keys, key)
        np.minimum(node, keys.shape[0] - 1, out=node)
        ok &= keys[node] == key
        return node, ok

    def _radix_of(self, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """Code limits and place values of a prefix of ``depth`` codes."""
        sizes = np.asarray(self._sizes[:depth], dtype=np.int64)
        weights = np.ones(depth, dtype=np.int64)
        for p in range(depth - 2, -1, -1):
            weights[p] = weights[p + 1] * sizes[p + 1]
        return sizes, weights

    def _mask(self, codes: np.ndarray, batch: int, depth: int) -> np.ndarray:
        width = self.vocab_width
        node, hit = self._nodes(codes)
        if depth == self.width:
            mask = np.zeros((batch, width), dtype=bool)
            mask[:, self.end_token] = hit
            return mask
        if not hit.any():
            return np.zeros((batch, width), dtype=bool)
        bits = self._bits[depth]
        if bits is not None:
            rows = bits[node]
            rows[~hit] = 0
            return np.unpackbits(rows, axis=1, count=width).view(bool)
        mask = np.zeros(batch * width, dtype=bool)
        first = self._first[depth]
        starts = first[node]
        counts = first[node + 1] - starts
        counts[~hit] = 0
        total = int(counts.sum())
        if total:  # one flat index per allowed (beam, code): the beam's row start + the code
            ends = np.cumsum(counts)
            pos = np.arange(total) + np.repeat(starts - ends + counts, counts)
            mask[np.repeat(np.arange(0, batch * width, width), counts) + self._codes[depth][pos]] = True
        return mask.reshape(batch, width)

    def _bit_rows(self, depth: int) -> np.ndarray | None:
        """Packed allowed-code bits per node of ``depth`` (``np.packbits`` order), if they fit the budget."""
        nodes = self._keys[depth].shape[0]
        row_bytes = (self.vocab_width + 7) // 8
        if nodes * row_bytes > BIT_ROWS_BUDGET:
            return None
        bits = np.zeros((nodes, row_bytes), dtype=np.uint8)
        parent = np.repeat(np.arange(nodes), np.diff(self._first[depth]))
        codes = self._codes[depth].astype(np.int64)
        np.bitwise_or.at(bits, (parent, codes >> 3), (128 >> (codes & 7)).astype(np.uint8))
        return bits


# --- helpers -------------------------------------------------------------------------


class _Member:
    """One ``.npy`` member of a trie file: its header read and checked against the zip entry, its data not
    yet read. The entry must declare exactly the header's bytes plus ``shape x itemsize``, and at most
    ``MAX_INFLATION`` times its stored bytes (+ 1 MiB); ``read`` reads no more than that."""

    def __init__(self, zf: zipfile.ZipFile, key: str, name: str) -> None:
        info = zf.getinfo(f"{key}.npy")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise InvalidTrieError(f"{name}: {key} uses zip compression {info.compress_type}; expected none or deflate")
        if info.file_size > info.compress_size * MAX_INFLATION + (1 << 20):
            raise InvalidTrieError(
                f"{name}: {key} declares {info.file_size} bytes from {info.compress_size} stored; "
                f"expected at most {MAX_INFLATION}x"
            )
        with zf.open(info) as f:
            head = io.BytesIO(f.read(min(info.file_size, _HEADER_BYTES)))
        try:
            major, _minor = np.lib.format.read_magic(head)
            read_header = {1: np.lib.format.read_array_header_1_0, 2: np.lib.format.read_array_header_2_0}[major]
            shape, _fortran, dtype = read_header(head, max_header_size=_HEADER_BYTES)
        except (KeyError, ValueError, EOFError) as err:
            raise InvalidTrieError(f"{name}: {key} is not a .npy array: {err}") from None
        if dtype.hasobject or len(shape) > 1:
            raise InvalidTrieError(f"{name}: {key} is {dtype} {shape}; expected a plain array of at most one axis")
        self.dtype, self.shape, self._info, self._zf = dtype, tuple(shape), info, zf
        self._offset = head.tell()
        self.nbytes = math.prod(self.shape) * dtype.itemsize
        if info.file_size != self._offset + self.nbytes:
            raise InvalidTrieError(
                f"{name}: {key} declares {dtype} {self.shape} ({self.nbytes} bytes) in a zip entry of "
                f"{info.file_size - self._offset} bytes"
            )

    def read(self) -> np.ndarray:
        buf = bytearray(self.nbytes)
        with self._zf.open(self._info) as f:
            f.read(self._offset)
            view, done = memoryview(buf), 0
            while done < self.nbytes:
                got = f.readinto(view[done:])
                if not got:
                    raise EOFError(f"{self._info.filename} ends after {done} of {self.nbytes} bytes")
                done += got
        return np.frombuffer(buf, dtype=self.dtype).reshape(self.shape)


def _check_sizes(sizes: Sequence[int]) -> tuple[int, ...]:
    try:
        out = tuple(int(s) for s in sizes)
    except (TypeError, ValueError):
        raise InvalidTrieError(f"sizes must be ints, got {sizes!r}", field="sizes") from None
    if not out or any(s < 1 for s in out) or any(isinstance(s, bool) for s in sizes):
        raise InvalidTrieError(f"sizes must be one or more ints >= 1, got {sizes!r}"[:300], field="sizes")
    if len(out) > MAX_WIDTH:
        raise InvalidTrieError(f"sizes has {len(out)} positions; expected at most {MAX_WIDTH}", field="sizes")
    if max(out) > MAX_SIZE:
        raise InvalidTrieError(f"sizes {out} has a position of more than {MAX_SIZE} codes", field="sizes")
    if _capacity(out) > _MAX_KEY:
        raise InvalidTrieError(f"sizes {out} have more than 2**63 IDs; a packed ID must fit int64", field="sizes")
    return out


def _capacity(sizes: Sequence[int]) -> int:
    total = 1
    for s in sizes:
        total *= int(s)
    return total


def _pack(arr: np.ndarray, sizes: Sequence[int]) -> np.ndarray:
    key = np.zeros(arr.shape[0], dtype=np.int64)
    for p, size in enumerate(sizes):
        key *= size
        key += arr[:, p]
    return key


def _unpack(keys: np.ndarray, sizes: Sequence[int]) -> np.ndarray:
    out = np.empty((keys.shape[0], len(sizes)), dtype=np.int64)
    rest = keys.copy()
    for p in range(len(sizes) - 1, -1, -1):
        out[:, p] = rest % sizes[p]
        rest //= sizes[p]
    return out


def _item_array(item_ids: Any) -> np.ndarray:
    arr = np.asarray(item_ids)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind == "O" and all(isinstance(x, str) for x in arr.reshape(-1).tolist()):
        arr = arr.astype(np.str_) if arr.size else np.zeros(arr.shape, dtype="U1")
    if arr.dtype.kind == "U":
        if arr.dtype.itemsize // 4 > MAX_ITEM_CHARS:
            longest = max(len(x) for x in arr.reshape(-1).tolist())
            if longest > MAX_ITEM_CHARS:
                raise InvalidTrieError(
                    f"an item id has {longest} characters; expected at most {MAX_ITEM_CHARS}", field="item_ids"
                )
            return arr.astype(f"U{max(longest, 1)}")
        return arr
    if arr.dtype.kind == "O" and arr.size == 0:
        return np.zeros(arr.shape, dtype=np.int64)
    raise InvalidTrieError(f"item_ids must be ints or strings, got {arr.dtype}", field="item_ids")


def _as_array(values: Any) -> np.ndarray:
    return _to_numpy(values)[0]


def _to_numpy(values: Any) -> tuple[np.ndarray, Any]:
    """``values`` as a numpy array, and the torch device it came from (None for non-torch input)."""
    if type(values).__module__.startswith("torch"):
        return values.detach().cpu().numpy(), values.device
    return np.asarray(values), None


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
