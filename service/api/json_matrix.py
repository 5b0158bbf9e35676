"""JSON encode bodies straight to a float32 matrix, without a Python float per number (simdjson).

A 1,024 x 384 body holds ~393k numbers. msgspec (and pydantic) make a Python float of each and NumPy then
copies the lists into an array, all of it holding the GIL. simdjson parses the body into its own tape and
``as_buffer`` copies a whole array of numbers into one float64 buffer in C, in about half the time (the
figures: benchmarks/results/json_body_speed.md).

This path only *accepts*; it never explains. It returns None for any body it is not certain msgspec
would take with the same values, and the caller then runs the msgspec/pydantic path, so every error a
client sees, and every accepted body's values, are the ones that path gives. Certain means:

- the top level is an object whose keys are among ``embeddings``, ``item_ids``, ``register``, each at
  most once, and no byte-order mark (simdjson skips one; msgspec refuses it);
- ``embeddings`` is a non-empty array of arrays of one length (every row is checked, so a ragged batch
  whose total happens to fit is not taken);
- the body holds exactly ``1 + rows (+ 1 for an item_ids array)`` ``[`` bytes, counted by the caller's
  amplification bound: then no array is nested inside a row (a ``[`` inside a string only makes the count
  larger, which falls back), so ``as_buffer`` sees scalars only, and it refuses any that is not a number;
- ``item_ids`` is null or an array of ints and strings (not bools), ``register`` a JSON boolean.

Numbers: simdjson and msgspec both round each decimal to the nearest float64 (ints beyond 64 bits and
values beyond float64 are refused by simdjson, so they fall back); the float64 matrix is then rounded to
float32 once, as the slow path's list -> array step does.

A parser keeps buffers sized to the largest body it parsed (about twice its bytes), so at most
``POOL_SIZE`` parsers are kept between requests, and only ones that never parsed more than
``POOL_MAX_BYTES`` (a kept parser saves allocating those buffers again) nor a body that was refused (a
hostile body is all structure, so its parser's tape is as large as its bytes allow): requests beyond
that, or larger bodies, use a parser of their own that is freed with the request.
"""

from __future__ import annotations

import queue
from dataclasses import dataclass

import numpy as np
import simdjson

FIELDS = frozenset({"embeddings", "item_ids", "register"})
BOM = b"\xef\xbb\xbf"
POOL_SIZE = 2
POOL_MAX_BYTES = 16 << 20  # a 1,024 x 384 body is ~8.6 MB; a parser kept after it holds ~17 MB
# what simdjson raises on a body it refuses (UnicodeDecodeError is a ValueError); RuntimeError also covers a
# parser still referenced by a live document
REFUSED = (ValueError, TypeError, RuntimeError, KeyError)
_pool: queue.SimpleQueue[simdjson.Parser] = queue.SimpleQueue()


@dataclass
class JsonEncodeBody:
    embeddings: np.ndarray  # float32 [rows, dim]
    item_ids: list[int | str] | None
    register: bool


class ParserLease:
    """A parser for one body: from the pool when the body is small enough, and put back afterwards only if
    ``keep`` is still true. A parser keeps buffers sized to what it parsed, so callers clear ``keep`` for a
    refused body (a hostile one is all structure: its tape is as large as its bytes allow)."""

    def __init__(self, raw: bytes) -> None:
        self.poolable = len(raw) <= POOL_MAX_BYTES
        self.keep = True
        parser = None
        if self.poolable:
            try:
                parser = _pool.get_nowait()
            except queue.Empty:
                pass
        self.parser = parser if parser is not None else simdjson.Parser()

    def __enter__(self) -> ParserLease:
        return self

    def __exit__(self, *exc: object) -> None:
        # the caller must let every proxy into the parser's document die inside the block
        if self.keep and self.poolable and _pool.qsize() < POOL_SIZE:
            _pool.put(self.parser)


def read_encode_body(raw: bytes, open_brackets: int) -> JsonEncodeBody | bool | None:
    """The body as a matrix, or None when the msgspec/pydantic path must decide (see the module docstring),
    or False when a row holds a value that is not a number: no parser accepts the body, so msgspec's pass
    can be skipped (pydantic still decides). ``open_brackets``: the number of ``[`` bytes in ``raw``."""
    if raw.startswith(BOM):
        return None
    with ParserLease(raw) as lease:
        try:
            body = _read(lease.parser, raw, open_brackets)  # the document's proxies die with _read's frame
        except REFUSED:
            body = None
        lease.keep = isinstance(body, JsonEncodeBody)
        return body


def _read(parser: simdjson.Parser, raw: bytes, open_brackets: int) -> JsonEncodeBody | bool | None:
    doc = parser.parse(raw)
    if not isinstance(doc, simdjson.Object):
        return None
    if len(doc) > len(FIELDS):
        return None  # an unknown or repeated key; and never a Python string per key of a huge object
    keys = list(doc.keys())
    if len(set(keys)) != len(keys) or not FIELDS.issuperset(keys) or "embeddings" not in keys:
        return None
    rows = doc["embeddings"]
    if not isinstance(rows, simdjson.Array) or len(rows) == 0:
        return None
    ids = doc["item_ids"] if "item_ids" in keys else None
    register = doc["register"] if "register" in keys else False
    if type(register) is not bool or not (ids is None or isinstance(ids, simdjson.Array)):
        return None
    if open_brackets != 1 + len(rows) + (ids is not None):
        return None  # an array nested somewhere (or a "[" inside a string): let msgspec decide
    dim = -1
    for row in rows:
        if not isinstance(row, simdjson.Array):
            return None
        if dim < 0:
            dim = len(row)
        if len(row) != dim or dim == 0:
            return None
    id_list = None if ids is None else ids.as_list()
    if id_list is not None and not all(type(i) is int or type(i) is str for i in id_list):
        return None
    try:
        flat = np.frombuffer(rows.as_buffer(of_type="d"), dtype=np.float64)
    except REFUSED:
        return False
    if flat.shape[0] != len(rows) * dim:
        return None
    with np.errstate(over="ignore"):  # beyond float32 becomes inf, which the encoder's check rejects (422)
        matrix = flat.astype(np.float32).reshape(len(rows), dim)
    return JsonEncodeBody(matrix, id_list, register)
