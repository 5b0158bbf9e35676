"""Prefix pages over HTTP: the opaque cursor and the page body."""

from __future__ import annotations

import base64
import binascii
import re
import struct
from collections.abc import Sequence

from semid.service.errors import InvalidCursorError
from semid.service.index.snapshot import IndexSnapshot

DEFAULT_PAGE = 100
_CURSOR_RE = re.compile(r"[A-Za-z0-9_-]{11}")


def encode_cursor(packed: int) -> str:
    return base64.urlsafe_b64encode(struct.pack(">q", packed)).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> int:
    if not isinstance(cursor, str) or _CURSOR_RE.fullmatch(cursor) is None:
        raise InvalidCursorError(f"cursor {cursor!r} is not a cursor returned by this prefix")
    try:
        (value,) = struct.unpack(">q", base64.urlsafe_b64decode(cursor + "="))
    except (binascii.Error, struct.error):
        raise InvalidCursorError(f"cursor {cursor!r} is not a cursor returned by this prefix") from None
    return int(value)


def prefix_page(snapshot: IndexSnapshot, prefix: Sequence[int], *, limit: int, cursor: str | None) -> dict:
    """``{"prefix", "count", "items", "next_cursor"}`` of one page under ``prefix``."""
    after = None if cursor is None else decode_cursor(cursor)
    try:
        count, rows, more = snapshot.prefix_rows(prefix, limit=limit, after=after)
    except InvalidCursorError:
        raise InvalidCursorError(f"cursor {cursor!r} does not belong to this prefix") from None
    return {
        "prefix": [int(c) for c in prefix],
        "count": count,
        "items": snapshot.items(rows),
        "next_cursor": None if more is None else encode_cursor(more),
    }
