"""Bounds on what a request body may expand to.

Every limit here is derived from the largest legal batch (``max_batch`` rows of the checkpoint's
dimension), so a hostile body costs at most what a legal one does:

- JSON: before parsing, the number of values the body can hold is bounded by counting its
  separators (``,``, ``[`` and ``{``; bytes inside strings only make the count larger). A body of
  12 MB of ``[],`` would otherwise become millions of Python lists before the row limit is checked.
- Arrow: the decoded size (see :mod:`semid.service.api.arrow_body`).
- The default HTTP body limit: the largest legal batch written as JSON.
- ``/v1/resolve`` carries one code tuple, not a batch: its own small byte and value caps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from semid.service.errors import BatchTooLargeError, InvalidInputError

if TYPE_CHECKING:
    from semid.service.api.state import ServiceState

ROW_SLACK_VALUES = 64  # per row, beyond the embedding: item id, register flag, kept columns
JSON_BYTES_PER_VALUE = 24  # "-0.012345678901234567, " is the longest usual float spelling
ROW_SLACK_BYTES = 4096  # per row: item id (<= 512 chars) and kept columns
# /v1/resolve: one code tuple and k. Far beyond any legal body, far below the server-wide limits.
RESOLVE_MAX_BYTES = 64 << 10
RESOLVE_MAX_VALUES = 1024


def check_batch(state: ServiceState, n: int, field: str) -> None:
    """422 for an empty batch, 413 for one over ``max_batch`` rows."""
    if n == 0:
        raise InvalidInputError(f"{field} is empty; expected at least one", field=field)
    if n > state.settings.max_batch:
        most = state.settings.max_batch
        raise BatchTooLargeError(f"{field} has {n} entries; at most {most} per request", field=field)


def json_value_cap(state: ServiceState) -> int:
    """Most JSON values a request body may hold: max_batch rows of (dimension + slack) values."""
    return state.settings.max_batch * (state.encoder.input_dim + ROW_SLACK_VALUES) + 1024


def arrow_byte_cap(state: ServiceState) -> int:
    """Most bytes an Arrow body may decode to: max_batch rows of float64 values plus slack."""
    return state.settings.max_batch * (8 * state.encoder.input_dim + ROW_SLACK_BYTES) + (1 << 20)


def default_body_limit(max_batch: int, input_dim: int) -> int:
    """The largest legal batch written as JSON, plus room for the envelope."""
    return max_batch * (JSON_BYTES_PER_VALUE * input_dim + ROW_SLACK_BYTES) + (1 << 16)


def check_json_size(raw: bytes, *, max_values: int) -> int:
    """413 when a JSON body could hold more than ``max_values`` values (checked before parsing); else the
    number of ``[`` bytes in it (semid.service.api.json_matrix uses it to rule out nested arrays)."""
    chars = np.frombuffer(raw, dtype=np.uint8)  # one vectorised compare per byte class, not a Python loop
    counts = {c: int(np.count_nonzero(chars == ord(c))) for c in ",[{"}
    bound = sum(counts.values()) + 1
    if bound > max_values:
        raise BatchTooLargeError(
            f"JSON body has {bound} separators; a request may hold at most {max_values} values "
            "(max_batch rows of the checkpoint's dimension)",
            field="body",
        )
    return counts["["]


def check_string_id(value: str, field: str) -> None:
    """Item ids may not contain NUL: NumPy strips trailing NULs, so 'a' and 'a\\0' would collide."""
    if "\x00" in value:
        raise InvalidInputError(f"{field} contains a NUL character; item ids may not", field=field)
