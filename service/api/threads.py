"""Where request work runs: never on the event loop.

Decoding, validation, encoding and look-ups of many rows go to the default worker pool. Writes go
to the app's own small pool, so writers queueing for the index lock hold no thread a read needs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
from fastapi import Request

T = TypeVar("T")
WRITE_THREADS = 2


async def in_read_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` in the default worker pool."""
    return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


async def in_write_thread(request: Request, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a write in the app's own pool of ``WRITE_THREADS`` threads."""
    limiter = getattr(request.app.state, "write_limiter", None)
    if limiter is None:
        limiter = request.app.state.write_limiter = anyio.CapacityLimiter(WRITE_THREADS)
    return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), limiter=limiter)
