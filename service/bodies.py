"""Bounds on what a request body may expand to, and where request work runs.

Every limit here is derived from the largest legal batch (``max_batch`` rows of the checkpoint's
dimension), so a hostile body costs at most what a legal one does:

- JSON: before parsing, the number of values the body can hold is bounded by counting its
  separators (``,``, ``[`` and ``{``; bytes inside strings only make the count larger). A body of
  12 MB of ``[],`` would otherwise become millions of Python lists before the row limit is checked.
- Arrow: the decoded size (see :mod:`service.arrow_body`).
- The default HTTP body limit: the largest legal batch written as JSON.

Decoding, encoding and writing never run on the event loop. Reads go to the default worker pool;
writes to their own, small pool, so writers queueing for the index lock hold no thread a read needs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from fastapi import Request

from service.arrow_body import BodyTooLargeError
from service.errors import InvalidInputError

if TYPE_CHECKING:
    from service.state import ServiceState

T = TypeVar("T")

ROW_SLACK_VALUES = 64  # per row, beyond the embedding: item id, register flag, kept columns
JSON_BYTES_PER_VALUE = 24  # "-0.012345678901234567, " is the longest usual float spelling
ROW_SLACK_BYTES = 4096  # per row: item id (<= 512 chars) and kept columns
WRITE_THREADS = 2


def json_value_cap(state: ServiceState, field: str) -> int:
    """Most JSON values a request body may hold: max_batch rows of (dimension + slack) values."""
    return state.settings.max_batch * (state.encoder.input_dim + ROW_SLACK_VALUES) + 1024


def arrow_byte_cap(state: ServiceState) -> int:
    """Most bytes an Arrow body may decode to: max_batch rows of float64 values plus slack."""
    return state.settings.max_batch * (8 * state.encoder.input_dim + ROW_SLACK_BYTES) + (1 << 20)


def default_body_limit(max_batch: int, input_dim: int) -> int:
    """The largest legal batch written as JSON, plus room for the envelope."""
    return max_batch * (JSON_BYTES_PER_VALUE * input_dim + ROW_SLACK_BYTES) + (1 << 16)


def check_json_size(raw: bytes, *, max_values: int) -> None:
    """413 when a JSON body could hold more than ``max_values`` values (checked before parsing)."""
    bound = raw.count(b",") + raw.count(b"[") + raw.count(b"{") + 1
    if bound > max_values:
        raise BodyTooLargeError(
            f"JSON body has {bound} separators; a request may hold at most {max_values} values "
            "(max_batch rows of the checkpoint's dimension)",
            field="body",
        )


def check_string_id(value: str, field: str) -> None:
    """Item ids may not contain NUL: NumPy strips trailing NULs, so 'a' and 'a\\0' would collide."""
    if "\x00" in value:
        raise InvalidInputError(f"{field} contains a NUL character; item ids may not", field=field)


async def in_read_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` in the default worker pool (decoding, encoding, look-ups of many rows)."""
    return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


async def in_write_thread(request: Request, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a write in the app's own small pool: writers waiting for the lock never starve readers."""
    limiter = getattr(request.app.state, "write_limiter", None)
    if limiter is None:
        limiter = request.app.state.write_limiter = anyio.CapacityLimiter(WRITE_THREADS)
    return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), limiter=limiter)
