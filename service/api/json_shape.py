"""Bounds on a JSON body's structure, read from simdjson's tape before pydantic builds anything.

The value bound (:func:`semid.service.api.limits.check_json_size`) caps how many values a body holds; within
it, a body can still be a million of the wrong thing: keys an object does not allow, entries beyond the
batch limit. pydantic would build a Python object, and an error, for each. simdjson parses the body into its
own tape (C++, no Python object per value) and the checks here read counts only: the keys of the top-level
object, the length of each batch array, and the keys of each batch entry (at most ``max_batch`` of them, so
the Python loop is bounded by the largest legal batch). What passes holds at most the route's own fields
(plus :data:`SPARE_KEYS`) and at most ``max_batch`` entries per batch; pydantic then stops at the first bad
entry of a list (:data:`semid.service.api.schemas.FIRST_ERROR`).

A body simdjson cannot parse (invalid JSON, nesting beyond its depth limit, a byte-order mark) is left to
pydantic, which explains it and stops at the first error.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field

import simdjson

from semid.service.api.json_matrix import BOM, REFUSED, ParserLease
from semid.service.errors import BatchTooLargeError, InvalidInputError, SemidError

SPARE_KEYS = 64  # keys an object may hold beyond its fields (pydantic names each unknown one, so few)
# a parser that checked a larger body is not pooled: the body may still be refused by pydantic, and a
# hostile body's tape is as large as its bytes allow
KEEP_PARSER_BYTES = 1 << 20


@dataclass(frozen=True)
class BodyShape:
    """What a route's JSON body may hold: its top-level ``fields``; ``arrays``, the most entries of each
    top-level array field (413 beyond); ``entries_of``, an array of objects whose entries hold at most
    ``entry_keys`` keys."""

    fields: frozenset[str]
    arrays: Mapping[str, int] = field(default_factory=dict)
    entries_of: str | None = None
    entry_keys: int = 0


def check_shape(raw: bytes, shape: BodyShape) -> None:
    """413 for an array beyond its bound, 422 for an object with too many keys; else nothing."""
    if raw.startswith(BOM):
        return  # simdjson skips one, pydantic refuses it: let pydantic say so
    with ParserLease(raw) as lease:
        # returned, not raised, so no traceback keeps the document (and so the pooled parser) alive
        problem = _problem(lease.parser, raw, shape)
        lease.keep = problem is None and len(raw) <= KEEP_PARSER_BYTES
    if problem is not None:
        raise problem


def _problem(parser: simdjson.Parser, raw: bytes, shape: BodyShape) -> SemidError | None:
    try:
        doc = parser.parse(raw)
    except RuntimeError:  # a parser still held by a live document: never skip the checks, use a fresh one
        parser = simdjson.Parser()
        try:
            doc = parser.parse(raw)
        except REFUSED:
            return None
    except REFUSED:
        return None
    if not isinstance(doc, simdjson.Object):
        return None
    problem = _keys_problem(doc, shape.fields, len(shape.fields) + SPARE_KEYS, "body")
    for name, most in shape.arrays.items():
        value = doc.get(name)
        if problem is None and isinstance(value, simdjson.Array) and len(value) > most:
            problem = BatchTooLargeError(f"{name} has {len(value)} entries; at most {most} per request", field=name)
    entries = doc.get(shape.entries_of) if shape.entries_of else None
    if problem is None and isinstance(entries, simdjson.Array):
        for i, entry in enumerate(entries):
            if isinstance(entry, simdjson.Object):
                problem = _keys_problem(entry, None, shape.entry_keys, f"{shape.entries_of}.{i}")
                if problem is not None:
                    break
    return problem


def _keys_problem(obj: simdjson.Object, fields: frozenset[str] | None, most: int, where: str) -> SemidError | None:
    n = len(obj)
    if n <= most:
        return None
    message = f"{where} has {n} fields; at most {most}"
    if fields is not None:
        first = itertools.islice(obj.keys(), most + 1)  # without repeated keys, an unknown one is among these
        unknown = next((k for k in first if k not in fields), None)
        message += f" (expected {', '.join(sorted(fields))}"
        message += f"; {unknown[:64]!r} is not one of them)" if unknown is not None else ")"
    return InvalidInputError(message, field=where)
