"""Rate limits per client: write requests, and the expensive reads (``POST /v1/resolve``, ``GET /v1/trie``).

A client is the API key when a request carries the configured one, else the client address. Each
(class, client) has a token bucket: ``limit`` requests at once, refilled at ``limit / window`` per
second. A request over the limit gets 429 with ``Retry-After`` (whole seconds until the bucket holds
a request again) and a JSON error body, and costs nothing more.

Expensive reads are limited here, by path, before the route runs. Writes are limited where a
request is known to write (:func:`charge_write`, called by the API key check of every write route:
``/v1/assign``, ``/v1/encode`` when it registers), so plain encodes are not counted as writes.
The buckets of at most ``MAX_CLIENTS`` clients are kept (least recently seen dropped first).
"""

from __future__ import annotations

import hmac
import json
import math
import threading
import time
from collections import OrderedDict
from contextvars import ContextVar

from starlette.types import ASGIApp, Receive, Scope, Send

from semid.service.api.settings import ServiceSettings
from semid.service.errors import RateLimitedError

EXPENSIVE_READS = {("POST", "/v1/resolve"), ("GET", "/v1/trie")}
MAX_CLIENTS = 65536


class RateLimiter:
    """Token buckets of ``limit`` requests per ``window`` seconds, one per client; ``limit`` 0: no limit."""

    def __init__(self, limit: int, window: float, *, max_clients: int = MAX_CLIENTS) -> None:
        self.limit = limit
        self.window = window
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, when)
        self._lock = threading.Lock()

    def take(self, client: str) -> float:
        """Take one request from the client's bucket: 0.0 when allowed, else seconds until one is."""
        if self.limit <= 0:
            return 0.0
        rate = self.limit / self.window
        with self._lock:
            now = time.monotonic()
            tokens, when = self._buckets.pop(client, (float(self.limit), now))
            tokens = min(float(self.limit), tokens + (now - when) * rate)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / rate
            self._buckets[client] = (tokens - 1 if tokens >= 1 else tokens, now)
            if len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        return wait


class RateLimits:
    """The two limiters of one app and how a request's client is named."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.writes = RateLimiter(settings.write_rate_limit, settings.rate_limit_window)
        self.reads = RateLimiter(settings.read_rate_limit, settings.rate_limit_window)
        self.window = settings.rate_limit_window
        self._api_key = settings.api_key.encode() if settings.api_key else None

    def client(self, scope: Scope) -> str:
        if self._api_key is not None:
            for name, value in scope.get("headers", []):
                if name == b"x-api-key" and hmac.compare_digest(value, self._api_key):
                    return "api-key"
        address = scope.get("client")
        return f"address:{address[0]}" if address else "address:?"

    def message(self, kind: str, limit: int, wait: float) -> tuple[str, int]:
        retry = max(1, math.ceil(wait))
        return f"over {limit} {kind} per {self.window:g} s for this client; retry after {retry} s", retry


_CURRENT: ContextVar[tuple[RateLimits, str] | None] = ContextVar("semid_rate_limits", default=None)


def charge_write() -> None:
    """Count a write against its client; :class:`RateLimitedError` (429) when over the limit."""
    current = _CURRENT.get()
    if current is None:  # outside RateLimitMiddleware (a route called directly)
        return
    limits, client = current
    wait = limits.writes.take(client)
    if wait:
        message, retry = limits.message("write requests", limits.writes.limit, wait)
        raise RateLimitedError(message, retry_after=retry)


class RateLimitMiddleware:
    """429 for expensive reads over the limit; names the client for :func:`charge_write`."""

    def __init__(self, app: ASGIApp, limits: RateLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = self.limits.client(scope)
        if (scope["method"], scope["path"]) in EXPENSIVE_READS:
            wait = self.limits.reads.take(client)
            if wait:
                kind = "expensive reads (/v1/resolve, /v1/trie)"
                message, retry = self.limits.message(kind, self.limits.reads.limit, wait)
                await _too_many(send, message, retry)
                return
        token = _CURRENT.set((self.limits, client))
        try:
            await self.app(scope, receive, send)
        finally:
            _CURRENT.reset(token)


async def _too_many(send: Send, message: str, retry_after: int) -> None:
    body = json.dumps({"error": {"code": RateLimitedError.code, "message": message}}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(retry_after).encode()),
    ]
    await send({"type": "http.response.start", "status": 429, "headers": headers})
    await send({"type": "http.response.body", "body": body})
